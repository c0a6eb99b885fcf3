//! Full-OS guests: a root on a block device (a qcow2 layer per VM over one
//! shared base) and the guest's own init (systemd as PID 1, skiff's agent as
//! its runtime unit). Real VMs under QEMU; the image is built from
//! images/systemd.toml with debootstrap (root and a Debian mirror needed).
//! A systemd boot costs about half a minute under TCG, so one test shares
//! its VMs between the checks.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};

fn recipe(name: &str) -> String {
    format!("{}/../../images/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

fn sh(d: &Daemon, vm: &str, script: &str) -> String {
    let out = d.cli(&["exec", vm, "--", "sh", "-c", script]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{vm}: {script}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn systemd_guests_boot_from_shared_disks_stop_cleanly_and_keep_what_they_should() {
    let d = Daemon::start();
    d.ok(&["image", "build", "-f", &recipe("systemd")]);

    // A dev box: its writes to its root survive stop and start.
    d.boot(
        "dev",
        "[vm.dev]\nmemory = 512\ndisk = { image = \"systemd\", persistent = true }\ninit = \"system\"\n",
    );
    assert_eq!(sh(&d, "dev", "cat /proc/1/comm"), "systemd\n");
    let state = sh(&d, "dev", "systemctl is-system-running || true");
    assert!(
        state == "running\n" || state == "degraded\n",
        "systemd says {state:?}; failed units: {}",
        sh(&d, "dev", "systemctl --failed --no-legend || true")
    );
    assert_eq!(sh(&d, "dev", "hostname"), "skiff-systemd\n");
    assert_eq!(
        sh(&d, "dev", "findmnt -n -o SOURCE,FSTYPE /"),
        "/dev/vda ext4\n"
    );
    // The agent came from the initramfs: nothing of skiff's is on the disk.
    assert_eq!(
        sh(
            &d,
            "dev",
            "systemctl is-active skiff-agent; ls /etc/systemd/system | grep -c skiff || true"
        ),
        "active\n0\n"
    );
    sh(&d, "dev", "echo kept > /root/marker");

    // A sandbox from the same base: its own layer, thrown away per boot.
    d.boot(
        "sb",
        "[vm.sb]\nmemory = 512\ndisk = { image = \"systemd\" }\ninit = \"system\"\n",
    );
    assert_eq!(
        sh(&d, "sb", "cat /root/marker 2>/dev/null || echo absent"),
        "absent\n",
        "a sandbox must not see another VM's writes to the shared base"
    );
    sh(&d, "sb", "echo mine > /root/sandbox-file");
    assert_eq!(
        sh(
            &d,
            "dev",
            "cat /root/sandbox-file 2>/dev/null || echo absent"
        ),
        "absent\n"
    );

    // Services are units of the guest's init, as many as it likes: one
    // that fails and one that ends leave the VM and the others running.
    sh(
        &d,
        "dev",
        "systemd-run -q --unit=lasting sleep 600 && systemd-run -q --unit=brief true && \
         systemd-run -q --unit=broken sh -c 'exit 3'",
    );
    d.wait_for(
        "the failing unit to fail",
        std::time::Duration::from_secs(30),
        || {
            d.cli(&["exec", "dev", "--", "systemctl", "is-failed", "broken"])
                .status
                .success()
        },
    );
    assert_eq!(sh(&d, "dev", "systemctl is-active lasting"), "active\n");
    assert_eq!(d.inspect("dev")["state"], "running");
    // Its console is the kernel's and systemd's, as `skiff logs` shows.
    let console = d.ok(&["logs", "dev"]);
    assert!(
        console.contains("handing PID 1 to /sbin/init") && console.contains("login:"),
        "{console}"
    );

    // A clean stop through systemd: the next boot finds no journal to
    // replay, and the dev box's file is still there.
    assert_eq!(d.ok(&["stop", "dev"]), "dev stopped\n");
    assert_eq!(d.inspect("dev")["note"], "stopped on request");
    d.ok(&["start", "dev"]);
    assert_eq!(sh(&d, "dev", "cat /root/marker"), "kept\n");
    let kernel = sh(&d, "dev", "dmesg | grep 'EXT4-fs (vda)' || true");
    assert!(
        kernel.contains("mounted filesystem") && !kernel.contains("recovery"),
        "the root was not left clean: {kernel}"
    );

    // The sandbox starts from the base again.
    d.ok(&["stop", "sb"]);
    d.ok(&["start", "sb"]);
    assert_eq!(
        sh(
            &d,
            "sb",
            "cat /root/sandbox-file 2>/dev/null || echo absent"
        ),
        "absent\n"
    );
    d.ok(&["rm", "-f", "dev", "sb"]);
    assert_eq!(d.qemu_count(), 0);
    assert!(!d.state().join("vms/dev/root.qcow2").exists());
}

#[test]
fn bad_root_disks_are_named_and_leave_nothing_running() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // A base that is not there.
    let gone = dir.path().join("gone.qcow2");
    let spec = format!(
        "[vm.gone]\ndisk = \"{}\"\ninit = \"system\"\n",
        gone.display()
    );
    let file = d.write_spec("gone.toml", &spec);
    d.ok(&["create", "-f", file.to_str().expect("utf8")]);
    let out = d.cli(&["start", "gone"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("root disk") && err.contains("gone.qcow2"),
        "{err}"
    );
    assert_eq!(d.qemu_count(), 0);

    // A raw disk without a filesystem: the guest says what is wrong.
    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 8 * 1024 * 1024]).expect("write");
    let spec = format!("[vm.blank]\ndisk = \"{}\"\n", blank.display());
    let file = d.write_spec("blank.toml", &spec);
    d.ok(&["create", "-f", file.to_str().expect("utf8")]);
    let out = d.cli(&["start", "blank"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains("/dev/vda is not an ext4 filesystem"), "{err}");
    assert_eq!(d.qemu_count(), 0);
    assert_eq!(
        std::fs::read(&blank).expect("read").len(),
        8 * 1024 * 1024,
        "the base is never written"
    );
    d.ok(&["rm", "-f", "gone", "blank"]);
}

/// A raw disk with an MBR partition table as cloud images have one: a small
/// partition without a filesystem (an EFI system partition's place) first,
/// then the root as ext4 made from `root`.
fn partitioned_disk(root: &str, out: &std::path::Path) {
    const SECTOR: u64 = 512;
    let total: u64 = 1536 * 1024 * 1024 / SECTOR;
    let (efi_start, efi_len, root_start) = (2048u64, 2048u64, 4096u64);
    let entry = |kind: u8, start: u64, len: u64| {
        let mut e = vec![0u8, 0xfe, 0xff, 0xff, kind, 0xfe, 0xff, 0xff];
        e.extend_from_slice(&(start as u32).to_le_bytes());
        e.extend_from_slice(&(len as u32).to_le_bytes());
        e
    };
    let mut mbr = vec![0u8; 512];
    mbr[446..462].copy_from_slice(&entry(0xef, efi_start, efi_len));
    mbr[462..478].copy_from_slice(&entry(0x83, root_start, total - root_start));
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let f = std::fs::File::create(out).expect("disk");
    f.set_len(total * SECTOR).expect("size");
    std::os::unix::fs::FileExt::write_all_at(&f, &mbr, 0).expect("mbr");
    let out_path = out.to_str().expect("utf8");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E"])
        .arg(format!("offset={}", root_start * SECTOR))
        .args(["-d", root, out_path])
        .arg(format!("{}k", (total - root_start) * SECTOR / 1024))
        .output()
        .expect("mkfs.ext4");
    assert!(made.status.success(), "{}", stderr(&made));
}

#[test]
fn a_disk_with_a_partition_table_boots_from_its_ext4_partition() {
    let d = Daemon::start();
    d.ok(&["image", "build", "-f", &recipe("systemd")]);
    let images: serde_json::Value =
        serde_json::from_str(&d.ok(&["image", "ls", "--json"])).expect("json");
    let root = images
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "systemd"))
        .and_then(|i| i["root"].as_str())
        .expect("the image's root")
        .to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("cloud.raw");
    partitioned_disk(&root, &disk);
    d.boot(
        "cloud",
        &format!(
            "[vm.cloud]\nmemory = 512\ndisk = \"{}\"\ninit = \"system\"\n",
            disk.display()
        ),
    );
    assert_eq!(
        sh(&d, "cloud", "findmnt -n -o SOURCE,FSTYPE /"),
        "/dev/vda2 ext4\n"
    );
    assert_eq!(sh(&d, "cloud", "cat /proc/1/comm"), "systemd\n");
    d.ok(&["rm", "-f", "cloud"]);
    assert_eq!(d.qemu_count(), 0);
}

#[test]
fn a_root_without_an_init_and_a_qcow2_without_its_backing_file_are_named() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // A disk of data, not an operating system: no /sbin/init on it.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("root");
    std::fs::write(root.join("etc/hostname"), "data\n").expect("file");
    let noinit = dir.path().join("noinit.raw");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&noinit)
        .arg("64M")
        .output()
        .expect("mkfs.ext4");
    assert!(made.status.success(), "{}", stderr(&made));
    let file = d.write_spec(
        "noinit.toml",
        &format!(
            "[vm.noinit]\ndisk = \"{}\"\ninit = \"system\"\n",
            noinit.display()
        ),
    );
    d.ok(&["create", "-f", file.to_str().expect("utf8")]);
    let out = d.cli(&["start", "noinit"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("/sbin/init") && err.contains("is systemd installed in the image?"),
        "{err}"
    );
    assert_eq!(d.qemu_count(), 0);

    // A qcow2 whose backing file was deleted: named before QEMU starts,
    // and no layer is left for the VM.
    let orphan = dir.path().join("orphan.qcow2");
    let vanished = dir.path().join("vanished.raw");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-u", "-b"])
        .arg(&vanished)
        .arg(&orphan)
        .arg("64M")
        .output()
        .expect("qemu-img");
    assert!(made.status.success(), "{}", stderr(&made));
    let file = d.write_spec(
        "orphan.toml",
        &format!(
            "[vm.orphan]\ndisk = \"{}\"\ninit = \"system\"\n",
            orphan.display()
        ),
    );
    d.ok(&["create", "-f", file.to_str().expect("utf8")]);
    let out = d.cli(&["start", "orphan"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("root disk") && err.contains("vanished.raw"),
        "{err}"
    );
    assert_eq!(d.qemu_count(), 0);
    assert!(!d.state().join("vms/orphan/root.qcow2").exists());
}
