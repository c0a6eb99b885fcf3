//! Full-OS guests against skiff's agent-as-init guest, all in one run
//! against one daemon (TCG here), alternating so that noise hits both:
//!
//! - boot: `skiff start` of a systemd dev box (images/devbox.toml, root
//!   disk, `init = "system"`, ready at multi-user.target) ÷ `skiff start`
//!   of an agent-as-init VM of the same kernel and size;
//! - trimming: the dev box as shipped (Docker socket-activated, no
//!   e2scrub_reap) ÷ the same image booted with those units wanted at boot
//!   again (`systemd.wants=` on the kernel command line), as it booted
//!   before the image was trimmed, with the same network, forward and user;
//! - command round trip: `skiff exec dev -- true` ÷ `ssh dev true` into the
//!   same running guest (key login through a user-mode port forward).
//!
//! Run with `cargo bench -p skiff --bench fullos -- --runs 3 --execs 10`
//! (builds images/devbox.toml first if needed: root and a Debian mirror).

mod common;
use common::{arg, BenchDaemon};
use std::process::{Command, Output};
use std::time::Instant;

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn timed(mut cmd: Command, what: &str) -> f64 {
    let t = Instant::now();
    ok(cmd.output().expect(what), what);
    t.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The units the dev-box image no longer starts at boot, wanted again.
const UNTRIMMED: &str = "\"systemd.wants=docker.service\", \"systemd.wants=containerd.service\", \"systemd.wants=e2scrub_reap.service\"";

fn main() {
    let runs = arg("--runs", 3) as usize;
    let execs = arg("--execs", 10) as usize;
    let d = BenchDaemon::start(false, &[]);
    let recipe = format!("{}/../../images/devbox.toml", env!("CARGO_MANIFEST_DIR"));
    ok(
        d.cmd(&["image", "build", "-f", &recipe])
            .output()
            .expect("build"),
        "image build",
    );
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("k");
    ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-f")
            .arg(&key)
            .output()
            .expect("ssh-keygen"),
        "ssh-keygen",
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port")
    };
    let (port, port2) = (free_port(), free_port());
    let spec = format!(
        "[vm.dev]\nmemory = 512\ndisk = {{ image = \"devbox\" }}\ninit = \"system\"\nnetwork = \"user\"\nforward_ports = [\"127.0.0.1:{port}:22\"]\n[[vm.dev.users]]\nname = \"me\"\nssh_authorized_keys = [\"{}\"]\n\n[vm.agent]\nmemory = 512\n\n[vm.untrimmed]\nmemory = 512\ndisk = {{ image = \"devbox\" }}\ninit = \"system\"\nnetwork = \"user\"\nforward_ports = [\"127.0.0.1:{port2}:22\"]\nkernel = {{ params = [{UNTRIMMED}] }}\n[[vm.untrimmed.users]]\nname = \"me\"\nssh_authorized_keys = [\"{}\"]\n",
        public.trim(),
        public.trim()
    );
    let file = d.work.path().join("bench.toml");
    std::fs::write(&file, spec).expect("spec");
    ok(
        d.cmd(&["create", "-f", file.to_str().expect("utf8")])
            .output()
            .expect("create"),
        "create",
    );

    // Untimed: the first boot of the image builds its ext4 base and the
    // kernel's modules drive.
    ok(
        d.cmd(&["start", "untrimmed"]).output().expect("start"),
        "warm-up start",
    );
    ok(
        d.cmd(&["stop", "untrimmed"]).output().expect("stop"),
        "warm-up stop",
    );
    let (mut full, mut agent, mut untrimmed) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        for (vm, samples) in [
            ("untrimmed", &mut untrimmed),
            ("dev", &mut full),
            ("agent", &mut agent),
        ] {
            samples.push(timed(d.cmd(&["start", vm]), "start"));
            if !(vm == "dev" && i + 1 == runs) {
                ok(d.cmd(&["stop", vm]).output().expect("stop"), "stop");
            }
        }
    }
    let ssh = || {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&key)
        .args(["-p", &port.to_string(), "me@127.0.0.1", "true"]);
        c
    };
    // sshd may start a moment after the agent reports the system up.
    for _ in 0..60 {
        if ssh().output().is_ok_and(|o| o.status.success()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let (mut exec, mut sshs) = (Vec::new(), Vec::new());
    for _ in 0..execs {
        exec.push(timed(d.cmd(&["exec", "dev", "--", "true"]), "exec"));
        sshs.push(timed(ssh(), "ssh"));
    }
    let (f, a) = (median(&mut full), median(&mut agent));
    let u = median(&mut untrimmed);
    let (e, s) = (median(&mut exec), median(&mut sshs));
    println!("boot to ready (median of {runs}): systemd dev box {f:.2} s, agent-as-init {a:.2} s, ratio {:.2}", f / a);
    println!("trimming (median of {runs}): dev box as shipped {f:.2} s, with docker/containerd/e2scrub_reap at boot {u:.2} s, ratio {:.2}; untrimmed ÷ agent-as-init {:.2}", f / u, u / a);
    println!(
        "command round trip (median of {execs}): skiff exec {:.1} ms, ssh {:.1} ms, ratio {:.3}",
        e * 1000.0,
        s * 1000.0,
        e / s
    );
    let _ = d.cmd(&["rm", "-f", "dev", "agent", "untrimmed"]).output();
}
