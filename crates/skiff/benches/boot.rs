//! Cold-start benchmark: `skiff run -- true` against a bare QEMU boot of the
//! same kernel, measured alternately in one run so that machine noise hits
//! both sides alike. The figure that matters is the ratio of the medians.
//!
//! Run with `cargo bench -p skiff --bench boot -- --runs 10`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let runs = parse_runs();
    let skiff = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
    let work = tempfile::tempdir().expect("tempdir");

    let prepared = Command::new(&skiff)
        .args(["image", "prepare", "--json"])
        .output()
        .expect("run skiff image prepare");
    assert!(
        prepared.status.success(),
        "skiff image prepare failed: {}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let image: serde_json::Value = serde_json::from_slice(&prepared.stdout).expect("image json");
    let kernel = PathBuf::from(image["kernel"].as_str().expect("kernel path"));

    let bare_initrd = work.path().join("bare.cpio");
    std::fs::write(&bare_initrd, bare_initramfs()).expect("write bare initramfs");
    let bare_args = bare_qemu_args(&kernel, &bare_initrd, work.path());

    let mut daemon = Daemon::start(&skiff, work.path());

    // One untimed run of each warms the page cache.
    time_bare(&bare_args);
    time_skiff(&skiff, work.path());
    time_via_daemon(&skiff, &daemon);

    let mut bare = Vec::new();
    let mut full = Vec::new();
    let mut via = Vec::new();
    let mut ready = Vec::new();
    let mut init = Vec::new();
    for i in 0..runs {
        let b = time_bare(&bare_args);
        let (s, guest_ready, guest_init) = time_skiff(&skiff, work.path());
        let d = time_via_daemon(&skiff, &daemon);
        eprintln!(
            "run {:>2}/{runs}: bare {:>7.1} ms   standalone {:>7.1} ms   via daemon {:>7.1} ms",
            i + 1,
            ms(b),
            ms(s),
            ms(d)
        );
        bare.push(b);
        full.push(s);
        via.push(d);
        ready.push(guest_ready);
        init.push(guest_init);
    }
    daemon.stop();
    let (mb, ms_full, ms_via) = (median(&mut bare), median(&mut full), median(&mut via));
    let ratio = ms_full.as_secs_f64() / mb.as_secs_f64();
    let ratio_via = ms_via.as_secs_f64() / mb.as_secs_f64();
    println!("cold start, {runs} alternating runs, medians:");
    println!(
        "  bare QEMU boot (busybox /init powers off)  {:>8.1} ms",
        ms(mb)
    );
    println!(
        "  skiff run --standalone -- true             {:>8.1} ms",
        ms(ms_full)
    );
    println!(
        "  skiff run -- true (through the daemon)     {:>8.1} ms",
        ms(ms_via)
    );
    println!("  ratio standalone/bare                      {ratio:>8.3}   (target <= 1.10)");
    println!("  ratio daemon/bare                          {ratio_via:>8.3}");
    println!(
        "  agent: guest kernel start to ready         {:>8} ms",
        median_u64(&mut ready)
    );
    println!(
        "  agent: /init setup (mounts, modules)       {:>8} ms",
        median_u64(&mut init)
    );
}

fn parse_runs() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == "--runs")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(7)
}

/// A busybox-only initramfs whose /init powers the VM off at once.
fn bare_initramfs() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut w = skiff_image::CpioWriter::new();
    w.dir("bin", 0o755);
    w.file("bin/busybox", 0o755, &busybox);
    w.file(
        "init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n",
    );
    w.finish()
}

/// The exact QEMU command skiff would use, minus the vsock device.
fn bare_qemu_args(kernel: &Path, initrd: &Path, work: &Path) -> Vec<String> {
    let host = skiff_vmm::HostKvm::probe();
    let decision = skiff_vmm::decide(skiff_vmm::AccelChoice::Auto, &host);
    let cfg = skiff_vmm::VmConfig {
        cpus: 1,
        memory_mib: 256,
        kernel: kernel.to_owned(),
        initrd: initrd.to_owned(),
        accel: decision.accel,
        extra_cmdline: Vec::new(),
        run_dir: work.join("bare"),
        qemu_binary: "qemu-system-x86_64".into(),
        vsock_binary: "unused".into(),
        transport: skiff_vmm::Transport::Vsock,
        console_log: work.join("bare-console.log"),
        net: None,
        tap: None,
        vm_id: "bench".into(),
        drives: Vec::new(),
        shares: Vec::new(),
        virtiofsd_binary: "virtiofsd".into(),
        rootfs: None,
        run_as: None,
        privileged: false,
        root_disk: None,
        init: skiff_vmm::GuestInit::Agent,
    };
    let plan = skiff_vmm::plan(&cfg).expect("plan");
    let mut args = Vec::new();
    let mut it = plan.qemu.args.into_iter();
    while let Some(a) = it.next() {
        if a == "-device" {
            it.next(); // drop the devices (vsock, debug exit)
            continue;
        }
        if a == "-chardev" {
            // Keep the console's file; drop the vsock socket.
            match it.next() {
                Some(v) if v.starts_with("file,") => args.extend([a, v]),
                _ => {}
            }
            continue;
        }
        args.push(a);
    }
    args
}

fn time_bare(args: &[String]) -> Duration {
    let start = Instant::now();
    let status = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run qemu");
    assert!(status.success(), "bare QEMU boot failed: {status}");
    start.elapsed()
}

/// Wall time of `skiff run -- true`, and the agent's kernel-to-ready and
/// init-setup times from `--timings=json`.
fn time_skiff(skiff: &Path, work: &Path) -> (Duration, u64, u64) {
    let (elapsed, out) = timed_run(
        Command::new(skiff)
            .env("SKIFF_RUNTIME_DIR", work.join("rt"))
            .args(["run", "-q", "--standalone", "--timings=json", "--", "true"]),
    );
    let line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let t: serde_json::Value = serde_json::from_str(&line).expect("timings json");
    // A missing figure means the agent's report broke: fail, never print 0.
    let field = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("no {k} in the timings: {line}"))
    };
    let (ready, init) = (field("guest_kernel_to_ready_ms"), field("guest_init_ms"));
    (elapsed, ready, init)
}

/// A `skiff daemon` on the bench's own socket and directories.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    fn start(skiff: &Path, work: &Path) -> Daemon {
        let dir = work.join("daemon");
        let socket = dir.join("skiff.sock");
        let child = Command::new(skiff)
            .env("SKIFF_SOCKET", &socket)
            .env("SKIFF_STATE_DIR", dir.join("state"))
            .env("SKIFF_RUNTIME_DIR", dir.join("run"))
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start skiff daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket, dir }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wall time of `skiff run -- true` through a running daemon.
fn time_via_daemon(skiff: &Path, d: &Daemon) -> Duration {
    let (elapsed, _) = timed_run(
        Command::new(skiff)
            .env("SKIFF_SOCKET", &d.socket)
            .env("SKIFF_STATE_DIR", d.dir.join("state"))
            .env("SKIFF_RUNTIME_DIR", d.dir.join("run"))
            .args(["run", "-q", "--", "true"]),
    );
    elapsed
}

/// Run a `skiff run`, require success, and return its wall time.
fn timed_run(cmd: &mut Command) -> (Duration, std::process::Output) {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("run skiff");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "skiff run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, out)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
