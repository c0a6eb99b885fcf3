//! Running a planned VM: the vsock backend, QEMU, the console, teardown.

use crate::agent::{AgentConn, AgentError};
use crate::plan::{LaunchPlan, ProcessPlan};
use skiff_proto::Message;
use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

/// How many console lines are kept for error reports.
const CONSOLE_LINES: usize = 40;
/// Longest console line kept; a guest printing without newlines cannot make
/// the host buffer grow.
const CONSOLE_LINE_MAX: usize = 512;

/// How to get virtiofsd, for the "not installed" error.
pub(crate) const VIRTIOFSD_HINT: &str =
    "shares need it: `apt-get install libseccomp-dev libcap-ng-dev && cargo install --locked virtiofsd`, or run scripts/setup.sh";

/// Errors launching or running a VM.
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
    #[error("cannot create the VM's runtime directory {}", path.display())]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the vsock backend exited before it was ready: {stderr}")]
    VsockBackend { stderr: String },
    #[error("virtiofsd could not serve a share: {stderr}")]
    Share { stderr: String },
    #[error("the vsock backend did not create {} within {timeout:?}", path.display())]
    VsockBackendTimeout { path: PathBuf, timeout: Duration },
    #[error("QEMU exited during boot ({status}).{stderr}\nlast console lines:\n{console}")]
    QemuExited {
        status: String,
        stderr: String,
        console: String,
    },
    #[error("the guest did not become ready within {timeout:?}; last console lines:\n{console}")]
    BootTimeout { timeout: Duration, console: String },
    #[error("the guest agent did not complete its handshake")]
    Agent(#[from] AgentError),
}

/// The last lines the guest printed on its console, bounded.
#[derive(Clone, Default)]
pub struct Console(Arc<Mutex<VecDeque<String>>>);

impl Console {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == CONSOLE_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, joined, or a note that there were none.
    pub fn tail(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            return "  (the guest printed nothing)".into();
        }
        lines
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A launched VM. Dropping it kills its processes and removes its runtime
/// directory; [`RunningVm::shutdown`] does the same gracefully.
pub struct RunningVm {
    plan: LaunchPlan,
    qemu: Child,
    vsock: Child,
    virtiofsd: Vec<Child>,
    ready: Option<UnixListener>,
    qemu_stderr: Arc<Mutex<String>>,
    pub console: Console,
    torn_down: bool,
}

fn command(p: &ProcessPlan) -> Command {
    let mut cmd = Command::new(&p.program);
    cmd.args(&p.args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C in the terminal reaches skiff,
        // which then tears the VM down in order, not the helpers directly.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe and touches no memory of
    // the parent. PR_SET_PDEATHSIG makes the kernel kill the helper if the
    // thread that spawned it dies, so a SIGKILLed skiff leaves no VM behind.
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
    cmd
}

/// Start a helper; a missing program is reported with how to install it.
pub(crate) fn spawn(
    p: &ProcessPlan,
    hint: &'static str,
    cmd: &mut Command,
) -> Result<Child, LaunchError> {
    cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => LaunchError::Missing {
            program: p.program.display().to_string(),
            hint,
        },
        _ => LaunchError::Spawn {
            program: p.program.display().to_string(),
            source: e,
        },
    })
}

/// Create a VM's runtime directory, private to this user.
pub(crate) fn create_run_dir(path: &Path) -> Result<(), LaunchError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| LaunchError::RunDir {
            path: path.to_owned(),
            source,
        })
}

impl RunningVm {
    /// Start the vsock backend and QEMU. Returns once QEMU is running; use
    /// [`RunningVm::wait_ready`] to wait for the agent.
    pub async fn launch(plan: LaunchPlan) -> Result<RunningVm, LaunchError> {
        create_run_dir(&plan.run_dir)?;
        // From here on, `cleanup` removes the directory on every error path.
        let cleanup = RunDirGuard(Some(plan.run_dir.clone()));
        let ready =
            UnixListener::bind(&plan.ready_socket).map_err(|source| LaunchError::RunDir {
                path: plan.ready_socket.clone(),
                source,
            })?;

        let mut vsock_cmd = command(&plan.vsock_backend);
        vsock_cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut vsock = spawn(
            &plan.vsock_backend,
            "build it once with `cargo install --locked vhost-device-vsock`, or run scripts/setup.sh",
            &mut vsock_cmd,
        )?;
        wait_for_socket(&plan.vhost_socket, &mut vsock).await?;
        let mut virtiofsd = Vec::new();
        for (p, socket) in &plan.virtiofsd {
            let mut cmd = command(p);
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = spawn(p, VIRTIOFSD_HINT, &mut cmd)?;
            wait_for_socket(socket, &mut child)
                .await
                .map_err(|e| match e {
                    LaunchError::VsockBackend { stderr } => LaunchError::Share { stderr },
                    other => other,
                })?;
            virtiofsd.push(child);
        }

        let mut qemu_cmd = command(&plan.qemu);
        qemu_cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut qemu = spawn(
            &plan.qemu,
            "install the Debian package qemu-system-x86",
            &mut qemu_cmd,
        )?;

        let console = Console::default();
        if let Some(out) = qemu.stdout.take() {
            tokio::spawn(read_console(out, console.clone()));
        }
        let qemu_stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = qemu.stderr.take() {
            tokio::spawn(read_bounded(err, qemu_stderr.clone()));
        }
        std::mem::forget(cleanup); // ownership passes to RunningVm
        Ok(RunningVm {
            plan,
            qemu,
            vsock,
            virtiofsd,
            ready: Some(ready),
            qemu_stderr,
            console,
            torn_down: false,
        })
    }

