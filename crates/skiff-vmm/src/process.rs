//! A VM's helper processes as the daemon records them: pid *and* start
//! time, so that a daemon restarted later finds them again and never
//! mistakes an unrelated process that reused a pid for one of them.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::process::Command;

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
        // `true` exits at once; from then on it is a zombie until reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.is_alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "an exited, unreaped child still counts as alive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            std::fs::read_to_string(format!("/proc/{}/stat", r.pid))
                .is_ok_and(|s| s.contains(") Z ")),
            "not reaped yet: a zombie"
        );
        let _ = child.wait().await;
    }
}
