//! The processes started through envd's process service: each runs on an
//! agent connection of its own, held by a pump task of the daemon, so that
//! it outlives the HTTP stream that started it (E2B's background commands,
//! `Connect` by pid). Its output goes to whoever watches it at the time;
//! its end is kept for a while after it exited.

use skiff_proto::{ExitStatus, Message, WindowSize, MAX_CHUNK};
use skiff_vmm::{AgentConn, AgentWriter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long an exited process's end stays known.
const ENDED_TTL: Duration = Duration::from_secs(15 * 60);
/// Ended processes kept per sandbox; the oldest go first.
const MAX_ENDED: usize = 64;
/// Output items queued for one watcher before the process waits for it.
const WATCHER_QUEUE: usize = 64;
/// Inputs (stdin chunks, signals) queued for a process; beyond it a call
/// is refused until the process has taken some.
const INPUT_QUEUE: usize = 64;
/// Processes one sandbox may run at once through the E2B API.
pub const MAX_RUNNING: usize = 256;

/// Which of the process's outputs bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
    Pty,
}

/// How a process ended, as envd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
}

impl End {
    pub fn from_status(status: ExitStatus) -> End {
        match status {
            ExitStatus::Code(c) => End {
                exit_code: c,
                exited: true,
                status: format!("exit status {c}"),
            },
            ExitStatus::Signal(s) => End {
                exit_code: -1,
                exited: false,
                status: format!("signal: {}", signal_name(s)),
            },
        }
    }

    /// The process could not be followed to its end (the VM went away).
    pub fn lost(why: &str) -> End {
        End {
            exit_code: -1,
            exited: false,
            status: why.to_owned(),
        }
    }
}

fn signal_name(s: i32) -> String {
    match s {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        1 => "hangup".into(),
        other => format!("signal {other}"),
    }
}

/// What a watcher of a process receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Data(Output, Vec<u8>),
    End(End),
}

/// What may be asked of a running process.
#[derive(Debug)]
pub enum Input {
    Stdin(Vec<u8>),
    CloseStdin,
    Signal(i32),
    Resize(WindowSize),
}

/// What a process was started with, for `List`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub cwd: Option<String>,
}

pub struct Proc {
    pub pid: u32,
    pub config: Config,
    pub tag: Option<String>,
    pub pty: bool,
    /// Whether its stdin is a pipe the host writes.
    pub stdin: bool,
    watchers: Mutex<Vec<mpsc::Sender<Item>>>,
    input: mpsc::Sender<Input>,
    ended: watch::Receiver<Option<(End, Instant)>>,
}

/// Why a process took no input.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Ended,
    /// Its input queue is full: it is not reading.
    Busy,
}

/// A process the agent just started, to follow.
pub struct Spawned {
    pub pid: u32,
    pub conn: AgentConn,
    pub config: Config,
    pub tag: Option<String>,
    pub pty: bool,
    pub stdin: bool,
    /// How long it may live (then it is killed).
    pub lifetime: Option<Duration>,
}

impl Proc {
    pub fn end(&self) -> Option<End> {
        self.ended.borrow().as_ref().map(|(e, _)| e.clone())
    }

    /// Output from now on, then the end (at once if it has ended).
    pub fn watch(&self) -> mpsc::Receiver<Item> {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock the pump takes to send the end: a watcher added
        // here either gets the end from the pump or sees it already.
        match self.end() {
            Some(end) => {
                let _ = tx.try_send(Item::End(end));
            }
            None => watchers.push(tx),
        }
        rx
    }

    pub fn send(&self, input: Input) -> Result<(), Refused> {
        if self.end().is_some() {
            return Err(Refused::Ended);
        }
        self.input.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Busy,
            mpsc::error::TrySendError::Closed(_) => Refused::Ended,
        })
    }
}

/// The processes of every sandbox, by the sandbox's scope (unique to one
/// sandbox, so a later one under a reused name sees none of them) and pid.
#[derive(Default)]
pub struct Processes {
    all: Mutex<HashMap<(String, u32), Arc<Proc>>>,
}

