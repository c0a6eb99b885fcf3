//! `POST /v1/run`: a throw-away VM for one command, over an upgraded
//! connection. The daemon owns the VM for the length of the connection:
//! when the command ends, or the client goes away, the VM is torn down.

use super::api::{api_error, ApiError};
use super::manager::Manager;
use super::streams::{switching_protocols, upgrade_request};
use crate::frames::{self, FrameReader};
use crate::image::KernelChoice;
use crate::run::{self, IoEvent, RunIo, RunRequest};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use skiff_proto::{ExitStatus, Message};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::{mpsc, watch};

/// What the client asks for: the flags of `skiff run`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    pub argv: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// "auto", "kvm" or "tcg".
    pub accel: String,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub modules: Option<PathBuf>,
    pub boot_timeout_secs: u64,
    #[serde(default)]
    pub quiet: bool,
    #[serde(default)]
    pub stdin: bool,
    /// "none" (default) or "user".
    #[serde(default)]
    pub net: Option<String>,
    /// Port forwards as `[ADDR:]HOST:GUEST[/tcp|/udp]`; they need "user".
    #[serde(default)]
    pub publish: Vec<String>,
    /// Host directories to share (absolute paths on the daemon's host).
    #[serde(default)]
    pub shares: Vec<crate::run::RunShare>,
    /// A host directory to boot into instead of the default image.
    #[serde(default)]
    pub rootfs: Option<RunRootFs>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRootFs {
    pub source: PathBuf,
    #[serde(default)]
    pub writable: bool,
}

/// The network a run asked for.
pub enum RunNet {
    None,
    User(skiff_vmm::UserNet),
    /// A network made with `skiff network create` (only through the daemon).
    Managed {
        network: String,
        forwards: Vec<skiff_spec::PortForward>,
    },
}

/// The network a run asked for, or why it cannot have it.
pub fn run_network(net: Option<&str>, publish: &[String]) -> Result<RunNet, String> {
    let forwards = publish
        .iter()
        .map(|p| skiff_spec::parse_forward(p))
        .collect::<Result<Vec<_>, _>>()?;
    match net {
        None if forwards.is_empty() => Ok(RunNet::None),
        None | Some("user") => Ok(RunNet::User(super::support::usernet_with(&forwards))),
        Some("none") if forwards.is_empty() => Ok(RunNet::None),
        Some("none") => Err("port forwards need a network; use --net user or a network's name".into()),
        Some(name) => match skiff_net::check_network_name(name) {
            Ok(()) => Ok(RunNet::Managed {
                network: name.to_owned(),
                forwards,
            }),
            Err(_) => Err(format!(
                "unknown network {name:?}; use none, user, or the name of a network (skiff network ls)"
            )),
        },
    }
}

pub async fn run(State(m): State<Arc<Manager>>, req: Request) -> Result<Response, ApiError> {
    let (on_upgrade, body): (_, RunBody) = upgrade_request(req, "run").await?;
    if body.argv.is_empty() {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "argv is empty; give the command to run".into(),
        ));
    }
    let accel = body
        .accel
        .parse::<skiff_vmm::AccelChoice>()
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    let forward_stdin = body.stdin;
    let net = run_network(body.net.as_deref(), &body.publish)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    let (net, managed) = match net {
        RunNet::None => (None, None),
        RunNet::User(u) => (Some(u), None),
        RunNet::Managed { network, forwards } => {
            (None, Some(m.run_nic(&network, &forwards).await?))
        }
    };
    for share in &body.shares {
        if !share.source.is_absolute() || !share.source.is_dir() || !share.target.starts_with('/') {
            return Err(api_error(StatusCode::BAD_REQUEST, format!("share {} -> {} is not an existing absolute directory and an absolute guest path", share.source.display(), share.target)));
        }
    }
    if let Some(r) = &body.rootfs {
        if !r.source.is_absolute() || !r.source.is_dir() {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "rootfs {} is not an existing absolute directory",
                    r.source.display()
                ),
            ));
        }
    }
    let run_req = RunRequest {
        rootfs: body.rootfs.map(|r| skiff_vmm::RootFs {
            source: r.source,
            writable: r.writable,
        }),
        shares: body.shares,
        net,
        tap: managed.as_ref().map(|r| r.nic.clone()),
        argv: body.argv,
        cpus: body.cpus,
        memory_mib: body.memory_mib,
        env: body.env,
        workdir: body.workdir,
        accel,
        kernel: KernelChoice {
            kernel: body.kernel,
            modules: body.modules,
        },
        boot_timeout: Duration::from_secs(body.boot_timeout_secs.clamp(1, 3600)),
        quiet: body.quiet,
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (r, w) = tokio::io::split(TokioIo::new(upgraded));
        let mut io = ConnectionIo::new(r, w, forward_stdin);
        let result = run::run(run_req, &mut io).await;
        // The VM is gone: give back its network before the client hears
        // the end, so that what it does next sees the lease released.
        if let Some(nic) = managed {
            m.release_run_nic(nic).await;
        }
        match result {
            Ok(outcome) if !io.is_gone() => {
                let _ = frames::send(
                    &mut io.writer,
                    &Message::Exited(ExitStatus::Code(outcome.code)),
                )
                .await;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = frames::send(&mut io.writer, &Message::Error(format!("{e:#}"))).await;
            }
        }
    });
    Ok(switching_protocols())
}

/// A run's input and output over the client's connection. A reader task
/// turns the client's frames into stdin chunks and notices when the client
/// goes away (which abandons the run: exit code 130, as for Ctrl-C).
struct ConnectionIo<W> {
    writer: WriteHalf<W>,
    stdin: mpsc::Receiver<Vec<u8>>,
    gone: watch::Receiver<bool>,
    forward_stdin: bool,
    stdin_done: bool,
}

const CLIENT_GONE: i32 = 128 + libc::SIGINT;

impl<S: tokio::io::AsyncRead + AsyncWrite + Send + 'static> ConnectionIo<S> {
    fn new(reader: tokio::io::ReadHalf<S>, writer: WriteHalf<S>, forward_stdin: bool) -> Self {
        let (stdin_tx, stdin) = mpsc::channel(4);
        let (gone_tx, gone) = watch::channel(false);
        tokio::spawn(async move {
            let mut frames = FrameReader::new(reader);
            loop {
                match frames.recv().await {
                    Ok(Some(Message::Stdin(chunk))) => {
                        if stdin_tx.send(chunk).await.is_err() {
                            // The run no longer reads stdin; keep watching for the end.
                        }
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
