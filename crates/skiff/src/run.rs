//! `skiff run`: boot a fresh microVM, run one command, stream its output,
//! tear everything down, exit with the command's status.

use crate::image::{self, KernelChoice};
use crate::paths;
use crate::timings::Timings;
use anyhow::{bail, Context, Result};
use skiff_proto::{ExecRequest, ExitStatus, Message, MAX_CHUNK};
use skiff_vmm::{AccelChoice, AgentConn, HostKvm, RunningVm, VmConfig};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// Everything `skiff run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub argv: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub accel: AccelChoice,
    pub kernel: KernelChoice,
    pub boot_timeout: Duration,
    pub quiet: bool,
    /// User-mode networking with these forwards; `None`: no network.
    pub net: Option<skiff_vmm::UserNet>,
    /// A NIC on a managed network (the daemon prepared its TAP).
    pub tap: Option<skiff_vmm::TapNic>,
    /// Host directories shared into the guest.
    pub shares: Vec<RunShare>,
    /// Boot into this host directory instead of the default image.
    pub rootfs: Option<skiff_vmm::RootFs>,
}

/// `-v HOST_DIR:GUEST_PATH[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunShare {
    pub source: PathBuf,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

impl RunShare {
    fn share_dir(&self, index: usize) -> skiff_vmm::ShareDir {
        skiff_vmm::ShareDir {
            source: self.source.clone(),
            mount: skiff_proto::guest::MountArg {
                label: format!("share{index}"),
                target: self.target.clone(),
                readonly: self.readonly,
                noexec: false,
                nosuid: false,
                nodev: true,
            },
        }
    }
}

/// How long the guest gets to power off by itself before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The outcome of a run: the exit code for skiff and the phase timings.
pub struct RunOutcome {
    pub code: i32,
    pub timings: Timings,
}

/// Where a run's input comes from and its output goes: the terminal for
/// `skiff run` on its own, an upgraded API connection inside the daemon.
pub trait RunIo: Send {
    /// Whether the command gets stdin (else it reads /dev/null).
    fn forwards_stdin(&self) -> bool;
    /// The next stdin chunk (empty: end of input), or an interruption.
    /// Cancel-safe.
    fn next_event(&mut self) -> impl std::future::Future<Output = IoEvent> + Send;
    /// Resolves when the run must be abandoned, with the exit code to report
    /// (Ctrl-C: 130). Cancel-safe.
    fn interrupted(&mut self) -> impl std::future::Future<Output = i32> + Send;
    fn stdout(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = ()> + Send;
    fn stderr(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = ()> + Send;
    /// A notice from skiff itself (not the command).
    fn notice(&mut self, text: &str) -> impl std::future::Future<Output = ()> + Send;
}

/// Something that happened on the input side of a run.
pub enum IoEvent {
    /// Stdin bytes; empty means end of input.
    Stdin(Vec<u8>),
    /// Abandon the run and exit with this code.
    Interrupted(i32),
}

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

pub async fn run<IO: RunIo>(req: RunRequest, io: &mut IO) -> Result<RunOutcome> {
    if req.argv.is_empty() {
        bail!("no command given; usage: skiff run [OPTIONS] -- COMMAND [ARGS...]");
    }
    let mut timings = Timings::default();
    let started = Instant::now();

    let guest = {
        let kernel = req.kernel.clone();
        let quiet = req.quiet;
        tokio::task::spawn_blocking(move || image::prepare(&kernel, quiet))
            .await
            .context("image preparation panicked")??
    };
    timings.image = started.elapsed();
    timings.image_built = guest.built;

    let decision = skiff_vmm::decide(req.accel, &HostKvm::probe());
    if let (Some(notice), false) = (&decision.notice, req.quiet) {
        io.notice(notice).await;
    }
    let vm_id = paths::new_vm_id();
    let cfg = VmConfig {
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        kernel: guest.kernel.image.clone(),
        initrd: guest.initrd.clone(),
        accel: decision.accel,
        extra_cmdline: Vec::new(),
        run_dir: paths::runtime_dir().join("vms").join(&vm_id),
        qemu_binary: PathBuf::from("qemu-system-x86_64"),
        vsock_binary: paths::vsock_backend(),
        console_log: None,
        net: req.net.clone(),
        tap: req.tap.clone(),
        vm_id: vm_id.clone(),
        drives: Vec::new(),
        shares: req
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| s.share_dir(i))
            .collect(),
        virtiofsd_binary: paths::helper("virtiofsd", "SKIFF_VIRTIOFSD"),
        rootfs: req.rootfs.clone(),
        run_as: None,
    };
    let plan = skiff_vmm::plan(&cfg)?;
    if let Some(net) = &req.net {
        net.check_host_ports().map_err(anyhow::Error::msg)?;
    }

    let launch_start = Instant::now();
    let mut vm = RunningVm::launch(plan).await?;
    timings.launch = launch_start.elapsed();

    let boot_start = Instant::now();
    let ready = tokio::select! {
        r = vm.wait_ready(req.boot_timeout) => Ok(r),
        code = io.interrupted() => Err(code),
    };
    let mut conn = match ready {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            vm.teardown().await;
            return Err(e.into());
        }
        Err(code) => {
            vm.teardown().await;
            return Ok(RunOutcome { code, timings });
        }
    };
    timings.boot = boot_start.elapsed();
    timings.guest = Some(conn.hello.boot);
    if !conn.hello.problems.is_empty() {
        vm.teardown().await;
        bail!(
            "the guest could not be set up: {}",
            conn.hello.problems.join("; ")
        );
    }

