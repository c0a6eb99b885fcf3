//! Requests per second and p99 latency through the daemon's reverse proxy
//! against direct requests to the VM's address, measured alternately in
//! one run (a busybox httpd service VM on a managed network).
//!
//! Needs root (network namespace). Run with
//! `cargo bench -p skiff --bench proxy -- --requests 400 --runs 3 --clients 4`.

use std::io::{Read, Write};
use std::net::TcpStream;
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

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn main() {
    let (requests, runs, clients) = (
        arg("--requests", 400),
        arg("--runs", 3),
        arg("--clients", 4).max(1),
    );
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let work = tempfile::tempdir().expect("tempdir");
    let ns = Netns(format!("skpbench{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .is_ok_and(|s| s.success()),
        "ip netns add (needs root)"
    );
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
    let mut daemon = skiff_cmd(&["daemon", "--http-listen", "127.0.0.1:18090"])
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(work.path().join("skiff.sock")).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ok = |c: &mut Command| {
        let out = c.output().expect("skiff");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&mut skiff_cmd(&[
        "network",
        "create",
        "pbench",
        "--subnet",
        "10.95.0.0/24",
    ]));
    let spec = work.path().join("p.toml");
    std::fs::write(
        &spec,
        "[vm.site]\nnetwork = { mode = \"bridge\", network = \"pbench\" }\n\
        command = \"mkdir -p /www && echo hello > /www/index.html && httpd -f -p 8080 -h /www\"\n\
        http = { domains = [\"bench.test\"], port = 8080 }\n",
    )
    .expect("spec");
    ok(&mut skiff_cmd(&[
        "create",
        "-f",
        spec.to_str().expect("utf8"),
    ]));
    ok(&mut skiff_cmd(&["start", "site"]));

    let netns_file = std::fs::File::open(format!("/var/run/netns/{}", ns.0)).expect("netns");
    nix::sched::setns(netns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
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
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = Command::new("pkill")
        .args(["-9", "-f", &work.path().join("run").display().to_string()])
        .status();
}
