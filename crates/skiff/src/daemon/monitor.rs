//! Watching a VM's QEMU: keep its console log bounded, clean up when it
//! ends, and apply the restart policy.

use super::manager::{kill_processes, BoxFuture, Manager, ManagerError};
use super::store::VmState;
use skiff_spec::RestartPolicy;
use skiff_vmm::plan::{guest_exit, GuestExit};
use skiff_vmm::ProcessRef;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The console log is cut back to its tail when it grows past this.
const CONSOLE_LOG_MAX: u64 = 8 * 1024 * 1024;
const CONSOLE_LOG_KEEP: u64 = 1024 * 1024;

impl Manager {
    /// After a daemon (re)start: take back VMs whose QEMU still runs, report
    /// those that died meanwhile, and start the autostart ones.
    pub async fn adopt_and_autostart(self: &Arc<Self>) -> Result<(), ManagerError> {
        if let Err(e) = self.drop_run_leases().await {
            eprintln!("skiff daemon: cannot release the leases of earlier runs: {e}");
        }
        for rec in self.store.list()? {
            let mut state = rec.state;
            if rec.state.is_active() {
                match (rec.qemu, rec.vsock, &rec.run_dir) {
                    (Some(q), Some(v), Some(run_dir)) if q.is_alive() => {
                        if let Err(e) = self.start_forwards(&rec) {
                            eprintln!(
                                "skiff daemon: {}: port forwards not restored: {e}",
                                rec.name
                            );
                        }
                        self.store.set_state(
                            &rec.name,
                            VmState::Running,
                            "adopted after a daemon restart",
                        )?;
                        self.spawn_monitor(
                            rec.name.clone(),
                            q,
                            v,
                            None,
                            None,
                            PathBuf::from(run_dir),
                        );
                        continue;
                    }
                    _ => {
                        if let (Some(q), Some(v)) = (rec.qemu, rec.vsock) {
                            kill_processes(q, v);
                        }
                        if let Some(d) = &rec.run_dir {
                            let _ = std::fs::remove_dir_all(d);
                        }
                        self.remove_tap(&rec.id).await;
                        self.remove_cgroup(&rec).await;
                        self.store.clear_processes(&rec.name)?;
                        self.store.set_state(
                            &rec.name,
                            VmState::Exited,
                            "the VM stopped while the daemon was down",
                        )?;
                        state = VmState::Exited;
                    }
                }
            }
            // Autostart brings up VMs that are not running, except those a
            // user stopped on purpose.
            if rec.spec.autostart && matches!(state, VmState::Created | VmState::Exited) {
                let this = self.clone();
                let name = rec.name.clone();
                tokio::spawn(async move {
                    let _ = this.start(&name).await;
                });
            }
        }
        Ok(())
    }

    /// Watch a VM's QEMU until it exits, then clean up and apply the
    /// restart policy.
    pub(super) fn spawn_monitor(
        self: &Arc<Self>,
        name: String,
        qemu: ProcessRef,
        vsock: ProcessRef,
        qemu_child: Option<tokio::process::Child>,
        vsock_child: Option<tokio::process::Child>,
        run_dir: PathBuf,
    ) {
        let this = self.clone();
        let fut: BoxFuture<()> = Box::pin(async move {
            let console = this.paths.vm_dir(&name).join("console.log");
            let code = match qemu_child {
                Some(mut child) => loop {
                    tokio::select! {
                        status = child.wait() => break status.ok().and_then(|s| s.code()),
                        _ = tokio::time::sleep(Duration::from_secs(2)) => trim_console_log(&console),
                    }
                },
                None => {
                    while qemu.is_alive() {
                        trim_console_log(&console);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None
                }
            };
            vsock.signal(nix::sys::signal::Signal::SIGKILL);
            if let Some(mut c) = vsock_child {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            let _ = std::fs::remove_dir_all(&run_dir);
            this.after_exit(&name, qemu, code).await;
        });
        tokio::spawn(fut);
    }

    async fn after_exit(self: &Arc<Self>, name: &str, qemu: ProcessRef, code: Option<i32>) {
        let Ok(Some(rec)) = self.store.get(name) else {
            return;
        };
        if rec.qemu != Some(qemu) || matches!(rec.state, VmState::Stopping | VmState::Stopped) {
            return; // stopped on request, removed, or already replaced by a newer boot
        }
        let exit = guest_exit(code);
        let note = match exit {
            GuestExit::PowerOff => "the guest powered off",
            GuestExit::ServiceSucceeded => "the service exited successfully",
            GuestExit::ServiceFailed => "the service failed",
            GuestExit::Crashed => "QEMU ended unexpectedly",
        };
        let _ = self.store.set_state(name, VmState::Exited, note);
        let _ = self.store.clear_processes(name);
        self.stop_forwards(name);
        self.remove_tap(&rec.id).await;
        self.remove_cgroup(&rec).await;
        let failed = matches!(exit, GuestExit::ServiceFailed | GuestExit::Crashed);
        let (restart, backoff, max_backoff) = match rec.spec.restart {
            RestartPolicy::No => (false, 0, 0),
            RestartPolicy::Always {
                backoff_ms,
                max_backoff_ms,
            } => (true, backoff_ms, max_backoff_ms),
            RestartPolicy::OnFailure {
                max_retries,
                backoff_ms,
                max_backoff_ms,
            } => {
                let within = max_retries.is_none_or(|m| rec.restarts < i64::from(m));
                (failed && within, backoff_ms, max_backoff_ms)
            }
        };
        if !restart {
            return;
        }
        let shift = rec.restarts.clamp(0, 16) as u32;
        let delay = backoff.saturating_mul(1u64 << shift).min(max_backoff);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // Only if nobody started, stopped or removed it meanwhile.
        if let Ok(Some(now)) = self.store.get(name) {
            if now.state == VmState::Exited && now.boots == rec.boots {
                let _ = self.store.count_restart(name);
                let _ = self.start(name).await;
            }
        }
    }
}

/// Keep the console log bounded: a guest that prints for ever must not fill
/// the host's disk. QEMU appends (O_APPEND), so truncation is safe.
fn trim_console_log(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() <= CONSOLE_LOG_MAX {
        return;
    }
    if let Ok(bytes) = std::fs::read(path) {
        let tail = &bytes[bytes.len().saturating_sub(CONSOLE_LOG_KEEP as usize)..];
        let _ = std::fs::write(path.with_extension("log.1"), tail);
    }
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_len(0);
    }
}
