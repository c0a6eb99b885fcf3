//! Copy throughput: `skiff cp` out of a VM against a raw stream of the same
//! bytes (`skiff exec VM -- cat FILE`, i.e. vsock + agent + daemon with no
//! file protocol), measured alternately in one run. Reports the ratio.
//!
//! Run with `cargo bench -p skiff --bench copy -- --mib 200 --runs 5`.

use sha2::Digest;
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

fn main() {
    let (mib, runs) = (arg("--mib", 200), arg("--runs", 5));
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let work = tempfile::tempdir().expect("tempdir");
    let env = |cmd: &mut Command| {
        cmd.env("SKIFF_SOCKET", work.path().join("skiff.sock"))
            .env("SKIFF_STATE_DIR", work.path().join("state"))
            .env("SKIFF_RUNTIME_DIR", work.path().join("run"));
    };
    let skiff_cmd = |args: &[&str]| {
        let mut c = Command::new(skiff);
        env(&mut c);
        c.args(args);
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
    let spec = work.path().join("b.toml");
    std::fs::write(&spec, format!("[vm.bench]\nmemory = {}\n", 512 + 2 * mib)).expect("spec");
    let ok = |c: &mut Command| {
        let out = c.output().expect("run skiff");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&mut skiff_cmd(&[
        "create",
        "-f",
        spec.to_str().expect("utf8"),
    ]));
    ok(&mut skiff_cmd(&["start", "bench"]));
    let make = format!("head -c {} /dev/urandom > /tmp/blob", mib * 1024 * 1024);
    ok(&mut skiff_cmd(&["exec", "bench", "--", "sh", "-c", &make]));

    let sums = skiff_cmd(&["exec", "bench", "--", "sha256sum", "/tmp/blob"])
        .output()
        .expect("sha256sum");
    let guest_sum = String::from_utf8_lossy(&sums.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no checksum from the guest: {sums:?}"));
    let size = mib * 1024 * 1024;

    let mut raw = Vec::new();
    let mut cp = Vec::new();
    for i in 0..runs {
        let start = Instant::now();
        let mut child = skiff_cmd(&["exec", "bench", "--", "cat", "/tmp/blob"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("exec");
        // Counting is cheap next to the transfer; a short stream is a
        // broken measurement.
        let got = std::io::copy(
            &mut child.stdout.take().expect("stdout"),
            &mut std::io::sink(),
        )
        .expect("read the stream");
        assert!(child.wait().expect("exec").success());
        raw.push(start.elapsed());
        assert_eq!(got, size, "the raw stream brought {got} of {size} bytes");
        let dest = work.path().join(format!("out{i}"));
        let start = Instant::now();
        ok(&mut skiff_cmd(&[
            "cp",
            "bench:/tmp/blob",
            dest.to_str().expect("utf8"),
        ]));
        cp.push(start.elapsed());
        // Checked after the clock stopped: the copy must be the guest's file.
        let bytes = std::fs::read(&dest).expect("the copied file");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            guest_sum,
            "skiff cp brought different bytes"
        );
        let _ = std::fs::remove_file(&dest);
        eprintln!(
            "run {}/{runs}: raw stream {:>6.0} ms   skiff cp {:>6.0} ms",
            i + 1,
            ms(raw[i as usize]),
            ms(cp[i as usize])
        );
    }
    let _ = skiff_cmd(&["rm", "-f", "bench"]).output();
    let _ = daemon.kill();
    let _ = daemon.wait();
    raw.sort();
    cp.sort();
    let (r, c) = (raw[raw.len() / 2], cp[cp.len() / 2]);
    let mbps = |d: Duration| mib as f64 / d.as_secs_f64();
    println!("copy out of a VM, {mib} MiB, {runs} alternating runs, medians:");
    println!(
        "  raw stream (skiff exec -- cat)   {:>8.0} ms  {:>6.1} MiB/s",
        ms(r),
        mbps(r)
    );
    println!(
        "  skiff cp                         {:>8.0} ms  {:>6.1} MiB/s",
        ms(c),
        mbps(c)
    );
    println!(
        "  throughput ratio cp/raw          {:>8.3}",
        mbps(c) / mbps(r)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
