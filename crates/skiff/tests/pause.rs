//! End-to-end tests of pausable VMs: the agent over a virtio-serial port
//! (several connections multiplexed on it), and pause/resume with QEMU.

mod common;

use common::daemon::Daemon;
use common::stdout;

const SPEC: &str = "[vm.p]\npausable = true\nmemory = \"256M\"\n";

#[test]
fn a_pausable_vm_answers_exec_cp_and_concurrent_commands_over_its_serial_port() {
    let d = Daemon::start();
    d.boot("p", SPEC);
    let cmdline = stdout(&d.cli(&["exec", "p", "--", "cat", "/proc/cmdline"]));
    assert!(cmdline.contains("skiff.transport=serial"), "{cmdline}");
    // A virtio console device (id 3) and no vsock device (id 19).
    let ids = stdout(&d.cli(&[
        "exec",
        "p",
        "--",
        "sh",
        "-c",
        "cat /sys/bus/virtio/devices/*/device",
    ]));
    assert!(ids.lines().any(|l| l == "0x0003"), "{ids}");
    assert!(!ids.lines().any(|l| l == "0x0013"), "{ids}");

    // A megabyte each way through the multiplexer, byte for byte.
    let input: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = d.cli_with_input(&["exec", "-i", "p", "--", "sha256sum"], Some(&input));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let want = common::sha256_hex(&input);
    assert!(stdout(&out).starts_with(&want), "{}", stdout(&out));
    let out = d.cli(&[
        "exec",
        "p",
        "--",
        "sh",
        "-c",
        "head -c 3000000 /dev/zero | tr '\\0' x",
    ]);
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'x'));

    // Several commands at once share the port; each gets its own output
    // and exit code.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let args: Vec<String> = [
                "exec",
                "p",
                "--",
                "sh",
                "-c",
                &format!("sleep 1; echo job{i}; exit {i}"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut cmd = d.command();
            cmd.args(&args);
            std::thread::spawn(move || cmd.output().expect("exec"))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().expect("thread");
        assert_eq!(out.status.code(), Some(i as i32), "{out:?}");
        assert_eq!(stdout(&out), format!("job{i}\n"));
    }

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("f.bin");
    std::fs::write(&file, &input[..200_000]).expect("write");
    d.ok(&["cp", file.to_str().expect("utf8"), "p:/tmp/f.bin"]);
    let back = dir.path().join("back.bin");
    d.ok(&["cp", "p:/tmp/f.bin", back.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(&back).expect("read"), &input[..200_000]);
    d.ok(&["rm", "-f", "p"]);
}

/// `sh -c SCRIPT` in the VM; its stdout.
fn sh(d: &Daemon, script: &str) -> String {
    d.ok(&["exec", "p", "--", "sh", "-c", script])
}

