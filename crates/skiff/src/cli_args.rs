//! The command line's grammar: every verb, flag and argument (clap).
//! What each does is in main.rs and the cli_* modules.

use crate::cli_parse::{parse_env, parse_publish, parse_share};
use crate::{cli_net, cli_pool, run_spec};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Run Linux microVMs: sandboxes, services, dev boxes"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Boot a fresh microVM, run COMMAND in it, and exit with its status.
    Run(Box<RunArgs>),
    /// Manage guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run the daemon that owns long-lived VMs (API on a Unix socket).
    Daemon(DaemonArgs),
    /// Create VMs from a spec file (they start with `skiff start`).
    Create(SpecFileArgs),
    /// Create or update VMs from a spec file; running VMs whose spec changed
    /// restart where `restart_if_changed` allows.
    Apply(SpecFileArgs),
    /// Start VMs and wait until each is ready.
    Start {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop VMs: power off through the agent (or the guest's init), kill
    /// after the timeout.
    Stop {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Seconds to wait for a clean power-off before killing (default:
        /// 10, or 60 for a guest with its own init, whose shutdown stops
        /// every unit).
        #[arg(short = 't', long)]
        timeout: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Stop and start VMs.
    Restart {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Save pausable VMs to disk and end their QEMU: their memory goes back
    /// to the host until `skiff resume` (`pausable = true` in the spec).
    Pause {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Bring paused VMs back as they were: processes, files, address.
    Resume {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove VMs.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop running VMs first.
        #[arg(short, long)]
        force: bool,
        /// Also delete the VMs' named volumes (kept otherwise).
        #[arg(long)]
        volumes: bool,
        #[arg(long)]
        json: bool,
    },
    /// List VMs: every VM the daemon has, stopped ones too (they are
    /// declared, like units; `--filter state=running` for the running).
    #[command(alias = "ps")]
    Ls {
        /// Every VM (the default; accepted for docker's habit).
        #[arg(short, long)]
        all: bool,
        /// Names only, one per line.
        #[arg(short, long)]
        quiet: bool,
        /// Only VMs that match: state=STATE (running, stopped, exited, ...)
        /// or name=PART (a part of the name). Repeatable; all must match.
        #[arg(long, value_name = "KEY=VALUE", value_parser = crate::cli_parse::parse_filter)]
        filter: Vec<crate::cli_parse::VmFilter>,
        #[arg(long)]
        json: bool,
    },
    /// Show everything the daemon knows about VMs, as JSON (an array when
    /// several are named).
    Inspect {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Print a VM's console and service output.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// Start this many lines before the end.
        #[arg(short = 'n', long, value_name = "LINES")]
        tail: Option<u64>,
        /// Begin each line with the time the daemon first saw it (RFC 3339,
        /// UTC; within a quarter of a second).
        #[arg(short, long)]
        timestamps: bool,
        /// Only lines since this time: Unix seconds, RFC 3339, or a duration
        /// before now (10m, 1h30m).
        #[arg(long, value_name = "TIME", value_parser = crate::cli_parse::parse_since)]
        since: Option<u64>,
    },
    /// Run a command in a running VM; exits with the command's status.
    Exec(ExecArgs),
    /// Copy files or directories between the host and a running VM
    /// (`skiff cp ./a.txt web:/tmp/`, `skiff cp web:/var/log ./logs`).
    Cp {
        /// Source: a host path, or NAME:/path in a VM.
        src: String,
        /// Destination: a host path, or NAME:/path in a VM.
        dst: String,
    },
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Manage networks: bridges with NAT that VMs join (`mode = "bridge"`).
    #[command(subcommand)]
    Network(cli_net::NetworkCommand),
    /// Manage warm pools of sandboxes (`skiff run --pool NAME -- CMD`).
    #[command(subcommand)]
    Pool(cli_pool::PoolCommand),
    /// Save a pausable VM's state under a tag (`skiff snapshot NAME TAG`),
    /// list (`ls`) or remove (`rm`) snapshots; start VMs from one with
    /// `skiff run --from-snapshot TAG`.
    Snapshot(crate::cli_snapshot::SnapshotArgs),
    /// Serve the Model Context Protocol on stdio, for AI agents: run code
    /// in fresh sandboxes of the daemon's pools, or create one and exec,
    /// read, write and list files in it.
    Mcp(crate::cli_mcp::McpArgs),
    /// Show what VMs use: CPU, memory, network and disk (all, or the VMs
    /// named), refreshed every 2 s until interrupted.
    Stats {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// One table, then exit.
        #[arg(long)]
        no_stream: bool,
        /// JSON rows (a line per refresh).
        #[arg(long)]
        json: bool,
    },
    /// Stream what happens to VMs (created, start, booted, stop, halted,
    /// ended, removed, ...) as it happens, until interrupted.
    Events {
        /// Only this VM's.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Only this action's (start, ended, removed, ...).
        #[arg(long)]
        action: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `source <(skiff completions bash)`
    /// (zsh, fish too; setup installs them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (skiff.1, skiff-run.1, ...) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// The host end of a pausable VM's control channel (skiff starts it).
    #[command(hide = true)]
    SerialBridge {
        /// The socket QEMU's virtio-serial port connects to.
        #[arg(long)]
        listen: std::path::PathBuf,
        /// The vsock-style socket clients connect to (`CONNECT <port>`).
        #[arg(long)]
        uds_path: std::path::PathBuf,
    },
    /// Show the versions of this command, of the daemon and of their API
    /// (they work together when the API versions match).
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Open an interactive shell (or COMMAND) on a terminal in a running VM.
    Shell {
        name: String,
        /// Command to run instead of a login shell (`--` before it is
        /// optional).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum VolumeCommand {
    /// Create an empty ext4 volume.
    Create {
        name: String,
        /// Size, like 512M or 2G (default 1G).
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List volumes and the VMs that use them.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete volumes (refused while a running VM uses one).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct DaemonArgs {
    /// Also serve the API on this TCP address (for example 127.0.0.1:7070);
    /// every request must then carry `Authorization: Bearer <token>`.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    pub(crate) listen_tcp: Option<std::net::SocketAddr>,
    /// File holding the bearer token for the TCP listener.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Run the reverse proxy for VMs with an `http` section: plain HTTP on
    /// this address (for example 0.0.0.0:80).
    #[arg(long, value_name = "ADDR")]
    pub(crate) http_listen: Option<std::net::SocketAddr>,
    /// The proxy's HTTPS address (for example 0.0.0.0:443).
    #[arg(long, value_name = "ADDR")]
    pub(crate) https_listen: Option<std::net::SocketAddr>,
    /// A proxy in front of skiff's whose X-Forwarded-For is kept (repeat
    /// for several); from any other client the header is replaced.
    #[arg(long = "proxy-trusted", value_name = "IP")]
    pub(crate) proxy_trusted: Vec<std::net::IpAddr>,
    /// Connections the proxy holds open at once, from everyone.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) proxy_max_connections: u32,
    /// Connections the proxy holds open at once from one address (an IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) proxy_max_per_ip: u32,
    /// Seconds a client has to send a request head.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) proxy_header_timeout: u64,
    /// Seconds a connection may sit idle between requests.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub(crate) proxy_idle_timeout: u64,
    /// Serve the E2B-compatible API (E2B's SDKs unchanged: point
    /// E2B_API_URL and E2B_SANDBOX_URL here) on this loopback address, for
    /// example 127.0.0.1:3000. Needs --e2b-keys.
    #[arg(long, value_name = "ADDR", requires = "e2b_keys")]
    pub(crate) e2b_listen: Option<std::net::SocketAddr>,
    /// File of the API keys the E2B-compatible API lets in, one per line
    /// (each a sandbox owner: a key sees only the sandboxes it made).
    #[arg(long, value_name = "FILE")]
    pub(crate) e2b_keys: Option<PathBuf>,
    /// Seconds a VM may take to become ready when it starts (its agent
    /// answers, or its `ready` check passes) before the boot fails.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) boot_timeout: u64,
}

#[derive(clap::Args)]
pub(crate) struct SpecFileArgs {
    /// The spec file (TOML; `-` for stdin).
    #[arg(short, long = "file", value_name = "FILE")]
    pub(crate) file: PathBuf,
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args)]
pub(crate) struct ExecArgs {
    pub(crate) name: String,
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    #[arg(short, long, value_name = "DIR")]
    pub(crate) workdir: Option<String>,
    /// Forward stdin even when it is a terminal.
    #[arg(short, long)]
    pub(crate) interactive: bool,
    /// Give the command a terminal (a pseudo-terminal in the guest), as
    /// `docker exec -it` does; needs one on stdin.
    #[arg(short, long)]
    pub(crate) tty: bool,
    /// Run as this guest user (a name from its /etc/passwd, UID or UID:GID).
    #[arg(short, long)]
    pub(crate) user: Option<String>,
    /// The command and its arguments (`--` before them is optional).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "COMMAND"
    )]
    pub(crate) command: Vec<String>,
}

#[derive(Subcommand)]
pub(crate) enum ImageCommand {
    /// Build a root filesystem image from a recipe (Debian packages, files,
    /// commands) with debootstrap; needs root.
    Build {
        /// The recipe (TOML), for example images/python.toml.
        #[arg(short, long = "file", value_name = "RECIPE")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Pull an OCI image from a registry (`alpine`, `python:3.12-slim`,
    /// `ghcr.io/org/app@sha256:…`, `localhost:5000/app:1.0`); credentials
    /// come from docker's config file (`docker login`).
    Pull {
        #[arg(value_name = "REFERENCE")]
        reference: String,
        /// No progress on stderr.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Import an OCI image from a `docker save` archive or an OCI layout
    /// directory.
    Import {
        #[arg(value_name = "ARCHIVE_OR_DIR")]
        path: PathBuf,
        /// The image's name (NAME:TAG), when the archive gives none or
        /// holds several.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List images: built from recipes, pulled, imported.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove every build of an image (refused while a VM or pool of the
    /// daemon boots it).
    Rm {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete the stored OCI blobs no image uses (after `image rm`), and
    /// what interrupted pulls left.
    Prune {
        #[arg(long)]
        json: bool,
    },
    /// Fetch the kernel and build the default image now (otherwise the
    /// first `skiff run` does it).
    Prepare {
        #[command(flatten)]
        kernel: KernelArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Clone)]
pub(crate) struct KernelArgs {
    /// Boot this kernel image instead of Debian's linux-image-cloud-amd64.
    #[arg(long, value_name = "PATH")]
    pub(crate) kernel: Option<PathBuf>,
    /// The kernel's lib/modules/<release> directory (with modules.dep), if
    /// the virtio/vsock drivers are modules.
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub(crate) modules: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TimingsFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Run in a ready sandbox taken from this pool (destroyed afterwards)
    /// instead of booting a VM: see `skiff pool create`.
    #[arg(long, conflicts_with_all = ["standalone", "rootfs", "image", "net", "publish", "volume"])]
    pub(crate) pool: Option<String>,
    /// Start the VM from a snapshot (`skiff snapshot NAME TAG`) instead of
    /// booting it: the saved machine, its processes and files, with its
    /// own name, address and identity.
    #[arg(long, value_name = "TAG", conflicts_with_all = ["pool", "standalone", "timings", "tty", "image", "rootfs", "volume", "publish", "net", "cpus", "memory", "rm"])]
    pub(crate) from_snapshot: Option<String>,
    /// Boot the VM from this process instead of through the daemon (the
    /// default when --timings is given, or SKIFF_STANDALONE=1).
    #[arg(long, env = "SKIFF_STANDALONE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub(crate) standalone: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub(crate) cpus: u32,
    /// Network: none (no device at all), user (QEMU user-mode NAT, no
    /// privileges needed), or the name of a network made with `skiff
    /// network create` (through the daemon). Default: none, or user when -p
    /// is given.
    #[arg(long)]
    pub(crate) net: Option<String>,
    /// Boot into this host directory as the root filesystem (writes go to
    /// an overlay in guest memory unless --rootfs-rw).
    #[arg(long, value_name = "DIR")]
    pub(crate) rootfs: Option<PathBuf>,
    /// Let the guest write to the --rootfs directory itself.
    #[arg(long, requires = "rootfs")]
    pub(crate) rootfs_rw: bool,
    /// Boot into an image: one built from a recipe (skiff image build), or
    /// an OCI image by reference (pulled first if it is not here), whose
    /// Entrypoint, Cmd, Env, WorkingDir and User apply unless overridden.
    /// Writes stay in memory.
    #[arg(long, value_name = "NAME", conflicts_with = "rootfs")]
    pub(crate) image: Option<String>,
    /// Share a host directory into the guest: HOST_DIR:GUEST_PATH[:ro]
    /// (virtiofs; `ro` is enforced by the host). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SHARE", value_parser = parse_share)]
    pub(crate) volume: Vec<run_spec::RunShare>,
    /// Forward a host port to the guest: [ADDR:]HOST:GUEST[/tcp|/udp]
    /// (ADDR defaults to 127.0.0.1). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "PORTS", value_parser = parse_publish)]
    pub(crate) publish: Vec<String>,
    /// Memory: MiB, or with a unit (512m, 2G).
    #[arg(short, long, value_name = "SIZE", default_value = "256", value_parser = crate::cli_parse::parse_memory)]
    pub(crate) memory: u32,
    /// Set an environment variable in the guest command (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) env: Vec<(String, String)>,
    /// Working directory of the command in the guest.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) workdir: Option<String>,
    /// Forward stdin even when it is a terminal (it is always forwarded
    /// when it is a pipe or a file).
    #[arg(short, long)]
    pub(crate) interactive: bool,
    /// Give the command a terminal (a pseudo-terminal in the guest), as
    /// `docker run -it` does; needs one on stdin.
    #[arg(short, long, conflicts_with_all = ["standalone", "timings", "detach", "pool"])]
    pub(crate) tty: bool,
    /// Print how long each phase took, on stderr.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "human", value_name = "FORMAT")]
    pub(crate) timings: Option<TimingsFormat>,
    /// CPU accelerator: hardware KVM, TCG emulation, or auto-detect.
    #[arg(long, default_value = "auto", value_parser = accel_parser())]
    pub(crate) accel: skiff_spec::Accel,
    #[command(flatten)]
    pub(crate) kernel: KernelArgs,
    /// Seconds to wait for the guest to become ready.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) boot_timeout: u64,
    /// No notices or progress on stderr (the command's own stderr still
    /// comes through).
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// Run the command as this guest user (a name, UID or UID:GID).
    #[arg(short, long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Keep the VM: a named VM of the daemon whose service is COMMAND,
    /// left running when this returns (see `skiff logs`, `exec`, `rm`), as
    /// `docker run -d`. Without --rm it stays after COMMAND ends.
    #[arg(short, long, conflicts_with_all = ["standalone", "pool", "timings", "interactive", "workdir", "user"])]
    pub(crate) detach: bool,
    /// The detached VM's name (default: run-ID).
    #[arg(long, requires = "detach")]
    pub(crate) name: Option<String>,
    /// Remove the VM when its command ends (an attached run always is, so
    /// this is for docker's habit there); with -d, the daemon removes the
    /// VM when its service ends or it is stopped.
    #[arg(long)]
    pub(crate) rm: bool,
    /// The image, as docker takes it: `skiff run alpine:3.20 ls -l` (the
    /// same as --image alpine:3.20 -- ls -l): what follows IMAGE is the
    /// command, flags included.
    #[arg(value_name = "IMAGE", conflicts_with_all = ["image", "rootfs"])]
    pub(crate) image_arg: Option<String>,
    /// The command and its arguments, after `--` (an OCI image's Cmd when
    /// absent).
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// docker's `run IMAGE CMD...`, where everything after the image is the
/// command (its flags too), as clap reads it: `--` put after the image.
/// The options that take a value (and so hide their next word) are clap's
/// own list.
pub(crate) fn docker_run_argv(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if argv.get(1).is_none_or(|a| a != "run") {
        return argv;
    }
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(run) = cmd.find_subcommand("run") else {
        return argv;
    };
    let takes_value = |a: &clap::Arg| {
        a.get_action().takes_values() && a.get_num_args().is_none_or(|n| n.min_values() > 0)
    };
    let longs: Vec<String> = run
        .get_arguments()
        .filter(|a| takes_value(a))
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let shorts: Vec<char> = run
        .get_arguments()
        .filter(|a| takes_value(a))
        .filter_map(|a| a.get_short())
        .collect();
    let mut i = 2;
    while i < argv.len() {
        let word = argv[i].to_string_lossy().into_owned();
        if word == "--" {
            return argv;
        }
        if word.starts_with("--") {
            i += if longs.contains(&word) { 2 } else { 1 };
        } else if let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) {
            // `-it`, `-m512`, `-m 512`: a value-taking letter takes the
            // rest of the word, or the next word when it is last.
            let needs_next = cluster
                .char_indices()
                .find(|(_, c)| shorts.contains(c))
                .is_some_and(|(at, c)| at + c.len_utf8() == cluster.len());
            i += if needs_next { 2 } else { 1 };
        } else {
            // The image: the command follows, when there is one (and was
            // not split off already).
            if i + 1 < argv.len() && argv[i + 1] != "--" {
                argv.insert(i + 1, "--".into());
            }
            return argv;
        }
    }
    argv
}

impl RunArgs {
    /// One image and one command, however they were written.
    pub(crate) fn normalized(mut self) -> Result<RunArgs, String> {
        if let Some(first) = self.image_arg.take() {
            if self.pool.is_some() || self.from_snapshot.is_some() {
                // A pool's sandboxes and a snapshot have their image: the
                // first word is the command's (`run --pool sb python3 -c ...`).
                self.command.insert(0, first);
            } else {
                self.image = Some(first);
            }
        }
        let keeps_its_own = self.from_snapshot.is_some() && self.detach;
        if self.command.is_empty() && self.image.is_none() && !keeps_its_own {
            return Err(
                "no command given; usage: skiff run [OPTIONS] [IMAGE [ARGS...]] [-- COMMAND...]"
                    .into(),
            );
        }
        Ok(self)
    }
}

/// `--accel auto|kvm|tcg`, listed in `--help` and checked by clap.
pub(crate) fn accel_parser() -> impl clap::builder::TypedValueParser<Value = skiff_spec::Accel> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["auto", "kvm", "tcg"]).map(|s| match s.as_str() {
        "kvm" => skiff_spec::Accel::Kvm,
        "tcg" => skiff_spec::Accel::Tcg,
        _ => skiff_spec::Accel::Auto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("skiff").chain(args.iter().copied());
        Cli::try_parse_from(docker_run_argv(argv.map(Into::into).collect()))
    }

    #[test]
    fn what_follows_a_run_s_image_is_its_command() {
        let argv = |args: &[&str]| -> Vec<String> {
            let v = std::iter::once("skiff").chain(args.iter().copied());
            docker_run_argv(v.map(Into::into).collect())
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .skip(1)
                .collect()
        };
        assert_eq!(
            argv(&["run", "-q", "alpine", "ls", "-q"]),
            ["run", "-q", "alpine", "--", "ls", "-q"]
        );
        // Options with a value skip it, in either spelling.
        assert_eq!(
            argv(&[
                "run",
                "-e",
                "A=1",
                "--memory=1G",
                "-m",
                "512m",
                "-it",
                "app:1",
                "sh"
            ]),
            [
                "run",
                "-e",
                "A=1",
                "--memory=1G",
                "-m",
                "512m",
                "-it",
                "app:1",
                "--",
                "sh"
            ]
        );
        // Already split, no image, or not a run: unchanged.
        for v in [
            &["run", "alpine", "--", "ls"][..],
            &["run", "--", "true"],
            &["run", "--image", "x"],
            &["exec", "web", "ls"],
            &["run", "app:1"],
        ] {
            assert_eq!(argv(v), v, "{v:?}");
        }
    }

    fn run(args: &[&str]) -> RunArgs {
        match parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Run(a) => a.normalized().unwrap_or_else(|e| panic!("{args:?}: {e}")),
            _ => panic!("not run"),
        }
    }

    fn exec(args: &[&str]) -> ExecArgs {
        match parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Exec(a) => a,
            _ => panic!("not exec"),
        }
    }

    #[test]
    fn exec_takes_its_command_with_or_without_dashes() {
        let a = exec(&["exec", "web", "ls", "-l", "/"]);
        assert_eq!(
            (a.name.as_str(), a.command),
            ("web", vec!["ls".to_owned(), "-l".into(), "/".into()])
        );
        let a = exec(&["exec", "web", "--", "ls", "-l"]);
        assert_eq!(a.command, ["ls", "-l"]);
        let a = exec(&[
            "exec", "-it", "-e", "A=1", "-u", "0", "-w", "/tmp", "web", "sh", "-c", "echo -e",
        ]);
        assert!(a.interactive && a.tty);
        assert_eq!(a.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(
            (a.user.as_deref(), a.workdir.as_deref()),
            (Some("0"), Some("/tmp"))
        );
        assert_eq!(a.command, ["sh", "-c", "echo -e"]);
        // Flags after the command belong to the command.
        let a = exec(&["exec", "web", "grep", "-e", "x"]);
        assert!(a.env.is_empty());
        assert_eq!(a.command, ["grep", "-e", "x"]);
        assert!(parse(&["exec", "web"]).is_err(), "a command is required");
    }

    #[test]
    fn run_takes_docker_s_forms() {
        let a = run(&["run", "alpine:3.20", "ls", "-l"]);
        assert_eq!(
            (a.image.as_deref(), a.command),
            (Some("alpine:3.20"), vec!["ls".to_owned(), "-l".into()])
        );
        let a = run(&["run", "-q", "--", "true"]);
        assert_eq!((a.image, a.command), (None, vec!["true".to_owned()]));
        let a = run(&["run", "alpine", "--", "echo", "hi"]);
        assert_eq!(
            (a.image.as_deref(), a.command),
            (Some("alpine"), vec!["echo".to_owned(), "hi".into()])
        );
        let a = run(&["run", "--pool", "sb", "python3", "-c", "print(1)"]);
        assert_eq!(
            (a.image, a.command),
            (
                None,
                vec!["python3".to_owned(), "-c".into(), "print(1)".into()]
            )
        );
        let a = run(&["run", "--timings", "--", "true"]);
        assert!(a.timings.is_some());
        let a = run(&["run", "--timings=json", "alpine", "ls"]);
        assert_eq!(
            (a.image.as_deref(), a.command),
            (Some("alpine"), vec!["ls".to_owned()])
        );
        let a = run(&["run", "--image", "app:1"]);
        assert_eq!((a.image.as_deref(), a.command.len()), (Some("app:1"), 0));
        let a = run(&[
            "run", "-d", "--name", "web", "-m", "512m", "--cpus", "2", "nginx:1",
        ]);
        assert!(a.detach);
        assert_eq!((a.name.as_deref(), a.memory, a.cpus), (Some("web"), 512, 2));
        assert_eq!(run(&["run", "--memory", "2G", "--", "true"]).memory, 2048);
        assert_eq!(run(&["run", "--memory", "300", "--", "true"]).memory, 300);
    }

    #[test]
    fn bad_run_forms_say_what_is_wrong() {
        let err = |args: &[&str]| match parse(args) {
            Err(e) => e.to_string(),
            Ok(cli) => match cli.command {
                Command::Run(a) => a.normalized().err().unwrap_or_default(),
                _ => String::new(),
            },
        };
        assert!(err(&["run", "-m", "12k", "--", "true"]).contains("whole number of MiB"));
        assert!(err(&["run", "-m", "32M", "--", "true"]).contains("at least 64 MiB"));
        assert!(err(&["run"]).contains("no command given"));
        assert!(err(&["run", "--name", "x", "--", "true"]).contains("--detach"));
        assert!(err(&["run", "-d", "-i", "--", "true"]).contains("cannot be used with"));
        assert!(err(&["run", "--image", "a", "b"]).contains("cannot be used with"));
    }

    #[test]
    fn lifecycle_verbs_take_several_names() {
        match parse(&["stop", "-t", "3", "a", "b"]).expect("stop").command {
            Command::Stop { names, timeout, .. } => {
                assert_eq!(
                    (names, timeout),
                    (vec!["a".to_owned(), "b".into()], Some(3))
                )
            }
            _ => panic!("not stop"),
        }
        assert!(parse(&["start"]).is_err());
        assert!(parse(&["inspect", "a", "b"]).is_ok());
        match parse(&["ls", "-aq", "--filter", "state=running"])
            .expect("ls")
            .command
        {
            Command::Ls {
                all, quiet, filter, ..
            } => {
                assert!(all && quiet);
                assert_eq!(filter.len(), 1);
            }
            _ => panic!("not ls"),
        }
        assert!(parse(&["ls", "--filter", "colour=red"])
            .is_err_and(|e| e.to_string().contains("state=STATE")));
    }
}
