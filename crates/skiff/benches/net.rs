//! Host→guest TCP throughput through a port forward (the daemon's relay)
//! against a direct connection to the guest's address on its managed
//! network, measured alternately in one run. Reports the ratio.
//!
//! Needs root (it creates a network namespace, and a network inside it).
//! Run with `cargo bench -p skiff --bench net -- --mib 64 --runs 5`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::{arg, BenchDaemon};

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

fn main() {
    let (mib, runs) = (arg("--mib", 64), arg("--runs", 5));
    let daemon = BenchDaemon::start(true, &[]);
    daemon.ok(&["network", "create", "bench", "--subnet", "10.93.0.0/24"]);
    let spec = daemon.work.path().join("b.toml");
    std::fs::write(
        &spec,
        "[vm.sink]\nnetwork = { mode = \"bridge\", network = \"bench\" }\n\
         forward_ports = [\"127.0.0.1:19090:9000\"]\n\
         command = \"printf '#!/bin/sh\\\\nwc -c\\\\n' > /sink && chmod +x /sink && nc -ll -p 9000 -e /sink\"\n",
    )
    .expect("spec");
    daemon.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    daemon.ok(&["start", "sink"]);

    // Measure from inside the namespace: the host side of the network.
    daemon.enter_netns();
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
}
