//! When each VM was last used and whether it is in use now: what puts an
//! idle VM with `sleep_after` to sleep. Use is what a user sees: an agent
//! connection (exec, cp, a command of the API, a run) while it is open,
//! and a request through the proxy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Activity {
    vms: Mutex<HashMap<String, Use>>,
}

struct Use {
    last: Instant,
    open: usize,
}

/// A VM in use until this is dropped.
pub struct InUse {
    activity: Arc<Activity>,
    vm: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut vms = self.activity.lock();
        if let Some(u) = vms.get_mut(&self.vm) {
            u.open = u.open.saturating_sub(1);
            u.last = Instant::now();
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Use>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM was used just now (a boot or a resume counts: the idle
    /// period starts again).
    pub fn touch(&self, vm: &str) {
        let mut vms = self.lock();
        let u = vms.entry(vm.to_owned()).or_insert(Use {
            last: Instant::now(),
            open: 0,
        });
        u.last = Instant::now();
    }

    /// The VM is in use until the returned mark is dropped.
    pub fn begin(self: &Arc<Self>, vm: &str) -> InUse {
        let mut vms = self.lock();
        let u = vms.entry(vm.to_owned()).or_insert(Use {
            last: Instant::now(),
            open: 0,
        });
        u.open += 1;
        u.last = Instant::now();
        InUse {
            activity: self.clone(),
            vm: vm.to_owned(),
        }
    }

    /// How long the VM has not been used; None while it is. A VM not seen
    /// before starts its idle period now (as after a daemon restart).
    pub fn idle_for(&self, vm: &str) -> Option<Duration> {
        let mut vms = self.lock();
        let u = vms.entry(vm.to_owned()).or_insert(Use {
            last: Instant::now(),
            open: 0,
        });
        (u.open == 0).then(|| u.last.elapsed())
    }

    /// The VM is gone.
    pub fn forget(&self, vm: &str) {
        self.lock().remove(vm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_idle_only_while_nothing_uses_it_and_from_the_last_use() {
        let a = Arc::new(Activity::default());
        assert!(a.idle_for("v").is_some_and(|d| d < Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(a
            .idle_for("v")
            .is_some_and(|d| d >= Duration::from_millis(30)));
        let first = a.begin("v");
        let second = a.begin("v");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.idle_for("v"), None, "in use");
        drop(first);
        assert_eq!(a.idle_for("v"), None, "still in use by the second");
        drop(second);
        let idle = a.idle_for("v").expect("idle");
        assert!(
            idle < Duration::from_millis(30),
            "counted from the end of use: {idle:?}"
        );
        std::thread::sleep(Duration::from_millis(30));
        a.touch("v");
        assert!(a
            .idle_for("v")
            .is_some_and(|d| d < Duration::from_millis(30)));
        // A mark outliving a forgotten VM does nothing.
        let late = a.begin("gone");
        a.forget("gone");
        drop(late);
        assert!(a
            .idle_for("gone")
            .is_some_and(|d| d < Duration::from_secs(1)));
    }
}
