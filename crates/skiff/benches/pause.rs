//! Pausable VMs, all in one run against one daemon (TCG here), alternating
//! so that noise hits both sides of each ratio:
//!
//! - resume: `skiff resume` of a paused 128 MiB VM ÷ `skiff start` (a cold
//!   boot to a ready agent) of the same VM; the pause itself is reported;
//! - memory: host memory of the paused VM (the serial bridge's PSS; QEMU is
//!   gone) ÷ the same VM running idle (QEMU's and the bridge's PSS), and
//!   the snapshot's size on disk;
//! - sleeping pool: `skiff pool take` from a pool whose ready sandbox
//!   sleeps (`--pausable --awake 0`, so the take wakes it) plus `exec
//!   true` ÷ the cold `skiff start` above;
//! - start from a snapshot: `skiff run -d --from-snapshot` of a snapshot
//!   of that VM (restored and renewed, to a ready agent) ÷ the cold start;
//! - wake on use: `skiff exec VM -- true` into a VM asleep after its idle
//!   period (`sleep_after`) ÷ the cold start;
//! - exec round trip: `true` through the commands API on the pausable VM
//!   (agent over the multiplexed virtio-serial port) ÷ on a VM of the same
//!   size whose agent is on vsock; and a new agent connection up to the
//!   agent's hello, as a share of the exec (the most a long-lived
//!   connection per VM could save).
//!
//! Run with `cargo bench -p skiff --bench pause -- --runs 10`.

mod common;
use common::{arg, pss_kib, BenchDaemon};
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

fn timed_ms(d: &BenchDaemon, args: &[&str]) -> f64 {
    let t = Instant::now();
    d.ok(args);
    t.elapsed().as_secs_f64() * 1000.0
}

fn pid_of(d: &BenchDaemon, vm: &str, process: &str) -> Option<i64> {
    let inspect: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", vm])).expect("json");
    inspect[process]["pid"].as_i64()
}

/// Whether QEMU is gone (or a zombie: its memory is freed, and the daemon
/// reaps it when its SIGCHLD is handled, which may come after the pause has
/// answered) within 5 s.
fn qemu_ends(pid: i64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_owned()))
            .and_then(|rest| rest.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `true` through the commands API, over the daemon's socket.
fn exec_true(d: &BenchDaemon, vm: &str) -> f64 {
    use std::io::{Read, Write};
    let body = r#"{"argv":["true"]}"#;
    let t = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).expect("socket");
    write!(
        s,
        "POST /v1/vms/{vm}/commands HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("answer");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.contains("\"exit_code\":0"),
        "{resp}"
    );
    ms
}

