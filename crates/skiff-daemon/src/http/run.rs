//! `POST /v1/run`: a throw-away VM for one command, over an upgraded
//! connection. The VM is an ephemeral VM of the manager, booted on the same
//! road as every other; it lives for the length of the connection: when the
//! command ends, or the client goes away, it is removed.

use crate::frames::{self, FrameReader};
use crate::http::error::{api_error, ApiError};
use crate::http::streams::{switching_protocols, upgrade_request};
use crate::manager::Manager;
use crate::run::{self, IoEvent, RunIo};
use crate::run_spec::{run_spec, RunBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use skiff_proto::{ExitStatus, Message};
use std::sync::Arc;
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::{mpsc, watch};

pub async fn run(State(m): State<Arc<Manager>>, req: Request) -> Result<Response, ApiError> {
    let (on_upgrade, body): (_, RunBody) = upgrade_request(req, "run").await?;
    // Named after its id, so `run-ID` in `skiff ls` is the id `inspect` shows.
    let id = crate::paths::new_vm_id();
    let name = format!("run-{id}");
    let spec =
        run_spec(&name, &body).map_err(|e| api_error(StatusCode::BAD_REQUEST, e.to_string()))?;
    // The run's VM is a VM of the manager like any other (store record,
    // cgroup, -runas, monitor), marked ephemeral; a bad request fails here,
    // before the upgrade, with nothing created.
    m.create_vm(&spec, &id, true)?;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            let _ = m.remove(&name, true, false).await;
            return;
        };
        let (r, w) = tokio::io::split(TokioIo::new(upgraded));
        let mut io = ConnectionIo::new(r, w, body.stdin);
        let result = run_in(&m, &name, &body, &mut io).await;
        // The VM and everything it held (lease, TAP, cgroup) are gone
        // before the client hears the end, so what it does next sees them
        // released.
        if let Err(e) = m.remove(&name, true, false).await {
            tracing::error!(vm = %name, error = %crate::support::error_chain(&e), "cannot remove the run's VM");
        }
        match result {
            Ok(code) if !io.is_gone() => {
                let _ =
                    frames::send(&mut io.writer, &Message::Exited(ExitStatus::Code(code))).await;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = frames::send(&mut io.writer, &Message::Error(format!("{e:#}"))).await;
            }
        }
    });
    Ok(switching_protocols())
}

/// Boot the run's VM, run its command, return the exit code. A client that
/// goes away during the boot abandons it (the caller removes the VM).
async fn run_in<S>(
    m: &Arc<Manager>,
    name: &str,
    body: &RunBody,
    io: &mut ConnectionIo<S>,
) -> anyhow::Result<i32>
where
    S: tokio::io::AsyncRead + AsyncWrite + Send + 'static,
{
    if !body.quiet {
        let accel = body.accel;
        if let Some(notice) = skiff_vmm::decide(accel, &skiff_vmm::HostKvm::probe()).notice {
            io.notice(&notice).await;
        }
    }
    tokio::select! {
        started = m.start_within(name, body.boot_timeout()) => { started?; }
        code = io.interrupted() => return Ok(code),
    }
    let mut conn = m.connect(name).await?;
    m.metrics.exec_started(name);
    let started = std::time::Instant::now();
    let request = run::exec_request(body, io.forwards_stdin());
    // If the VM dies, its agent connection closes: no other watch needed.
    let ended = run::exec(&mut conn, request, io, std::future::pending()).await;
    m.metrics.exec_finished("run", started.elapsed());
    let ended = ended?;
    if matches!(ended, run::Ended::Command(_)) {
        let _ = conn.writer.send(&Message::Shutdown).await;
    }
    Ok(run::exit_code(ended, body.quiet, io).await)
}

/// A run's input and output over the client's connection. A reader task
/// turns the client's frames into stdin chunks and notices when the client
/// goes away (which abandons the run: exit code 130, as for Ctrl-C).
struct ConnectionIo<W> {
    writer: WriteHalf<W>,
    stdin: mpsc::Receiver<Vec<u8>>,
    gone: watch::Receiver<bool>,
    /// The client's newest terminal size (only the last one matters).
    resize: watch::Receiver<skiff_proto::WindowSize>,
    forward_stdin: bool,
    stdin_done: bool,
}

const CLIENT_GONE: i32 = 128 + libc::SIGINT;

impl<S: tokio::io::AsyncRead + AsyncWrite + Send + 'static> ConnectionIo<S> {
    fn new(reader: tokio::io::ReadHalf<S>, writer: WriteHalf<S>, forward_stdin: bool) -> Self {
        let (stdin_tx, stdin) = mpsc::channel(4);
        let (gone_tx, gone) = watch::channel(false);
        // The first value is never read: `changed` fires on sends only.
        let (resize_tx, resize) = watch::channel(skiff_proto::WindowSize { rows: 0, cols: 0 });
        tokio::spawn(async move {
            let mut frames = FrameReader::new(reader);
            loop {
                match frames.recv().await {
                    Ok(Some(Message::Stdin(chunk))) => {
                        if stdin_tx.send(chunk).await.is_err() {
                            // The run no longer reads stdin; keep watching for the end.
                        }
                    }
                    Ok(Some(Message::Resize(size))) => {
                        let _ = resize_tx.send(size);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = gone_tx.send(true);
        });
        ConnectionIo {
            writer,
            stdin,
            gone,
            resize,
            forward_stdin,
            stdin_done: false,
        }
    }

    fn is_gone(&self) -> bool {
        *self.gone.borrow()
    }
}

async fn wait_gone(gone: &mut watch::Receiver<bool>) {
    if gone.wait_for(|g| *g).await.is_err() {
        // The reader task ended without saying: treat as gone.
    }
}

impl<S: tokio::io::AsyncRead + AsyncWrite + Send + 'static> RunIo for ConnectionIo<S> {
    fn forwards_stdin(&self) -> bool {
        self.forward_stdin
    }

    async fn next_event(&mut self) -> IoEvent {
        let reading = self.forward_stdin && !self.stdin_done;
        tokio::select! {
            chunk = self.stdin.recv(), if reading => {
                let chunk = chunk.unwrap_or_default();
                self.stdin_done = chunk.is_empty();
                IoEvent::Stdin(chunk)
            }
            Ok(()) = self.resize.changed() => IoEvent::Resize(*self.resize.borrow_and_update()),
            _ = wait_gone(&mut self.gone) => IoEvent::Interrupted(CLIENT_GONE),
        }
    }

    async fn interrupted(&mut self) -> i32 {
        wait_gone(&mut self.gone).await;
        CLIENT_GONE
    }

    async fn stdout(&mut self, bytes: &[u8]) {
        let _ = frames::send(&mut self.writer, &Message::Stdout(bytes.to_vec())).await;
    }

    async fn stderr(&mut self, bytes: &[u8]) {
        let _ = frames::send(&mut self.writer, &Message::Stderr(bytes.to_vec())).await;
    }

    async fn notice(&mut self, text: &str) {
        let line = format!("skiff: {text}\n");
        let _ = frames::send(&mut self.writer, &Message::Stderr(line.into_bytes())).await;
    }
}
