//! Watching a VM's QEMU: keep its console log bounded, clean up when it
//! ends, and apply the restart policy.

use crate::manager::{kill_processes, BoxFuture, Manager, ManagerError};
use crate::store::{Event, VmState};
use skiff_spec::RestartPolicy;
use skiff_vmm::plan::GuestExit;
use skiff_vmm::ProcessRef;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

impl Manager {
    /// After a daemon (re)start: take back VMs whose QEMU still runs, report
    /// those that died meanwhile, and start the autostart ones.
    pub async fn adopt_and_autostart(self: &Arc<Self>) -> Result<(), ManagerError> {
        super::snapshots::remove_partial_snapshots(&self.paths.state_dir);
        for rec in self.store.list()? {
            if rec.ephemeral {
                // A `skiff run` VM: its client went away with the old daemon.
                if let Err(e) = self.remove(&rec.name, true, false).await {
                    tracing::error!(vm = %rec.name, error = %crate::support::error_chain(&e), "cannot remove the VM of an earlier run");
                }
                continue;
            }
            // A `run -d --rm` VM that had ended before the daemon went down.
            if !rec.state.is_active() && self.store.removes_when_ended(&rec.name)? {
                self.remove_ended(&rec.name).await;
                continue;
            }
            let mut state = rec.state;
            let mut restart_now = false;
            let paused_or_between = matches!(
                rec.state,
                VmState::Pausing | VmState::Paused | VmState::Resuming
            );
            if paused_or_between {
                match self.settle_pause(&rec).await {
                    Ok(true) => {
                        if let (Some(q), Some(v), Some(run_dir)) =
                            (rec.qemu, rec.vsock, &rec.run_dir)
                        {
                            self.watch_adopted(&rec, q, v, run_dir);
                        }
                        continue;
                    }
                    Ok(false) => {
                        self.restore_forwards(&rec);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(vm = %rec.name, error = %crate::support::error_chain(&e), "a paused VM is lost");
                    }
                }
            }
            if rec.state.is_active() {
                match (rec.qemu, rec.vsock, &rec.run_dir) {
                    (Some(q), Some(v), Some(run_dir)) if q.is_alive() && !paused_or_between => {
                        tracing::info!(vm = %rec.name, qemu = q.pid, "adopted");
                        self.store.transition(
                            &rec.name,
                            Event::Adopted,
                            "adopted after a daemon restart",
                        )?;
                        self.watch_adopted(&rec, q, v, run_dir);
                        continue;
                    }
                    _ => {
                        if let (Some(q), Some(v)) = (rec.qemu, rec.vsock) {
                            kill_processes(q, v);
                        }
                        self.kill_helpers(&rec.name);
                        if let Some(d) = &rec.run_dir {
                            let _ = std::fs::remove_dir_all(d);
                        }
                        self.remove_tap(&rec.id).await;
                        self.remove_cgroup(&rec).await;
                        self.store.clear_processes(&rec.name)?;
                        self.store.transition(
                            &rec.name,
                            Event::Lost,
                            "the VM stopped while the daemon was down",
                        )?;
                        state = VmState::Exited;
                        if self.store.removes_when_ended(&rec.name)? {
                            self.remove_ended(&rec.name).await;
                            continue;
                        }
                        // Its end went unseen: a death, as far as the
                        // policy is concerned.
                        if restart_wanted(&rec, true).is_some() {
                            let _ = self.store.count_restart(&rec.name);
                            restart_now = true;
                        }
                    }
                }
            }
            // Autostart brings up VMs that are not running, except those a
            // user stopped on purpose.
            let autostart =
                rec.spec.autostart && matches!(state, VmState::Created | VmState::Exited);
            if restart_now || autostart {
                let this = self.clone();
                let name = rec.name.clone();
                tokio::spawn(async move {
                    let _ = this.start(&name).await;
                });
            }
        }
        Ok(())
    }

    /// An adopted VM's port forwards, again (a failure is only noted: the
    /// VM itself runs on).
    fn restore_forwards(&self, rec: &crate::store::VmRecord) {
        if let Err(e) = self.start_forwards(rec) {
            tracing::warn!(vm = %rec.name, error = %crate::support::error_chain(&e), "port forwards not restored");
        }
    }

    /// Take up an adopted VM whose QEMU runs: its forwards and its monitor.
    fn watch_adopted(
        self: &Arc<Self>,
        rec: &crate::store::VmRecord,
        qemu: ProcessRef,
        vsock: ProcessRef,
        run_dir: &str,
    ) {
        self.restore_forwards(rec);
        self.spawn_monitor(
            rec.name.clone(),
            qemu,
            vsock,
            None,
            None,
            PathBuf::from(run_dir),
        );
    }

