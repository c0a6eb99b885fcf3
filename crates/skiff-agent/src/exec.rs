//! Running one command for the host and streaming its output back.

use crate::reaper::Reaper;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use skiff_proto::{ExecRequest, ExitStatus, Message, MAX_CHUNK};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

/// Where frames for the host go; shared by the threads of one connection.
pub type FrameSink = Arc<Mutex<dyn Write + Send>>;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Send one frame; a failed send means the host is gone, which the
/// connection's reader notices on its own, so the error is only returned.
pub fn send(sink: &FrameSink, msg: &Message) -> io::Result<()> {
    let mut w = sink.lock().unwrap_or_else(|p| p.into_inner());
    skiff_proto::write_message(&mut *w, msg).map_err(|e| io::Error::other(e.to_string()))?;
    w.flush()
}

/// A sink for tests, and what was sent to it so far.
#[cfg(test)]
pub fn test_sink() -> (FrameSink, impl Fn() -> Vec<Message>) {
    let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink: FrameSink = buf.clone();
    let frames = move || {
        let bytes = buf.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut cursor = std::io::Cursor::new(bytes);
        let mut out = Vec::new();
        while let Ok(Some(m)) = skiff_proto::read_message(&mut cursor) {
            out.push(m);
        }
        out
    };
    (sink, frames)
}

/// A running command, as seen by the connection that started it.
pub struct Running {
    /// Bytes for the command's stdin; `None` once stdin was closed.
    pub stdin: Option<Sender<Vec<u8>>>,
    /// The command's process group (it leads its own group).
    pub pgid: i32,
    /// Set once `Exited` has been sent.
    pub done: Arc<AtomicBool>,
    /// The pseudo-terminal's master side, for a tty command (to resize it).
    pub pty: Option<Arc<std::fs::File>>,
}

/// When the command exits: let the readers drain, then send `Exited`.
pub(crate) fn spawn_waiter(
    exit_rx: std::sync::mpsc::Receiver<ExitStatus>,
    readers: Vec<Option<thread::JoinHandle<()>>>,
    sink: FrameSink,
    exited: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) {
    let waiter = thread::Builder::new()
        .name("exec-wait".into())
        .spawn(move || {
            // The reaper always answers unless the agent is shutting down.
            let status = exit_rx.recv().unwrap_or(ExitStatus::Signal(libc::SIGKILL));
            exited.store(true, Ordering::SeqCst);
            for r in readers.into_iter().flatten() {
                let _ = r.join();
            }
            // Done before the host hears it: a host that hangs up on the
            // `Exited` must not have the command's group killed (what the
            // command left running in the background stays).
            done.store(true, Ordering::SeqCst);
            let _ = send(&sink, &Message::Exited(status));
        });
    if let Err(e) = waiter {
        crate::log(format_args!("cannot start a waiter thread: {e}"));
    }
}

/// Start `req`. Failures that a shell would report (command not found, not
/// executable, bad working directory) are reported to the host as stderr
/// text plus an exit status, exactly as a shell would, and return `None`.
pub fn start(req: ExecRequest, sink: FrameSink, reaper: &Reaper) -> Option<Running> {
    let env = effective_env(&req.env);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let Some(program) = req.argv.first() else {
        fail(&sink, "skiff: no command given\n", 127);
        return None;
    };
    let resolved = match resolve_program(program, path_var) {
        Ok(p) => p,
        Err(Unrunnable::NotFound) => {
            fail(
                &sink,
                &format!("skiff: {program}: command not found\n"),
                127,
            );
            return None;
        }
        Err(Unrunnable::NotExecutable) => {
            fail(
                &sink,
                &format!("skiff: {program}: Permission denied\n"),
                126,
            );
            return None;
        }
    };
    let workdir = req.workdir.clone().unwrap_or_else(|| "/".to_owned());
    if !Path::new(&workdir).is_dir() {
        fail(
            &sink,
            &format!("skiff: cannot change to working directory {workdir}: No such directory\n"),
            126,
        );
        return None;
    }

    let mut cmd = Command::new(&resolved);
    cmd.arg0(program)
        .args(&req.argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(user) = &req.user {
        match crate::users::lookup(
            user,
            &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        ) {
            Some(u) => {
                cmd.uid(u.uid).gid(u.gid);
                // HOME and USER as a login would set them, unless given.
                for (k, v) in [("HOME", u.home.as_str()), ("USER", u.name.as_str())] {
                    if !req.env.iter().any(|(ek, _)| ek == k) {
                        cmd.env(k, v);
                    }
                }
            }
            None => {
                fail(
                    &sink,
                    &format!(
                        "skiff: no user {user:?} in the guest (not in /etc/passwd, not a UID)\n"
                    ),
                    126,
                );
                return None;
            }
        }
    }
    // The agent's own cwd is "/"; not setting it keeps std's posix_spawn
    // path open (a vfork-like spawn instead of a full fork).
    if workdir != "/" {
        cmd.current_dir(&workdir);
    }
    if req.service {
        crate::service::start(cmd, program, &sink, reaper);
        return None;
    }
    if let Some(size) = req.tty {
        return crate::pty::start(cmd, program, size, sink, reaper, req.report_pid);
    }
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let spawned = reaper.spawn_registered(|| {
        cmd.spawn().map(|child| {
            let pid = child.id() as i32;
            (child, pid)
        })
    });
    let (mut child, exit_rx) = match spawned {
        Ok(v) => v,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            fail(&sink, &format!("skiff: {program}: {e}\n"), code);
            return None;
        }
    };
    let pgid = child.id() as i32;
    if req.report_pid {
        let _ = send(&sink, &Message::Started(child.id()));
    }
    let exited = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(
            out,
            Message::Stdout,
            sink.clone(),
            exited.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(
            err,
            Message::Stderr,
            sink.clone(),
            exited.clone(),
        ));
    }
    let stdin = child.stdin.take().map(spawn_stdin_writer);

    spawn_waiter(exit_rx, readers, sink, exited, done.clone());
    Some(Running {
        stdin,
        pgid,
        done,
        pty: None,
    })
}

