//! VMs that outlive the process that started them (the daemon's VMs).
//!
//! Their processes get no parent-death signal and lead their own process
//! groups, so a daemon killed with SIGKILL leaves them running; a new daemon
//! finds them again by pid *and* start time (a pid alone may have been
//! reused by an unrelated process).

use crate::launch::LaunchError;
use crate::plan::{LaunchPlan, ProcessPlan};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

/// A process identified by pid and kernel start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot.
    pub start_time: u64,
}

impl ProcessRef {
    /// The process with this pid, as it is now.
    pub fn of(pid: i32) -> Option<ProcessRef> {
        let (start_time, _) = stat(pid)?;
        Some(ProcessRef { pid, start_time })
    }

    /// Whether this very process still runs (not a zombie, not a reused pid).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((start, state)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Send `signal` if this is still the same process.
    pub fn signal(&self, signal: Signal) {
        if self.is_alive() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }
}

/// (start time, state letter) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse
    // after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // `rest` starts at field 3 (state), so field 22 is index 19.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// A VM whose processes do not depend on this process.
pub struct DetachedVm {
    pub qemu: ProcessRef,
    pub vsock: ProcessRef,
    /// The child handles when this process started them (to reap them).
    pub qemu_child: Option<Child>,
    pub vsock_child: Option<Child>,
    /// Where the agent's ready connection arrives.
    pub ready: UnixListener,
}

fn detached_command(p: &ProcessPlan, stderr: File) -> Command {
    let mut cmd = Command::new(&p.program);
    cmd.args(&p.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(false)
        .process_group(0);
    cmd
}

fn spawn(
    p: &ProcessPlan,
    hint: &'static str,
    mut cmd: Command,
) -> Result<(Child, ProcessRef), LaunchError> {
    let child = crate::launch::spawn(p, hint, &mut cmd)?;
    let pid = child.id().and_then(|id| i32::try_from(id).ok());
    let r = pid
        .and_then(ProcessRef::of)
        .ok_or_else(|| LaunchError::Spawn {
            program: p.program.display().to_string(),
            source: io::Error::other("it exited at once"),
        })?;
    Ok((child, r))
}

/// Start the vsock backend and QEMU for `plan`, detached. Their stderr goes
/// to `vsock.log` and `qemu.log` in `log_dir`. On error nothing is left
/// running and the runtime directory is removed.
pub async fn launch_detached(plan: &LaunchPlan, log_dir: &Path) -> Result<DetachedVm, LaunchError> {
    crate::launch::create_run_dir(&plan.run_dir)?;
    let cleanup_dir = |e: LaunchError| {
        let _ = std::fs::remove_dir_all(&plan.run_dir);
        e
    };
    let log = |name: &str| {
        File::create(log_dir.join(name)).map_err(|source| LaunchError::RunDir {
            path: log_dir.join(name),
            source,
        })
    };
    let ready = UnixListener::bind(&plan.ready_socket)
        .map_err(|source| LaunchError::RunDir {
            path: plan.ready_socket.clone(),
            source,
        })
        .map_err(cleanup_dir)?;

    let vsock_log = log("vsock.log").map_err(cleanup_dir)?;
    let (mut vsock_child, vsock) = spawn(
        &plan.vsock_backend,
        "build it once with `cargo install --locked vhost-device-vsock`, or run scripts/setup.sh",
        detached_command(&plan.vsock_backend, vsock_log),
    )
    .map_err(cleanup_dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !plan.vhost_socket.exists() {
        if Instant::now() > deadline || !vsock.is_alive() {
            let _ = vsock_child.start_kill();
            let _ = vsock_child.wait().await;
            let stderr = std::fs::read_to_string(log_dir.join("vsock.log")).unwrap_or_default();
            return Err(cleanup_dir(LaunchError::VsockBackend {
                stderr: stderr.trim().to_owned(),
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // virtiofsd processes exit on their own when QEMU goes away.
    let mut virtiofsd = Vec::new();
    for (i, (p, socket)) in plan.virtiofsd.iter().enumerate() {
        let started = log(&format!("virtiofsd{i}.log"))
            .and_then(|f| spawn(p, crate::launch::VIRTIOFSD_HINT, detached_command(p, f)));
        let ok = match started {
            Ok((child, r)) => {
                virtiofsd.push(child);
                let deadline = Instant::now() + Duration::from_secs(10);
                while !socket.exists() && r.is_alive() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                socket.exists()
            }
            Err(e) => {
                for mut c in virtiofsd.drain(..) {
                    let _ = c.start_kill();
                }
                let _ = vsock_child.start_kill();
                return Err(cleanup_dir(e));
            }
        };
        if !ok {
            for mut c in virtiofsd.drain(..) {
                let _ = c.start_kill();
            }
            let _ = vsock_child.start_kill();
            let stderr = std::fs::read_to_string(log_dir.join(format!("virtiofsd{i}.log")))
                .unwrap_or_default();
            return Err(cleanup_dir(LaunchError::Share {
                stderr: stderr.trim().to_owned(),
            }));
        }
    }
    let qemu_log = match log("qemu.log") {
        Ok(f) => f,
        Err(e) => {
            let _ = vsock_child.start_kill();
            return Err(cleanup_dir(e));
        }
    };
    match spawn(
        &plan.qemu,
        "install the Debian package qemu-system-x86",
        detached_command(&plan.qemu, qemu_log),
    ) {
        Ok((qemu_child, qemu)) => Ok(DetachedVm {
            qemu,
            vsock,
            qemu_child: Some(qemu_child),
            vsock_child: Some(vsock_child),
            ready,
        }),
        Err(e) => {
            let _ = vsock_child.start_kill();
            let _ = vsock_child.wait().await;
            Err(cleanup_dir(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessRef::of(std::process::id() as i32).expect("own stat");
        assert!(me.is_alive());
        let imposter = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !imposter.is_alive(),
            "a reused pid must not count as the same process"
        );
        assert!(ProcessRef::of(i32::MAX).is_none());
    }

    #[tokio::test]
    async fn an_exited_child_is_not_alive_even_before_it_is_reaped() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let r = ProcessRef::of(child.id().expect("pid") as i32).expect("a zombie still has a stat");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!r.is_alive(), "a zombie is not alive");
        let _ = child.wait().await;
    }
}