impl Processes {
    pub fn get(&self, vm: &str, pid: u32) -> Option<Arc<Proc>> {
        self.sweep();
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&(vm.to_owned(), pid)).cloned()
    }

    pub fn by_tag(&self, vm: &str, tag: &str) -> Option<Arc<Proc>> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .find(|((v, _), p)| v == vm && p.tag.as_deref() == Some(tag) && p.end().is_none())
            .map(|(_, p)| p.clone())
    }

    /// The running processes of `vm`, by pid.
    pub fn running(&self, vm: &str) -> Vec<Arc<Proc>> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut procs: Vec<_> = all
            .iter()
            .filter(|((v, _), p)| v == vm && p.end().is_none())
            .map(|(_, p)| p.clone())
            .collect();
        procs.sort_by_key(|p| p.pid);
        procs
    }

    /// Forget ended processes past their time or their sandbox's count.
    fn sweep(&self) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut ended: HashMap<String, Vec<(u32, Instant)>> = HashMap::new();
        for ((vm, pid), p) in all.iter() {
            if let Some((_, at)) = p.ended.borrow().as_ref() {
                ended.entry(vm.clone()).or_default().push((*pid, *at));
            }
        }
        for (vm, mut list) in ended {
            list.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
            for (i, (pid, at)) in list.into_iter().enumerate() {
                if i >= MAX_ENDED || now.saturating_duration_since(at) > ENDED_TTL {
                    all.remove(&(vm.clone(), pid));
                }
            }
        }
    }

    /// Follow a process the agent started, until it ends or its lifetime
    /// runs out (then it is killed). The receiver watches from the start,
    /// so that none of the output is missed.
    pub fn adopt(&self, scope: &str, spawned: Spawned) -> (Arc<Proc>, mpsc::Receiver<Item>) {
        self.sweep();
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        let (ended_tx, ended_rx) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid: spawned.pid,
            config: spawned.config,
            tag: spawned.tag,
            pty: spawned.pty,
            stdin: spawned.stdin,
            watchers: Mutex::new(Vec::new()),
            input: input_tx,
            ended: ended_rx,
        });
        let first = proc.watch();
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((scope.to_owned(), spawned.pid), proc.clone());
        tokio::spawn(pump(
            proc.clone(),
            spawned.conn,
            input_rx,
            ended_tx,
            spawned.lifetime,
        ));
        (proc, first)
    }
}

/// Carry the process's output to its watchers until it ends. Its input
/// and its deadline are another task's, so that a watcher that is slow to
/// read never holds up a kill.
async fn pump(
    proc: Arc<Proc>,
    conn: AgentConn,
    input: mpsc::Receiver<Input>,
    ended: watch::Sender<Option<(End, Instant)>>,
    lifetime: Option<Duration>,
) {
    // The lease (the VM is in use) is kept until this returns.
    let (mut reader, writer, _lease) = conn.into_parts();
    let feeder = tokio::spawn(feed(writer, input, lifetime));
    let end = loop {
        match reader.recv().await {
            Ok(Some(Message::Stdout(b))) => {
                let out = if proc.pty {
                    Output::Pty
                } else {
                    Output::Stdout
                };
                deliver(&proc, Item::Data(out, b)).await;
            }
            Ok(Some(Message::Stderr(b))) => deliver(&proc, Item::Data(Output::Stderr, b)).await,
            Ok(Some(Message::Exited(status))) => break End::from_status(status),
            Ok(Some(Message::Error(e))) => break End::lost(&format!("error: {e}")),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break End::lost("error: the sandbox's agent went away"),
        }
    };
    feeder.abort();
    let watchers = {
        let mut w = proc.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let _ = ended.send(Some((end.clone(), Instant::now())));
        std::mem::take(&mut *w)
    };
    for w in watchers {
        let _ = w.send(Item::End(end.clone())).await;
    }
}

/// Write the process's input to the agent, in frames it takes, and kill
/// the process when its lifetime runs out (envd's `Connect-Timeout-Ms`).
async fn feed(
    mut writer: AgentWriter,
    mut input: mpsc::Receiver<Input>,
    lifetime: Option<Duration>,
) {
    let deadline = lifetime.map(|l| Instant::now() + l);
    let mut killed = false;
    loop {
        let armed = deadline.filter(|_| !killed);
        let expire = async move {
            match armed {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let msgs = tokio::select! {
            i = input.recv() => match i {
                None => return,
                Some(Input::Stdin(b)) => b.chunks(MAX_CHUNK).map(|c| Message::Stdin(c.to_vec())).collect(),
                Some(Input::CloseStdin) => vec![Message::Stdin(Vec::new())],
                Some(Input::Signal(s)) => vec![Message::Signal(s)],
                Some(Input::Resize(size)) => vec![Message::Resize(size)],
            },
            () = expire => {
                killed = true;
                vec![Message::Signal(9)]
            }
        };
        for m in msgs {
            if writer.send(&m).await.is_err() {
                return; // the reader sees the connection end
            }
        }
    }
}

/// Hand `item` to every watcher, waiting for each that is behind (as a
/// pipe would); those gone are dropped.
async fn deliver(proc: &Proc, item: Item) {
    let watchers: Vec<_> = proc
        .watchers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut gone = false;
    for w in &watchers {
        gone |= w.send(item.clone()).await.is_err();
    }
    if gone {
        proc.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| !w.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_read_as_envd_reports_them() {
        assert_eq!(
            End::from_status(ExitStatus::Code(0)),
            End {
                exit_code: 0,
                exited: true,
                status: "exit status 0".into()
            }
        );
        assert_eq!(
            End::from_status(ExitStatus::Code(3)).status,
            "exit status 3"
        );
        let killed = End::from_status(ExitStatus::Signal(9));
        assert_eq!((killed.exit_code, killed.exited), (-1, false));
        assert_eq!(killed.status, "signal: killed");
    }
}
