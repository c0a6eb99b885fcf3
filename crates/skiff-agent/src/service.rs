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
use std::process::{Command, Stdio};

/// I/O port of QEMU's `isa-debug-exit` device (see skiff-vmm's plan).
const DEBUG_EXIT_PORT: u16 = 0xf4;

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
    if let Err(e) = write_debug_exit(u8::from(failed)) {
        crate::log(format_args!("cannot report the service status: {e}"));
    }
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    crate::log(format_args!("power off failed: {e}"));
}

/// Write one byte to the debug-exit I/O port. QEMU exits at once, so this
/// returns only on failure (or without that device).
#[cfg(target_arch = "x86_64")]
fn write_debug_exit(value: u8) -> std::io::Result<()> {
    // The guest kernel has no /dev/port (CONFIG_DEVPORT is off in Debian's
    // cloud kernel), so take the port with ioperm and write it directly.
    // SAFETY: ioperm only changes this thread's I/O permission bitmap for
    // one port; it touches no memory. We run as root (PID 1).
    let rc = unsafe { libc::ioperm(libc::c_ulong::from(DEBUG_EXIT_PORT), 1, 1) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `out` to the port granted above. The port belongs to QEMU's
    // isa-debug-exit device (or to nothing, in which case the write is
    // ignored); it has no effect on this process's memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") value, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn write_debug_exit(_value: u8) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "no debug-exit port on this architecture",
    ))
}
