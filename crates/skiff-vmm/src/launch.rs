//! Launching a planned VM: its helpers (the vsock backend, one virtiofsd per
//! share), then the hypervisor; then waiting for the guest agent's ready
//! connection. One implementation serves every VM: the daemon's (detached,
//! so that a restarted daemon adopts them) and `skiff run --standalone`'s
//! (tied to the process that runs it).

use crate::agent::{AgentConn, AgentError};
use crate::plan::{LaunchPlan, ProcessPlan};
use crate::process::ProcessRef;
use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

/// How to get virtiofsd, for the "not installed" error.
const VIRTIOFSD_HINT: &str =
    "shares need it: `apt-get install libseccomp-dev libcap-ng-dev && cargo install --locked virtiofsd`, or run scripts/setup.sh";
const VSOCK_HINT: &str =
    "build it once with `cargo install --locked vhost-device-vsock`, or run scripts/setup.sh";
const QEMU_HINT: &str = "install the Debian package qemu-system-x86";
/// How long a helper may take to create its socket.
const HELPER_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// What virtiofsd logs once it waits on its socket.
const VIRTIOFSD_READY: &str = "Waiting for vhost-user socket connection";

/// Errors launching a VM or waiting for its guest.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{program} is not installed ({hint})")]
    Missing { program: String, hint: &'static str },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}", path.display())]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the vsock backend exited before it was ready: {stderr}")]
    VsockBackend { stderr: String },
    #[error("virtiofsd could not serve a share: {stderr}")]
    Share { stderr: String },
    #[error("{program} did not create {} within {timeout:?}", path.display())]
    SocketTimeout {
        program: String,
        path: PathBuf,
        timeout: Duration,
    },
    #[error("QEMU exited during boot ({status}).{stderr}\nlast console lines:\n{console}")]
    QemuExited {
        status: String,
        stderr: String,
        console: String,
    },
    #[error("the guest did not become ready within {timeout:?}; last console lines:\n{console}")]
    BootTimeout { timeout: Duration, console: String },
    #[error("the guest did not become ready within {timeout:?}: no {waited_for}; last console lines:\n{console}")]
    ProbeTimeout {
        timeout: Duration,
        waited_for: String,
        console: String,
    },
    #[error("the readiness pattern {0:?} is not a regular expression: {1}")]
    BadPattern(String, String),
    #[error("the guest agent did not complete its handshake")]
    Agent(#[from] AgentError),
}

/// How the VM's processes relate to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Receives each process's stderr: `vsock.log`, `virtiofsdN.log`,
    /// `qemu.log`.
    pub log_dir: PathBuf,
    /// Tie the processes to the calling thread: the kernel kills them when
    /// it dies (`PR_SET_PDEATHSIG`), and dropping their handles kills them.
    /// For `skiff run --standalone`; daemon VMs are not tied, so that they
    /// outlive a daemon restart.
    pub tied: bool,
}

/// One started process: who it is, and its handle when this process may
/// reap it.
pub struct Helper {
    pub process: ProcessRef,
    pub child: Option<Child>,
}

impl Helper {
    /// Kill it and, when it is our child, reap it.
    pub async fn kill(&mut self) {
        match &mut self.child {
            Some(c) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            None => self.process.signal(nix::sys::signal::Signal::SIGKILL),
        }
    }
}

/// A launched VM: its processes and where its agent will call in.
pub struct Launched {
    pub qemu: Helper,
    pub vsock: Helper,
    pub virtiofsd: Vec<Helper>,
    ready: Option<UnixListener>,
    ready_socket: PathBuf,
    qemu_log: PathBuf,
    console_log: PathBuf,
    /// The console log's length before this boot (it keeps earlier ones).
    console_start: u64,
}