#[test]
fn pause_and_resume_three_times_keep_processes_memory_and_files() {
    let d = Daemon::start();
    d.boot("p", SPEC);
    sh(&d, "echo kept > /root/keep.txt");
    // A counter that lives only in a process's memory; it writes each
    // value out, so the test can see it go on from where it was.
    sh(
        &d,
        "setsid sh -c 'n=0; while :; do n=$((n+1)); echo $n > /tmp/count; sleep 0.2; done' \
         </dev/null >/dev/null 2>&1 & echo $! > /tmp/pid",
    );
    let pid = sh(&d, "cat /tmp/pid");
    let snapshot = d.state().join("vms/p/paused/state.bin");
    for round in 0..3 {
        let before: u64 = sh(&d, "cat /tmp/count").trim().parse().expect("count");
        assert_eq!(d.ok(&["pause", "p"]), "p paused\n", "round {round}");
        assert_eq!(d.inspect("p")["state"], "paused");
        assert_eq!(d.qemu_count(), 0, "a paused VM has no QEMU");
        // Long enough that a clock left behind would show.
        std::thread::sleep(std::time::Duration::from_secs(4));
        assert!(snapshot.exists() && common::path_len(&snapshot) > 1 << 20);
        let refused = d.cli(&["exec", "p", "--", "true"]);
        assert_ne!(refused.status.code(), Some(0));
        assert!(
            common::stderr(&refused).contains("it is paused; resume it with `skiff resume`")
                && common::stderr(&refused).contains("sleep_after"),
            "{}",
            common::stderr(&refused)
        );
        assert_eq!(d.ok(&["resume", "p"]), "p running\n", "round {round}");
        assert_eq!(d.qemu_count(), 1);
        let after: u64 = sh(&d, "cat /tmp/count").trim().parse().expect("count");
        assert!(after >= before, "round {round}: {after} < {before}");
        assert_eq!(sh(&d, "cat /tmp/pid"), pid);
        assert_eq!(
            sh(&d, &format!("kill -0 {} && echo alive", pid.trim())),
            "alive\n"
        );
        assert_eq!(sh(&d, "cat /root/keep.txt"), "kept\n");
        // The guest's clock was set forward past the pause.
        let guest: i64 = sh(&d, "date +%s").trim().parse().expect("date");
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs() as i64;
        assert!((guest - host).abs() <= 2, "guest {guest}, host {host}");
    }
    // The counter goes on counting after the last resume.
    let a: u64 = sh(&d, "cat /tmp/count").trim().parse().expect("count");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let b: u64 = sh(&d, "cat /tmp/count").trim().parse().expect("count");
    assert!(b > a, "{b} <= {a}");

    // A damaged snapshot is refused and the VM stays paused; stop discards it.
    d.ok(&["pause", "p"]);
    let len = common::path_len(&snapshot);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&snapshot)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    let out = d.cli(&["resume", "p"]);
    assert_ne!(out.status.code(), Some(0));
    let err = common::stderr(&out);
    assert!(
        err.contains("damaged") && err.contains("stays paused"),
        "{err}"
    );
    assert_eq!(d.inspect("p")["state"], "paused");
    assert_eq!(d.qemu_count(), 0);
    assert_eq!(d.ok(&["stop", "p"]), "p stopped\n");
    assert!(!snapshot.exists());
    d.ok(&["start", "p"]);
    assert_eq!(sh(&d, "echo fresh"), "fresh\n");
    d.ok(&["rm", "-f", "p"]);
}

#[test]
fn a_daemon_killed_while_paused_or_resuming_leaves_the_vm_paused_or_running() {
    let mut d = Daemon::start();
    d.boot("p", SPEC);
    sh(
        &d,
        "setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & echo $! > /tmp/pid",
    );
    d.ok(&["pause", "p"]);
    // Killed while paused: the new daemon keeps it paused.
    d.kill9();
    d.spawn();
    assert_eq!(d.inspect("p")["state"], "paused", "{}", d.log());
    // Killed in the middle of a resume (wherever it got to).
    let mut resume = d.command();
    resume.args(["resume", "p"]);
    let mut resuming = resume.spawn().expect("resume");
    std::thread::sleep(std::time::Duration::from_millis(150));
    d.kill9();
    let _ = resuming.wait();
    d.spawn();
    let state = d.inspect("p")["state"].as_str().unwrap_or("").to_owned();
    match state.as_str() {
        "running" => {}
        "paused" => {
            assert_eq!(d.qemu_count(), 0);
            d.ok(&["resume", "p"]);
        }
        other => panic!("the VM is {other}; daemon log:\n{}", d.log()),
    }
    assert_eq!(d.qemu_count(), 1);
    let ps = sh(&d, "ps");
    assert!(ps.contains("while :; do sleep 1"), "{ps}\n{}", d.log());
    d.ok(&["rm", "-f", "p"]);
    assert_eq!(d.qemu_count(), 0);
}

