//! Pause and resume: a pausable VM's whole state saved to disk and its
//! QEMU gone (its memory back to the host), then a new QEMU started from
//! the snapshot with the same devices, address and identity. The control
//! channel's bridge, the TAP and the runtime directory stay while paused,
//! so the guest's agent, network and drives are where they were.
//!
//! A VM is always either running or paused: a failed save lets it run on,
//! a failed restore leaves it paused with its snapshot, and a daemon that
//! dies in between finds out which at adoption.

use crate::manager::{Manager, ManagerError};
use crate::store::{Event, VmRecord, VmState};
use skiff_vmm::plan::{ProcessPlan, MONITOR_SOCKET};
use skiff_vmm::snapshot;
use skiff_vmm::ProcessRef;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a restore may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a save may take (QEMU's own limit inside is 300 s).
const SAVE_TIMEOUT: Duration = Duration::from_secs(330);

/// The QEMU command of a pausable boot, kept in its runtime directory for
/// the resumes.
const QEMU_PLAN: &str = "qemu.json";

/// Why a pause or resume did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error(
        "{0} was not started as a pausable VM; set `pausable = true` in its spec and restart it"
    )]
    NotPausable(String),
    #[error("cannot pause {name}")]
    Save {
        name: String,
        #[source]
        source: snapshot::SnapshotError,
    },
    #[error("cannot resume {name}; it stays paused")]
    Restore {
        name: String,
        #[source]
        source: snapshot::SnapshotError,
    },
    #[error("cannot start QEMU to resume {name}; it stays paused")]
    Launch {
        name: String,
        #[source]
        source: skiff_vmm::LaunchError,
    },
    #[error("the saved QEMU command of {name} is missing or damaged ({why}); stop the VM to discard its state")]
    Plan { name: String, why: String },
}

/// Where a VM's snapshot lives (its directory, so that it outlives /run).
pub fn snapshot_file(vm_dir: &Path) -> PathBuf {
    vm_dir.join("paused").join("state.bin")
}

/// Keep a pausable boot's QEMU command for later resumes.
pub fn keep_qemu_plan(run_dir: &Path, qemu: &ProcessPlan) -> std::io::Result<()> {
    let value = serde_json::json!({
        "program": qemu.program.to_string_lossy(),
        "args": qemu.args,
    });
    std::fs::write(run_dir.join(QEMU_PLAN), value.to_string())
}

fn kept_qemu_plan(run_dir: &Path) -> Result<ProcessPlan, String> {
    let text = std::fs::read_to_string(run_dir.join(QEMU_PLAN)).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let program = v["program"].as_str().ok_or("no program")?;
    let args = v["args"]
        .as_array()
        .ok_or("no arguments")?
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_owned)
                .ok_or("an argument is not text")
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ProcessPlan {
        program: program.into(),
        args,
        ..ProcessPlan::default()
    })
}

impl Manager {
    fn monitor_socket(rec: &VmRecord) -> Option<PathBuf> {
        let sock = Path::new(rec.run_dir.as_deref()?).join(MONITOR_SOCKET);
        sock.exists().then_some(sock)
    }

