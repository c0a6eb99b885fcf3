//! The control server: the ready connection to the host and a listener for
//! further host-initiated connections, each serving exec/shutdown requests.

use crate::exec::{self, FrameSink, Running};
use crate::init::uptime_ms;
use crate::log;
use crate::reaper::Reaper;
use skiff_proto::{
    BootTimes, FrameError, Hello, Message, AGENT_PORT, PROTOCOL_VERSION, READY_PORT,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY, VMADDR_CID_HOST};

/// Serve for ever. Returns only if the control channel is unusable.
pub fn serve(boot: BootTimes, reaper: Reaper) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if crate::serial::wanted(&cmdline) {
        serve_serial(boot, reaper);
    } else {
        serve_vsock(boot, reaper);
    }
}

/// The control channel as channels of the virtio-serial port.
fn serve_serial(mut boot: BootTimes, reaper: Reaper) {
    let accept_reaper = reaper.clone();
    let on_open = Box::new(move |r: crate::serial::ChannelReader, w| {
        let reaper = accept_reaper.clone();
        let sink: FrameSink = Arc::new(Mutex::new(w));
        let spawned = thread::Builder::new()
            .name("conn".into())
            .spawn(move || serve_connection(Box::new(r), sink, boot, reaper));
        if let Err(e) = spawned {
            log(format_args!("cannot start a connection thread: {e}"));
        }
    });
    let Some(mux) = crate::serial::start(on_open) else {
        return;
    };
    // A host that attaches again (it restarted) refuses what was open.
    let Some((r, w)) = (0..10).find_map(|_| mux.connect(READY_PORT)) else {
        return;
    };
    boot.ready_ms = uptime_ms();
    serve_connection(Box::new(r), Arc::new(Mutex::new(w)), boot, reaper);
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn serve_vsock(mut boot: BootTimes, reaper: Reaper) {
    let listener = match VsockListener::bind(&VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT)) {
        Ok(l) => Some(l),
        Err(e) => {
            log(format_args!(
                "cannot listen on vsock port {AGENT_PORT}: {e}"
            ));
            None
        }
    };
    if let Some(listener) = listener {
        let reaper = reaper.clone();
        let accept = thread::Builder::new().name("accept".into()).spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => spawn_connection(s, boot, reaper.clone()),
                    Err(e) => log(format_args!("vsock accept failed: {e}")),
                }
            }
        });
        if let Err(e) = accept {
            log(format_args!("cannot start the accept thread: {e}"));
        }
    }

    let Some(ready) = connect_to_host() else {
        return;
    };
    boot.ready_ms = uptime_ms();
    serve_vsock_stream(ready, boot, reaper);
    // The host closed the ready connection. Keep serving the listener.
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn connect_to_host() -> Option<VsockStream> {
    let addr = VsockAddr::new(VMADDR_CID_HOST, READY_PORT);
    let mut last_err = None;
    for attempt in 0..200u64 {
        match VsockStream::connect(&addr) {
            Ok(s) => return Some(s),
            Err(e) => last_err = Some(e),
        }
        thread::sleep(Duration::from_millis(5 + attempt.min(45)));
    }
    if let Some(e) = last_err {
        log(format_args!(
            "cannot reach the host on vsock port {READY_PORT}: {e}"
        ));
    }
    None
}

fn spawn_connection(stream: VsockStream, boot: BootTimes, reaper: Reaper) {
    let spawned = thread::Builder::new()
        .name("conn".into())
        .spawn(move || serve_vsock_stream(stream, boot, reaper));
    if let Err(e) = spawned {
        log(format_args!("cannot start a connection thread: {e}"));
    }
}

fn serve_vsock_stream(stream: VsockStream, boot: BootTimes, reaper: Reaper) {
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            log(format_args!("cannot clone a vsock stream: {e}"));
            return;
        }
    };
    serve_connection(Box::new(reader), Arc::new(Mutex::new(stream)), boot, reaper);
}