    let exec_start = Instant::now();
    let result = exec(&mut vm, &mut conn, &req, io).await;
    timings.exec = exec_start.elapsed();

    let teardown_start = Instant::now();
    match &result {
        Ok(Ended::Command(_)) => vm.shutdown(Some(&mut conn), SHUTDOWN_GRACE).await,
        _ => vm.teardown().await,
    }
    timings.teardown = teardown_start.elapsed();
    timings.total = started.elapsed();

    let code = match result? {
        Ended::Command(ExitStatus::Code(c)) => c,
        Ended::Command(ExitStatus::Signal(s)) => {
            if !req.quiet {
                io.notice(&format!("the command was killed by signal {s}"))
                    .await;
            }
            128 + s
        }
        Ended::Interrupted(code) => code,
    };
    Ok(RunOutcome { code, timings })
}

enum Ended {
    Command(ExitStatus),
    Interrupted(i32),
}

/// Run the command on an open agent connection, streaming both ways.
async fn exec<IO: RunIo>(
    vm: &mut RunningVm,
    conn: &mut AgentConn,
    req: &RunRequest,
    io: &mut IO,
) -> Result<Ended> {
    let forward_stdin = io.forwards_stdin();
    conn.writer
        .send(&Message::Exec(ExecRequest {
            argv: req.argv.clone(),
            env: req.env.clone(),
            workdir: req.workdir.clone(),
            stdin: forward_stdin,
            service: false,
            tty: None,
            user: None,
        }))
        .await
        .context("cannot send the command to the guest")?;
    loop {
        tokio::select! {
            msg = conn.reader.recv() => match msg.context("lost the control channel to the guest")? {
                Some(Message::Stdout(b)) => io.stdout(&b).await,
                Some(Message::Stderr(b)) => io.stderr(&b).await,
                Some(Message::Exited(status)) => return Ok(Ended::Command(status)),
                Some(Message::Error(m)) => bail!("the guest agent refused the command: {m}"),
                Some(other) => bail!("the guest agent sent an unexpected {} message", other.name()),
                None => bail!("the guest closed the control channel before the command finished"),
            },
            event = io.next_event() => match event {
                IoEvent::Stdin(chunk) => conn.writer.send(&Message::Stdin(chunk)).await.context("cannot send stdin to the guest")?,
                IoEvent::Interrupted(code) => return Ok(Ended::Interrupted(code)),
            },
            (status, console) = vm.wait_exit() => {
                bail!("the VM stopped while the command was running (QEMU {status}); last console lines:\n{console}")
            }
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
pub(crate) fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
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
