//! Shared fixture for end-to-end tests: every test gets its own runtime
//! directory, runs the real `skiff` binary (which boots real VMs with QEMU),
//! and checks afterwards that no process or runtime file was left behind.

#![allow(dead_code)] // each test file uses a different part of this fixture

pub mod daemon;
pub mod netns;

/// Build the Debian package with scripts/package-deb.sh; its path.
pub fn debian_package() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/package-deb.sh");
    let out = Command::new(script)
        .stdin(Stdio::null())
        .output()
        .expect("package-deb.sh");
    assert!(out.status.success(), "package-deb.sh: {}", stderr(&out));
    let text = stdout(&out);
    let deb = text.lines().last().unwrap_or_default();
    assert!(deb.ends_with("_amd64.deb"), "{text}");
    format!("{}/../../{deb}", env!("CARGO_MANIFEST_DIR"))
}
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Env {
    pub runtime: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            runtime: tempfile::Builder::new()
                .prefix("skiff-e2e")
                .tempdir()
                .expect("runtime tempdir"),
        }
    }

    /// A `skiff` command using this test's runtime directory, state
    /// directory and daemon socket (`skiff run` starts that daemon).
    pub fn skiff(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.env("SKIFF_RUNTIME_DIR", self.runtime.path())
            .env("SKIFF_STATE_DIR", self.runtime.path().join("state"))
            .env("SKIFF_SOCKET", self.runtime.path().join("skiff.sock"))
            .env_remove("SKIFF_STANDALONE");
        cmd
    }

    /// `skiff run -q [extra...] -- argv...`, stdin from `input`.
    pub fn run(&self, extra: &[&str], argv: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = self.skiff();
        cmd.arg("run").arg("-q").args(extra).arg("--").args(argv);
        output_with_input(&mut cmd, input)
    }

    /// Assert that nothing of this test's VMs survives: no process mentions
    /// the runtime directory, and the directory holds no VM files.
    pub fn assert_clean(&self) {
        assert_no_processes_under(self.runtime.path());
        let vms = self.runtime.path().join("vms");
        if vms.exists() {
            let left: Vec<_> = std::fs::read_dir(&vms)
                .expect("read vms")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "runtime files left behind: {left:?}");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop the daemon `skiff run` started for this test.
        let pid_file = self.runtime.path().join("state/daemon.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn output_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    use std::io::Write;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn skiff");
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("wait skiff")
}

/// Processes whose command line mentions `dir` (QEMU and the vsock backend
/// are given paths inside the VM's runtime directory).
pub fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        // The skiff process itself only has the directory in its environment.
        if cmdline.contains(&needle) {
            found.push(format!("{}: {}", name.to_string_lossy(), cmdline));
        }
    }
    found
}

pub fn assert_no_processes_under(dir: &Path) {
    // Killed processes may need a moment to be reaped by their parent.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cached kernel the default image boots, from `skiff image prepare`.
pub fn prepared_image(env: &Env) -> serde_json::Value {
    let out = env
        .skiff()
        .args(["image", "prepare", "--json"])
        .output()
        .expect("image prepare");
    assert!(
        out.status.success(),
        "image prepare failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("image prepare json")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn path(v: &serde_json::Value, key: &str) -> PathBuf {
    PathBuf::from(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {v}")),
    )
}

/// A minimal root filesystem: a static busybox and its applets.
pub fn busybox_rootfs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    std::fs::write(dir.join("etc/marker"), "from-the-host-rootfs\n").expect("write");
}

/// The unprivileged owner the tests give writable shares to: a root daemon
/// writes a share as its owner, and refuses a root-owned one.
#[allow(dead_code)]
pub const SHARE_OWNER: u32 = 4242;

/// Give `dir` and everything under it to [`SHARE_OWNER`] (when root).
#[allow(dead_code)]
pub fn give_to_share_owner(dir: &std::path::Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let id = Some(nix::unistd::Uid::from_raw(SHARE_OWNER));
    let gid = Some(nix::unistd::Gid::from_raw(SHARE_OWNER));
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        nix::unistd::fchownat(None, &p, id, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .expect("chown");
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
                stack.push(e.path());
            }
        }
    }
}

/// A TCP/UDP port on 127.0.0.1 for a test to hand to skiff: free now, and
/// below the kernel's ephemeral range, which `bind(…:0)` and outgoing
/// connections draw from, so nothing else in this run takes it between
/// here and skiff's bind. Each call in a process gets another port, and
/// processes start at different offsets.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = 8000.min(low.saturating_sub(1024));
    let start = std::process::id() * 97;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low - span + (start + n) % span) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

/// A cache of a test's own: images are built in it from nothing, while
/// the kernel and initramfs come from the shared cache (`image prepare`).
pub fn private_cache(env: &Env) -> tempfile::TempDir {
    let prepared = prepared_image(env);
    let kernel = path(&prepared, "kernel");
    let initrd = path(&prepared, "initrd");
    // .../kernels/<package>/boot/vmlinuz-*
    let kernels = kernel.ancestors().nth(3).expect("the kernels directory");
    let initramfs = initrd.parent().expect("the initramfs directory");
    let cache = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(kernels, cache.path().join("kernels")).expect("link");
    std::os::unix::fs::symlink(initramfs, cache.path().join("initramfs")).expect("link");
    cache
}

/// A file's length.
pub fn path_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}
