//! Host→guest TCP throughput through a port forward (the daemon's relay)
//! against a direct connection to the guest's address on its managed
//! network, measured alternately in one run. Reports the ratio.
//!
//! Needs root (it creates a network namespace, and a network inside it).
//! Run with `cargo bench -p skiff --bench net -- --mib 64 --runs 5`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Send `bytes` to `addr`; the guest answers with how many it read.
fn push(addr: &str, bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    s.write_all(bytes).expect("send");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    let took = start.elapsed();
    assert_eq!(
        answer.trim(),
        bytes.len().to_string(),
        "the guest got every byte"
    );
    took
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn main() {
    let (mib, runs) = (arg("--mib", 64), arg("--runs", 5));
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let work = tempfile::tempdir().expect("tempdir");
    let ns = Netns(format!("skbench{}", std::process::id()));
    let made = Command::new("ip").args(["netns", "add", &ns.0]).status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add (needs root)");
    let _ = Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status();
    let skiff_cmd = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.0])
            .arg(skiff)
            .args(args)
            .env("SKIFF_SOCKET", work.path().join("skiff.sock"))
            .env("SKIFF_STATE_DIR", work.path().join("state"))
            .env("SKIFF_RUNTIME_DIR", work.path().join("run"));
        c
    };
    let mut daemon = skiff_cmd(&["daemon"])
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(work.path().join("skiff.sock")).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = |c: &mut Command| {
        let out = c.output().expect("run skiff");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&mut skiff_cmd(&[
        "network",
        "create",
        "bench",
        "--subnet",
        "10.93.0.0/24",
    ]));
    let spec = work.path().join("b.toml");
    std::fs::write(
        &spec,
        "[vm.sink]\nnetwork = { mode = \"bridge\", network = \"bench\" }\n\
         forward_ports = [\"127.0.0.1:19090:9000\"]\n\
         command = \"printf '#!/bin/sh\\\\nwc -c\\\\n' > /sink && chmod +x /sink && nc -ll -p 9000 -e /sink\"\n",
    )
    .expect("spec");
    ok(&mut skiff_cmd(&[
        "create",
        "-f",
        spec.to_str().expect("utf8"),
    ]));
    ok(&mut skiff_cmd(&["start", "sink"]));

    // Measure from inside the namespace: the host side of the network.
    let netns_file = std::fs::File::open(format!("/var/run/netns/{}", ns.0)).expect("netns");
    nix::sched::setns(netns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let bytes: Vec<u8> = (0..mib * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (direct_addr, forward_addr) = ("10.93.0.2:9000", "127.0.0.1:19090");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(direct_addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the guest's sink did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    push(direct_addr, &bytes[..1024 * 1024]); // warm up
    let (mut direct, mut forward) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mibf = mib as f64;
        direct.push(mibf / push(direct_addr, &bytes).as_secs_f64());
        forward.push(mibf / push(forward_addr, &bytes).as_secs_f64());
    }
    let (d, f) = (median(direct), median(forward));
    println!("host→guest TCP, {mib} MiB per run, {runs} runs each, alternating (median):");
    println!("  direct to the guest's address  {d:8.1} MiB/s");
    println!("  through the port forward       {f:8.1} MiB/s");
    println!("  ratio forward/direct           {:8.3}", f / d);
    let _ = daemon.kill();
    let _ = daemon.wait();
    // The VM's processes: kill what runs under the runtime dir, then the
    // namespace goes with its bridge and TAP.
    let _ = Command::new("pkill")
        .args(["-9", "-f", &work.path().join("run").display().to_string()])
        .status();
}