impl Launched {
    /// Wait for a guest without an agent to pass its readiness probe
    /// (none: it counts as up once QEMU runs), watching QEMU so that a VM
    /// that dies during boot fails at once.
    pub async fn wait_probe(
        &mut self,
        probe: Option<&crate::ReadyProbe>,
        timeout: Duration,
    ) -> Result<(), LaunchError> {
        use crate::ReadyProbe;
        let deadline = Instant::now() + timeout;
        let mut console = crate::ready::ConsoleWatch::new(&self.console_log, self.console_start);
        let pattern = match probe {
            Some(ReadyProbe::Console(p)) => Some(
                regex::Regex::new(p)
                    .map_err(|e| LaunchError::BadPattern(p.clone(), e.to_string()))?,
            ),
            _ => None,
        };
        loop {
            if !self.qemu.process.is_alive() {
                return Err(self.exited_during_boot().await);
            }
            let up = match probe {
                None => true,
                Some(ReadyProbe::Console(_)) => pattern.as_ref().is_some_and(|p| console.poll(p)),
                Some(ReadyProbe::Tcp { addr, direct }) => {
                    crate::ready::tcp_answers(*addr, *direct).await
                }
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LaunchError::ProbeTimeout {
                    timeout,
                    waited_for: probe.map(|p| p.describe()).unwrap_or_default(),
                    console: crate::console::tail(&self.console_log),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait for the agent's ready connection and check its hello, watching
    /// QEMU so that a VM that dies during boot fails at once.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<AgentConn, LaunchError> {
        let deadline = Instant::now() + timeout;
        let Some(listener) = self.ready.take() else {
            return Err(AgentError::Closed {
                context: " (ready connection already taken)",
            }
            .into());
        };
        let stream = loop {
            tokio::select! {
                accepted = listener.accept() => break accepted.map_err(AgentError::Io)?.0,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if !self.qemu.process.is_alive() {
                        return Err(self.exited_during_boot().await);
                    }
                    if Instant::now() > deadline {
                        return Err(LaunchError::BootTimeout { timeout, console: crate::console::tail(&self.console_log) });
                    }
                }
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(&self.ready_socket);
        // The hello follows the connection at once; bound the wait anyway.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        Ok(AgentConn::handshake(stream, left).await?)
    }

    async fn exited_during_boot(&mut self) -> LaunchError {
        let status = match &mut self.qemu.child {
            Some(c) => match c.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            None => "it is gone".into(),
        };
        let said = crate::console::read_end(&self.qemu_log, 4096);
        let said = said.trim();
        LaunchError::QemuExited {
            status,
            stderr: if said.is_empty() {
                String::new()
            } else {
                format!("\nQEMU said: {said}")
            },
            console: crate::console::tail(&self.console_log),
        }
    }

    /// Kill every process (QEMU first) and reap the ones that are ours.
    pub async fn kill(&mut self) {
        self.qemu.kill().await;
        self.vsock.kill().await;
        for fsd in &mut self.virtiofsd {
            fsd.kill().await;
        }
    }
}

/// Start QEMU alone with `extra` arguments after its planned ones, for a VM
/// whose helpers still run (a resume); its stderr goes to `log`.
pub fn spawn_qemu(qemu: &ProcessPlan, extra: &[&str], log: &Path) -> Result<Helper, LaunchError> {
    let mut plan = qemu.clone();
    plan.args.extend(extra.iter().map(|a| (*a).to_owned()));
    // Nothing else to clean up on a failure: the VM's directory stays.
    let mut partial = Partial {
        run_dir: PathBuf::new(),
        started: Vec::new(),
        done: true,
    };
    partial.spawn(&plan, QEMU_HINT, log, false)?;
    partial.started.pop().ok_or_else(|| LaunchError::Spawn {
        program: plan.program.display().to_string(),
        source: io::Error::other("lost track of the started process"),
    })
}

/// Descriptors a process of [`ProcessPlan::run_as`] gets: its program (run
/// as /proc/self/fd/4) and its listening socket (fd 3).
struct PassedFds {
    program: Option<std::os::fd::OwnedFd>,
    listener: Option<std::os::unix::net::UnixListener>,
}

/// Where a passed program and listener sit in the child.
const LISTENER_FD: i32 = 3;
const PROGRAM_FD: i32 = 4;
/// Descriptors below this are moved out of the way before the fork, so
/// that placing one at 3 or 4 in the child never overwrites the other.
const HIGH_FD: i32 = 10;

impl PassedFds {
    fn open(p: &ProcessPlan) -> io::Result<PassedFds> {
        use std::os::fd::{AsFd, OwnedFd};
        let high = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<OwnedFd> {
            fd.try_clone_to_owned().and_then(|owned| {
                nix::fcntl::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&owned),
                    nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD),
                )
                .map_err(io::Error::from)
                // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor.
                .map(|fd| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
            })
        };
        let program = match p.run_as {
            Some(_) => Some(high(File::open(&p.program)?.as_fd())?),
            None => None,
        };
        let listener = match &p.listener_fd3 {
            Some(path) => {
                let l = std::os::unix::net::UnixListener::bind(path)?;
                Some(std::os::unix::net::UnixListener::from(high(l.as_fd())?))
            }
            None => None,
        };
        Ok(PassedFds { program, listener })
    }
}

fn command(
    p: &ProcessPlan,
    stderr: File,
    tied: bool,
    filters: Vec<seccompiler::BpfProgram>,
    passed: PassedFds,
) -> Command {
    use std::os::fd::AsRawFd;
    let program = match &passed.program {
        Some(_) => PathBuf::from(format!("/proc/self/fd/{PROGRAM_FD}")),
        None => p.program.clone(),
    };
    let mut cmd = Command::new(&program);
    if let Some(owner) = p.run_as {
        // std drops the supplementary groups of root along with it.
        cmd.uid(owner.uid).gid(owner.gid);
    }
    if passed.program.is_some() || passed.listener.is_some() {
        let fds = [
            (passed.listener.as_ref().map(|l| l.as_raw_fd()), LISTENER_FD),
            (passed.program.as_ref().map(|f| f.as_raw_fd()), PROGRAM_FD),
        ];
        // SAFETY: the closure runs in the forked child before exec and only
        // calls dup2(2) on descriptors opened above (all at HIGH_FD or
        // more, so neither target overwrites the other source); dup2 clears
        // close-on-exec on the copies. `passed` lives in the closure until
        // the parent drops the Command after spawning.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &passed;
                for (from, to) in fds {
                    if let Some(from) = from {
                        if libc::dup2(from, to) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            });
        }
    }
    if !filters.is_empty() {
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes the prctl(2) and seccomp(2) calls of apply_filter, on
        // programs compiled before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for f in &filters {
                    seccompiler::apply_filter(f).map_err(io::Error::other)?;
                }
                Ok(())
            });
        }
    }
    cmd.args(&p.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(tied)
        // Its own process group: a Ctrl-C in the terminal reaches skiff,
        // which then tears the VM down in order, not the helpers directly.
        .process_group(0);
    if tied {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe and touches no memory
        // of the parent. PR_SET_PDEATHSIG makes the kernel kill the helper
        // if the thread that spawned it dies, so a SIGKILLed skiff leaves no
        // VM behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Create a VM's runtime directory, private to this user.
fn create_run_dir(path: &Path) -> Result<(), LaunchError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| LaunchError::RunDir {
            path: path.to_owned(),
            source,
        })
}

