//! Commands on a pseudo-terminal (`skiff shell`): one output stream, and
//! the terminal's line discipline turns Ctrl-C into SIGINT in the guest.

use crate::exec::{fail, spawn_reader, spawn_stdin_writer, spawn_waiter, FrameSink, Running};
use crate::reaper::Reaper;
use nix::pty::{openpty, Winsize};
use skiff_proto::{Message, WindowSize};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn winsize(size: WindowSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

pub fn start(
    mut cmd: Command,
    program: &str,
    size: WindowSize,
    sink: FrameSink,
    reaper: &Reaper,
    report_pid: bool,
) -> Option<Running> {
    let pty = match openpty(Some(&winsize(size)), None) {
        Ok(p) => p,
        Err(e) => {
            fail(
                &sink,
                &format!("skiff: cannot open a pseudo-terminal: {e}\n"),
                126,
            );
            return None;
        }
    };
    let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let (Ok(i), Ok(o), Ok(e)) = (stdio(&pty.slave), stdio(&pty.slave), stdio(&pty.slave)) else {
        fail(&sink, "skiff: cannot set up the pseudo-terminal\n", 126);
        return None;
    };
    cmd.stdin(i)
        .stdout(o)
        .stderr(e)
        .env("TERM", "xterm-256color");
    // SAFETY: runs in the child between fork and exec and calls only
    // setsid(2) and ioctl(2), both async-signal-safe, on the child's own
    // stdin (the pty slave). It makes the child a session leader with the
    // pty as its controlling terminal, so Ctrl-C reaches its process group.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = reaper.spawn_registered(|| {
        cmd.spawn().map(|child| {
            let pid = child.id() as i32;
            (child, pid)
        })
    });
    // The parent's copies of the slave must close, or the master never
    // sees the end of the session.
    drop(cmd);
    drop(pty.slave);
    let (child, exit_rx) = match spawned {
        Ok(v) => v,
        Err(e) => {
            fail(&sink, &format!("skiff: {program}: {e}\n"), 127);
            return None;
        }
    };
    if report_pid {
        let _ = crate::exec::send(&sink, &Message::Started(child.id()));
    }
    let master = File::from(pty.master);
    let (Ok(reader), Ok(writer)) = (master.try_clone(), master.try_clone()) else {
        fail(&sink, "skiff: cannot use the pseudo-terminal\n", 126);
        return None;
    };
    let exited = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let readers = vec![spawn_reader(
        reader,
        Message::Stdout,
        sink.clone(),
        exited.clone(),
    )];
    let stdin = Some(spawn_stdin_writer(writer));
    spawn_waiter(exit_rx, readers, sink, exited, done.clone());
    Some(Running {
        stdin,
        pgid: child.id() as i32,
        done,
        pty: Some(Arc::new(master)),
    })
}

/// Tell the terminal (and so the command, by SIGWINCH) its new size.
pub fn resize(master: &File, size: WindowSize) {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which
    // points at a live, properly initialised local for the whole call.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const Winsize);
    }
}