    pub fn plan(&self) -> &LaunchPlan {
        &self.plan
    }

    /// Wait for the agent's ready connection and check its hello.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<AgentConn, LaunchError> {
        let deadline = Instant::now() + timeout;
        let Some(listener) = self.ready.take() else {
            return Err(AgentError::Closed {
                context: " (ready connection already taken)",
            }
            .into());
        };
        let accepted = tokio::select! {
            r = tokio::time::timeout(timeout, listener.accept()) => r,
            status = self.qemu.wait() => {
                // Give the console reader a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let stderr = self.qemu_stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let stderr = if stderr.trim().is_empty() { String::new() } else { format!("\nQEMU said: {}", stderr.trim()) };
                return Err(LaunchError::QemuExited { status, stderr, console: self.console.tail() });
            }
        };
        let stream = match accepted {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => return Err(AgentError::Io(e).into()),
            Err(_) => {
                return Err(LaunchError::BootTimeout {
                    timeout,
                    console: self.console.tail(),
                })
            }
        };
        // The hello follows the connection at once; bound the wait anyway.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        Ok(AgentConn::handshake(stream, left).await?)
    }

    /// Wait until QEMU exits on its own; returns how it ended and the last
    /// console lines. Cancel-safe.
    pub async fn wait_exit(&mut self) -> (String, String) {
        let status = self
            .qemu
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status, self.console.tail())
    }

    /// Ask the agent to power off, give QEMU `grace` to exit, then kill
    /// everything and remove the runtime directory.
    pub async fn shutdown(mut self, conn: Option<&mut AgentConn>, grace: Duration) {
        if let Some(conn) = conn {
            if conn.writer.send(&Message::Shutdown).await.is_ok() {
                let _ = tokio::time::timeout(grace, self.qemu.wait()).await;
            }
        }
        self.teardown().await;
    }

    /// Kill both processes, reap them, remove the runtime directory.
    pub async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let _ = self.qemu.start_kill();
        let _ = self.qemu.wait().await;
        let _ = self.vsock.start_kill();
        let _ = self.vsock.wait().await;
        for fsd in &mut self.virtiofsd {
            let _ = fsd.start_kill();
            let _ = fsd.wait().await;
        }
        let _ = std::fs::remove_dir_all(&self.plan.run_dir);
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.torn_down {
            let _ = self.qemu.start_kill();
            let _ = self.vsock.start_kill();
            for fsd in &mut self.virtiofsd {
                let _ = fsd.start_kill();
            }
            let _ = std::fs::remove_dir_all(&self.plan.run_dir);
        }
    }
}

/// Removes a runtime directory unless defused with `mem::forget`.
struct RunDirGuard(Option<PathBuf>);
impl Drop for RunDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

async fn wait_for_socket(path: &Path, backend: &mut Child) -> Result<(), LaunchError> {
    let timeout = Duration::from_secs(10);
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(_)) = backend.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = backend.stderr.take() {
                let mut buf = vec![0u8; 4096];
                let n = e.read(&mut buf).await.unwrap_or(0);
                stderr = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            }
            return Err(LaunchError::VsockBackend { stderr });
        }
        if Instant::now() > deadline {
            return Err(LaunchError::VsockBackendTimeout {
                path: path.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn read_console(out: tokio::process::ChildStdout, console: Console) {
    let mut reader = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read up to a newline but never keep more than CONSOLE_LINE_MAX.
        let mut limited = (&mut reader).take(CONSOLE_LINE_MAX as u64);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if !text.trim().is_empty() {
                    console.push(text.to_owned());
                }
            }
        }
    }
}

async fn read_bounded(mut err: tokio::process::ChildStderr, into: Arc<Mutex<String>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut s = into.lock().unwrap_or_else(|p| p.into_inner());
                if s.len() < 8192 {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        }
    }
}
