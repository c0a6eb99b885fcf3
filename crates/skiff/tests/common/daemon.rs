//! A real `skiff daemon` on temporary directories, for end-to-end tests.
//! Dropping it kills the daemon and every VM process it left behind.

use super::{output_with_input, processes_under};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Runs the daemon through this command (e.g. `ip netns exec NS`).
    wrapper: Vec<String>,
    /// Extra environment of the daemon and the CLI.
    env: Vec<(&'static str, String)>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Start with extra `skiff daemon` arguments.
    pub fn start_with(extra_args: &[String]) -> Daemon {
        Daemon::start_wrapped(extra_args, &[])
    }

    /// Start through `wrapper`, a command that runs the rest of its
    /// arguments (`ip netns exec NS`, `setpriv ... --`).
    pub fn start_wrapped(extra_args: &[String], wrapper: &[String]) -> Daemon {
        Daemon::start_full(extra_args, wrapper, Vec::new())
    }

    /// A daemon (and its CLI) with extra environment variables.
    #[allow(dead_code)]
    pub fn start_with_env(env: Vec<(&'static str, String)>) -> Daemon {
        Daemon::start_full(&[], &[], env)
    }

    /// A daemon on the fake backend: its VMs are `skiff-fake-vm`
    /// processes that speak the agent protocol (the fast test tier).
    pub fn start_fake() -> Daemon {
        Daemon::start_fake_wrapped(&[], &[])
    }

    /// A fake-backend daemon with extra arguments, through `wrapper`.
    #[allow(dead_code)]
    pub fn start_fake_wrapped(extra_args: &[String], wrapper: &[String]) -> Daemon {
        let fake = env!("CARGO_BIN_EXE_skiff-fake-vm").to_owned();
        Daemon::start_full(
            extra_args,
            wrapper,
            vec![("SKIFF_BACKEND", "fake".into()), ("SKIFF_FAKE_VM", fake)],
        )
    }

    fn start_full(
        extra_args: &[String],
        wrapper: &[String],
        env: Vec<(&'static str, String)>,
    ) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("skiff-d")
            .tempdir()
            .expect("tempdir");
        let mut d = Daemon {
            dir,
            child: None,
            extra_args: extra_args.to_vec(),
            wrapper: wrapper.to_vec(),
            env,
        };
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("skiff.sock")
    }

    pub fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("SKIFF_SOCKET", self.socket())
            .env("SKIFF_STATE_DIR", self.state())
            .env("SKIFF_RUNTIME_DIR", self.runtime())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
    }

    /// (Re)start the daemon process and wait for its socket to answer.
    pub fn spawn(&mut self) {
        let skiff = env!("CARGO_BIN_EXE_skiff");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(skiff);
                c
            }
            None => Command::new(skiff),
        };
        self.env(&mut cmd);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log");
        cmd.arg("daemon")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn daemon"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the daemon did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the daemon with SIGKILL (its VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The environment a CLI command needs to reach this daemon, as
    /// `VAR=value` words for a shell.
    #[allow(dead_code)]
    pub fn shell_env(&self) -> String {
        let mut cmd = Command::new("true");
        self.env(&mut cmd);
        cmd.get_envs()
            .filter_map(|(k, v)| Some(format!("{}='{}'", k.to_str()?, v?.to_str()?)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run a CLI command against this daemon on a terminal (script(1)
    /// gives it one, 80x24 as it has none of its own here): what the
    /// terminal showed, and the exit status.
    pub fn cli_on_terminal(&self, args: &str) -> Output {
        let shell = format!(
            "{} '{}' {args}",
            self.shell_env(),
            env!("CARGO_BIN_EXE_skiff")
        );
        Command::new("script")
            .args(["-qec", &shell, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script")
    }

    /// Run a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_input(args, None)
    }

    /// A `skiff` command for this daemon, to run as the caller likes.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        self.env(&mut cmd);
        cmd
    }

    pub fn cli_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        self.env(&mut cmd);
        cmd.args(args);
        output_with_input(&mut cmd, input)
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed ({:?}): {}\ndaemon log:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write spec");
        p
    }

    /// Write `spec` (TOML defining `[vm.NAME]`), create it and start it.
    pub fn boot(&self, name: &str, spec: &str) {
        let file = self.write_spec(&format!("{name}.toml"), spec);
        self.ok(&["create", "-f", file.to_str().expect("utf8")]);
        self.ok(&["start", name]);
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", name])).expect("inspect json")
    }

    /// Fake VM processes (`skiff-fake-vm guest`) of this daemon's VMs.
    pub fn fake_guests(&self) -> Vec<String> {
        processes_under(&self.runtime())
            .into_iter()
            .filter(|p| p.contains("skiff-fake-vm guest"))
            .collect()
    }

    /// QEMU processes of this daemon's VMs.
    pub fn qemu_count(&self) -> usize {
        processes_under(&self.runtime())
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .count()
    }

    /// Poll until `check` holds or the timeout passes.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        kill_processes_under(&self.runtime());
    }
}

fn kill_processes_under(dir: &Path) {
    for p in processes_under(dir) {
        if let Some(pid) = p.split(':').next().and_then(|s| s.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
