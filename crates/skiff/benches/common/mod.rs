//! A daemon for benchmarks, on temporary directories, optionally inside a
//! network namespace of its own (for managed networks). Dropping it kills
//! the daemon and its VMs and deletes the namespace.

#![allow(dead_code)] // each benchmark uses part of it

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `--NAME VALUE` from the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// A process's proportional set size; a process that is gone or a file
/// without the field is a broken measurement, not a zero.
pub fn pss_kib(pid: i64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no Pss for process {pid}"))
}

pub struct BenchDaemon {
    pub work: tempfile::TempDir,
    netns: Option<String>,
    child: Child,
}

impl BenchDaemon {
    /// Start `skiff daemon EXTRA...`; in a fresh namespace when `netns`
    /// (needs root).
    pub fn start(netns: bool, extra: &[&str]) -> BenchDaemon {
        let work = tempfile::tempdir().expect("tempdir");
        let netns = netns.then(|| {
            let name = format!("skbench{}", std::process::id());
            let made = Command::new("ip").args(["netns", "add", &name]).status();
            assert!(made.is_ok_and(|s| s.success()), "ip netns add (needs root)");
            let _ = Command::new("ip")
                .args(["-n", &name, "link", "set", "lo", "up"])
                .status();
            name
        });
        let mut args = vec!["daemon"];
        args.extend(extra);
        let child = Self::command(&work, netns.as_deref(), &args)
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon");
        let d = BenchDaemon { work, netns, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(d.socket()).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn command(work: &tempfile::TempDir, netns: Option<&str>, args: &[&str]) -> Command {
        let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(skiff);
                c
            }
            None => Command::new(skiff),
        };
        c.args(args)
            .env("SKIFF_SOCKET", work.path().join("skiff.sock"))
            .env("SKIFF_STATE_DIR", work.path().join("state"))
            .env("SKIFF_RUNTIME_DIR", work.path().join("run"));
        c
    }

    pub fn socket(&self) -> std::path::PathBuf {
        self.work.path().join("skiff.sock")
    }

    /// A `skiff` command against this daemon (in its namespace).
    pub fn cmd(&self, args: &[&str]) -> Command {
        Self::command(&self.work, self.netns.as_deref(), args)
    }

    /// Run and require success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run skiff");
        assert!(
            out.status.success(),
            "skiff {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Move this thread into the daemon's namespace, to measure from the
    /// host side of its networks.
    pub fn enter_netns(&self) {
        let ns = self.netns.as_deref().expect("a daemon in a namespace");
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let run = self.work.path().join("run").display().to_string();
        let _ = Command::new("pkill").args(["-9", "-f", &run]).status();
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
