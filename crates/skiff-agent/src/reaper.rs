//! Reaping children as PID 1.
//!
//! Every process in the guest is a descendant of the agent, and orphans are
//! re-parented to it, so one thread waits for *all* children and hands the
//! statuses of the commands it started to whoever waits for them.
//!
//! The reaper first *peeks* at an exited child (`waitid(WNOWAIT)`), then takes
//! the table lock and only then reaps it. Commands are spawned under that same
//! lock, so (a) a child that exits at once is registered before it is reaped,
//! and (b) the reaper never steals the child that `std` reaps itself when an
//! `exec` fails inside `Command::spawn`.

use crate::log;
use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use skiff_proto::ExitStatus;
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, Sender<ExitStatus>>,
}

/// Shared handle to the reaper.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<(Mutex<Table>, Condvar)>,
}

impl Reaper {
    pub fn start() -> Reaper {
        let reaper = Reaper {
            table: Arc::new((Mutex::new(Table::default()), Condvar::new())),
        };
        let thread_handle = reaper.clone();
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || thread_handle.run());
        if let Err(e) = spawned {
            log(format_args!("cannot start the reaper thread: {e}"));
        }
        reaper
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock only means another thread panicked while holding
        // it; the table itself is still consistent (single inserts/removes).
        self.table.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `spawn` with the reaper held off, and register the pid it returns.
    pub fn spawn_registered<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(T, i32), E>,
    ) -> Result<(T, Receiver<ExitStatus>), E> {
        let mut table = self.lock();
        let (value, pid) = spawn()?;
        let (tx, rx) = channel();
        table.waiters.insert(pid, tx);
        drop(table);
        self.table.1.notify_all();
        Ok((value, rx))
    }

    fn run(&self) {
        loop {
            let peeked = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
            match peeked {
                Ok(status) => match status.pid() {
                    Some(pid) => self.reap(pid),
                    None => std::thread::sleep(Duration::from_millis(10)),
                },
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    // No children at all: sleep until a command is spawned.
                    let table = self.lock();
                    let _ = self.table.1.wait_timeout(table, Duration::from_millis(500));
                }
                Err(e) => {
                    log(format_args!("waitpid failed: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reap `pid` (seen exited) under the lock and tell its waiter, if any.
    fn reap(&self, pid: Pid) {
        let mut table = self.lock();
        let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signal(sig as i32),
            // Already reaped by `Command::spawn` after a failed exec, or
            // not a final state: nothing to hand over.
            _ => return,
        };
        if let Some(tx) = table.waiters.remove(&pid.as_raw()) {
            // The waiter may have given up (connection gone); nothing to do.
            let _ = tx.send(exit);
        }
    }
}
