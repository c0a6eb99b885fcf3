//! Requests per second and p99 latency through the daemon's reverse proxy
//! against direct requests to the VM's address, measured alternately in
//! one run (a busybox httpd service VM on a managed network).
//!
//! Needs root (network namespace). Run with
//! `cargo bench -p skiff --bench proxy -- --requests 400 --runs 3 --clients 4`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;
use common::{arg, BenchDaemon};

/// One GET with `Connection: close`; its latency.
fn get(addr: &str, host: &str) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );
    t.elapsed()
}

/// `clients` threads, `requests` GETs in all; (requests per second, p99 ms).
fn load(addr: &str, host: &str, clients: u64, requests: u64) -> (f64, f64) {
    let start = Instant::now();
    let per = requests / clients;
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| s.spawn(move || (0..per).map(|_| get(addr, host)).collect::<Vec<_>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let rps = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    let p99 = lat[(lat.len() - 1) * 99 / 100].as_secs_f64() * 1000.0;
    (rps, p99)
}

fn main() {
    let (requests, runs, clients) = (
        arg("--requests", 400),
        arg("--runs", 3),
        arg("--clients", 4).max(1),
    );
    let daemon = BenchDaemon::start(true, &["--http-listen", "127.0.0.1:18090"]);
    daemon.ok(&["network", "create", "pbench", "--subnet", "10.95.0.0/24"]);
    let spec = daemon.work.path().join("p.toml");
    std::fs::write(
        &spec,
        "[vm.site]\nnetwork = { mode = \"bridge\", network = \"pbench\" }\n\
        command = \"mkdir -p /www && echo hello > /www/index.html && httpd -f -p 8080 -h /www\"\n\
        http = { domains = [\"bench.test\"], port = 8080 }\n",
    )
    .expect("spec");
    daemon.ok(&["create", "-f", spec.to_str().expect("utf8")]);
    daemon.ok(&["start", "site"]);

    daemon.enter_netns();
    let (direct, proxy) = ("10.95.0.2:8080", "127.0.0.1:18090");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(direct).is_err() {
        assert!(Instant::now() < deadline, "the service did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    load(direct, "bench.test", clients, 40); // warm up
    load(proxy, "bench.test", clients, 40);
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        d.push(load(direct, "bench.test", clients, requests));
        p.push(load(proxy, "bench.test", clients, requests));
    }
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (drps, dp99, prps, pp99) = (
        med(&d, |x| x.0),
        med(&d, |x| x.1),
        med(&p, |x| x.0),
        med(&p, |x| x.1),
    );
    println!("GET /index.html, {clients} clients, {requests} requests per run, {runs} runs alternating (median):");
    println!("  direct to the VM      {drps:8.1} req/s  p99 {dp99:8.2} ms");
    println!("  through the proxy     {prps:8.1} req/s  p99 {pp99:8.2} ms");
    println!(
        "  ratio proxy/direct    req/s {:6.3}   p99 {:6.3}",
        prps / drps,
        pp99 / dp99
    );
}
