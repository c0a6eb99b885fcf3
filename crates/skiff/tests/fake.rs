//! The fast tier: a real `skiff daemon` (real API, real SQLite, real
//! process supervision and cgroups) on the fake backend, whose VMs are
//! `skiff-fake-vm` processes that speak the agent protocol. Lifecycle,
//! restart policies, adoption after `kill -9` and `skiff run` through the
//! daemon, pools, the reverse proxy and health checks, in seconds, without
//! booting anything. The same behaviours on real VMs are in daemon.rs,
//! run.rs, pools.rs and proxy.rs.

mod common;

use common::daemon::Daemon;
use common::netns::NetNs;
use common::{stderr, stdout};
use std::time::{Duration, Instant};

#[test]
fn lifecycle_exec_and_illegal_transitions() {
    let d = Daemon::start_fake();
    d.boot("box", "[vm.box]\n");
    assert_eq!(d.inspect("box")["state"], "running");
    assert_eq!(d.fake_guests().len(), 1);
    // The daemon's state is its owner's only.
    let mode = |p: std::path::PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o7777;
        (p.file_name().map(|n| n.to_string_lossy().into_owned()), m)
    };
    for (path, want) in [
        (d.state(), 0o700),
        (d.state().join("state.db"), 0o600),
        (d.state().join("vms"), 0o700),
        (d.state().join("vms/box/console.log"), 0o600),
        (d.runtime(), 0o700),
    ] {
        let (name, got) = mode(path);
        assert_eq!(got, want, "{name:?} is {got:o}");
    }

    let out = d.cli(&["exec", "box", "--", "echo", "hello", "fake"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello fake\n");
    assert_eq!(
        d.cli(&["exec", "box", "--", "exit", "9"]).status.code(),
        Some(9)
    );
    // A reader that goes away ends an endless command as a pipeline's
    // writer ends: with SIGPIPE's status, the guest's command stopped.
    let pipeline = format!(
        "{} timeout 20 {} exec box -- zeros | head -c 1000 | wc -c; echo ${{PIPESTATUS[0]}}",
        d.shell_env(),
        env!("CARGO_BIN_EXE_skiff")
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &pipeline])
        .output()
        .expect("bash");
    assert_eq!(stdout(&out), "1000\n141\n", "{}", stderr(&out));

    // `skiff cp` out of a hostile guest: entries beside the item asked for
    // are refused and nothing lands; an honest file loses its setuid bit.
    let home = tempfile::tempdir().expect("tempdir");
    let dest = home.path().to_str().expect("utf8");
    let out = d.cli(&["cp", "box:/hostile/proj", dest]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("only \"proj\", the item asked for"),
        "{}",
        stderr(&out)
    );
    assert!(
        !home.path().join(".bashrc").exists(),
        "the guest wrote ~/.bashrc"
    );
    d.ok(&["cp", "box:/tmp/ok.txt", dest]);
    let copied = home.path().join("ok.txt");
    assert_eq!(std::fs::read(&copied).expect("copied"), b"fine\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&copied)
        .expect("meta")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755, "setuid dropped");

    // Each transition the lifecycle refuses is a clear error.
    let out = d.cli(&["start", "box"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("cannot start \"box\": it is running"),
        "{}",
        stderr(&out)
    );

    assert_eq!(d.ok(&["stop", "box"]), "box stopped\n");
    let rec = d.inspect("box");
    assert_eq!(rec["state"], "stopped");
    assert_eq!(rec["note"], "stopped on request");
    assert!(d.fake_guests().is_empty(), "{:?}", d.fake_guests());
    let out = d.cli(&["stop", "box"]);
    assert!(
        stderr(&out).contains("cannot stop \"box\": it is stopped"),
        "{}",
        stderr(&out)
    );
    let out = d.cli(&["exec", "box", "--", "echo", "x"]);
    assert_eq!(out.status.code(), Some(125));

    // Started again: a second boot, same VM.
    d.ok(&["start", "box"]);
    assert_eq!(d.inspect("box")["boots"], 2);
    // A stop timeout too large for a deadline is clamped, not a crash.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg("--unix-socket")
        .arg(d.socket())
        .arg("http://skiff/v1/vms/box/stop?timeout=18446744073709551615")
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(d.inspect("box")["state"], "stopped");
    d.ok(&["start", "box"]);
    d.ok(&["rm", "--force", "box"]);
    assert!(d.fake_guests().is_empty());
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn restart_policies_follow_the_service_outcome() {
    let d = Daemon::start_fake();
    d.boot(
        "flaky",
        "[vm.flaky]\ncommand = [\"exit\", \"3\"]\nrestart = { policy = \"on-failure\", max_retries = 2, backoff = \"100ms\" }\n",
    );
    d.wait_for("two restarts, then exited", Duration::from_secs(30), || {
        let rec = d.inspect("flaky");
        rec["restarts"] == 2 && rec["state"] == "exited"
    });
    std::thread::sleep(Duration::from_secs(1));
    let rec = d.inspect("flaky");
    assert_eq!(rec["restarts"], 2, "no restart beyond max_retries");
    assert_eq!(rec["boots"], 3);
    assert_eq!(rec["note"], "the service failed");

    d.boot(
        "done",
        "[vm.done]\ncommand = [\"exit\", \"0\"]\nrestart = { policy = \"on-failure\", backoff = \"100ms\" }\n",
    );
    d.wait_for("the service to end", Duration::from_secs(10), || {
        d.inspect("done")["state"] == "exited"
    });
    std::thread::sleep(Duration::from_secs(1));
    let rec = d.inspect("done");
    assert_eq!(rec["note"], "the service exited successfully");
    assert_eq!(rec["restarts"], 0, "a success is not restarted on-failure");
}

#[test]
fn runs_are_ephemeral_vms_that_a_new_daemon_removes() {
    let mut d = Daemon::start_fake();
    // A run through the daemon: the command's output and exit code.
    let out = d.cli(&["run", "--", "echo", "from", "a", "run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from a run\n");
    assert_eq!(d.cli(&["run", "--", "exit", "4"]).status.code(), Some(4));
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]", "runs leave no VM");
    assert!(d.fake_guests().is_empty());

    // A run in progress shows in `ls` as an ephemeral VM.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.env("SKIFF_SOCKET", d.socket())
        .env("SKIFF_STATE_DIR", d.state())
        .env("SKIFF_RUNTIME_DIR", d.runtime())
        .args(["run", "-q", "--", "sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut client = cmd.spawn().expect("skiff run");
    d.wait_for("the run's VM in ls", Duration::from_secs(20), || {
        let listed: serde_json::Value =
            serde_json::from_str(&d.ok(&["ls", "--json"])).expect("ls json");
        listed[0]["ephemeral"] == true && listed[0]["state"] == "running"
    });
    // Another VM, which must survive the daemon's death.
    d.boot("keep", "[vm.keep]\n");
    let keep_pid = d.inspect("keep")["qemu"]["pid"].clone();

    // The daemon dies; the client loses its connection; a new daemon
    // removes the run's VM and adopts the other.
    d.kill9();
    let _ = client.wait();
    d.spawn();
    d.wait_for("the run's VM removed", Duration::from_secs(10), || {
        let listed: serde_json::Value =
            serde_json::from_str(&d.ok(&["ls", "--json"])).expect("ls json");
        listed.as_array().is_some_and(|a| a.len() == 1)
    });
    let keep = d.inspect("keep");
    assert_eq!(keep["state"], "running");
    assert_eq!(keep["note"], "adopted after a daemon restart");
    assert_eq!(keep["qemu"]["pid"], keep_pid, "the same process, adopted");
    assert_eq!(d.fake_guests().len(), 1, "{:?}", d.fake_guests());
    assert_eq!(
        d.ok(&["exec", "keep", "--", "echo", "still", "here"]),
        "still here\n"
    );
}

#[test]
fn pools_keep_fake_sandboxes_ready_hand_each_out_once_and_refill() {
    let d = Daemon::start_fake();
    let ready = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&d.ok(&["pool", "ls", "--json"])).expect("json");
        v[0]["ready"].as_u64().unwrap_or(0)
    };
    d.ok(&["pool", "create", "sb", "--size", "2", "--ttl", "60"]);
    d.wait_for("two ready sandboxes", Duration::from_secs(20), || {
        ready() == 2
    });
    assert_eq!(d.fake_guests().len(), 2);

    // A command in a sandbox of the pool; the sandbox is destroyed after.
    let out = d.cli(&["run", "--pool", "sb", "--", "echo", "pooled"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "pooled\n");
    let out = d.cli(&["run", "--pool", "sb", "--", "exit", "3"]);
    assert_eq!(out.status.code(), Some(3));

    // Takes hand out distinct sandboxes; the keeper refills the pool.
    let a = d.ok(&["pool", "take", "sb"]);
    let b = d.ok(&["pool", "take", "sb"]);
    assert_ne!(a, b, "a sandbox is never handed out twice");
    d.wait_for("the pool refilled", Duration::from_secs(20), || {
        ready() == 2
    });
    assert_eq!(d.fake_guests().len(), 4, "two taken, two ready");
    // The pool's gauges, as Prometheus scrapes them (curl on the socket).
    let metrics = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(d.socket())
        .arg("http://skiff/metrics")
        .output()
        .expect("curl metrics");
    let text = String::from_utf8_lossy(&metrics.stdout).into_owned();
    for line in [
        "skiff_pool_size{pool=\"sb\"} 2",
        "skiff_pool_sandboxes{pool=\"sb\",state=\"ready\"} 2",
        "skiff_pool_sandboxes{pool=\"sb\",state=\"taken\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in: {text}");
    }
    // Boots and commands are timed by kind, not by VM: four sandboxes
    // booted, and the pool run's command ended.
    let count = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("skiff_boot_duration_seconds_count{init=\"agent\"}") >= 4,
        "{text}"
    );
    let commands: u64 = ["exec", "run", "commands"]
        .iter()
        .map(|api| {
            count(&format!(
                "skiff_exec_duration_seconds_count{{api=\"{api}\"}}"
            ))
        })
        .sum();
    assert!(commands >= 1, "{text}");
    assert!(
        !text.contains("skiff_boot_duration_seconds_bucket{vm="),
        "no per-VM boot series"
    );

    d.ok(&["pool", "rm", "sb"]);
    for name in [a.trim(), b.trim()] {
        d.ok(&["rm", "--force", name]);
    }
    d.wait_for("no fake VM left", Duration::from_secs(10), || {
        d.fake_guests().is_empty()
    });
}

#[test]
fn apply_creates_then_restarts_exactly_what_changed() {
    let d = Daemon::start_fake();
    let file = d.write_spec("two.toml", "[vm.a]\nautostart = true\n[vm.b]\n");
    let file = file.to_str().expect("utf8");
    assert_eq!(d.ok(&["apply", "-f", file]), "a created\nb created\n");
    assert_eq!(d.inspect("a")["state"], "running", "autostart boots it");
    assert_eq!(d.inspect("b")["state"], "created");
    assert_eq!(d.ok(&["apply", "-f", file]), "a unchanged\nb unchanged\n");

    d.write_spec(
        "two.toml",
        "[vm.a]\nautostart = true\nmemory = \"512M\"\n[vm.b]\n",
    );
    assert_eq!(
        d.ok(&["apply", "-f", file]),
        "a restarted (memory_mib)\nb unchanged\n"
    );
    let a = d.inspect("a");
    assert_eq!(a["state"], "running");
    assert_eq!(a["boots"], 2);
    assert_eq!(a["spec"]["memory_mib"], 512);
    // A spec the daemon refuses changes nothing.
    d.write_spec("two.toml", "[vm.a]\nmemory = \"1K\"\n");
    let out = d.cli(&["apply", "-f", file]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(d.inspect("a")["spec"]["memory_mib"], 512);
}

/// The proxy's answer for app.test over plain HTTP in `ns`: status and body.
fn proxied(ns: &NetNs, host: &str) -> (String, String) {
    let out = ns
        .command("curl")
        .args(["-sS", "-m", "5", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {host}"))
        .arg("http://127.0.0.1:18091/healthz")
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, code)) => (code.to_owned(), body.to_owned()),
        None => (text, String::new()),
    }
}

/// Health checks (root: a managed network in a namespace of the test's).
/// A VM that fails its check is marked unhealthy, the proxy answers 503
/// for it, and its restart policy decides: "always" restarts it (healthy
/// again), "no" leaves it unhealthy.
#[test]
fn failing_health_checks_give_503_and_restart_by_policy() {
    let ns = NetNs::new("f");
    let flags: Vec<String> = ["--http-listen", "127.0.0.1:18091"]
        .map(String::from)
        .to_vec();
    let d = Daemon::start_fake_wrapped(&flags, &ns.exec_prefix());
    d.ok(&["network", "create", "web", "--subnet", "10.97.0.0/24"]);
    for (name, policy) in [("healed", "always"), ("steady", "no")] {
        d.boot(
            name,
            &format!(
                "[vm.{name}]\nnetwork = {{ mode = \"bridge\", network = \"web\" }}\ncommand = [\"http\", \"8080\"]\nrestart = \"{policy}\"\n[vm.{name}.http]\ndomains = [\"{name}.test\"]\nport = 8080\nhealth = {{ path = \"/healthz\", interval = \"200ms\", unhealthy_after = 2 }}\n"
            ),
        );
    }
    for name in ["healed", "steady"] {
        let host = format!("{name}.test");
        d.wait_for(
            "the fake service behind the proxy",
            Duration::from_secs(10),
            || proxied(&ns, &host).0 == "200",
        );
        let (_, body) = proxied(&ns, &host);
        assert!(body.starts_with("fake service on 10.97.0."), "{body}");
    }

    for name in ["healed", "steady"] {
        d.ok(&["exec", name, "--", "unhealthy"]);
    }
    // "no": unhealthy for good, the proxy says so, nothing restarts it.
    d.wait_for(
        "steady to be marked unhealthy",
        Duration::from_secs(10),
        || proxied(&ns, "steady.test").0 == "503",
    );
    let (_, page) = proxied(&ns, "steady.test");
    assert!(
        page.contains("VM steady is failing its health check"),
        "{page}"
    );
    // "always": restarted (a new guest, healthy), then served again.
    d.wait_for("healed to be restarted", Duration::from_secs(10), || {
        d.inspect("healed")["restarts"].as_i64().unwrap_or(0) >= 1
    });
    d.wait_for("healed to be served again", Duration::from_secs(10), || {
        proxied(&ns, "healed.test").0 == "200"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(proxied(&ns, "steady.test").0, "503");
    assert_eq!(d.inspect("steady")["restarts"], 0);
    assert_eq!(d.inspect("steady")["state"], "running");
    assert!(d.log().contains("unhealthy"), "{}", d.log());
    d.ok(&["rm", "--force", "healed", "steady"]);
    d.ok(&["network", "rm", "web"]);
}

/// Raise this process's soft open-files limit (the test holds thousands
/// of sockets); the daemon raises its own the same way.
fn raise_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only touch the struct that lives here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max.min(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The proxy header timeout of the test below: long enough to count the
/// connections held on a busy machine before it strikes.
const HEADER_TIMEOUT: Duration = Duration::from_secs(8);

/// Thousands of idle connections and a client sending its head a byte at
/// a time: the proxy holds only its per-address cap of them and closes
/// those at the header timeout, and meanwhile the API answers, a VM boots
/// and another address gets its answer from the proxy.
#[test]
fn idle_proxy_connections_cannot_starve_the_daemon() {
    use std::io::{Read, Write};
    raise_open_files(8192);
    let port = common::free_port();
    let flags: Vec<String> = [
        "--http-listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--proxy-header-timeout".to_owned(),
        HEADER_TIMEOUT.as_secs().to_string(),
    ]
    .to_vec();
    let d = Daemon::start_fake_wrapped(&flags, &[]);
    let mut idle = Vec::new();
    for _ in 0..3000 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            idle.push(s);
        }
    }
    assert!(
        idle.len() >= 2900,
        "only {} connections were made",
        idle.len()
    );
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a").expect("write");
    let made = Instant::now();
    let still_open = |s: &std::net::TcpStream| {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    // The proxy keeps at most its per-address cap (256) open: the rest are
    // closed as it accepts them (checked well before the header timeout,
    // however busy the machine).
    let mut held = idle.len();
    while held > 256 && made.elapsed() < HEADER_TIMEOUT / 2 {
        std::thread::sleep(Duration::from_millis(100));
        held = idle.iter().filter(|s| still_open(s)).count();
    }
    assert!((1..=256).contains(&held), "{held} idle connections held");

    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]", "the API answers");
    d.boot("box", "[vm.box]\n");
    assert_eq!(d.ok(&["exec", "box", "--", "echo", "up"]), "up\n");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--interface", "127.0.0.2", "-H", "Host: nowhere.test"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    assert_eq!(stdout(&out), "404", "{}", stderr(&out));

    // Past the header timeout, none is left.
    std::thread::sleep((HEADER_TIMEOUT + Duration::from_secs(2)).saturating_sub(made.elapsed()));
    let held = idle.iter().filter(|s| still_open(s)).count();
    assert_eq!(held, 0, "idle connections held past the header timeout");
    assert!(
        !still_open(&slow),
        "the slow head was held past the timeout"
    );
    d.ok(&["rm", "--force", "box"]);
}

#[test]
fn events_stream_each_step_of_a_vm_s_life() {
    use std::io::BufRead;
    let d = Daemon::start_fake();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .env("SKIFF_SOCKET", d.socket())
        .args(["events", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("skiff events");
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // The child subscribes when it has started, which takes a while on a
    // busy machine: a probe VM is made (and removed) until its events come.
    let probe = d.write_spec("probe.toml", "[vm.probe]\n");
    let probe = probe.to_str().expect("utf8").to_owned();
    let mut subscribed = false;
    for _ in 0..100 {
        d.ok(&["create", "-f", &probe]);
        if let Ok(first) = rx.recv_timeout(Duration::from_millis(300)) {
            assert_eq!(first["vm"], "probe", "{first}");
            subscribed = true;
            break;
        }
        d.ok(&["rm", "probe"]);
    }
    assert!(subscribed, "no event came; daemon log: {}", d.log());
    // What else the probe's rounds left in the stream.
    while rx.recv_timeout(Duration::from_millis(500)).is_ok() {}

    d.boot("ev", "[vm.ev]\n");
    d.ok(&["stop", "ev"]);
    d.ok(&["rm", "ev", "probe"]);
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("probe removed") {
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
        seen.push(format!(
            "{} {}",
            e["vm"].as_str().unwrap_or("?"),
            e["action"].as_str().unwrap_or("?")
        ));
    }
    assert_eq!(
        seen,
        [
            "ev created",
            "ev start",
            "ev booted",
            "ev stop",
            "ev halted",
            "ev removed",
            "probe removed"
        ]
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn under_systemd_the_daemon_takes_its_socket_and_says_when_it_is_ready() {
    // Socket activation by systemd's own tool: it binds the socket and
    // execs the daemon with it as fd 3 (LISTEN_PID, LISTEN_FDS).
    // (On the fixture's socket path, which the daemon is told too: it
    // must not bind it itself.)
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper: Vec<String> = [
        "sh",
        "-c",
        // systemd-socket-activate passes only the variables named with -E.
        "exec systemd-socket-activate -l \"$SKIFF_SOCKET\" -E SKIFF_SOCKET -E SKIFF_STATE_DIR \
         -E SKIFF_RUNTIME_DIR -E SKIFF_BACKEND -E SKIFF_FAKE_VM -E PATH -E HOME \"$@\"",
        "sh",
    ]
    .map(str::to_owned)
    .into();
    let mut d = Daemon::start_fake_wrapped(&[], &wrapper);
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]");
    assert!(d.log().contains("from_systemd=true"), "{}", d.log());
    // The VMs' processes inherit neither the API socket nor the variables
    // that would hand it to them.
    d.boot("kid", "[vm.kid]\n");
    let daemon_pid = std::fs::read_to_string(d.state().join("daemon.pid")).expect("its pid file");
    let api = std::fs::read_link(format!("/proc/{}/fd/3", daemon_pid.trim())).expect("fd 3");
    assert!(api.to_string_lossy().starts_with("socket:"), "{api:?}");
    let guests = d.fake_guests();
    assert_eq!(guests.len(), 1, "{guests:?}");
    let pid = guests[0].split(':').next().expect("pid").to_owned();
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(!fds.is_empty() && !fds.contains(&api), "{api:?} in {fds:?}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("LISTEN_PID=") && !environ.contains("LISTEN_FDS="),
        "{environ}"
    );
    d.kill9();
    assert!(d.socket().exists(), "systemd's socket is left to systemd");

    // Readiness: READY=1 once it serves, STOPPING=1 when told to stop.
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).expect("bind");
    listener
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let d = Daemon::start_with_env(vec![(
        "NOTIFY_SOCKET",
        notify.to_string_lossy().into_owned(),
    )]);
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(d.ok(&["ls", "--json"]).trim(), "[]", "ready means serving");
    let pid: i32 = std::fs::read_to_string(d.state().join("daemon.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let n = listener.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
