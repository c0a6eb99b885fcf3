//! The `skiff` command line.

mod cli_cp;
mod cli_detach;
mod cli_events;
mod cli_image;
mod cli_mcp;
mod cli_mcp_files;
mod cli_mcp_http;
mod cli_mcp_output;
mod cli_net;
mod cli_parse;
mod cli_pool;
mod cli_progress;
mod cli_run;
mod cli_snapshot;
mod cli_stats;
use cli_parse::rootfs_arg;
mod cli_args;
use cli_args::*;
mod cli_vm;
mod client;
mod tty;

// The daemon library: the CLI calls its public API (`serve`, the standalone
// run, the request types, paths and images), never its internals.
use skiff_daemon as daemon;
use skiff_daemon::{frames, image, paths, run, run_spec};

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;

/// Exit code for failures of skiff itself (as opposed to the guest command),
/// the same convention as `docker run`.
const EXIT_SKIFF_ERROR: i32 = 125;

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
        tty: None,
        net: a.net,
        publish: a.publish,
        shares: a.volume,
    })
}

/// `skiff run` through the daemon (starting one if none answers): the VM
/// is the daemon's for the length of the connection.
async fn run_via_daemon(a: RunArgs) -> Result<i32> {
    let stdin_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let tty = a.tty;
    if tty && !stdin_is_terminal {
        anyhow::bail!("-t needs a terminal on stdin; for scripts leave -t out (stdin is forwarded when it is a pipe or a file)");
    }
    let forward_stdin = tty || a.interactive || !stdin_is_terminal;
    let mut body = run_body(a, forward_stdin).await?;
    if tty {
        let size = tty::window_size().unwrap_or(skiff_proto::WindowSize { rows: 24, cols: 80 });
        body.tty = Some(skiff_api::TtySize {
            rows: size.rows,
            cols: size.cols,
        });
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
        body.env.insert(0, ("TERM".to_owned(), term));
    }
    let client = client::Client::new(paths::client_socket_path());
    client.ensure_daemon().await?;
    // The user's own daemon shares this cache: build the image here, where
    // the user sees the progress. Another user's daemon (the system's)
    // builds in its own cache.
    if client.socket_is_mine() {
        let choice = image::KernelChoice {
            kernel: body.kernel.clone(),
            modules: body.modules.clone(),
        };
        let quiet = body.quiet;
        tokio::task::spawn_blocking(move || image::prepare(&choice, quiet)).await??;
    }
    // Raw mode last: progress and errors above print as usual.
    let _raw = match tty {
        true => Some(tty::RawMode::enable().context("cannot put the terminal in raw mode")?),
        false => None,
    };
    cli_vm::exec_stream(
        &client,
        "/v1/run",
        serde_json::to_value(body)?,
        forward_stdin,
        tty,
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

/// `skiff version`: ours, and the daemon's if one answers (exit 1 if not).
async fn version(c: &client::Client, json: bool) -> Result<i32> {
    let ours = skiff_api::Version {
        version: env!("CARGO_PKG_VERSION").into(),
        api: skiff_api::API_VERSION.into(),
    };
    let theirs = c.daemon_version().await;
    if json {
        let v = serde_json::json!({
            "client": ours,
            "daemon": theirs.as_ref().ok(),
            "compatible": theirs.as_ref().is_ok_and(|t| t.api == ours.api),
            "error": theirs.as_ref().err().map(|e| format!("{e:#}")),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("client  skiff {} (API {})", ours.version, ours.api);
        match &theirs {
            Ok(t) => println!(
                "daemon  skiff {} (API {}) at {}{}",
                t.version,
                t.api,
                paths::client_socket_path().display(),
                if t.api == ours.api {
                    ""
                } else {
                    "; not compatible: the API versions differ"
                }
            ),
            Err(e) => println!("daemon  not reachable: {e:#}"),
        }
    }
    Ok(if theirs.is_ok() { 0 } else { 1 })
}

/// `skiff run`, by where the VM runs: in a pool's sandbox, detached in
/// the daemon, attached through the daemon, or in this process.
async fn run(a: RunArgs) -> Result<i32> {
    let client = || client::Client::new(paths::client_socket_path());
    if let Some(pool) = a.pool.clone() {
        return cli_pool::run_in_pool(&client(), &pool, a.command, a.env, a.workdir, a.interactive)
            .await;
    }
    if let Some(tag) = a.from_snapshot.clone() {
        return cli_snapshot::run_from_snapshot(&client(), &tag, a).await;
    }
    if a.detach {
        return cli_detach::run_detached(&client(), a).await;
    }
    if !a.standalone && a.timings.is_none() {
        return run_via_daemon(a).await;
    }
    let forward_stdin = a.interactive || !std::io::IsTerminal::is_terminal(&std::io::stdin());
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

fn kernel_choice(k: &KernelArgs) -> image::KernelChoice {
    image::KernelChoice {
        kernel: k.kernel.clone(),
        modules: k.modules.clone(),
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let client = || client::Client::new(paths::client_socket_path());
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
                boot_timeout: std::time::Duration::from_secs(a.boot_timeout),
                e2b: match (a.e2b_listen, a.e2b_keys) {
                    (Some(addr), Some(file)) => {
                        Some((addr, daemon::e2b::keys::ApiKeys::read(&file)?))
                    }
                    _ => None,
                },
            };
            daemon::serve(cfg).await?;
            Ok(0)
        }
        Command::SerialBridge { listen, uds_path } => {
            skiff_vmm::serial_bridge::run(&listen, &uds_path)
                .await
                .with_context(|| format!("serial bridge on {}", listen.display()))?;
            Ok(0)
        }
        Command::Create(a) => cli_vm::create(&client(), &a.file, a.json).await,
        Command::Apply(a) => cli_vm::apply(&client(), &a.file, a.json).await,
        Command::Start { names, json } => {
            cli_vm::lifecycle(&client(), "start", &names, "", json).await
        }
        Command::Stop {
            names,
            timeout,
            json,
        } => {
            let query = timeout.map(|t| format!("?timeout={t}")).unwrap_or_default();
            cli_vm::lifecycle(&client(), "stop", &names, &query, json).await
        }
        Command::Pause { names, json } => {
            cli_vm::lifecycle(&client(), "pause", &names, "", json).await
        }
        Command::Resume { names, json } => {
            cli_vm::lifecycle(&client(), "resume", &names, "", json).await
        }
        Command::Restart { names, json } => {
            cli_vm::lifecycle(&client(), "restart", &names, "", json).await
        }
        Command::Rm {
            names,
            force,
            volumes,
            json,
        } => cli_vm::remove(&client(), &names, force, volumes, json).await,
        // Every VM is listed anyway: -a changes nothing.
        Command::Ls {
            all: _,
            quiet,
            filter,
            json,
        } => cli_vm::list(&client(), json, quiet, &filter).await,
        Command::Inspect { names } => cli_vm::inspect(&client(), &names).await,
        Command::Version { json } => version(&client(), json).await,
        Command::Stats {
            names,
            no_stream,
            json,
        } => cli_stats::stats(&client(), &names, no_stream, json).await,
        Command::Events { vm, action, json } => {
            cli_events::events(&client(), vm.as_deref(), action.as_deref(), json).await
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: clap_complete panics on a write error,
            // and `| head` is a closed pipe, not a bug.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "skiff", &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            Ok(0)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            println!("wrote the man pages into {}", dir.display());
            Ok(0)
        }
        Command::Logs {
            name,
            follow,
            tail,
            timestamps,
            since,
        } => cli_vm::logs(&client(), &name, follow, tail, timestamps, since).await,
        Command::Volume(v) => cli_vm::volume(&client(), v).await,
        Command::Network(n) => cli_net::network(&client(), n).await,
        Command::Pool(p) => cli_pool::pool(&client(), p).await,
        Command::Snapshot(s) => cli_snapshot::snapshot(&client(), s).await,
        Command::Mcp(a) => {
            let c = client();
            c.ensure_daemon().await?;
            cli_mcp::serve(c, a).await
        }
        Command::Run(a) => match a.normalized() {
            Ok(a) => run(a).await,
            // A usage error, as clap's own: exit code 2.
            Err(why) => <Cli as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, why)
                .exit(),
        },
        Command::Cp { src, dst } => cli_cp::cp(&client(), &src, &dst).await,
        Command::Shell { name, command } => {
            cli_vm::shell(&client(), &name, command, Default::default()).await
        }
        Command::Exec(a) => {
            let opts = cli_vm::ExecOptions {
                env: a.env,
                workdir: a.workdir,
                user: a.user,
            };
            if a.tty {
                cli_vm::shell(&client(), &a.name, a.command, opts).await
            } else {
                cli_vm::exec(&client(), &a.name, a.command, opts, a.interactive).await
            }
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
        Command::Image(ImageCommand::Rm { name, json }) => cli_image::rm(&name, json).await,
        Command::Image(ImageCommand::Prune { json }) => cli_image::prune(json),
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
    let cli = Cli::parse_from(docker_run_argv(std::env::args_os().collect()));
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
