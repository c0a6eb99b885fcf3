//! Background commands: `POST /v1/vms/{name}/commands` with
//! `"background": true` starts a command and answers with a handle at once;
//! `GET /v1/vms/{name}/commands/{id}[?wait=SECS]` reads its output so far
//! and how it ended; `DELETE` kills its process group. The daemon keeps the
//! agent connection and the output (bounded) until the VM is removed.

use base64::Engine;
pub use skiff_api::{CommandEnd as Ended, CommandState};
use skiff_proto::{ExitStatus, Message};
use skiff_vmm::AgentConn;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Output kept per stream; beyond it the oldest bytes are dropped.
const MAX_OUTPUT: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    dropped: u64,
    ended: Option<Ended>,
}

fn push_bounded(buf: &mut Vec<u8>, bytes: &[u8], dropped: &mut u64) {
    buf.extend_from_slice(bytes);
    if buf.len() > MAX_OUTPUT {
        let cut = buf.len() - MAX_OUTPUT;
        buf.drain(..cut);
        *dropped += cut as u64;
    }
}

/// One running or finished background command.
pub struct Background {
    vm: String,
    output: Mutex<Output>,
    done: watch::Receiver<bool>,
    kill: mpsc::Sender<()>,
}

/// All background commands of this daemon, by id.
#[derive(Default)]
pub struct Registry {
    commands: Mutex<HashMap<String, Arc<Background>>>,
}

impl Registry {
    fn get(&self, vm: &str, id: &str) -> Option<Arc<Background>> {
        let all = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id).filter(|b| b.vm == vm).cloned()
    }

    /// The command `id` of `vm`, after waiting up to `wait` for its end.
    pub async fn state(&self, vm: &str, id: &str, wait: Option<Duration>) -> Option<CommandState> {
        let bg = self.get(vm, id)?;
        if let Some(wait) = wait {
            let mut done = bg.done.clone();
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let out = bg.output.lock().unwrap_or_else(|p| p.into_inner());
        Some(CommandState {
            id: id.to_owned(),
            running: out.ended.is_none(),
            ended: out.ended.clone(),
            stdout: b64.encode(&out.stdout),
            stderr: b64.encode(&out.stderr),
            dropped: out.dropped,
        })
    }

    /// Ask the command `id` of `vm` to be killed; false if there is none.
    pub fn kill(&self, vm: &str, id: &str) -> bool {
        match self.get(vm, id) {
            Some(bg) => {
                let _ = bg.kill.try_send(());
                true
            }
            None => false,
        }
    }

    /// Forget the commands of a removed VM.
    pub fn forget_vm(&self, vm: &str) {
        let mut all = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, b| b.vm != vm);
    }
}

/// Keep reading `conn` (a started command) in the background; its id.
pub fn spawn(
    registry: &Registry,
    vm: &str,
    mut conn: AgentConn,
    timeout: Option<Duration>,
) -> String {
    let id = format!("c-{}", crate::paths::new_vm_id());
    let (done_tx, done) = watch::channel(false);
    let (kill, mut kill_rx) = mpsc::channel(1);
    let bg = Arc::new(Background {
        vm: vm.to_owned(),
        output: Mutex::new(Output::default()),
        done,
        kill,
    });
    registry
        .commands
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), bg.clone());
    tokio::spawn(async move {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        let ended = loop {
            let limit = async {
                match deadline {
                    Some(d) if !timed_out => tokio::time::sleep_until(d).await,
                    _ => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                m = conn.reader.recv() => m,
                _ = limit => {
                    timed_out = true;
                    let _ = conn.writer.send(&Message::Signal(libc::SIGKILL)).await;
                    continue;
                }
                Some(()) = kill_rx.recv() => {
                    let _ = conn.writer.send(&Message::Signal(libc::SIGKILL)).await;
                    continue;
                }
            };
            let mut out = bg.output.lock().unwrap_or_else(|p| p.into_inner());
            let Output {
                stdout,
                stderr,
                dropped,
                ..
            } = &mut *out;
            match msg {
                Ok(Some(Message::Stdout(b))) => push_bounded(stdout, &b, dropped),
                Ok(Some(Message::Stderr(b))) => push_bounded(stderr, &b, dropped),
                Ok(Some(Message::Exited(status))) => {
                    break Ended {
                        exit_code: status.shell_code(),
                        signal: match status {
                            ExitStatus::Signal(s) => Some(s),
                            ExitStatus::Code(_) => None,
                        },
                        timed_out,
                        error: None,
                    }
                }
                Ok(Some(Message::Error(e))) => break failed(e),
                Ok(Some(_)) => {}
                Ok(None) => break failed("the VM went away during the command".into()),
                Err(e) => break failed(crate::support::error_chain(&e)),
            }
        };
        bg.output.lock().unwrap_or_else(|p| p.into_inner()).ended = Some(ended);
        let _ = done_tx.send(true);
    });
    id
}

fn failed(error: String) -> Ended {
    Ended {
        exit_code: -1,
        error: Some(error),
        ..Ended::default()
    }
}