    /// Remove a `run -d --rm` VM that ended or was stopped (its volumes
    /// stay, as docker keeps named volumes).
    pub(super) async fn remove_ended(self: &Arc<Self>, name: &str) {
        match self.remove(name, true, false).await {
            Ok(()) => tracing::info!(vm = %name, "removed when it ended (--rm)"),
            Err(e) => {
                tracing::error!(vm = %name, error = %crate::support::error_chain(&e), "cannot remove the VM that ended (--rm)")
            }
        }
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
            // Every tick notes the console's growth (the times of `logs
            // -t`); every eighth keeps it bounded.
            let mut watch = ConsoleWatch::default();
            let code = match qemu_child {
                Some(mut child) => loop {
                    tokio::select! {
                        status = child.wait() => break status.ok().and_then(|s| s.code()),
                        _ = tokio::time::sleep(CONSOLE_TICK) => watch.tick(&console),
                    }
                },
                None => {
                    while qemu.is_alive() {
                        watch.tick(&console);
                        tokio::time::sleep(CONSOLE_TICK).await;
                    }
                    None
                }
            };
            if let Ok(Some(rec)) = this.store.get(&name) {
                if stands_aside(rec.state, rec.qemu, qemu) {
                    if let Some(c) = vsock_child {
                        // Still ours to reap when the stop kills it.
                        tokio::spawn(async move {
                            let mut c = c;
                            let _ = c.wait().await;
                        });
                    }
                    return;
                }
            }
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
}

/// Whether the monitor of `ended`, a QEMU that just ended, leaves the VM
/// alone. A pause ends QEMU on purpose: the bridge, the directory and the
/// network wait for the resume. And once the record names another QEMU
/// (a resume's, or none after a stop), that one owns the run directory:
/// cleaning up after the old one would delete the new one's sockets.
fn stands_aside(state: VmState, recorded: Option<ProcessRef>, ended: ProcessRef) -> bool {
    let between = matches!(
        state,
        VmState::Pausing | VmState::Paused | VmState::Resuming
    );
    between || recorded != Some(ended)
}

impl Manager {
    /// What the monitor does after QEMU ended, for a QEMU that ended while
    /// the monitor stood aside (in a pause).
    pub(super) async fn ended_unwatched(
        self: &Arc<Self>,
        rec: &crate::store::VmRecord,
        qemu: ProcessRef,
    ) {
        if let Some(v) = rec.vsock {
            v.signal(nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(d) = &rec.run_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        self.after_exit(&rec.name, qemu, None).await;
    }

    async fn after_exit(self: &Arc<Self>, name: &str, qemu: ProcessRef, code: Option<i32>) {
        let Ok(Some(rec)) = self.store.get(name) else {
            return;
        };
        if rec.qemu != Some(qemu) || matches!(rec.state, VmState::Stopping | VmState::Stopped) {
            return; // stopped on request, removed, or already replaced by a newer boot
        }
        let exit = self.backend.guest_exit(code);
        let note = match exit {
            GuestExit::PowerOff => "the guest powered off",
            GuestExit::ServiceSucceeded => "the service exited successfully",
            GuestExit::ServiceFailed => "the service failed",
            GuestExit::Crashed => "QEMU ended unexpectedly",
        };
        tracing::info!(vm = %name, exit = ?exit, "{note}");
        if self.store.transition(name, Event::Ended, note).is_err() {
            return; // it changed meanwhile (a stop or a failed boot took over)
        }
        self.kill_helpers(name);
        let _ = self.store.clear_processes(name);
        self.stop_forwards(name);
        self.remove_tap(&rec.id).await;
        self.remove_cgroup(&rec).await;
        if self.store.removes_when_ended(name).unwrap_or(false) {
            self.remove_ended(name).await;
            return;
        }
        let failed = matches!(exit, GuestExit::ServiceFailed | GuestExit::Crashed);
        let Some((backoff, max_backoff)) = restart_wanted(&rec, failed) else {
            return;
        };
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

/// How often a running VM's console is looked at.
const CONSOLE_TICK: Duration = Duration::from_millis(250);

/// The watcher's memory of a console log: its size last noted.
#[derive(Default)]
struct ConsoleWatch {
    size: u64,
    ticks: u64,
}

impl ConsoleWatch {
    fn tick(&mut self, console: &std::path::Path) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(8) {
            skiff_vmm::console::trim(console);
        }
        let now_ms = skiff_vmm::console::unix_ms();
        self.size = skiff_vmm::console::note_growth(console, self.size, now_ms);
    }
}

/// Whether `rec`'s restart policy brings it back after an end (`failed`: the
/// service failed or QEMU died), and with which backoff and cap (ms).
fn restart_wanted(rec: &crate::store::VmRecord, failed: bool) -> Option<(u64, u64)> {
    match rec.spec.restart {
        RestartPolicy::No => None,
        RestartPolicy::Always {
            backoff_ms,
            max_backoff_ms,
        } => Some((backoff_ms, max_backoff_ms)),
        RestartPolicy::OnFailure {
            max_retries,
            backoff_ms,
            max_backoff_ms,
        } => {
            let within = max_retries.is_none_or(|m| rec.restarts < i64::from(m));
            (failed && within).then_some((backoff_ms, max_backoff_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu(pid: i32) -> ProcessRef {
        ProcessRef { pid, start_time: 7 }
    }

    #[test]
    fn the_monitor_of_a_replaced_qemu_leaves_the_new_one_alone() {
        // A snapshot's pause and resume, back to back: the old QEMU's end
        // may be seen once the resume has begun (Resuming, old QEMU still
        // recorded) or is done (Running, new QEMU recorded).
        assert!(stands_aside(VmState::Resuming, Some(qemu(1)), qemu(1)));
        assert!(stands_aside(VmState::Running, Some(qemu(2)), qemu(1)));
        assert!(stands_aside(VmState::Paused, Some(qemu(1)), qemu(1)));
        assert!(stands_aside(VmState::Stopped, None, qemu(1)));
    }

    #[test]
    fn the_monitor_of_the_running_qemu_cleans_up_when_it_ends() {
        assert!(!stands_aside(VmState::Running, Some(qemu(1)), qemu(1)));
        assert!(!stands_aside(VmState::Starting, Some(qemu(1)), qemu(1)));
        assert!(!stands_aside(VmState::Stopping, Some(qemu(1)), qemu(1)));
    }
}
