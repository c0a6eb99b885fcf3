//! The processes started through envd's process service: each runs on an
//! agent connection of its own, held by a pump task of the daemon, so that
//! it outlives the HTTP stream that started it (E2B's background commands,
//! `Connect` by pid). Its output goes to whoever watches it at the time;
//! its end is kept for a while after it exited.

use skiff_proto::{ExitStatus, Message, WindowSize};
use skiff_vmm::AgentConn;
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
    input: mpsc::UnboundedSender<Input>,
    ended: watch::Receiver<Option<(End, Instant)>>,
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

    /// False when it has ended (nothing takes input any more).
    pub fn send(&self, input: Input) -> bool {
        self.end().is_none() && self.input.send(input).is_ok()
    }
}

/// The processes of every sandbox, by sandbox and pid.
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

    /// Follow the process `pid` that `conn` started, until it ends or its
    /// `lifetime` runs out (then it is killed). `first` watches from the
    /// start, so that none of the output is missed.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        &self,
        vm: &str,
        pid: u32,
        conn: AgentConn,
        config: Config,
        tag: Option<String>,
        pty: bool,
        stdin: bool,
        lifetime: Option<Duration>,
    ) -> (Arc<Proc>, mpsc::Receiver<Item>) {
        self.sweep();
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            config,
            tag,
            pty,
            stdin,
            watchers: Mutex::new(Vec::new()),
            input: input_tx,
            ended: ended_rx,
        });
        let first = proc.watch();
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((vm.to_owned(), pid), proc.clone());
        tokio::spawn(pump(proc.clone(), conn, input_rx, ended_tx, lifetime));
        (proc, first)
    }
}

/// Carry the process's output to its watchers and their input to it.
async fn pump(
    proc: Arc<Proc>,
    mut conn: AgentConn,
    mut input: mpsc::UnboundedReceiver<Input>,
    ended: watch::Sender<Option<(End, Instant)>>,
    lifetime: Option<Duration>,
) {
    let deadline = lifetime.map(|l| Instant::now() + l);
    let mut killed = false;
    let end = loop {
        let armed = deadline.filter(|_| !killed);
        let expire = async move {
            match armed {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = conn.reader.recv() => match msg {
                Ok(Some(Message::Stdout(b))) => {
                    let out = if proc.pty { Output::Pty } else { Output::Stdout };
                    deliver(&proc, Item::Data(out, b)).await;
                }
                Ok(Some(Message::Stderr(b))) => deliver(&proc, Item::Data(Output::Stderr, b)).await,
                Ok(Some(Message::Exited(status))) => break End::from_status(status),
                Ok(Some(Message::Error(e))) => break End::lost(&format!("error: {e}")),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break End::lost("error: the sandbox's agent went away"),
            },
            Some(i) = input.recv() => {
                let msg = match i {
                    Input::Stdin(b) if b.is_empty() => None,
                    Input::Stdin(b) => Some(Message::Stdin(b)),
                    Input::CloseStdin => Some(Message::Stdin(Vec::new())),
                    Input::Signal(s) => Some(Message::Signal(s)),
                    Input::Resize(size) => Some(Message::Resize(size)),
                };
                if let Some(msg) = msg {
                    if conn.writer.send(&msg).await.is_err() {
                        break End::lost("error: the sandbox's agent went away");
                    }
                }
            }
            () = expire => {
                // Its time is up, as envd's `connect-timeout-ms` says.
                killed = true;
                let _ = conn.writer.send(&Message::Signal(9)).await;
            }
        }
    };
    let watchers = {
        let mut w = proc.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let _ = ended.send(Some((end.clone(), Instant::now())));
        std::mem::take(&mut *w)
    };
    for w in watchers {
        let _ = w.send(Item::End(end.clone())).await;
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