/// What has been started so far; on an error path, dropping it kills every
/// process and removes the runtime directory.
struct Partial {
    run_dir: PathBuf,
    started: Vec<Helper>,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for h in &mut self.started {
            match &mut h.child {
                Some(c) => {
                    let _ = c.start_kill();
                }
                None => h.process.signal(nix::sys::signal::Signal::SIGKILL),
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

impl Partial {
    fn spawn(
        &mut self,
        p: &ProcessPlan,
        hint: &'static str,
        log: &Path,
        tied: bool,
    ) -> Result<ProcessRef, LaunchError> {
        let stderr = File::create(log).map_err(|source| LaunchError::RunDir {
            path: log.to_owned(),
            source,
        })?;
        let program = p.program.display().to_string();
        // Built here, not in the child: compiling a filter allocates.
        let filters = if p.no_set_id_files {
            crate::setid_filter::no_set_id_files().map_err(|e| LaunchError::Spawn {
                program: program.clone(),
                source: io::Error::other(e),
            })?
        } else {
            Vec::new()
        };
        let passed = PassedFds::open(p).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => LaunchError::Missing {
                program: program.clone(),
                hint,
            },
            _ => LaunchError::Spawn {
                program: program.clone(),
                source,
            },
        })?;
        let child = command(p, stderr, tied, filters, passed)
            .spawn()
            .map_err(|e| match e.kind() {
                // The daemon's own binary (a pausable VM's bridge), replaced
                // on disk since the daemon started.
                io::ErrorKind::NotFound if program.ends_with(" (deleted)") => LaunchError::Missing {
                    program: program.clone(),
                    hint: "this daemon's own binary was replaced since it started; restart the daemon",
                },
                io::ErrorKind::NotFound => LaunchError::Missing {
                    program: program.clone(),
                    hint,
                },
                _ => LaunchError::Spawn {
                    program: program.clone(),
                    source: e,
                },
            })?;
        let process = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(ProcessRef::of)
            .ok_or_else(|| LaunchError::Spawn {
                program,
                source: io::Error::other("it exited at once"),
            })?;
        self.started.push(Helper {
            process,
            child: Some(child),
        });
        Ok(process)
    }

    /// Wait until a just-started helper has created its socket; what it
    /// said on stderr explains a failure.
    /// Wait until `log` holds `line` (the helper is serving).
    async fn wait_for_log(
        &self,
        process: ProcessRef,
        program: &Path,
        line: &str,
        log: &Path,
    ) -> Result<(), LaunchError> {
        let logged = || std::fs::read_to_string(log).is_ok_and(|text| text.contains(line));
        wait_until(process, program, log, log, logged).await
    }

    async fn wait_for_socket(
        &self,
        process: ProcessRef,
        program: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<(), LaunchError> {
        wait_until(process, program, socket, log, || socket.exists()).await
    }
}

/// Poll `ready` until it holds; fail with the helper's stderr (`log`) if it
/// dies first, or name `waited_for` when it takes too long.
async fn wait_until(
    process: ProcessRef,
    program: &Path,
    waited_for: &Path,
    log: &Path,
    ready: impl Fn() -> bool,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + HELPER_SOCKET_TIMEOUT;
    while !ready() {
        if !process.is_alive() {
            return Err(LaunchError::VsockBackend {
                stderr: crate::console::read_end(log, 4096).trim().to_owned(),
            });
        }
        if Instant::now() > deadline {
            return Err(LaunchError::SocketTimeout {
                program: program.display().to_string(),
                path: waited_for.to_owned(),
                timeout: HELPER_SOCKET_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Start the vsock backend, the virtiofsd processes and QEMU for `plan`.
/// Returns once QEMU runs; [`Launched::wait_ready`] waits for the guest. On
/// an error nothing is left running and the runtime directory is gone.
pub async fn launch(plan: &LaunchPlan, opts: &LaunchOptions) -> Result<Launched, LaunchError> {
    create_run_dir(&plan.run_dir)?;
    let mut partial = Partial {
        run_dir: plan.run_dir.clone(),
        started: Vec::new(),
        done: false,
    };
    let ready = UnixListener::bind(&plan.ready_socket).map_err(|source| LaunchError::RunDir {
        path: plan.ready_socket.clone(),
        source,
    })?;
    let log = |name: &str| opts.log_dir.join(name);

    let vsock = partial.spawn(
        &plan.vsock_backend,
        VSOCK_HINT,
        &log("vsock.log"),
        opts.tied,
    )?;
    partial
        .wait_for_socket(
            vsock,
            &plan.vsock_backend.program,
            &plan.vhost_socket,
            &log("vsock.log"),
        )
        .await?;
    for (i, (p, socket)) in plan.virtiofsd.iter().enumerate() {
        let log = log(&format!("virtiofsd{i}.log"));
        let fsd = partial.spawn(p, VIRTIOFSD_HINT, &log, opts.tied)?;
        // A socket skiff bound exists already: wait for virtiofsd to say it
        // serves it instead (or to die, with its reason).
        let ready = match &p.listener_fd3 {
            Some(_) => {
                partial
                    .wait_for_log(fsd, &p.program, VIRTIOFSD_READY, &log)
                    .await
            }
            None => partial.wait_for_socket(fsd, &p.program, socket, &log).await,
        };
        ready.map_err(|e| match e {
            LaunchError::VsockBackend { stderr } => LaunchError::Share { stderr },
            other => other,
        })?;
    }
    let console_start = std::fs::metadata(&plan.console_log).map_or(0, |m| m.len());
    partial.spawn(&plan.qemu, QEMU_HINT, &log("qemu.log"), opts.tied)?;

    // Everything runs: hand the processes over (QEMU was started last).
    let mut started = std::mem::take(&mut partial.started);
    partial.done = true;
    let qemu = started.pop();
    let mut rest = started.into_iter();
    let (Some(qemu), Some(vsock)) = (qemu, rest.next()) else {
        // Unreachable: both were pushed above. Report rather than panic.
        return Err(LaunchError::Spawn {
            program: plan.qemu.program.display().to_string(),
            source: io::Error::other("lost track of the started processes"),
        });
    };
    Ok(Launched {
        qemu,
        vsock,
        virtiofsd: rest.collect(),
        ready: Some(ready),
        ready_socket: plan.ready_socket.clone(),
        qemu_log: log("qemu.log"),
        console_log: plan.console_log.clone(),
        console_start,
    })
}