pub(crate) fn fail(sink: &FrameSink, message: &str, code: i32) {
    let _ = send(sink, &Message::Stderr(message.as_bytes().to_vec()));
    let _ = send(sink, &Message::Exited(ExitStatus::Code(code)));
}

/// The agent's default environment with the request's variables on top.
fn effective_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("HOSTNAME".into(), "skiff".into()),
    ];
    for (k, v) in extra {
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

enum Unrunnable {
    NotFound,
    NotExecutable,
}

/// Find `program` the way a shell does: as a path if it has a slash, else in
/// each `PATH` entry.
fn resolve_program(program: &str, path_var: &str) -> Result<PathBuf, Unrunnable> {
    let is_executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return match p.exists() {
            false => Err(Unrunnable::NotFound),
            true if is_executable(&p) => Ok(p),
            true => Err(Unrunnable::NotExecutable),
        };
    }
    if program.is_empty() {
        return Err(Unrunnable::NotFound);
    }
    let mut found_unexecutable = false;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        found_unexecutable |= candidate.is_file();
    }
    Err(if found_unexecutable {
        Unrunnable::NotExecutable
    } else {
        Unrunnable::NotFound
    })
}

/// Forward one output pipe to the host until it closes, or until the command
/// has exited and the pipe holds nothing more (a background process that
/// inherited the pipe must not keep the command "running" for ever).
pub(crate) fn spawn_reader<R>(
    mut pipe: R,
    wrap: fn(Vec<u8>) -> Message,
    sink: FrameSink,
    exited: Arc<AtomicBool>,
) -> Option<thread::JoinHandle<()>>
where
    R: Read + AsFd + Send + 'static,
{
    if let Err(e) = fcntl(
        pipe.as_fd().as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    ) {
        crate::log(format_args!("cannot make an output pipe non-blocking: {e}"));
    }
    let spawned = thread::Builder::new()
        .name("exec-out".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let finishing = exited.load(Ordering::SeqCst);
                match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if send(&sink, &wrap(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if finishing {
                            return; // drained everything the command wrote
                        }
                        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                        let _ = poll(&mut fds, PollTimeout::from(50u16));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    spawned.ok()
}

/// `write_all` that also works on a non-blocking descriptor (a pty master
/// shares its file description, and so O_NONBLOCK, with the output reader).
fn write_all_blocking<W: Write + AsFd>(w: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match w.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A thread that writes host-sent bytes to the command's stdin; dropping the
/// sender (or sending an empty chunk) closes it.
pub(crate) fn spawn_stdin_writer<W: Write + AsFd + Send + 'static>(
    mut stdin: W,
) -> Sender<Vec<u8>> {
    let (tx, rx) = channel::<Vec<u8>>();
    let spawned = thread::Builder::new()
        .name("exec-in".into())
        .spawn(move || {
            for chunk in rx.iter() {
                if chunk.is_empty() || write_all_blocking(&mut stdin, &chunk).is_err() {
                    break;
                }
            }
            // Dropping `stdin` here closes the pipe: the command sees EOF.
        });
    if let Err(e) = spawned {
        crate::log(format_args!("cannot start a stdin thread: {e}"));
    }
    tx
}
