//! Guests that bring their own kernel and initrd and carry no skiff agent
//! (`kernel = { path, initrd }`), as images built for other VMMs do: they
//! boot as they are, count as up when their `ready` check passes, say
//! clearly that exec has no agent to reach, and stop through the ACPI power
//! button. The fast tier runs on the fake backend; the real one boots
//! Debian's own initramfs-tools initrd under QEMU (TCG), with debootstrap
//! (root and a Debian mirror needed).

mod common;

use common::daemon::Daemon;
use common::{free_port, stderr, stdout};
use std::io::Read;
use std::time::{Duration, Instant};

fn recipe(name: &str) -> String {
    format!("{}/../../images/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// A kernel and an initrd as files of the test's own (the fake backend
/// never reads them; they must exist).
fn boot_files(d: &Daemon) -> (String, String) {
    let kernel = d.write_spec("vmlinuz", "not a kernel");
    let initrd = d.write_spec("initrd.img", "not an initrd");
    (kernel.display().to_string(), initrd.display().to_string())
}

#[test]
fn a_guest_without_an_agent_is_ready_by_its_console_and_refuses_exec_clearly() {
    let mut d = Daemon::start_fake_wrapped(&["--boot-timeout".into(), "3".into()], &[]);
    let (kernel, initrd) = boot_files(&d);
    let own = format!("kernel = {{ path = \"{kernel}\", initrd = \"{initrd}\" }}\n");
    // The fake guest prints "[fake guest] ready" on its console once it
    // has booted.
    d.boot(
        "old",
        &format!("[vm.old]\n{own}ready = {{ console = '^\\[fake guest\\] ready$' }}\n"),
    );
    assert_eq!(d.inspect("old")["state"], "running");
    let out = d.cli(&["exec", "old", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("boots its own initrd and has no skiff agent"),
        "{}",
        stderr(&out)
    );
    let into = tempfile::tempdir().expect("tempdir");
    let target = into.path().join("hostname");
    let out = d.cli(&["cp", "old:/etc/hostname", target.to_str().expect("utf8")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("has no skiff agent"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());
    // A new daemon adopts it, and still knows it has no agent.
    d.kill9();
    d.spawn();
    assert_eq!(d.inspect("old")["state"], "running");
    let out = d.cli(&["exec", "old", "--", "true"]);
    assert!(
        stderr(&out).contains("has no skiff agent"),
        "{}",
        stderr(&out)
    );
    // Stop presses the power button (QMP), which the fake guest honours
    // at once: well before the 10 s kill.
    let started = Instant::now();
    d.ok(&["stop", "old"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(d
        .ok(&["logs", "old"])
        .contains("[fake guest] power button: powering off"));
    assert_eq!(d.fake_guests().len(), 0);

    // A pattern that never shows: the boot fails within the daemon's boot
    // timeout, naming what it waited for, and nothing keeps running.
    let spec = d.write_spec(
        "never.toml",
        &format!("[vm.never]\n{own}ready = {{ console = \"never printed\" }}\n"),
    );
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    let started = Instant::now();
    let out = d.cli(&["start", "never"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        err.contains("did not become ready within 3s: no console line matching \"never printed\""),
        "{err}"
    );
    assert!(
        err.contains("| [fake guest] ready"),
        "the console's last lines are shown: {err}"
    );
    d.wait_for("the VM's processes to end", Duration::from_secs(10), || {
        d.fake_guests().is_empty()
    });

    // On a terminal (script(1) gives the CLI one), the boot shows that it
    // moves: the VM, the time spent and the console's last line.
    let out = d.cli_on_terminal("start never");
    let screen = stdout(&out);
    assert!(
        screen
            .split(['\r', '\n'])
            .any(|l| l.contains("booting never (") && l.contains("[fake guest] ready")),
        "a spinner line with the console's last line: {screen:?}"
    );
    assert!(screen.contains("did not become ready"), "{screen}");
    d.wait_for("the VM's processes to end", Duration::from_secs(10), || {
        d.fake_guests().is_empty()
    });

    // A missing initrd is named before anything starts.
    let spec = d.write_spec(
        "gone.toml",
        &format!(
            "[vm.gone]\nkernel = {{ path = \"{kernel}\", initrd = \"/nonexistent/initrd.img\" }}\n"
        ),
    );
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    let out = d.cli(&["start", "gone"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("kernel.initrd /nonexistent/initrd.img is not an existing file"),
        "{}",
        stderr(&out)
    );
    assert!(d.fake_guests().is_empty());
}

/// The ext4 root of a VM's qcow2 layer, as the next boot would find it.
fn filesystem_state(layer: &std::path::Path) -> String {
    let raw = layer.with_extension("raw");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(layer)
        .arg(&raw)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(&raw)
        .output()
        .expect("dumpe2fs");
    let _ = std::fs::remove_file(&raw);
    stdout(&out)
}

#[test]
fn debian_boots_its_own_initramfs_tools_initrd_answers_on_its_port_and_powers_off_cleanly() {
    let d = Daemon::start();
    d.ok(&["image", "build", "-f", &recipe("debian-initrd")]);
    let files = tempfile::tempdir().expect("tempdir");
    let (kernel, initrd) = image_boot_files(&d, "debian-initrd", files.path());
    // Debian's initramfs-tools made it: its boot scripts are in the archive.
    let listing = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{initrd}' | grep -a -c 'scripts/local-top'"
        ))
        .output()
        .expect("bash");
    assert_ne!(stdout(&listing).trim(), "0", "{}", stderr(&listing));
    let port = free_port();
    d.boot(
        "old",
        &format!(
            "[vm.old]\nmemory = 512\nkernel = {{ path = \"{kernel}\", initrd = \"{initrd}\" }}\n\
             disk = {{ image = \"debian-initrd\", persistent = true }}\n\
             network = [{{ mode = \"user\" }}]\nforward_ports = [\"127.0.0.1:{port}:7777\"]\n\
             ready = {{ tcp = 7777 }}\n"
        ),
    );
    // Ready means the guest's service answers: at once, no retries.
    let mut greeting = String::new();
    std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.read_to_string(&mut greeting)
        })
        .expect("the guest's port");
    assert_eq!(greeting, "hello from debian-initrd\n");
    // Its own init came up on its console: systemd's getty.
    d.wait_for("the login prompt", Duration::from_secs(90), || {
        stdout(&d.cli(&["logs", "old"])).contains("debian-initrd login:")
    });
    let logs = d.ok(&["logs", "old"]);
    assert!(logs.contains("Debian GNU/Linux 12"), "{logs}");
    let out = d.cli(&["exec", "old", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("has no skiff agent"),
        "{}",
        stderr(&out)
    );

    // `skiff stop` presses the power button; systemd shuts down cleanly,
    // well before the kill timeout.
    let started = Instant::now();
    d.ok(&["stop", "old"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(45), "stop took {took:?}");
    assert!(
        d.ok(&["logs", "old"]).contains("reboot: Power down"),
        "the guest powered itself off"
    );
    assert_eq!(d.qemu_count(), 0);
    let layer = d.state().join("vms/old/root.qcow2");
    let fs = filesystem_state(&layer);
    assert!(fs.contains("Filesystem state:         clean"), "{fs}");
    let features = fs
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_default();
    assert!(!features.contains("needs_recovery"), "{features}");

    // Ready by its console instead: the getty's prompt (a line without its
    // newline yet).
    d.ok(&["rm", "old"]);
    d.boot(
        "again",
        &format!(
            "[vm.again]\nmemory = 512\nkernel = {{ path = \"{kernel}\", initrd = \"{initrd}\" }}\n\
             disk = {{ image = \"debian-initrd\" }}\nready = {{ console = \"login: *$\" }}\n"
        ),
    );
    assert!(d.ok(&["logs", "again"]).contains("debian-initrd login:"));
    d.ok(&["rm", "--force", "again"]);
    assert_eq!(d.qemu_count(), 0);
}

/// The kernel and initrd of a built image, copied out as files of another
/// VMM's would arrive.
fn image_boot_files(d: &Daemon, image: &str, into: &std::path::Path) -> (String, String) {
    let images: serde_json::Value =
        serde_json::from_str(&d.ok(&["image", "ls", "--json"])).expect("json");
    let root = images
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == image))
        .and_then(|i| i["root"].as_str())
        .expect("the image is listed with its root")
        .to_owned();
    let kernel = into.join("vmlinuz");
    let initrd = into.join("initrd.img");
    std::fs::copy(format!("{root}/boot/vmlinuz"), &kernel).expect("kernel");
    std::fs::copy(format!("{root}/boot/initrd.img"), &initrd).expect("initrd");
    (kernel.display().to_string(), initrd.display().to_string())
}

#[test]
fn an_mvm_contract_guest_gets_its_address_and_three_drives_the_way_mvm_gives_them() {
    let ns = common::netns::NetNs::new("mvm");
    let d = Daemon::start_wrapped(&[], &ns.exec_prefix());
    d.ok(&["image", "build", "-f", &recipe("mvm-guest")]);
    let files = tempfile::tempdir().expect("tempdir");
    let (kernel, initrd) = image_boot_files(&d, "mvm-guest", files.path());
    let token = files.path().join("token");
    std::fs::write(&token, "s3cret").expect("secret");
    d.ok(&["network", "create", "lan", "--subnet", "10.92.1.0/24"]);
    d.boot(
        "m",
        &format!(
            "[vm.m]\nguest = \"mvm\"\nmemory = 512\n\
             kernel = {{ path = \"{kernel}\", initrd = \"{initrd}\" }}\n\
             disk = {{ image = \"mvm-guest\" }}\n\
             network = [{{ mode = \"bridge\", network = \"lan\", address = \"10.92.1.20\" }}]\n\
             secrets = {{ token = {{ file = \"{}\" }} }}\n\
             data = {{ target = \"/mnt/data\", size = \"64M\" }}\n\
             ready = {{ tcp = 7777 }}\n",
            token.display()
        ),
    );
    // The guest's own report, read at its static address from the host
    // side of the managed network.
    let read_report = || {
        let out = ns
            .command("bash")
            .args([
                "-c",
                "exec 3<>/dev/tcp/10.92.1.20/7777 && timeout 10 cat <&3",
            ])
            .output()
            .expect("bash");
        let report = stdout(&out);
        assert!(report.ends_with("end\n"), "{report}{}", stderr(&out));
        report
    };
    // The optional data drive is mounted without holding the boot up
    // (nofail), so it may come a moment after the port answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut report = read_report();
    while !report.contains(" /mnt/data ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        report = read_report();
    }
    let lines: Vec<&str> = report.lines().collect();
    assert!(lines.contains(&"address 10.92.1.20/24"), "{report}");
    let mount = |dir: &str| -> (String, Vec<String>) {
        let line = lines
            .iter()
            .find(|l| l.starts_with("mount ") && l.split(' ').nth(2) == Some(dir))
            .unwrap_or_else(|| {
                panic!(
                    "{dir} is not mounted: {report}\nconsole:\n{}",
                    d.ok(&["logs", "m"])
                )
            });
        let words: Vec<&str> = line.split(' ').collect();
        (
            words[1].to_owned(),
            words[3].split(',').map(str::to_owned).collect(),
        )
    };
    // Device order is mvm's contract: config vdb, secrets vdc, data vdd.
    for (dir, device, mode) in [
        ("/mnt/config", "/dev/vdb", "ro"),
        ("/mnt/secrets", "/dev/vdc", "ro"),
        ("/mnt/data", "/dev/vdd", "rw"),
    ] {
        let (dev, opts) = mount(dir);
        assert_eq!(dev, device, "{dir}: {report}");
        for want in [mode, "noexec", "nosuid", "nodev"] {
            assert!(
                opts.iter().any(|o| o == want),
                "{dir} lacks {want}: {opts:?}"
            );
        }
    }
    assert!(lines.contains(&"secret token 6"), "{report}");
    assert!(lines.contains(&"config instance.json"), "{report}");
    let out = d.cli(&["exec", "m", "--", "true"]);
    assert!(
        stderr(&out).contains("has no skiff agent"),
        "{}",
        stderr(&out)
    );
    let started = Instant::now();
    d.ok(&["stop", "m"]);
    assert!(started.elapsed() < Duration::from_secs(45));
    assert!(d.ok(&["logs", "m"]).contains("reboot: Power down"));
    d.ok(&["rm", "m"]);
    d.ok(&["network", "rm", "lan"]);
}
