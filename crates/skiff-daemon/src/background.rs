//! Background commands: `POST /v1/vms/{name}/commands` with
//! `"background": true` starts a command and answers with a handle at once;
//! `GET /v1/vms/{name}/commands/{id}[?wait=SECS]` reads its output so far
//! and how it ended; `DELETE` kills its process group. The daemon keeps the
//! agent connection while the command runs, and its output (the newest
//! [`MAX_OUTPUT`] bytes of each stream) until [`FINISHED_TTL`] after it
//! ended or the VM is removed; a VM keeps at most [`MAX_FINISHED`] finished
//! commands.

use base64::Engine;
pub use skiff_api::{CommandEnd as Ended, CommandState};
use skiff_proto::{ExitStatus, Message};
use skiff_vmm::AgentConn;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Output kept per stream; beyond it the oldest bytes are dropped.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// How long a finished command's output stays readable.
pub const FINISHED_TTL: Duration = Duration::from_secs(15 * 60);
/// Finished commands kept per VM; the oldest go first.
pub const MAX_FINISHED: usize = 64;

#[derive(Default)]
struct Output {
    stdout: VecDeque<u8>,
    stderr: VecDeque<u8>,
    dropped: u64,
    ended: Option<Ended>,
    ended_at: Option<Instant>,
}

/// Append to a ring of at most [`MAX_OUTPUT`] bytes: only the bytes that
/// fall out move, never the rest of the buffer.
fn push_bounded(buf: &mut VecDeque<u8>, bytes: &[u8], dropped: &mut u64) {
    let bytes = if bytes.len() > MAX_OUTPUT {
        *dropped += (bytes.len() - MAX_OUTPUT) as u64;
        &bytes[bytes.len() - MAX_OUTPUT..]
    } else {
        bytes
    };
    let overflow = (buf.len() + bytes.len()).saturating_sub(MAX_OUTPUT);
    if overflow > 0 {
        buf.drain(..overflow);
        *dropped += overflow as u64;
    }
    buf.extend(bytes);
}

/// Which finished commands to forget at `now`: those ended longer than
/// [`FINISHED_TTL`] ago, and per VM the oldest beyond [`MAX_FINISHED`].
fn expired(finished: &[(&str, &str, Instant)], now: Instant) -> Vec<String> {
    let mut gone: Vec<String> = Vec::new();
    let mut by_vm: HashMap<&str, Vec<(&str, Instant)>> = HashMap::new();
    for (vm, id, at) in finished {
        if now.saturating_duration_since(*at) > FINISHED_TTL {
            gone.push((*id).to_owned());
        } else {
            by_vm.entry(vm).or_default().push((id, *at));
        }
    }
    for (_, mut kept) in by_vm {
        if kept.len() > MAX_FINISHED {
            kept.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
            gone.extend(kept[MAX_FINISHED..].iter().map(|(id, _)| (*id).to_owned()));
        }
    }
    gone
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
        self.sweep();
        let all = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id).filter(|b| b.vm == vm).cloned()
    }

    /// Forget finished commands past their time or their VM's count.
    fn sweep(&self) {
        let mut all = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<(String, String, Instant)> = all
            .iter()
            .filter_map(|(id, b)| {
                let at = b
                    .output
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ended_at?;
                Some((b.vm.clone(), id.clone(), at))
            })
            .collect();
        let view: Vec<(&str, &str, Instant)> = ended
            .iter()
            .map(|(vm, id, at)| (vm.as_str(), id.as_str(), *at))
            .collect();
        for id in expired(&view, Instant::now()) {
            all.remove(&id);
        }
    }

    /// The command `id` of `vm`, after waiting up to `wait` for its end.
    pub async fn state(&self, vm: &str, id: &str, wait: Option<Duration>) -> Option<CommandState> {
        let bg = self.get(vm, id)?;
        if let Some(wait) = wait {
            let mut done = bg.done.clone();
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = bg.output.lock().unwrap_or_else(|p| p.into_inner());
        let out = &mut *out;
        Some(CommandState {
            id: id.to_owned(),
            running: out.ended.is_none(),
            ended: out.ended.clone(),
            stdout: b64.encode(out.stdout.make_contiguous()),
            stderr: b64.encode(out.stderr.make_contiguous()),
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
    registry.sweep();
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
        let mut out = bg.output.lock().unwrap_or_else(|p| p.into_inner());
        out.ended = Some(ended);
        out.ended_at = Some(Instant::now());
        drop(out);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_a_ring_of_the_newest_bytes() {
        let mut buf = VecDeque::new();
        let mut dropped = 0;
        push_bounded(&mut buf, &vec![1u8; MAX_OUTPUT - 10], &mut dropped);
        push_bounded(&mut buf, &[2u8; 30], &mut dropped);
        assert_eq!((buf.len(), dropped), (MAX_OUTPUT, 20));
        assert_eq!(buf.back(), Some(&2));
        assert_eq!(buf.iter().filter(|b| **b == 2).count(), 30);
        // One chunk larger than the ring keeps only its own tail.
        let big: Vec<u8> = (0..MAX_OUTPUT + 5).map(|i| (i % 7) as u8).collect();
        push_bounded(&mut buf, &big, &mut dropped);
        assert_eq!(buf.len(), MAX_OUTPUT);
        assert_eq!(dropped, 20 + MAX_OUTPUT as u64 + 5);
        assert!(buf.iter().eq(big[5..].iter()));
    }

    #[test]
    fn finished_commands_expire_by_age_and_count() {
        let now = Instant::now() + FINISHED_TTL * 2;
        let old = now - FINISHED_TTL - Duration::from_secs(1);
        let ids: Vec<String> = (0..MAX_FINISHED + 3).map(|i| format!("c{i}")).collect();
        let mut finished: Vec<(&str, &str, Instant)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| ("a", id.as_str(), now - Duration::from_secs(i as u64)))
            .collect();
        finished.push(("b", "stale", old));
        finished.push(("b", "fresh", now));
        let mut gone = expired(&finished, now);
        gone.sort();
        let mut want: Vec<String> = ids[MAX_FINISHED..].to_vec();
        want.push("stale".into());
        want.sort();
        assert_eq!(gone, want, "the oldest of a and the stale one of b");
    }
}
