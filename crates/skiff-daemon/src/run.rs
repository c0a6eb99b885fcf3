//! `skiff run`: boot a fresh microVM, run one command, stream its output,
//! tear everything down, exit with the command's status.

use crate::image::{self, KernelChoice};
use crate::paths;
use crate::resolve::{resolve, Artifacts, Host};
use crate::run_spec::{run_spec, RunBody};
use crate::timings::Timings;
use anyhow::{bail, Context, Result};
use skiff_proto::{ExecRequest, ExitStatus, Message};
use skiff_vmm::backend::Qemu;
use skiff_vmm::{AgentConn, HostKvm, RunningVm};
use std::time::{Duration, Instant};

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
    /// The client's terminal changed size (a run on a pseudo-terminal).
    Resize(skiff_proto::WindowSize),
}

/// `skiff run --standalone`: the run's VM planned exactly as the daemon
/// plans it, launched tied to this process, torn down when the command ends.
pub async fn run_standalone<IO: RunIo>(body: RunBody, io: &mut IO) -> Result<RunOutcome> {
    let vm_id = paths::new_vm_id();
    let spec = run_spec(&format!("run-{vm_id}"), &body)?;
    if spec
        .network
        .iter()
        .any(|n| n.mode == skiff_spec::NetMode::Bridge)
    {
        bail!(
            "--net {}: managed networks are run by the daemon; drop --standalone",
            body.net.as_deref().unwrap_or_default()
        );
    }
    let mut timings = Timings::default();
    let started = Instant::now();

    let guest = {
        let kernel = KernelChoice {
            kernel: body.kernel.clone(),
            modules: body.modules.clone(),
        };
        let quiet = body.quiet;
        tokio::task::spawn_blocking(move || image::prepare(&kernel, quiet))
            .await
            .context("image preparation panicked")??
    };
    timings.image = started.elapsed();
    timings.image_built = guest.built;

    let decision = skiff_vmm::decide(body.accel, &HostKvm::probe());
    if let (Some(notice), false) = (&decision.notice, body.quiet) {
        io.notice(notice).await;
    }
    let run_dir = paths::runtime_dir().join("vms").join(&vm_id);
    let host = Host::here(
        (guest.kernel.image.clone(), guest.initrd.clone()),
        decision.accel,
        run_dir.clone(),
        run_dir.join("console.log"),
        None,
    );
    for s in &spec.shares {
        if !s.source.is_dir() {
            bail!("{} is not an existing directory", s.source.display());
        }
    }
    let artifacts = Artifacts {
        share_owners: crate::drives::share_owners(&spec)?,
        ..Artifacts::default()
    };
    let plan = resolve(&spec, &vm_id, &host, artifacts, &Qemu)?;
    if let Some(net) = &plan.config.net {
        net.check_host_ports()?;
    }

    let launch_start = Instant::now();
    let mut vm = RunningVm::launch(plan.launch).await?;
    timings.launch = launch_start.elapsed();

    let boot_start = Instant::now();
    let ready = tokio::select! {
        r = vm.wait_ready(body.boot_timeout()) => Ok(r),
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
    let request = exec_request(&body, io.forwards_stdin());
    let result = {
        let vm_gone = async {
            let (status, console) = vm.wait_exit().await;
            format!("the VM stopped while the command was running (QEMU {status}); last console lines:\n{console}")
        };
        exec(&mut conn, request, io, vm_gone).await
    };
    timings.exec = exec_start.elapsed();

    let teardown_start = Instant::now();
    match &result {
        Ok(Ended::Command(_)) => vm.shutdown(Some(&mut conn), SHUTDOWN_GRACE).await,
        _ => vm.teardown().await,
    }
    timings.teardown = teardown_start.elapsed();
    timings.total = started.elapsed();
    let code = exit_code(result?, body.quiet, io).await;
    Ok(RunOutcome { code, timings })
}

/// The command of a run, as the agent takes it.
pub fn exec_request(body: &RunBody, stdin: bool) -> ExecRequest {
    ExecRequest {
        argv: body.argv.clone(),
        env: body.env.clone(),
        workdir: body.workdir.clone(),
        stdin,
        service: false,
        tty: body.tty.map(|t| skiff_proto::WindowSize {
            rows: t.rows,
            cols: t.cols,
        }),
        user: body.user.clone(),
        report_pid: false,
    }
}

/// The exit code of a run, as a shell reports it (128+N for signal N).
pub async fn exit_code<IO: RunIo>(ended: Ended, quiet: bool, io: &mut IO) -> i32 {
    match ended {
        Ended::Command(ExitStatus::Code(c)) => c,
        Ended::Command(ExitStatus::Signal(s)) => {
            if !quiet {
                io.notice(&format!("the command was killed by signal {s}"))
                    .await;
            }
            128 + s
        }
        Ended::Interrupted(code) => code,
    }
}

pub enum Ended {
    Command(ExitStatus),
    Interrupted(i32),
}

/// Run a command on an open agent connection, streaming both ways, until
/// it ends, the run is interrupted, or `vm_gone` says why the VM went away.
pub async fn exec<IO: RunIo>(
    conn: &mut AgentConn,
    request: ExecRequest,
    io: &mut IO,
    vm_gone: impl std::future::Future<Output = String>,
) -> Result<Ended> {
    conn.writer
        .send(&Message::Exec(request))
        .await
        .context("cannot send the command to the guest")?;
    tokio::pin!(vm_gone);
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
                // As for stdin: a failed resize is told by the command's end.
                IoEvent::Resize(size) => { let _ = conn.writer.send(&Message::Resize(size)).await; }
            },
            why = &mut vm_gone => bail!("{why}"),
        }
    }
}
