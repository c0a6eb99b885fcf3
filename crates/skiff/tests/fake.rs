//! The fast tier: a real `skiff daemon` (real API, real SQLite, real
//! process supervision and cgroups) on the fake backend, whose VMs are
//! `skiff-fake-vm` processes that speak the agent protocol. Lifecycle,
//! restart policies, adoption after `kill -9` and `skiff run` through the
//! daemon, in seconds, without booting anything. The same behaviours on real
//! VMs are in daemon.rs, run.rs and pools.rs.

mod common;

use common::daemon::Daemon;
use common::{stderr, stdout};
use std::time::Duration;

#[test]
fn lifecycle_exec_and_illegal_transitions() {
    let d = Daemon::start_fake();
    d.boot("box", "[vm.box]\n");
    assert_eq!(d.inspect("box")["state"], "running");
    assert_eq!(d.fake_guests().len(), 1);

    let out = d.cli(&["exec", "box", "--", "echo", "hello", "fake"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello fake\n");
    assert_eq!(
        d.cli(&["exec", "box", "--", "exit", "9"]).status.code(),
        Some(9)
    );

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
