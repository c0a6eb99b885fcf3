//! skiff-agent: the guest's PID 1.
//!
//! It prepares the guest (mounts, kernel modules), tells the host it is ready
//! over vsock, then serves exec/shutdown requests. It must never panic on a
//! recoverable error: a PID 1 that exits takes the whole VM down with it.

mod drives;
mod exec;
mod files;
mod identity;
mod init;
mod net;
mod pty;
mod reaper;
mod renew;
mod rootdisk;
mod rootfs;
mod serial;
mod server;
mod service;
mod sysinit;
mod usage;
mod users;
mod watch;

use skiff_proto::BootTimes;
use std::time::Duration;

fn main() {
    let init_start_ms = init::uptime_ms();
    let is_init = std::process::id() == 1;
    if is_init {
        init::prepare_system();
    }
    // After prepare_system: /proc is mounted only then.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if is_init {
        let set_up = PROBLEMS.lock().map(|p| p.is_empty()).unwrap_or(false);
        if sysinit::wanted(&cmdline) && set_up {
            // Returns only if the guest's init cannot run (a problem for
            // the host's hello); otherwise the agent comes back as its
            // service.
            sysinit::hand_over();
        }
    } else if sysinit::wanted(&cmdline) {
        sysinit::wait_for_target(&sysinit::target(&cmdline));
    }
    let reaper = reaper::Reaper::start();
    let init_done_ms = init::uptime_ms();
    let boot = BootTimes {
        init_start_ms,
        init_done_ms,
        ready_ms: 0,
    };
    server::serve(boot, reaper);
    // serve() only returns if the control channel cannot be set up at all.
    // As PID 1 we must not exit (that panics the kernel); keep the VM alive
    // so the host's boot timeout reports the console output.
    if is_init {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// What init could not set up as the host asked; sent in every hello.
pub(crate) static PROBLEMS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Record a setup problem for the host, and log it.
pub(crate) fn problem(msg: String) {
    log(format_args!("{msg}"));
    PROBLEMS.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
}

/// Log a line to the console (PID 1's stderr is /dev/console).
pub(crate) fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("skiff-agent: {msg}");
}
