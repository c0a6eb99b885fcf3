//! The `skiff` command line.

mod cli_cp;
mod cli_image;
mod cli_net;
mod cli_parse;
mod cli_pool;
mod cli_run;
use cli_parse::{parse_env, parse_publish, parse_share, rootfs_arg};
mod cli_vm;
mod client;
mod tty;

// The daemon library: the CLI calls its public API (`serve`, the standalone
// run, the request types, paths and images), never its internals.
use skiff_daemon as daemon;
use skiff_daemon::{frames, image, paths, run, run_spec};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit code for failures of skiff itself (as opposed to the guest command),
/// the same convention as `docker run`.
const EXIT_SKIFF_ERROR: i32 = 125;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Run Linux microVMs: sandboxes, services, dev boxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a fresh microVM, run COMMAND in it, and exit with its status.
    Run(RunArgs),
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
    /// Start a VM and wait until it is ready.
    Start {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a VM: power off through its agent, kill after the timeout.
    Stop {
        name: String,
        /// Seconds to wait for a clean power-off.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Stop and start a VM.
    Restart {
        name: String,
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
    },
    /// List VMs.
    #[command(alias = "ps")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show everything the daemon knows about a VM, as JSON.
    Inspect { name: String },
    /// Print a VM's console and service output.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
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
    /// Open an interactive shell (or COMMAND) on a terminal in a running VM.
    Shell {
        name: String,
        /// Command to run instead of a login shell.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create an empty ext4 volume.
    Create {
        name: String,
        /// Size, like 512M or 2G (default 1G).
        #[arg(long)]
        size: Option<String>,
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
    },
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// Also serve the API on this TCP address (for example 127.0.0.1:7070);
    /// every request must then carry `Authorization: Bearer <token>`.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    listen_tcp: Option<std::net::SocketAddr>,
    /// File holding the bearer token for the TCP listener.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Run the reverse proxy for VMs with an `http` section: plain HTTP on
    /// this address (for example 0.0.0.0:80).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    /// The proxy's HTTPS address (for example 0.0.0.0:443).
    #[arg(long, value_name = "ADDR")]
    https_listen: Option<std::net::SocketAddr>,
    /// A proxy in front of skiff's whose X-Forwarded-For is kept (repeat
    /// for several); from any other client the header is replaced.
    #[arg(long = "proxy-trusted", value_name = "IP")]
    proxy_trusted: Vec<std::net::IpAddr>,
    /// Connections the proxy holds open at once, from everyone.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    proxy_max_connections: u32,
    /// Connections the proxy holds open at once from one address (an IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    proxy_max_per_ip: u32,
    /// Seconds a client has to send a request head.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    proxy_header_timeout: u64,
    /// Seconds a connection may sit idle between requests.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    proxy_idle_timeout: u64,
}

#[derive(clap::Args)]
struct SpecFileArgs {
    /// The spec file (TOML; `-` for stdin).
    #[arg(short, long = "file", value_name = "FILE")]
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ExecArgs {
    name: String,
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    #[arg(short, long)]
    interactive: bool,
    /// Run as this guest user (a name from its /etc/passwd, UID or UID:GID).
    #[arg(short, long)]
    user: Option<String>,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum ImageCommand {
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
    Rm { name: String },
    /// Delete the stored OCI blobs no image uses (after `image rm`), and
    /// what interrupted pulls left.
    Prune,
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
struct KernelArgs {
    /// Boot this kernel image instead of Debian's linux-image-cloud-amd64.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// The kernel's lib/modules/<release> directory (with modules.dep), if
    /// the virtio/vsock drivers are modules.
    #[arg(long, value_name = "DIR", requires = "kernel")]
    modules: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TimingsFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Run in a ready sandbox taken from this pool (destroyed afterwards)
    /// instead of booting a VM: see `skiff pool create`.
    #[arg(long, conflicts_with_all = ["standalone", "rootfs", "image", "net", "publish", "volume"])]
    pool: Option<String>,
    /// Boot the VM from this process instead of through the daemon (the
    /// default when --timings is given, or SKIFF_STANDALONE=1).
    #[arg(long, env = "SKIFF_STANDALONE", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    standalone: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    cpus: u32,
    /// Network: none (no device at all), user (QEMU user-mode NAT, no
    /// privileges needed), or the name of a network made with `skiff
    /// network create` (through the daemon). Default: none, or user when -p
    /// is given.
    #[arg(long)]
    net: Option<String>,
    /// Boot into this host directory as the root filesystem (writes go to
    /// an overlay in guest memory unless --rootfs-rw).
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Let the guest write to the --rootfs directory itself.
    #[arg(long, requires = "rootfs")]
    rootfs_rw: bool,
    /// Boot into an image: one built from a recipe (skiff image build), or
    /// an OCI image by reference (pulled first if it is not here), whose
    /// Entrypoint, Cmd, Env, WorkingDir and User apply unless overridden.
    /// Writes stay in memory.
    #[arg(long, value_name = "NAME", conflicts_with = "rootfs")]
    image: Option<String>,
    /// Share a host directory into the guest: HOST_DIR:GUEST_PATH[:ro]
    /// (virtiofs; `ro` is enforced by the host). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SHARE", value_parser = parse_share)]
    volume: Vec<run_spec::RunShare>,
    /// Forward a host port to the guest: [ADDR:]HOST:GUEST[/tcp|/udp]
    /// (ADDR defaults to 127.0.0.1). Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "PORTS", value_parser = parse_publish)]
    publish: Vec<String>,
    /// Memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(i64::from(skiff_vmm::plan::MIN_MEMORY_MIB)..=i64::from(skiff_vmm::plan::MAX_MEMORY_MIB)))]
    memory: u32,
    /// Set an environment variable in the guest command (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory of the command in the guest.
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Forward stdin even when it is a terminal (it is always forwarded
    /// when it is a pipe or a file).
    #[arg(short, long)]
    interactive: bool,
    /// Print how long each phase took, on stderr.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "human", value_name = "FORMAT")]
    timings: Option<TimingsFormat>,
    /// CPU accelerator: hardware KVM, TCG emulation, or auto-detect.
    #[arg(long, default_value = "auto", value_parser = accel_parser())]
    accel: skiff_spec::Accel,
    #[command(flatten)]
    kernel: KernelArgs,
    /// Seconds to wait for the guest to become ready.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    boot_timeout: u64,
    /// No notices or progress on stderr (the command's own stderr still
    /// comes through).
    #[arg(short, long)]
    quiet: bool,
    /// Run the command as this guest user (a name, UID or UID:GID).
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// The command and its arguments (an OCI image's Cmd when absent).
    #[arg(last = true, required_unless_present = "image", value_name = "COMMAND")]
    command: Vec<String>,
}

/// `--accel auto|kvm|tcg`, listed in `--help` and checked by clap.
fn accel_parser() -> impl clap::builder::TypedValueParser<Value = skiff_spec::Accel> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["auto", "kvm", "tcg"]).map(|s| match s.as_str() {
        "kvm" => skiff_spec::Accel::Kvm,
        "tcg" => skiff_spec::Accel::Tcg,
        _ => skiff_spec::Accel::Auto,
    })
}

/// The request `skiff run`'s flags make, the same for the daemon and for
/// `--standalone`. Paths are made absolute: the daemon may have another
/// working directory. An OCI image's config fills what the flags leave out.
async fn run_body(a: RunArgs, forward_stdin: bool) -> Result<run_spec::RunBody> {
    let absolute = |p: &Option<PathBuf>| -> Result<Option<PathBuf>> {
        match p {
            None => Ok(None),
            Some(p) => Ok(Some(
                std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))?,
            )),
        }
    };
    let image = match &a.image {
        Some(name) => Some(cli_image::resolve(name, a.quiet).await?),
        None => None,
    };
    let config = image
        .as_ref()
        .and_then(|i| i.config.clone())
        .unwrap_or_default();
    let argv = config.argv(&a.command);
    if argv.is_empty() {
        anyhow::bail!(
            "the image {} has no Entrypoint or Cmd; give the command after --",
            a.image.as_deref().unwrap_or("")
        );
    }
    let mut env = config.env_pairs();
    env.extend(a.env);
    Ok(run_spec::RunBody {
        rootfs: rootfs_arg(&a.rootfs, a.rootfs_rw, image.as_ref())?,
        kernel: absolute(&a.kernel.kernel)?,
        modules: absolute(&a.kernel.modules)?,
        argv,
        cpus: a.cpus,
        memory_mib: a.memory,
        env,
        workdir: a.workdir.or(config.working_dir),
        user: a.user.or(config.user),
        accel: a.accel,
        boot_timeout_secs: a.boot_timeout,
        quiet: a.quiet,
        stdin: forward_stdin,
        net: a.net,
        publish: a.publish,
        shares: a.volume,
    })
}

/// `skiff run` through the daemon (starting one if none answers): the VM
/// is the daemon's for the length of the connection.
async fn run_via_daemon(a: RunArgs) -> Result<i32> {
    let forward_stdin = a.interactive || !std::io::IsTerminal::is_terminal(&std::io::stdin());
    let body = run_body(a, forward_stdin).await?;
    // Build the image here, where the user sees the progress; the daemon
    // then finds it in the shared cache.
    let choice = image::KernelChoice {
        kernel: body.kernel.clone(),
        modules: body.modules.clone(),
    };
    let quiet = body.quiet;
    tokio::task::spawn_blocking(move || image::prepare(&choice, quiet)).await??;
    let client = client::Client::new(paths::socket_path());
    client.ensure_daemon().await?;
    cli_vm::exec_stream(
        &client,
        "/v1/run",
        serde_json::to_value(body)?,
        forward_stdin,
        false,
    )
    .await
}

/// The daemon logs through `tracing` to stderr at the level `SKIFF_LOG`
/// names (error, warn, info (the default), debug, trace); under systemd
/// (journald adds its own timestamps) lines carry none.
fn init_logging() -> Result<()> {
    let level = match std::env::var("SKIFF_LOG") {
        Err(_) => tracing::Level::INFO,
        Ok(v) => v.parse().map_err(|_| {
            anyhow::anyhow!("SKIFF_LOG={v:?} is not a level; use error, warn, info, debug or trace")
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn kernel_choice(k: &KernelArgs) -> image::KernelChoice {
    image::KernelChoice {
        kernel: k.kernel.clone(),
        modules: k.modules.clone(),
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let client = || client::Client::new(paths::socket_path());
    match cli.command {
        Command::Daemon(a) => {
            init_logging()?;
            let tcp = match (a.listen_tcp, a.token_file) {
                (Some(addr), Some(file)) => Some((addr, daemon::read_token(&file)?)),
                _ => None,
            };
            let cfg = daemon::DaemonConfig {
                socket: paths::socket_path(),
                state_dir: paths::state_dir()?,
                runtime_dir: paths::runtime_dir(),
                tcp,
                proxy: daemon::proxy::ProxyConfig {
                    http: a.http_listen,
                    https: a.https_listen,
                    trusted_proxies: a.proxy_trusted.iter().map(|ip| ip.to_canonical()).collect(),
                    limits: daemon::proxy::limits::Limits {
                        header_read: std::time::Duration::from_secs(a.proxy_header_timeout),
                        idle: std::time::Duration::from_secs(a.proxy_idle_timeout),
                        max_connections: a.proxy_max_connections as usize,
                        max_per_ip: a.proxy_max_per_ip as usize,
                        ..Default::default()
                    },
                },
            };
            daemon::serve(cfg).await?;
            Ok(0)
        }
        Command::Create(a) => cli_vm::create(&client(), &a.file, a.json).await,
        Command::Apply(a) => cli_vm::apply(&client(), &a.file, a.json).await,
        Command::Start { name, json } => {
            cli_vm::lifecycle(&client(), "start", &name, "", json).await
        }
        Command::Stop {
            name,
            timeout,
            json,
        } => {
            cli_vm::lifecycle(
                &client(),
                "stop",
                &name,
                &format!("?timeout={timeout}"),
                json,
            )
            .await
        }
        Command::Restart { name, json } => {
            cli_vm::lifecycle(&client(), "restart", &name, "", json).await
        }
        Command::Rm {
            names,
            force,
            volumes,
        } => cli_vm::remove(&client(), &names, force, volumes).await,
        Command::Ls { json } => cli_vm::list(&client(), json).await,
        Command::Inspect { name } => cli_vm::inspect(&client(), &name).await,
        Command::Logs { name, follow } => cli_vm::logs(&client(), &name, follow).await,
        Command::Volume(v) => cli_vm::volume(&client(), v).await,
        Command::Network(n) => cli_net::network(&client(), n).await,
        Command::Pool(p) => cli_pool::pool(&client(), p).await,
        Command::Run(a) if a.pool.is_some() => {
            let pool = a.pool.clone().unwrap_or_default();
            cli_pool::run_in_pool(&client(), &pool, a.command, a.env, a.workdir, a.interactive)
                .await
        }
        Command::Cp { src, dst } => cli_cp::cp(&client(), &src, &dst).await,
        Command::Shell { name, command } => cli_vm::shell(&client(), &name, command).await,
        Command::Exec(a) => {
            cli_vm::exec(
                &client(),
                &a.name,
                a.command,
                a.env,
                a.workdir,
                a.interactive,
                a.user,
            )
            .await
        }
        Command::Run(a) if !a.standalone && a.timings.is_none() => run_via_daemon(a).await,
        Command::Run(a) => {
            let forward_stdin =
                a.interactive || !std::io::IsTerminal::is_terminal(&std::io::stdin());
            let (interactive, timings) = (a.interactive, a.timings);
            let body = run_body(a, forward_stdin).await?;
            let mut io = cli_run::TerminalIo::new(interactive)?;
            let outcome = run::run_standalone(body, &mut io).await?;
            match timings {
                Some(TimingsFormat::Human) => eprint!("{}", outcome.timings.render()),
                Some(TimingsFormat::Json) => {
                    eprintln!("{}", serde_json::to_string(&outcome.timings.to_json())?)
                }
                None => {}
            }
            Ok(outcome.code)
        }
        Command::Image(ImageCommand::Build { file, json }) => cli_image::build(file, json).await,
        Command::Image(ImageCommand::Pull {
            reference,
            quiet,
            json,
        }) => cli_image::pull(reference, quiet, json).await,
        Command::Image(ImageCommand::Import { path, name, json }) => {
            cli_image::import(path, name, json).await
        }
        Command::Image(ImageCommand::Ls { json }) => cli_image::ls(json),
        Command::Image(ImageCommand::Rm { name }) => cli_image::rm(&name).await,
        Command::Image(ImageCommand::Prune) => cli_image::prune(),
        Command::Image(ImageCommand::Prepare { kernel, json }) => {
            let choice = kernel_choice(&kernel);
            let img = tokio::task::spawn_blocking(move || image::prepare(&choice, false)).await??;
            if json {
                let v = serde_json::json!({
                    "kernel": img.kernel.image,
                    "kernel_release": img.kernel.release,
                    "initrd": img.initrd,
                    "built": img.built,
                });
                println!("{v}");
            } else {
                println!(
                    "kernel  {} ({})",
                    img.kernel.image.display(),
                    img.kernel.release
                );
                println!(
                    "initrd  {}{}",
                    img.initrd.display(),
                    if img.built {
                        " (built now)"
                    } else {
                        " (cached)"
                    }
                );
            }
            Ok(0)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: error: cannot start the async runtime: {e}");
            std::process::exit(EXIT_SKIFF_ERROR);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            EXIT_SKIFF_ERROR
        }
    };
    // Do not wait for the runtime's tasks or the stdin thread.
    std::process::exit(code);
}
