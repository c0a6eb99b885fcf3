//! Sandbox benchmarks, all in one run against one daemon (TCG here):
//!
//! - warm start: take a sandbox from a ready pool and run `true` in it
//!   (two API calls), p50/p95, against a cold `skiff run -- true`;
//! - exec round trip: `true` through the commands API on a running
//!   sandbox, p50/p99, against a bare vsock round trip to the same guest
//!   (CONNECT/OK through its vhost-user socket: host → guest kernel → host);
//! - density: N idle 128 MiB sandboxes, the host memory each costs (QEMU's
//!   and the vsock helper's PSS) beyond what its guest uses, the daemon's
//!   share, and how many fit in this host's memory at that cost.
//!
//! Run with `cargo bench -p skiff --bench sandbox -- --runs 20 --density 8`.

mod common;
use common::pss_kib;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// One HTTP/1.1 request over the daemon's socket; (status, body).
fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("daemon socket");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("answer");
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or(serde_json::Value::Null)
}

struct Bench {
    skiff: PathBuf,
    work: tempfile::TempDir,
}

impl Bench {
    fn sock(&self) -> PathBuf {
        self.work.path().join("skiff.sock")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.skiff);
        c.env("SKIFF_SOCKET", self.sock())
            .env("SKIFF_STATE_DIR", self.work.path().join("state"))
            .env("SKIFF_RUNTIME_DIR", self.work.path().join("run"))
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("skiff");
        assert!(
            out.status.success(),
            "skiff {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pool_ready(&self, pool: &str) -> u64 {
        let (_, body) = http(&self.sock(), "GET", "/v1/pools", "");
        json(&body)
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == pool)
            .and_then(|p| p["ready"].as_u64())
            .unwrap_or(0)
    }

    fn wait_ready(&self, pool: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60 + 20 * n);
        while self.pool_ready(pool) < n {
            assert!(
                Instant::now() < deadline,
                "pool {pool} did not reach {n} ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn take(&self, pool: &str) -> String {
        let (status, body) = http(
            &self.sock(),
            "POST",
            &format!("/v1/pools/{pool}/take"),
            "{}",
        );
        assert_eq!(status, 200, "{body}");
        json(&body)["vm"].as_str().expect("vm").to_owned()
    }

    fn run_true(&self, vm: &str) {
        let (status, body) = http(
            &self.sock(),
            "POST",
            &format!("/v1/vms/{vm}/commands"),
            r#"{"argv":["true"]}"#,
        );
        assert!(
            status == 200 && body.contains("\"exit_code\":0"),
            "{status} {body}"
        );
    }

    fn destroy(&self, vm: &str) {
        let (status, body) = http(
            &self.sock(),
            "DELETE",
            &format!("/v1/vms/{vm}?force=true&volumes=true"),
            "",
        );
        assert!(
            (200..300).contains(&status),
            "destroy {vm}: {status} {body}"
        );
    }
}