    /// Save a running pausable VM and end its QEMU.
    pub async fn pause(self: &Arc<Self>, name: &str) -> Result<VmRecord, ManagerError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        self.pause_locked(name).await
    }

    /// Put a warm sandbox of a pool to sleep, unless it was taken meanwhile
    /// (a taker waits for this lock before it uses its sandbox).
    pub(super) async fn put_sandbox_to_sleep(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(), ManagerError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        if self.store.sandbox(name)?.is_some_and(|s| !s.taken) {
            self.pause_locked(name).await?;
        }
        Ok(())
    }

    /// A taken sandbox may have been put to sleep just before its take:
    /// wait for that, and wake it.
    pub(super) async fn wake_if_asleep(self: &Arc<Self>, name: &str) -> Result<(), ManagerError> {
        drop(self.lock_for(name).lock().await);
        match self.get(name)?.state {
            VmState::Running => Ok(()),
            VmState::Paused => self.resume(name).await.map(drop),
            state => Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "hand out",
                state: state.as_str(),
            }),
        }
    }

    async fn pause_locked(self: &Arc<Self>, name: &str) -> Result<VmRecord, ManagerError> {
        Box::pin(self.pause_locked_because(name, "")).await
    }

    /// Pause, with `why` in the record (empty: on request).
    pub(super) async fn pause_locked_because(
        self: &Arc<Self>,
        name: &str,
        why: &str,
    ) -> Result<VmRecord, ManagerError> {
        let rec = self.get(name)?;
        if rec.state != VmState::Running {
            return Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "pause",
                state: rec.state.as_str(),
            });
        }
        let Some(qmp) = Self::monitor_socket(&rec) else {
            return Err(PauseError::NotPausable(name.to_owned()).into());
        };
        let file = snapshot_file(&self.paths.vm_dir(name));
        // An older snapshot must never stand in for this pause.
        self.discard_snapshot(name);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|source| PauseError::Save {
                name: name.to_owned(),
                source: snapshot::SnapshotError::Write {
                    path: dir.to_owned(),
                    source,
                },
            })?;
        }
        self.store.transition(name, Event::Pause, why)?;
        let started = Instant::now();
        let saved = match tokio::time::timeout(SAVE_TIMEOUT, snapshot::save(&qmp, &file)).await {
            Ok(saved) => saved,
            Err(_) => {
                // The save's own undo did not run: let the guest go on.
                snapshot::undo_save(&qmp).await;
                Err(snapshot::SnapshotError::Timeout {
                    what: "save the VM",
                    timeout: SAVE_TIMEOUT,
                })
            }
        };
        match saved {
            Ok(manifest) => {
                // QEMU quits once saved; its monitor sees a pause, not an end.
                if let Some(q) = rec.qemu {
                    wait_gone(q, Duration::from_secs(10)).await;
                    q.signal(nix::sys::signal::Signal::SIGKILL);
                }
                let note = format!(
                    "paused{}{why}: {} MiB saved in {} ms",
                    if why.is_empty() { "" } else { ", " },
                    manifest.size >> 20,
                    manifest.save_ms
                );
                self.store.transition(name, Event::Saved, &note)?;
                tracing::debug!(vm = %name, ms = started.elapsed().as_millis() as u64, "pause took");
                tracing::info!(vm = %name, bytes = manifest.size, "paused");
                self.get(name)
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
                self.store.transition(name, Event::PauseFailed, "")?;
                // A QEMU that died in the save ended the VM; its monitor
                // left that to us. In a task of its own: it may remove or
                // restart the VM, which takes the lock this pause holds.
                if let Some(q) = rec.qemu.filter(|q| !q.is_alive()) {
                    let (this, rec) = (self.clone(), rec.clone());
                    let ended: super::BoxFuture<()> =
                        Box::pin(async move { this.ended_unwatched(&rec, q).await });
                    tokio::spawn(ended);
                }
                Err(PauseError::Save {
                    name: name.to_owned(),
                    source,
                }
                .into())
            }
        }
    }

    /// Start a paused VM again from its snapshot.
    pub async fn resume(self: &Arc<Self>, name: &str) -> Result<VmRecord, ManagerError> {
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        // Boxed, here and wherever a resume is awaited: the restore's
        // future is large, and nested inline in a take's it overflowed a
        // worker thread's stack.
        Box::pin(self.resume_locked(name)).await
    }

    pub(super) async fn resume_locked(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<VmRecord, ManagerError> {
        let rec = self.get(name)?;
        if rec.state != VmState::Paused {
            return Err(ManagerError::WrongState {
                name: name.to_owned(),
                action: "resume",
                state: rec.state.as_str(),
            });
        }
        let file = snapshot_file(&self.paths.vm_dir(name));
        let restore_err = |source| PauseError::Restore {
            name: name.to_owned(),
            source,
        };
        let manifest = snapshot::check(&file).map_err(restore_err)?;
        let (Some(run_dir), Some(vsock)) = (rec.run_dir.clone(), rec.vsock) else {
            return Err(PauseError::Plan {
                name: name.to_owned(),
                why: "no runtime directory is recorded".into(),
            }
            .into());
        };
        let run_dir = PathBuf::from(run_dir);
        let plan = kept_qemu_plan(&run_dir).map_err(|why| PauseError::Plan {
            name: name.to_owned(),
            why,
        })?;
        self.store.transition(name, Event::Resume, "")?;
        let started = Instant::now();
        match Box::pin(self.restore(&rec, &plan, &run_dir, vsock, &file, &manifest)).await {
            Ok(qemu) => {
                tracing::info!(vm = %name, qemu = qemu.pid, "resumed");
                // Its state lives in the guest again; the file is stale.
                self.discard_snapshot(name);
                self.store.transition(name, Event::Resumed, "resumed")?;
                // The idle period of a VM that sleeps starts again.
                self.activity.touch(name);
                tracing::debug!(vm = %name, ms = started.elapsed().as_millis() as u64, "resume took");
                self.get(name)
            }
            Err(e) => {
                let note = crate::support::error_chain(&e);
                self.store.transition(name, Event::ResumeFailed, &note)?;
                Err(e.into())
            }
        }
    }

    async fn restore(
        self: &Arc<Self>,
        rec: &VmRecord,
        plan: &ProcessPlan,
        run_dir: &Path,
        vsock: ProcessRef,
        file: &Path,
        manifest: &snapshot::Manifest,
    ) -> Result<ProcessRef, PauseError> {
        let name = rec.name.clone();
        let qmp = run_dir.join(MONITOR_SOCKET);
        // The old QEMU's socket file is stale: QEMU makes a new one.
        let _ = std::fs::remove_file(&qmp);
        let log = self.paths.vm_dir(&name).join("qemu.log");
        let mut qemu = skiff_vmm::launch::spawn_qemu(plan, &snapshot::INCOMING_ARGS, &log)
            .map_err(|source| PauseError::Launch {
                name: name.clone(),
                source,
            })?;
        // Recorded at once: a daemon that dies during the restore leaves
        // its successor a QEMU to end, not one it does not know.
        let run_dir_text = run_dir.to_string_lossy().into_owned();
        if let Err(e) = self
            .store
            .set_processes(&name, qemu.process, vsock, &run_dir_text)
        {
            qemu.kill().await;
            return Err(PauseError::Plan {
                name,
                why: format!("cannot record the new QEMU ({e})"),
            });
        }
        let limits = crate::resolve::limits_for(&rec.spec);
        if let Err(e) = self.limit(rec, &limits, &[qemu.process.pid]) {
            tracing::warn!(vm = %name, error = %e, "the resumed QEMU is not under the VM's limits");
        }
        let restored = restore_into(&qmp, file, manifest, qemu.process).await;
        if let Err(source) = restored {
            // A guest that runs was resumed (`cont` comes after the
            // checksum): killing it would roll it back onto newer disks.
            if !guest_runs(Some(&qmp)).await {
                qemu.kill().await;
                return Err(PauseError::Restore { name, source });
            }
            tracing::warn!(vm = %name, error = %source, "the resume reported an error, but the guest runs");
        }
        let process = qemu.process;
        // The guest slept through the pause: its clock is behind.
        if let Err(e) = set_guest_clock(run_dir).await {
            tracing::warn!(vm = %name, error = %e, "cannot set the resumed guest's clock");
        }
        self.spawn_monitor(
            name,
            process,
            vsock,
            qemu.child.take(),
            None,
            run_dir.to_owned(),
        );
        Ok(process)
    }

    /// At adoption: settle a VM a dead daemon left pausing, paused or
    /// resuming. True when it runs (and needs a monitor).
    pub(super) async fn settle_pause(&self, rec: &VmRecord) -> Result<bool, ManagerError> {
        let name = &rec.name;
        let qemu_alive = rec.qemu.is_some_and(|q| q.is_alive());
        let bridge_alive = rec.vsock.is_some_and(|v| v.is_alive());
        let file = snapshot_file(&self.paths.vm_dir(name));
        let saved = snapshot::check(&file).is_ok();
        let qmp = Self::monitor_socket(rec);
        match rec.state {
            VmState::Resuming if qemu_alive && guest_runs(qmp.as_deref()).await => {
                // `cont` comes only after the checksum passed: the resume
                // was done, and the guest has run since (its disks moved on).
                self.store
                    .transition(name, Event::Adopted, "adopted after a resume")?;
                self.discard_snapshot(name);
                Ok(true)
            }
            VmState::Resuming if qemu_alive && saved && bridge_alive => {
                // Still loading or waiting for its checksum: end it; the
                // snapshot resumes again.
                if let Some(q) = rec.qemu {
                    q.signal(nix::sys::signal::Signal::SIGKILL);
                    wait_gone(q, Duration::from_secs(5)).await;
                }
                self.store
                    .transition(name, Event::ResumeFailed, "the resume was cut short")?;
                Ok(false)
            }
            VmState::Pausing if qemu_alive => {
                // The save was cut short: undo it, the guest runs on.
                if let Some(qmp) = qmp {
                    snapshot::undo_save(&qmp).await;
                }
                self.store
                    .transition(name, Event::Adopted, "adopted while pausing")?;
                Ok(true)
            }
            VmState::Pausing if saved && bridge_alive => {
                self.store.transition(name, Event::Saved, "paused")?;
                Ok(false)
            }
            VmState::Resuming if saved && bridge_alive => {
                self.store
                    .transition(name, Event::ResumeFailed, "the resume was cut short")?;
                Ok(false)
            }
            VmState::Paused if saved && bridge_alive => {
                self.store
                    .transition(name, Event::Adopted, "adopted while paused")?;
                Ok(false)
            }
            _ => Err(ManagerError::internal(
                format!("recover {name}"),
                format!(
                    "it was {} and its QEMU, bridge or snapshot is gone",
                    rec.state.as_str()
                ),
            )),
        }
    }

    /// A stopped VM has no state to resume.
    pub(super) fn discard_snapshot(&self, name: &str) {
        if let Some(dir) = snapshot_file(&self.paths.vm_dir(name)).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Load `file` into the QEMU `qemu` (started to take a snapshot in) and
/// let its guest run; a QEMU that ends on the way fails it at once.
pub(super) async fn restore_into(
    qmp: &Path,
    file: &Path,
    manifest: &snapshot::Manifest,
    qemu: ProcessRef,
) -> Result<(), snapshot::SnapshotError> {
    // The inner limit ends it first; this one only catches a QEMU that
    // stopped answering.
    let outer = RESTORE_TIMEOUT + Duration::from_secs(15);
    let restored = tokio::time::timeout(
        outer,
        snapshot::restore(qmp, file, manifest, RESTORE_TIMEOUT),
    );
    let gone = async {
        while qemu.is_alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = restored => r.unwrap_or(Err(snapshot::SnapshotError::Timeout {
            what: "load the snapshot",
            timeout: outer,
        })),
        () = gone => Err(snapshot::SnapshotError::LoadFailed(
            "QEMU ended before the guest ran (its log: qemu.log in the VM's directory)".into(),
        )),
    }
}

/// Whether the QEMU behind `qmp` runs its guest.
async fn guest_runs(qmp: Option<&Path>) -> bool {
    let Some(qmp) = qmp else {
        return false;
    };
    let asked = async {
        let mut m = skiff_vmm::qmp::Qmp::connect(qmp).await.ok()?;
        m.execute("query-status", None).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(5), asked).await {
        Ok(Some(status)) => status["status"] == "running",
        _ => false,
    }
}

/// Tell the agent the host's time.
async fn set_guest_clock(run_dir: &Path) -> Result<(), String> {
    ask_agent(run_dir, skiff_proto::Message::SetClock(host_time_ns()?)).await
}

/// The host's wall-clock time, in nanoseconds since 1970.
pub(super) fn host_time_ns() -> Result<u64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    u64::try_from(now.as_nanos()).map_err(|e| e.to_string())
}

/// Send the agent one request that it answers with `Exited` or `Error`.
pub(super) async fn ask_agent(run_dir: &Path, request: skiff_proto::Message) -> Result<(), String> {
    use skiff_proto::Message;
    let sock = run_dir.join("vsock.sock");
    let mut conn =
        skiff_vmm::AgentConn::connect(&sock, skiff_proto::AGENT_PORT, Duration::from_secs(10))
            .await
            .map_err(|e| crate::support::error_chain(&e))?;
    conn.writer
        .send(&request)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), conn.reader.recv()).await {
        Ok(Ok(Some(Message::Exited(skiff_proto::ExitStatus::Code(0))))) => Ok(()),
        Ok(Ok(Some(Message::Exited(other)))) => Err(format!("the agent answered {other:?}")),
        Ok(Ok(Some(Message::Error(e)))) => Err(e),
        Ok(Ok(Some(other))) => Err(format!("unexpected {} answer", other.name())),
        Ok(Ok(None)) => Err("the agent closed the connection".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

async fn wait_gone(p: ProcessRef, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while p.is_alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