#[test]
fn what_cannot_be_paused_or_resumed_is_refused_clearly() {
    let d = Daemon::start_fake();
    d.boot("plain", "[vm.plain]\n");
    let out = d.cli(&["pause", "plain"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = common::stderr(&out);
    assert!(
        err.contains("not started as a pausable VM") && err.contains("pausable = true"),
        "{err}"
    );
    assert_eq!(d.inspect("plain")["state"], "running");
    let out = d.cli(&["resume", "plain"]);
    assert!(
        common::stderr(&out).contains("cannot resume \"plain\": it is running"),
        "{}",
        common::stderr(&out)
    );
    d.ok(&["stop", "plain"]);
    let out = d.cli(&["pause", "plain"]);
    assert!(
        common::stderr(&out).contains("it is stopped"),
        "{}",
        common::stderr(&out)
    );
    // Shares cannot be saved by QEMU: the spec says so before anything runs.
    let dir = tempfile::tempdir().expect("tmp");
    let spec = d.write_spec(
        "shared.toml",
        &format!(
            "[vm.shared]\npausable = true\n[[vm.shared.shares]]\nsource = \"{}\"\ntarget = \"/mnt\"\n",
            dir.path().display()
        ),
    );
    let out = d.cli(&["create", "-f", spec.to_str().expect("utf8")]);
    assert_ne!(out.status.code(), Some(0));
    let err = common::stderr(&out);
    assert!(
        err.contains("pausable VM cannot share host directories"),
        "{err}"
    );
    assert!(d.cli(&["inspect", "shared"]).status.code() != Some(0));
}

#[test]
fn a_sleeping_pool_keeps_its_sandboxes_paused_and_a_take_wakes_one() {
    let d = Daemon::start();
    d.ok(&[
        "pool",
        "create",
        "naps",
        "--size",
        "2",
        "--pausable",
        "--awake",
        "0",
        "--sleep-after",
        "2",
        "--memory",
        "128",
    ]);
    let pool = || -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(&d.ok(&["pool", "ls", "--json"])).expect("json");
        all[0].clone()
    };
    d.wait_for(
        "two sleeping sandboxes",
        std::time::Duration::from_secs(240),
        || pool()["sleeping"] == 2,
    );
    assert_eq!(pool()["ready"], 0);
    assert_eq!(d.qemu_count(), 0, "sleeping sandboxes have no QEMU");
    let vm = d.ok(&["pool", "take", "naps"]).trim().to_owned();
    assert_eq!(d.inspect(&vm)["state"], "running");
    assert_eq!(
        d.ok(&["exec", &vm, "--", "sh", "-c", "echo awake | tee /root/mark"]),
        "awake\n"
    );
    // A taken sandbox nobody uses falls asleep (--sleep-after), and its
    // next exec wakes it.
    d.wait_for(
        "the taken sandbox to sleep",
        std::time::Duration::from_secs(60),
        || d.inspect(&vm)["state"] == "paused",
    );
    assert_eq!(d.ok(&["exec", &vm, "--", "cat", "/root/mark"]), "awake\n");
    // The pool refills to two sleepers; the taken one stays taken.
    d.wait_for(
        "the pool refilled",
        std::time::Duration::from_secs(240),
        || pool()["sleeping"] == 2,
    );
    assert_eq!(pool()["taken"], 1);
    // Awake or sleep-after without pausable is refused.
    for flag in ["--awake", "--sleep-after"] {
        let out = d.cli(&["pool", "create", "x", flag, "1"]);
        assert_ne!(out.status.code(), Some(0));
        assert!(common::stderr(&out).contains("--pausable"), "{out:?}");
    }
    d.ok(&["rm", "-f", &vm]);
    d.ok(&["pool", "rm", "naps"]);
}

#[test]
fn an_idle_vm_falls_asleep_and_wakes_when_used() {
    let d = Daemon::start();
    d.boot(
        "s",
        "[vm.s]\npausable = true\nsleep_after = \"2s\"\nmemory = \"256M\"\n",
    );
    d.ok(&["exec", "s", "--", "sh", "-c", "echo kept > /root/keep.txt"]);
    // In use while a command runs, however much longer than the period.
    let out = d.cli(&["exec", "s", "--", "sh", "-c", "sleep 5; echo done"]);
    assert_eq!(stdout(&out), "done\n", "{out:?}");
    assert_eq!(d.inspect("s")["state"], "running");
    assert_eq!(d.qemu_count(), 1);
    d.wait_for(
        "the idle VM to sleep",
        std::time::Duration::from_secs(60),
        || d.inspect("s")["state"] == "paused",
    );
    assert_eq!(d.qemu_count(), 0, "an asleep VM has no QEMU");
    let note = d.inspect("s")["note"].as_str().unwrap_or("").to_owned();
    assert!(note.contains("asleep after 2 s idle"), "{note}");
    // An exec wakes it, with its files; so does a copy.
    assert_eq!(
        d.ok(&["exec", "s", "--", "cat", "/root/keep.txt"]),
        "kept\n"
    );
    assert_eq!(d.inspect("s")["state"], "running");
    d.wait_for(
        "the VM to sleep again",
        std::time::Duration::from_secs(60),
        || d.inspect("s")["state"] == "paused",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let back = dir.path().join("keep.txt");
    d.ok(&["cp", "s:/root/keep.txt", back.to_str().expect("utf8")]);
    assert_eq!(std::fs::read_to_string(&back).expect("read"), "kept\n");
    d.ok(&["rm", "-f", "s"]);
    assert_eq!(d.qemu_count(), 0);
}
