//! The VM's service: a command that runs for the VM's whole life.
//!
//! Its output goes to the console (the host keeps it as the VM's log), it
//! does not depend on the connection that started it, and when it exits the
//! agent reports how through QEMU's debug-exit port and powers off, so that
//! the host's restart policy can tell success from failure.

use crate::exec::{send, FrameSink};
use crate::reaper::Reaper;
use skiff_proto::{ExitStatus, Message};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};

/// I/O port of QEMU's `isa-debug-exit` device (see skiff-vmm's plan).
const DEBUG_EXIT_PORT: u64 = 0xf4;

pub fn start(mut cmd: Command, program: &str, sink: &FrameSink, reaper: &Reaper) {
    let console = || {
        OpenOptions::new()
            .write(true)
            .open("/dev/console")
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    };
    cmd.stdin(Stdio::null()).stdout(console()).stderr(console());
    let spawned = reaper.spawn_registered(|| {
        cmd.spawn().map(|child| {
            let pid = child.id() as i32;
            (child, pid)
        })
    });
    let (child, exit_rx) = match spawned {
        Ok(v) => v,
        Err(e) => {
            let _ = send(
                sink,
                &Message::Error(format!("cannot start the service {program}: {e}")),
            );
            return;
        }
    };
    let _ = send(sink, &Message::Started(child.id()));
    let program = program.to_owned();
    let watcher = std::thread::Builder::new()
        .name("service".into())
        .spawn(move || {
            let status = exit_rx.recv().unwrap_or(ExitStatus::Signal(libc::SIGKILL));
            crate::log(format_args!(
                "service {program} ended: {status:?}; powering off"
            ));
            report_and_power_off(status);
        });
    if let Err(e) = watcher {
        crate::log(format_args!("cannot watch the service: {e}"));
    }
}

/// Write 0 (success) or 1 (failure) to the debug-exit port: QEMU then exits
/// with status 1 or 3. Without that device, power off (QEMU exits with 0).
fn report_and_power_off(status: ExitStatus) {
    let failed = status != ExitStatus::Code(0);
    if std::process::id() != 1 {
        return;
    }
    nix::unistd::sync();
    if let Ok(port) = OpenOptions::new().write(true).open("/dev/port") {
        let _ = port.write_at(&[u8::from(failed)], DEBUG_EXIT_PORT);
    }
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    crate::log(format_args!("power off failed: {e}"));
}