/// A new agent connection up to the first bytes of the agent's hello: what
/// a command pays before it starts, and what one long-lived connection per
/// VM would save.
fn hello_ms(d: &BenchDaemon, vm: &str) -> f64 {
    use std::io::{BufRead, BufReader, Read, Write};
    let inspect: serde_json::Value = serde_json::from_str(&d.ok(&["inspect", vm])).expect("json");
    let sock =
        std::path::PathBuf::from(inspect["run_dir"].as_str().expect("run_dir")).join("vsock.sock");
    let t = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("socket");
    s.write_all(b"CONNECT 1024\n").expect("connect");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("ok line");
    assert!(line.starts_with("OK"), "{line}");
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).expect("hello");
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let runs = arg("--runs", 10).max(2) as usize;
    let d = BenchDaemon::start(false, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("vms.toml");
    std::fs::write(
        &spec,
        "[vm.p]\npausable = true\nmemory = \"128M\"\n[vm.v]\nmemory = \"128M\"\n",
    )
    .expect("spec");
    d.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    d.ok(&["start", "v"]); // warms the image cache too

    let (mut cold, mut resume, mut pause) = (Vec::new(), Vec::new(), Vec::new());
    let (mut running_kib, mut paused_kib, mut snapshot_mib) = (0u64, 0u64, 0f64);
    let snapshot = d.work.path().join("state/vms/p/paused/state.bin");
    for run in 0..runs {
        cold.push(timed_ms(&d, &["start", "p"]));
        if run == 0 {
            // Idle memory, once the guest has settled.
            std::thread::sleep(Duration::from_secs(5));
            let qemu = pid_of(&d, "p", "qemu").expect("qemu pid");
            let bridge = pid_of(&d, "p", "vsock").expect("bridge pid");
            running_kib = pss_kib(qemu) + pss_kib(bridge);
            pause.push(timed_ms(&d, &["pause", "p"]));
            paused_kib = pss_kib(bridge);
            assert!(qemu_ends(qemu), "QEMU still runs 5 s after the pause");
            snapshot_mib =
                std::fs::metadata(&snapshot).expect("snapshot").len() as f64 / (1024.0 * 1024.0);
        } else {
            pause.push(timed_ms(&d, &["pause", "p"]));
        }
        resume.push(timed_ms(&d, &["resume", "p"]));
        d.ok(&["exec", "p", "--", "true"]);
        d.ok(&["stop", "p"]);
    }
    let (c50, r50, p50) = (median(&mut cold), median(&mut resume), median(&mut pause));
    println!("resume ({runs} runs, alternating with cold starts of the same 128 MiB VM):");
    println!("  cold `skiff start`                p50 {c50:8.1} ms");
    println!("  `skiff pause`                     p50 {p50:8.1} ms");
    println!("  `skiff resume`                    p50 {r50:8.1} ms");
    println!("  ratio resume/cold                 p50 {:8.4}", r50 / c50);
    println!("memory of the pausable VM:");
    println!(
        "  running idle (QEMU + bridge PSS)  {:8.1} MiB",
        running_kib as f64 / 1024.0
    );
    println!(
        "  paused (bridge PSS)               {:8.1} MiB",
        paused_kib as f64 / 1024.0
    );
    println!("  snapshot on disk                  {snapshot_mib:8.1} MiB");
    println!(
        "  ratio paused/running              {:8.4}",
        paused_kib as f64 / running_kib as f64
    );

    d.ok(&[
        "pool",
        "create",
        "naps",
        "--size",
        "1",
        "--pausable",
        "--awake",
        "0",
        "--memory",
        "128",
    ]);
    let mut takes = Vec::new();
    for _ in 0..runs {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let pools: serde_json::Value =
                serde_json::from_str(&d.ok(&["pool", "ls", "--json"])).expect("json");
            if pools[0]["sleeping"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the pool did not fall asleep");
            std::thread::sleep(Duration::from_millis(200));
        }
        let t = Instant::now();
        let vm = d.ok(&["pool", "take", "naps"]).trim().to_owned();
        d.ok(&["exec", &vm, "--", "true"]);
        takes.push(t.elapsed().as_secs_f64() * 1000.0);
        d.ok(&["rm", "-f", &vm]);
    }
    d.ok(&["pool", "rm", "naps"]);
    let t50 = median(&mut takes);
    println!("sleeping pool ({runs} takes, each waking a paused sandbox):");
    println!("  take + exec `true`                p50 {t50:8.1} ms");
    println!("  ratio take/cold start             p50 {:8.4}", t50 / c50);

    d.ok(&["start", "p"]);
    // New VMs from a snapshot of `p` (each restored, then renewed).
    d.ok(&["snapshot", "p", "base"]);
    let mut restored = Vec::new();
    for i in 0..runs {
        let name = format!("s{i}");
        restored.push(timed_ms(
            &d,
            &["run", "-d", "--name", &name, "--from-snapshot", "base"],
        ));
        d.ok(&["exec", &name, "--", "true"]);
        d.ok(&["rm", "-f", &name]);
    }
    d.ok(&["snapshot", "rm", "base"]);
    let s50 = median(&mut restored);
    println!("start from a snapshot ({runs} new VMs from one snapshot of the VM above):");
    println!("  `skiff run -d --from-snapshot`    p50 {s50:8.1} ms");
    println!("  ratio snapshot start/cold start   p50 {:8.4}", s50 / c50);

    // An exec that wakes a VM asleep after its idle period (`sleep_after`).
    let sleepy = dir.path().join("sleepy.toml");
    std::fs::write(
        &sleepy,
        "[vm.z]\npausable = true\nsleep_after = \"1s\"\nmemory = \"128M\"\n",
    )
    .expect("spec");
    d.ok(&["create", "-f", sleepy.to_str().expect("utf8")]);
    d.ok(&["start", "z"]);
    let mut wakes = Vec::new();
    for _ in 0..runs {
        let deadline = Instant::now() + Duration::from_secs(120);
        while serde_json::from_str::<serde_json::Value>(&d.ok(&["inspect", "z"])).expect("json")
            ["state"]
            != "paused"
        {
            assert!(Instant::now() < deadline, "the idle VM did not fall asleep");
            std::thread::sleep(Duration::from_millis(100));
        }
        wakes.push(timed_ms(&d, &["exec", "z", "--", "true"]));
    }
    d.ok(&["rm", "-f", "z"]);
    let w50 = median(&mut wakes);
    println!("wake on use ({runs} execs, each into a VM asleep after 1 s idle):");
    println!("  `skiff exec z -- true`            p50 {w50:8.1} ms");
    println!("  ratio wake+exec/cold start        p50 {:8.4}", w50 / c50);

    let (mut serial, mut vsock) = (Vec::new(), Vec::new());
    let (mut serial_hello, mut vsock_hello) = (Vec::new(), Vec::new());
    for _ in 0..runs * 5 {
        serial.push(exec_true(&d, "p"));
        vsock.push(exec_true(&d, "v"));
        serial_hello.push(hello_ms(&d, "p"));
        vsock_hello.push(hello_ms(&d, "v"));
    }
    let (s50, v50) = (median(&mut serial), median(&mut vsock));
    let (s99, v99) = (p99(&mut serial), p99(&mut vsock));
    println!("exec round trip ({} runs each, alternating):", serial.len());
    println!("  vsock agent                       p50 {v50:8.2} ms  p99 {v99:8.2} ms");
    println!("  serial agent (multiplexed)        p50 {s50:8.2} ms  p99 {s99:8.2} ms");
    println!(
        "  ratio serial/vsock                p50 {:8.3}     p99 {:8.3}",
        s50 / v50,
        s99 / v99
    );
    let (sh50, vh50) = (median(&mut serial_hello), median(&mut vsock_hello));
    println!("  new connection + hello, vsock     p50 {vh50:8.2} ms");
    println!("  new connection + hello, serial    p50 {sh50:8.2} ms");
    println!(
        "  share of an exec (what one long-lived connection would save at most): vsock {:.3}, serial {:.3}",
        vh50 / v50,
        sh50 / s50
    );
}