fn main() {
    let runs = arg("--runs", 20).max(2) as usize;
    let density = arg("--density", 8).max(1) as usize;
    let b = Bench {
        skiff: PathBuf::from(env!("CARGO_BIN_EXE_skiff")),
        work: tempfile::tempdir().expect("tempdir"),
    };
    let mut daemon = b
        .cmd(&["daemon"])
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(b.sock()).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.ok(&["run", "--", "true"]); // warm caches (kernel, initramfs)

    // Warm start against cold start, alternating. Each measurement starts
    // with the pool full, so no replacement boots in the background: the
    // cold run has the machine to itself, and the warm one pays for the
    // refill its take starts (if anything, warm/cold is pessimistic).
    const POOL: u64 = 2;
    b.ok(&[
        "pool",
        "create",
        "bench",
        "--size",
        &POOL.to_string(),
        "--memory",
        "128",
    ]);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b.wait_ready("bench", POOL);
        let t = Instant::now();
        b.ok(&["run", "--", "true"]);
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        b.wait_ready("bench", POOL);
        let t = Instant::now();
        let vm = b.take("bench");
        b.run_true(&vm);
        warm.push(t.elapsed().as_secs_f64() * 1000.0);
        b.destroy(&vm);
    }
    let (c50, c95, w50, w95) = (
        percentile(&cold, 0.5),
        percentile(&cold, 0.95),
        percentile(&warm, 0.5),
        percentile(&warm, 0.95),
    );
    println!("warm start ({runs} runs, alternating with cold, pool full at each start):");
    println!("  cold `skiff run -- true`          p50 {c50:8.1} ms  p95 {c95:8.1} ms");
    println!("  take from pool + run `true`       p50 {w50:8.1} ms  p95 {w95:8.1} ms");
    println!(
        "  ratio warm/cold                   p50 {:8.4}     p95 {:8.4}",
        w50 / c50,
        w95 / c95
    );

    // Exec round trip against a bare vsock round trip to the same guest.
    b.wait_ready("bench", 1);
    let vm = b.take("bench");
    let inspect = json(&b.ok(&["inspect", &vm]));
    let vsock = PathBuf::from(inspect["run_dir"].as_str().expect("run_dir")).join("vsock.sock");
    let (mut exec, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..runs * 5 {
        let t = Instant::now();
        let mut s = UnixStream::connect(&vsock).expect("vsock");
        s.write_all(b"CONNECT 1024\n").expect("connect");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("ok line");
        assert!(line.starts_with("OK"), "{line}");
        raw.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(s);
        let t = Instant::now();
        b.run_true(&vm);
        exec.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (e50, e99, r50, r99) = (
        percentile(&exec, 0.5),
        percentile(&exec, 0.99),
        percentile(&raw, 0.5),
        percentile(&raw, 0.99),
    );
    println!("exec round trip ({} runs each, alternating):", exec.len());
    println!("  bare vsock CONNECT/OK             p50 {r50:8.2} ms  p99 {r99:8.2} ms");
    println!("  commands API `true`               p50 {e50:8.2} ms  p99 {e99:8.2} ms");
    println!(
        "  ratio exec/vsock                  p50 {:8.2}     p99 {:8.2}",
        e50 / r50,
        e99 / r99
    );
    b.destroy(&vm);

    // Density: N idle sandboxes; what each costs on the host.
    b.ok(&["pool", "rm", "bench"]);
    let daemon_before = pss_kib(i64::from(daemon.id()));
    b.ok(&[
        "pool",
        "create",
        "dense",
        "--size",
        &density.to_string(),
        "--memory",
        "128",
    ]);
    b.wait_ready("dense", density as u64);
    std::thread::sleep(Duration::from_secs(5)); // let the guests settle
    let vms = json(&b.ok(&["ls", "--json"]));
    let vms: Vec<&serde_json::Value> = vms.as_array().into_iter().flatten().collect();
    // Every figure below is per VM measured, and every VM is measured.
    assert_eq!(vms.len(), density, "VMs running: {vms:?}");
    let (mut qemu_kib, mut helper_kib, mut guest_kib) = (0u64, 0u64, 0u64);
    for vm in &vms {
        let pid = |process: &str| -> i32 {
            let pid = vm[process]["pid"].as_i64();
            pid.unwrap_or_else(|| panic!("no {process} pid in {vm}")) as i32
        };
        qemu_kib += pss_kib(pid("qemu").into());
        helper_kib += pss_kib(pid("vsock").into());
        let name = vm["name"].as_str().unwrap_or("");
        let meminfo = b.ok(&["exec", name, "--", "cat", "/proc/meminfo"]);
        let field = |k: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {name}'s /proc/meminfo: {meminfo}"))
        };
        guest_kib += field("MemTotal:").saturating_sub(field("MemFree:"));
    }
    let daemon_after = pss_kib(i64::from(daemon.id()));
    let n = vms.len() as f64;
    let per_vm = (qemu_kib + helper_kib) as f64 / n / 1024.0;
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("the host's MemTotal")
        / 1024.0;
    println!("density ({density} idle 128 MiB sandboxes):");
    println!(
        "  QEMU PSS per VM                   {:8.1} MiB",
        qemu_kib as f64 / n / 1024.0
    );
    println!(
        "  vsock helper PSS per VM           {:8.1} MiB",
        helper_kib as f64 / n / 1024.0
    );
    println!(
        "  guest-used memory per VM          {:8.1} MiB",
        guest_kib as f64 / n / 1024.0
    );
    println!(
        "  host cost beyond the guest's use  {:8.1} MiB",
        per_vm - guest_kib as f64 / n / 1024.0
    );
    println!(
        "  daemon PSS {:.1} MiB before, {:.1} MiB with them ({:+.2} MiB per VM)",
        daemon_before as f64 / 1024.0,
        daemon_after as f64 / 1024.0,
        (daemon_after as f64 - daemon_before as f64) / n / 1024.0
    );
    println!(
        "  fit in this host's {host_mib:.0} MiB at that cost: about {:.0}",
        (host_mib * 0.9 / per_vm).floor()
    );
    b.ok(&["pool", "rm", "dense"]);
    let _ = daemon.kill();
    let _ = daemon.wait();
}
