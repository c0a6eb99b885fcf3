//! VMs that sleep when idle (`sleep_after`): the daemon pauses one that
//! nobody has used for that long, and wakes it when it is used again (an
//! exec, a copy, a command of the API, a request through the proxy).

use crate::manager::{Manager, ManagerError};
use crate::store::{VmRecord, VmState};
use std::sync::Arc;
use std::time::Duration;

/// How often idle periods are looked at.
const SLEEP_CHECK: Duration = Duration::from_millis(500);

impl Manager {
    /// Look for idle VMs to put to sleep, for as long as the daemon runs.
    pub fn spawn_sleeper(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SLEEP_CHECK).await;
                let Ok(vms) = this.store.list() else {
                    continue;
                };
                for rec in vms {
                    if this.is_due_to_sleep(&rec).is_some() {
                        let this = this.clone();
                        // Each in a task of its own: a save takes a while,
                        // and one VM's must not hold up another's.
                        tokio::spawn(async move { this.sleep_if_idle(&rec.name).await });
                    }
                }
            }
        });
    }

    /// The idle period a running VM has outlived, if any.
    fn is_due_to_sleep(&self, rec: &VmRecord) -> Option<Duration> {
        let after = Duration::from_millis(rec.spec.sleep_after_ms?);
        if rec.state != VmState::Running
            || self
                .store
                .sandbox(&rec.name)
                .ok()?
                .is_some_and(|s| !s.taken)
        {
            // A pool's warm sandboxes sleep by the pool's own rule.
            return None;
        }
        self.activity
            .idle_for(&rec.name)
            .filter(|idle| *idle >= after)
            .map(|_| after)
    }

    async fn sleep_if_idle(self: &Arc<Self>, name: &str) {
        let lock = self.lock_for(name);
        let Ok(_guard) = lock.try_lock() else {
            // Busy with a stop, a pause or a wake: look again later.
            return;
        };
        // Again under the lock: a use may have begun meanwhile.
        let Some(after) = self.get(name).ok().and_then(|r| self.is_due_to_sleep(&r)) else {
            return;
        };
        let why = format!("asleep after {} s idle", after.as_secs());
        match Box::pin(self.pause_locked_because(name, &why)).await {
            Ok(_) => tracing::info!(vm = %name, "asleep"),
            Err(e) => {
                tracing::warn!(vm = %name, error = %crate::support::error_chain(&e), "cannot put an idle VM to sleep");
                // Not again at once: the next try waits a whole period.
                self.activity.touch(name);
            }
        }
    }

    /// Mark the VM in use until the mark is dropped.
    pub fn in_use(&self, name: &str) -> crate::activity::InUse {
        self.activity.begin(name)
    }

    /// The VM's record, once a VM that sleeps when idle is awake again.
    /// Any other VM's record is returned as it is. The caller marks the VM
    /// in use first ([`Manager::in_use`]): then, once this has held the
    /// VM's lock, no sleep can begin until the mark is dropped, and one
    /// that had begun (it holds the lock) is waited for and undone.
    pub async fn wake_on_demand(self: &Arc<Self>, name: &str) -> Result<VmRecord, ManagerError> {
        let rec = self.get(name)?;
        if rec.spec.sleep_after_ms.is_none() {
            return Ok(rec);
        }
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        let rec = self.get(name)?;
        if rec.state != VmState::Paused {
            return Ok(rec);
        }
        tracing::info!(vm = %name, "waking on use");
        Box::pin(self.resume_locked(name)).await
    }
}
