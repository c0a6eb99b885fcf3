//! End-to-end tests of the daemon: a real `skiff daemon` on a temporary
//! socket and SQLite file, real VMs.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};
use std::time::{Duration, Instant};

const SERVICE: &str = r#"
[vm.web]
memory = 256
command = "echo service-up; while true; do sleep 1; done"
"#;

#[test]
fn a_vm_from_a_spec_boots_runs_its_service_and_takes_exec() {
    let d = Daemon::start();
    let spec = d.write_spec("web.toml", SERVICE);
    assert_eq!(
        d.ok(&["create", "-f", spec.to_str().expect("utf8")]),
        "created web\n"
    );
    assert_eq!(d.inspect("web")["state"], "created");
    assert_eq!(d.ok(&["start", "web"]), "web running\n");
    d.wait_for(
        "the service output in the logs",
        Duration::from_secs(20),
        || d.ok(&["logs", "web"]).contains("service-up"),
    );

    let out = d.cli(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    let out = d.cli_with_input(&["exec", "web", "--", "cat"], Some(b"piped"));
    assert_eq!(stdout(&out), "piped");

    let listed: serde_json::Value =
        serde_json::from_str(&d.ok(&["ls", "--json"])).expect("ls json");
    assert_eq!(listed[0]["name"], "web");
    assert_eq!(listed[0]["state"], "running");

    // Wrong-state operations are clear errors.
    let out = d.cli(&["start", "web"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("cannot start \"web\": it is running"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["rm", "web"]);
    assert!(
        stderr(&out).contains("stop it first, or use --force"),
        "{}",
        stderr(&out)
    );

    assert_eq!(d.ok(&["stop", "web"]), "web stopped\n");
    assert_eq!(d.qemu_count(), 0, "no QEMU after stop");
    let out = d.cli(&["exec", "web", "--", "true"]);
    assert!(
        stderr(&out).contains("cannot exec in \"web\": it is stopped"),
        "{}",
        stderr(&out)
    );

    d.ok(&["rm", "web"]);
    assert!(!d.state().join("vms/web").exists());
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]");
    let leftover: Vec<_> = std::fs::read_dir(d.runtime().join("vms"))
        .map(|r| r.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(leftover.is_empty(), "runtime files left: {leftover:?}");
}

#[test]
fn invalid_specs_and_duplicate_names_are_refused_with_nothing_created() {
    let d = Daemon::start();
    let bad = d.write_spec("bad.toml", "[vm.web]\nmemory = 0\nvcpus = 999\n[vm.ok]\n");
    let out = d.cli(&["create", "-f", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("vm.web.memory: 0 MiB is below the 64 MiB minimum"),
        "{err}"
    );
    assert!(
        err.contains("vm.web.vcpus: 999 is out of range; allowed: 1 to 255"),
        "{err}"
    );
    assert!(err.contains("HTTP 422"), "{err}");
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]", "nothing was created");

    let good = d.write_spec("good.toml", "[vm.web]\n");
    d.ok(&["create", "-f", good.to_str().expect("utf8")]);
    let out = d.cli(&["create", "-f", good.to_str().expect("utf8")]);
    assert!(
        stderr(&out).contains("a VM named \"web\" already exists")
            && stderr(&out).contains("HTTP 409"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_or_stale_socket_says_how_to_fix_it() {
    let d = Daemon::start();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.env("SKIFF_SOCKET", d.dir.path().join("nothing.sock"))
        .arg("ls");
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no daemon is running; start one with `skiff daemon`"),
        "{}",
        stderr(&out)
    );

    let stale = d.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .env("SKIFF_SOCKET", &stale)
        .arg("ls")
        .output()
        .expect("run");
    assert!(stderr(&out).contains("stale socket"), "{}", stderr(&out));
}

#[test]
fn kill_9_of_the_daemon_keeps_vms_running_and_a_new_daemon_adopts_them() {
    let mut d = Daemon::start();
    d.boot("a", "[vm.a]\n[vm.b]\n[vm.c]\n");
    d.ok(&["start", "b"]);
    d.ok(&["start", "c"]);
    assert_eq!(d.qemu_count(), 3);
    // c's VM dies while no daemon watches.
    let c_qemu = d.inspect("c")["qemu"]["pid"].as_i64().expect("pid") as i32;

    d.kill9();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c_qemu),
        nix::sys::signal::Signal::SIGKILL,
    );
    d.wait_for("c's QEMU to die", Duration::from_secs(10), || {
        process_gone(c_qemu)
    });
    d.spawn();

    assert_eq!(d.inspect("a")["state"], "running");
    assert_eq!(d.inspect("b")["state"], "running");
    let c = d.inspect("c");
    assert_eq!(c["state"], "exited");
    assert!(
        c["note"]
            .as_str()
            .unwrap_or_default()
            .contains("while the daemon was down"),
        "{c}"
    );
    for vm in ["a", "b"] {
        let out = d.cli(&["exec", vm, "--", "echo", vm]);
        assert_eq!(stdout(&out), format!("{vm}\n"), "{}", stderr(&out));
    }
    assert_eq!(d.qemu_count(), 2, "no duplicate QEMU after adoption");
    d.ok(&["rm", "--force", "a", "b", "c"]);
    d.wait_for("every QEMU to go", Duration::from_secs(10), || {
        d.qemu_count() == 0
    });
}

#[test]
fn apply_restarts_exactly_the_vms_that_must_restart() {
    let d = Daemon::start();
    let v1 = d.write_spec("v1.toml", "[vm.a]\nmemory = 256\n[vm.b]\nmemory = 256\nrestart_if_changed = false\n[vm.c]\nmemory = 256\n");
    let out = d.ok(&["apply", "-f", v1.to_str().expect("utf8")]);
    assert_eq!(out, "a created\nb created\nc created\n");
    for vm in ["a", "b", "c"] {
        d.ok(&["start", vm]);
    }
    let v2 = d.write_spec("v2.toml", "[vm.a]\nmemory = 320\n[vm.b]\nmemory = 320\nrestart_if_changed = false\n[vm.c]\nmemory = 256\n");
    let out = d.ok(&["apply", "-f", v2.to_str().expect("utf8")]);
    assert_eq!(
        out,
        "a restarted (memory_mib)\nb updated (memory_mib)\nc unchanged\n"
    );
    assert_eq!(d.inspect("a")["boots"], 2);
    assert_eq!(d.inspect("b")["boots"], 1);
    assert_eq!(d.inspect("c")["boots"], 1);
    // a really runs with its new size.
    let mem = stdout(&d.cli(&[
        "exec",
        "a",
        "--",
        "awk",
        "/MemTotal/ {print $2}",
        "/proc/meminfo",
    ]));
    let kib: u64 = mem.trim().parse().expect("MemTotal");
    assert!(kib > 256 * 1024 && kib <= 320 * 1024, "{kib}");
    d.ok(&["rm", "-f", "a", "b", "c"]);
}

#[test]
fn a_failing_service_is_restarted_by_its_policy_up_to_max_retries() {
    let d = Daemon::start();
    d.boot("flaky", "[vm.flaky]\ncommand = \"echo attempt; sleep 1; exit 1\"\nrestart = { policy = \"on-failure\", max_retries = 2, backoff = \"100ms\" }\n");
    // "exited" with two restarts counted is also the moment before the
    // third boot (the restart is counted when it is decided): wait for the
    // third boot to have ended, then check that nothing more comes.
    d.wait_for("two restarts, then a stop", Duration::from_secs(90), || {
        let v = d.inspect("flaky");
        v["restarts"] == 2 && v["boots"] == 3 && v["state"] == "exited"
    });
    std::thread::sleep(Duration::from_secs(2));
    let v = d.inspect("flaky");
    assert_eq!(
        (v["boots"].as_i64(), v["restarts"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(v["state"], "exited");
    assert_eq!(v["note"], "the service failed");
    assert_eq!(d.qemu_count(), 0);
}

/// What was seen of `vm` at each change of state: the state, the restarts
/// counted then, and when. Polled until `done` holds (or 120 s pass).
fn watch_states(
    d: &Daemon,
    vm: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<(String, i64, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<(String, i64, Instant)> = Vec::new();
    loop {
        let v = d.inspect(vm);
        let state = v["state"].as_str().unwrap_or("").to_owned();
        if seen.last().map(|(s, _, _)| s) != Some(&state) {
            let restarts = v["restarts"].as_i64().unwrap_or(-1);
            seen.push((state, restarts, Instant::now()));
        }
        if done(&v) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{vm} went through {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn restart_policies_back_off_doubling_up_to_the_cap_and_survive_adoption() {
    let mut d = Daemon::start();
    let spec = d.write_spec(
        "policies.toml",
        "[vm.never]\ncommand = \"exit 1\"\nrestart = \"no\"\n\
         [vm.bouncy]\ncommand = \"exit 0\"\nrestart = { policy = \"always\", backoff = \"1s\", max_backoff = \"2s\" }\n\
         [vm.adopted]\ncommand = \"sleep 600\"\nrestart = { policy = \"always\", backoff = \"100ms\" }\n",
    );
    d.ok(&["apply", "-f", spec.to_str().expect("utf8")]);
    for vm in ["never", "adopted", "bouncy"] {
        d.ok(&["start", vm]);
    }
    // `always` restarts a service that succeeded. The wait between an end
    // and the boot that is restart N is 1 s doubled N-1 times, capped at
    // 2 s: 1 s, 2 s, 2 s (not 4 s), 2 s. A wait counts only when its start
    // was seen (the first end may come before the first look).
    // (Each boot runs for a blink before its service ends: the poll may
    // miss a `running`, so the count alone says when enough was seen.)
    let seen = watch_states(&d, "bouncy", |v| v["restarts"].as_i64() >= Some(4));
    let waits: Vec<(i64, f64)> = seen
        .windows(3)
        .filter(|w| w[1].0 == "exited" && w[0].0 != "exited")
        .map(|w| (w[2].1, (w[2].2 - w[1].2).as_secs_f64()))
        .collect();
    assert!(
        waits.iter().filter(|(n, _)| *n >= 3).count() >= 2,
        "capped waits seen: {waits:?} ({seen:?})"
    );
    for (restart, wait) in &waits {
        let expected = (1u64 << (restart - 1).clamp(0, 8)).min(2) as f64;
        // Polling adds up to ~0.1 s; the cleanup before the wait, a little.
        assert!(
            *wait >= expected - 0.1 && *wait < expected + 1.4,
            "restart {restart} came after {wait:.2} s, not {expected} s: {waits:?}"
        );
    }
    // `no`: one boot, ended, never again.
    let never = d.inspect("never");
    assert_eq!(
        (
            never["state"].as_str(),
            never["boots"].as_i64(),
            never["restarts"].as_i64()
        ),
        (Some("exited"), Some(1), Some(0)),
        "{never}"
    );
    assert_eq!(never["note"], "the service failed");
    d.ok(&["rm", "-f", "bouncy", "never"]);

    // A VM adopted by a new daemon is still watched: when it ends, its
    // policy restarts it.
    d.kill9();
    d.spawn();
    assert_eq!(
        d.inspect("adopted")["note"],
        "adopted after a daemon restart"
    );
    let _ = d.cli(&["exec", "adopted", "--", "poweroff", "-f"]);
    watch_states(&d, "adopted", |v| {
        v["boots"] == 2 && v["state"] == "running"
    });
    assert_eq!(d.inspect("adopted")["restarts"], 1);
    d.ok(&["rm", "-f", "adopted"]);
    assert_eq!(d.qemu_count(), 0);
}

#[test]
fn the_tcp_listener_requires_the_bearer_token() {
    use std::io::{Read, Write};
    let token_dir = tempfile::tempdir().expect("tempdir");
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").expect("token");
    let port = common::free_port();
    let args = vec![
        "--listen-tcp".to_owned(),
        format!("127.0.0.1:{port}"),
        "--token-file".to_owned(),
        token_file.display().to_string(),
    ];
    let _d = Daemon::start_with(&args);
    let get = |auth: Option<&str>| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /v1/vms HTTP/1.1\r\nHost: skiff\r\n{auth}Connection: close\r\n\r\n"
        )
        .expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        resp
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TCP listener did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let denied = get(None);
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    assert!(denied.contains("bearer token"), "{denied}");
    assert!(get(Some("wrong-token-0123456789")).starts_with("HTTP/1.1 401"));
    let ok = get(Some("s3cret-token-0123456789"));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("[]"), "{ok}");
}

#[test]
fn shell_runs_on_a_terminal_with_its_size_and_ctrl_c_reaches_the_guest() {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, Mutex};

    let d = Daemon::start();
    d.boot("box", "[vm.box]\n");

    let size = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let stdio = |fd: &OwnedFd| std::process::Stdio::from(fd.try_clone().expect("dup"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.env("SKIFF_SOCKET", d.socket()).args(["shell", "box"]);
    cmd.stdin(stdio(&pty.slave))
        .stdout(stdio(&pty.slave))
        .stderr(stdio(&pty.slave));
    let mut child = cmd.spawn().expect("spawn skiff shell");
    drop(pty.slave);

    let mut master = std::fs::File::from(pty.master);
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut reader = master.try_clone().expect("clone master");
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    let wait = |what: &str| {
        d.wait_for(
            &format!("{what:?} on the terminal"),
            Duration::from_secs(20),
            || text().contains(what),
        );
    };

    master
        .write_all(b"stty size; echo mark-$((6*7))\n")
        .expect("write");
    wait("mark-42");
    assert!(
        text().contains("30 100"),
        "the guest terminal has the local size: {}",
        text()
    );

    // Ctrl-C interrupts the foreground command in the guest, not skiff.
    // The marker is computed by the guest shell, so the terminal's echo of
    // the typed line cannot match it; once it shows, `sleep` is starting.
    master
        .write_all(b"echo sleep-$((2+3)); sleep 600\n")
        .expect("write");
    wait("sleep-5");
    // Ctrl-C must find `sleep` in the foreground: wait until the guest
    // runs it (seen from a second exec session).
    d.wait_for("sleep in the guest", Duration::from_secs(20), || {
        d.cli(&[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "ps | grep -q '[s]leep 600'",
        ])
        .status
        .success()
    });
    master.write_all(b"\x03").expect("ctrl-c");
    master.write_all(b"echo after-$((1+1))\n").expect("write");
    wait("after-2");

    master.write_all(b"exit 5\n").expect("write");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(5), "{}", text());
    d.ok(&["rm", "-f", "box"]);
}

#[test]
fn autostart_vms_come_up_when_the_daemon_starts() {
    let mut d = Daemon::start();
    let spec = d.write_spec("auto.toml", "[vm.auto]\nautostart = true\n[vm.manual]\n");
    assert_eq!(
        d.ok(&["apply", "-f", spec.to_str().expect("utf8")]),
        "auto created\nmanual created\n"
    );
    assert_eq!(
        d.inspect("auto")["state"],
        "running",
        "apply starts a new autostart VM"
    );
    assert_eq!(d.inspect("manual")["state"], "created");

    // The host "reboots": daemon and VM gone.
    let qemu = d.inspect("auto")["qemu"]["pid"].as_i64().expect("pid") as i32;
    d.kill9();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    );
    d.wait_for("the VM to die", Duration::from_secs(10), || {
        process_gone(qemu)
    });
    d.spawn();
    d.wait_for("auto to be running again", Duration::from_secs(60), || {
        d.inspect("auto")["state"] == "running"
    });
    let auto = d.inspect("auto");
    assert_eq!(auto["boots"], 2, "{auto}\n{}", d.log());
    assert_eq!(
        d.inspect("manual")["state"],
        "created",
        "VMs without autostart stay down"
    );
    let out = d.cli(&["exec", "auto", "--", "echo", "up"]);
    assert_eq!(stdout(&out), "up\n");
    d.ok(&["rm", "-f", "auto", "manual"]);
}

/// True once `pid` has exited (gone, or a zombie): a process being killed
/// loses its command line before it is dead, so counting by command line
/// is not enough.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                == Some("Z")
        }
    }
}

#[test]
fn logs_follow_streams_new_service_output() {
    use std::io::BufRead;
    let d = Daemon::start();
    d.boot("ticker", "[vm.ticker]\ncommand = \"i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done\"\n");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .env("SKIFF_SOCKET", d.socket())
        .args(["logs", "-f", "ticker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn logs -f");
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ticks = Vec::new();
    for line in lines {
        let line = line.expect("line");
        if let Some(n) = line
            .trim()
            .strip_prefix("tick-")
            .and_then(|n| n.parse::<u32>().ok())
        {
            ticks.push(n);
            if ticks.len() == 5 {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ticks.len(), 5);
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none lost: {ticks:?}"
    );
    d.ok(&["rm", "-f", "ticker"]);
}
