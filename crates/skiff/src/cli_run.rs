//! `skiff run` in the foreground: the terminal's stdio and signals as a
//! run's input and output.

use anyhow::{Context, Result};
use skiff_daemon::run::{IoEvent, RunIo};
use skiff_proto::MAX_CHUNK;
use std::io::{IsTerminal, Read, Write};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// `skiff run` in the foreground: the process's own stdio and signals.
pub struct TerminalIo {
    interrupts: Interrupts,
    forward_stdin: bool,
    stdin_rx: Option<mpsc::Receiver<Vec<u8>>>,
    stdin_done: bool,
    stdout: Sink<std::io::Stdout>,
    stderr: Sink<std::io::Stderr>,
}

impl TerminalIo {
    pub fn new(interactive: bool) -> Result<TerminalIo> {
        Ok(TerminalIo {
            interrupts: Interrupts::new()?,
            forward_stdin: interactive || !std::io::stdin().is_terminal(),
            stdin_rx: None,
            stdin_done: false,
            stdout: Sink::new(std::io::stdout()),
            stderr: Sink::new(std::io::stderr()),
        })
    }
}

impl RunIo for TerminalIo {
    fn forwards_stdin(&self) -> bool {
        self.forward_stdin
    }

    async fn next_event(&mut self) -> IoEvent {
        let reading = self.forward_stdin && !self.stdin_done;
        // Read stdin only once the command runs, so that nothing is taken
        // from it before there is somewhere to send it.
        if reading && self.stdin_rx.is_none() {
            self.stdin_rx = Some(spawn_stdin_reader());
        }
        tokio::select! {
            chunk = recv_opt(&mut self.stdin_rx), if reading => {
                let chunk = chunk.unwrap_or_default();
                self.stdin_done = chunk.is_empty();
                IoEvent::Stdin(chunk)
            }
            code = self.interrupts.recv() => IoEvent::Interrupted(code),
        }
    }

    async fn interrupted(&mut self) -> i32 {
        self.interrupts.recv().await
    }

    async fn stdout(&mut self, bytes: &[u8]) {
        self.stdout.write(bytes);
    }

    async fn stderr(&mut self, bytes: &[u8]) {
        self.stderr.write(bytes);
    }

    async fn notice(&mut self, text: &str) {
        eprintln!("skiff: {text}");
    }
}

/// Ctrl-C, SIGTERM and SIGHUP, all of which tear the VM down.
struct Interrupts {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Interrupts {
    fn new() -> Result<Interrupts> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// Wait for one; returns the exit code a shell would give (128 + signal).
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 128 + libc::SIGINT,
            _ = self.term.recv() => 128 + libc::SIGTERM,
            _ = self.hup.recv() => 128 + libc::SIGHUP,
        }
    }
}

/// Receive from an optional channel; pending for ever when there is none.
async fn recv_opt(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Read stdin on a plain thread (a blocking read cannot be cancelled, and a
/// thread does not keep the process alive at exit). An empty chunk is EOF.
pub fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(Vec::new());
                        return;
                    }
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    if spawned.is_err() {
        eprintln!("skiff: warning: cannot read stdin (no thread); the command gets none");
    }
    rx
}

/// A host output stream that stops writing (but keeps the run going) once
/// the reader has gone away, as with `skiff run ... | head -1`.
struct Sink<W: Write> {
    out: W,
    broken: bool,
}

impl<W: Write> Sink<W> {
    fn new(out: W) -> Sink<W> {
        Sink { out, broken: false }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if self
            .out
            .write_all(bytes)
            .and_then(|_| self.out.flush())
            .is_err()
        {
            self.broken = true;
        }
    }
}
