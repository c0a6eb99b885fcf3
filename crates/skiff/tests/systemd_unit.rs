//! skiff's systemd units under a real systemd: the Debian package installed
//! with dpkg in a systemd guest that skiff boots (images/systemd.toml; this
//! machine has no systemd as PID 1). The daemon inside runs on the fake
//! backend (no QEMU inside the emulated guest), so what is tested is the
//! packaging and systemd's side: the sysusers group, the socket's owner
//! and mode, socket activation, `Type=notify`, one scope per VM with its
//! limits, VMs that outlive a restart and a stop of the daemon, the
//! journal, and a purge.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};

fn recipe(name: &str) -> String {
    format!("{}/../../images/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// Run a script in the guest; its stdout, after checking it succeeded.
fn sh(d: &Daemon, script: &str) -> String {
    let out = d.cli(&["exec", "sd", "--", "sh", "-c", script]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{script}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The guest's fake VM processes' pids.
fn fake_vm_pids(d: &Daemon) -> String {
    // No procps in the image: the command lines, read from /proc.
    sh(
        d,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/usr/local/bin/skiff-fake-vm guest' && echo ${p#/proc/}; done; true",
    )
}

#[test]
fn the_package_runs_under_systemd_with_a_scope_per_vm() {
    let deb = common::debian_package();
    let d = Daemon::start();
    d.ok(&["image", "build", "-f", &recipe("systemd")]);
    d.boot(
        "sd",
        "[vm.sd]\nmemory = 512\ndisk = { image = \"systemd\" }\ninit = \"system\"\n",
    );
    d.ok(&["cp", &deb, "sd:/tmp/skiff.deb"]);
    d.ok(&[
        "cp",
        env!("CARGO_BIN_EXE_skiff-fake-vm"),
        "sd:/usr/local/bin/skiff-fake-vm",
    ]);
    // The fake backend, through a drop-in as an administrator would.
    sh(
        &d,
        "mkdir -p /etc/systemd/system/skiff.service.d && printf '[Service]\\nEnvironment=SKIFF_BACKEND=fake SKIFF_FAKE_VM=/usr/local/bin/skiff-fake-vm\\n' > /etc/systemd/system/skiff.service.d/fake.conf",
    );
    // QEMU and the other dependencies are not installed in the guest: the
    // fake backend does not need them.
    let install = sh(&d, "dpkg -i --force-depends /tmp/skiff.deb 2>&1");
    assert!(install.contains("Setting up skiff"), "{install}");

    // postinst made the group, enabled and started the units.
    assert!(sh(&d, "getent group skiff").starts_with("skiff:"));
    assert_eq!(
        sh(&d, "systemctl is-enabled skiff.socket skiff.service"),
        "enabled\nenabled\n"
    );
    assert_eq!(
        sh(&d, "systemctl is-active skiff.socket skiff.service"),
        "active\nactive\n"
    );
    assert_eq!(
        sh(
            &d,
            "stat -c '%a %U %G' /run/skiff/skiff.sock /run/skiff /usr/lib/tmpfiles.d/skiff.conf"
        ),
        "660 root skiff\n710 root skiff\n644 root root\n"
    );

    // A member of the group uses the system daemon through the socket.
    sh(&d, "useradd --create-home --groups skiff ada");
    sh(
        &d,
        "printf '[vm.f]\\nkernel = { path = \"/etc/hostname\", initrd = \"/etc/hostname\" }\\n' > /tmp/f.toml && chmod 644 /tmp/f.toml",
    );
    sh(
        &d,
        "runuser -u ada -- skiff apply -f /tmp/f.toml && runuser -u ada -- skiff start f",
    );
    let pid = fake_vm_pids(&d);
    assert_eq!(pid.lines().count(), 1, "one fake VM: {pid}");
    let pid = pid.trim().to_owned();

    // Its processes are in a scope of their own, with the VM's limits.
    let cgroup = sh(&d, &format!("cat /proc/{pid}/cgroup"));
    assert!(
        cgroup.contains("/system.slice/skiff-vm-") && cgroup.contains(".scope"),
        "{cgroup}"
    );
    let unit = sh(
        &d,
        "systemctl list-units --no-legend --plain 'skiff-vm-*.scope' | cut -d' ' -f1",
    );
    assert_eq!(unit.lines().count(), 1, "{unit}");
    let unit = unit.trim().to_owned();
    assert_eq!(
        sh(&d, &format!("systemctl show -p MemoryMax --value {unit}")),
        format!("{}\n", (256 + 256) * 1024 * 1024),
        "the guest's default 256 MiB and QEMU's allowance"
    );

    // A restart keeps the VM; the new daemon adopts it (in the journal).
    sh(
        &d,
        "systemctl restart skiff.service || { systemctl status skiff.service; journalctl -u skiff --no-pager | tail -n 30; exit 1; }",
    );
    assert_eq!(fake_vm_pids(&d).trim(), pid, "the VM outlived the restart");
    let ls = sh(&d, "runuser -u ada -- skiff ls");
    assert!(
        ls.lines()
            .any(|l| l.starts_with("f ") && l.contains("running")),
        "{ls}"
    );
    let journal = sh(&d, "journalctl -u skiff --no-pager -o cat");
    assert!(journal.contains("adopted"), "{journal}");
    assert!(journal.contains("listening"), "{journal}");

    // Stopped, the daemon leaves its VMs running; the socket brings it back.
    sh(&d, "systemctl stop skiff.service");
    assert_eq!(
        sh(&d, "systemctl is-active skiff.service || true"),
        "inactive\n"
    );
    assert_eq!(fake_vm_pids(&d).trim(), pid, "the VM outlived the stop");
    sh(&d, "runuser -u ada -- skiff stop f");
    assert_eq!(
        sh(&d, "systemctl is-active skiff.service"),
        "active\n",
        "socket activation started the daemon"
    );
    assert_eq!(fake_vm_pids(&d), "", "the VM stopped");
    // systemd lets an emptied scope go in its own time; the next boot has
    // a scope of its own at once, and a restart too.
    sh(
        &d,
        "runuser -u ada -- skiff start f && runuser -u ada -- skiff restart f",
    );
    assert_eq!(fake_vm_pids(&d).lines().count(), 1);
    sh(&d, "runuser -u ada -- skiff stop f");
    assert_eq!(
        sh(
            &d,
            "for i in $(seq 100); do n=$(systemctl list-units --no-legend --all 'skiff-vm-*.scope' | wc -l); [ $n = 0 ] && break; sleep 0.1; done; echo $n"
        ),
        "0\n",
        "the scopes are gone"
    );

    // Purged: the units and files go with the package.
    sh(&d, "runuser -u ada -- skiff rm f && dpkg --purge skiff");
    assert_eq!(
        sh(&d, "ls /usr/bin/skiff /usr/lib/systemd/system/skiff.service /usr/lib/skiff 2>&1 | grep -c 'No such file'"),
        "3\n"
    );
    assert_eq!(
        sh(&d, "systemctl is-active skiff.socket skiff.service || true"),
        "inactive\ninactive\n"
    );
}