/// Serve one connection until the host closes it.
fn serve_connection(
    mut reader: Box<dyn std::io::Read + Send>,
    sink: FrameSink,
    mut boot: BootTimes,
    reaper: Reaper,
) {
    if boot.ready_ms == 0 {
        boot.ready_ms = uptime_ms();
    }
    let hello = Message::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        boot,
        problems: crate::PROBLEMS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    });
    if exec::send(&sink, &hello).is_err() {
        return;
    }
    let mut running: Option<Running> = None;
    let mut copy_in = CopyIn::Idle;
    let mut writing: Option<crate::files::Writing> = None;
    // Ended with the connection (dropped after the loop).
    let mut watches = crate::watch::Watches::default();
    loop {
        let msg = match skiff_proto::read_message(&mut reader) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(FrameError::Decode(e)) => {
                let _ = exec::send(&sink, &Message::Error(format!("bad frame from host: {e}")));
                break;
            }
            Err(_) => break,
        };
        if running
            .as_ref()
            .is_some_and(|r| r.done.load(Ordering::SeqCst))
        {
            running = None;
        }
        match msg {
            Message::Exec(req) => {
                if running.is_some() {
                    let _ = exec::send(
                        &sink,
                        &Message::Error("a command is already running on this connection".into()),
                    );
                    continue;
                }
                running = exec::start(req, sink.clone(), &reaper);
            }
            Message::Stdin(bytes) => {
                if let Some(r) = running.as_mut() {
                    let eof = bytes.is_empty();
                    if let Some(tx) = r.stdin.as_ref() {
                        let _ = tx.send(bytes);
                    }
                    if eof {
                        r.stdin = None;
                    }
                }
            }
            Message::Signal(sig) => {
                if let Some(r) = running.as_ref() {
                    signal_group(r.pgid, sig);
                }
            }
            Message::CopyOut(path) => {
                let result = if path.starts_with('/') {
                    skiff_proto::copy::send_tree(std::path::Path::new(&path), &mut |m| {
                        exec::send(&sink, &m)
                    })
                    .map_err(|e| e.to_string())
                } else {
                    Err(format!("{path:?} is not an absolute path"))
                };
                if let Err(e) = result {
                    let _ = exec::send(&sink, &Message::Error(e));
                }
            }
            Message::CopyIn(path) => {
                copy_in = if path.starts_with('/') {
                    match skiff_proto::copy::Extractor::new(std::path::Path::new(&path), None) {
                        Ok(x) => CopyIn::Writing(Box::new(x)),
                        Err(e) => fail_copy(&sink, e.to_string()),
                    }
                } else {
                    fail_copy(&sink, format!("{path:?} is not an absolute path"))
                };
            }
            Message::Fs(call) => {
                writing = crate::files::handle(call, &sink, &mut watches);
            }
            Message::Data(bytes) if writing.is_some() => {
                if let Some(w) = writing.as_mut() {
                    w.data(&bytes);
                }
            }
            Message::End if writing.is_some() => {
                if let Some(w) = writing.take() {
                    w.finish(&sink);
                }
            }
            m @ (Message::Entry(_) | Message::Data(_) | Message::End) => {
                let end = matches!(m, Message::End);
                copy_in = match copy_in {
                    CopyIn::Writing(mut x) => match x.accept(m) {
                        Ok(true) => {
                            let _ = exec::send(
                                &sink,
                                &Message::Exited(skiff_proto::ExitStatus::Code(0)),
                            );
                            CopyIn::Idle
                        }
                        Ok(false) => CopyIn::Writing(x),
                        Err(e) => fail_copy(&sink, e.to_string()),
                    },
                    // After an error, the rest of the stream is dropped.
                    CopyIn::Draining if !end => CopyIn::Draining,
                    _ => CopyIn::Idle,
                };
            }
            Message::Resize(size) => {
                if let Some(master) = running.as_ref().and_then(|r| r.pty.as_ref()) {
                    crate::pty::resize(master, size);
                }
            }
            Message::Shutdown => shutdown(),
            Message::SetClock(ns) => {
                let answer = match set_clock(ns) {
                    Ok(()) => Message::Exited(skiff_proto::ExitStatus::Code(0)),
                    Err(e) => Message::Error(format!("cannot set the clock: {e}")),
                };
                let _ = exec::send(&sink, &answer);
            }
            Message::Renew(renewal) => {
                let answer = match crate::renew::apply(&renewal) {
                    Ok(()) => Message::Exited(skiff_proto::ExitStatus::Code(0)),
                    Err(e) => Message::Error(e),
                };
                let _ = exec::send(&sink, &answer);
            }
            other => {
                let _ = exec::send(
                    &sink,
                    &Message::Error(format!("unexpected {} message from host", other.name())),
                );
            }
        }
    }
    // The host went away: whatever it started here has no one to report to.
    if let Some(r) = running {
        if !r.done.load(Ordering::SeqCst) {
            signal_group(r.pgid, libc::SIGKILL);
        }
    }
}

/// State of a copy into the guest on one connection.
enum CopyIn {
    Idle,
    Writing(Box<skiff_proto::copy::Extractor>),
    /// The copy failed; ignore its remaining frames until `End`.
    Draining,
}

fn fail_copy(sink: &exec::FrameSink, message: String) -> CopyIn {
    let _ = exec::send(sink, &Message::Error(message));
    CopyIn::Draining
}

pub(crate) fn set_clock(ns: u64) -> nix::Result<()> {
    let secs = (ns / 1_000_000_000) as libc::time_t;
    let nanos = (ns % 1_000_000_000) as libc::c_long;
    let ts = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

fn signal_group(pgid: i32, sig: i32) {
    let Ok(signal) = nix::sys::signal::Signal::try_from(sig) else {
        return;
    };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
}

/// Flush filesystems and power off: directly as PID 1, through the
/// guest's init as its service.
fn shutdown() {
    if std::process::id() != 1 {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if crate::sysinit::wanted(&cmdline) {
            crate::sysinit::power_off();
            return;
        }
        log(format_args!(
            "shutdown requested but not running as init; ignoring"
        ));
        return;
    }
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    log(format_args!("power off failed: {e}"));
}
