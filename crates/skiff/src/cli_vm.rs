//! CLI verbs for long-lived VMs, all through the daemon's API.

use crate::cli_parse::VmFilter;
use crate::client::Client;
use crate::frames::{self, FrameReader};
use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};
use skiff_proto::{ExitStatus, Message, WindowSize};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

fn read_spec(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the spec from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the spec file {}", file.display()))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A response body as its API type.
pub fn typed<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).context(
        "the daemon's answer is not what this skiff expects (a daemon of another version?)",
    )
}

fn spec_text(spec: String) -> Result<Value> {
    Ok(serde_json::to_value(skiff_api::SpecText { spec })?)
}

/// Pull the OCI images the spec names that the cache lacks, here where the
/// user sees the progress (the daemon boots what it finds in the cache).
/// A spec that does not parse is left to the daemon, which says why.
async fn fetch_images(spec: &str) -> Result<()> {
    let Ok(vms) = skiff_spec::parse_file(spec) else {
        return Ok(());
    };
    for image in vms.iter().flat_map(|v| v.images()) {
        crate::cli_image::resolve(image, false).await?;
    }
    Ok(())
}

pub async fn create(c: &Client, file: &Path, json: bool) -> Result<i32> {
    let spec = read_spec(file)?;
    let vms = create_from_text(c, spec, false, false).await?;
    if json {
        print_json(&vms)?;
    } else {
        for vm in vms {
            println!("created {}", vm.name);
        }
    }
    Ok(0)
}

/// Create the VMs of `spec` (pulling what images they lack first,
/// `quiet`: without progress).
/// Create the VMs of `spec`; `remove_when_ended`: the daemon removes them
/// when they end or are stopped (`run -d --rm`).
pub async fn create_from_text(
    c: &Client,
    spec: String,
    quiet: bool,
    remove_when_ended: bool,
) -> Result<Vec<skiff_api::Vm>> {
    // Pulled here only into a cache the daemon shares; the system daemon
    // pulls into its own.
    if !quiet && c.socket_is_mine() {
        fetch_images(&spec).await?;
    }
    let path = match remove_when_ended {
        true => "/v1/vms?remove_when_ended=true",
        false => "/v1/vms",
    };
    let body = c.call(Method::POST, path, Some(spec_text(spec)?)).await?;
    typed(&body)
}

/// Start `name`, printing nothing but the boot's progress on a terminal
/// (none when `quiet`).
pub async fn start_quietly(c: &Client, name: &str, quiet: bool) -> Result<skiff_api::Vm> {
    let path = format!("/v1/vms/{name}/start");
    let start = c.call(Method::POST, &path, None);
    let body = crate::cli_progress::while_booting(c, name, quiet, start).await?;
    typed(&body)
}

pub async fn apply(c: &Client, file: &Path, json: bool) -> Result<i32> {
    let spec = read_spec(file)?;
    if c.socket_is_mine() {
        fetch_images(&spec).await?;
    }
    let body = c
        .call(Method::POST, "/v1/apply", Some(spec_text(spec)?))
        .await?;
    let changes: Vec<skiff_api::ApplyChange> = typed(&body)?;
    if json {
        print_json(&changes)?;
    } else {
        for ch in changes {
            let what = if ch.changed.is_empty() {
                String::new()
            } else {
                format!(" ({})", ch.changed.join(", "))
            };
            println!("{} {}{what}", ch.name, ch.action);
        }
    }
    Ok(0)
}

/// POST `verb` to each VM, printing its new state (or the VMs, with
/// `json`). With several, a failure for one is reported and the others
/// still go (exit code 1 if any failed); with one, its error is the
/// command's.
pub async fn lifecycle(
    c: &Client,
    verb: &str,
    names: &[String],
    query: &str,
    json: bool,
) -> Result<i32> {
    let mut code = 0;
    let mut done = Vec::new();
    for name in names {
        let path = format!("/v1/vms/{name}/{verb}{query}");
        let call = c.call(Method::POST, &path, None);
        let answer = match verb {
            "start" | "restart" => crate::cli_progress::while_booting(c, name, json, call).await,
            _ => call.await,
        }
        .and_then(|body| typed::<skiff_api::Vm>(&body));
        match answer {
            Ok(vm) if json => done.push(vm),
            Ok(vm) => println!("{name} {}", vm.state.as_str()),
            // One VM: its error is the command's (exit 125).
            Err(e) if names.len() == 1 => return Err(e),
            Err(e) => {
                eprintln!("skiff: error: {e:#}");
                code = 1;
            }
        }
    }
    if json {
        print_json(&done)?;
    }
    Ok(code)
}

/// Remove each VM; a failure for one is reported and the others still go.
pub async fn remove(
    c: &Client,
    names: &[String],
    force: bool,
    volumes: bool,
    json: bool,
) -> Result<i32> {
    let q = format!("?force={force}&volumes={volumes}");
    delete_each(c, names, "", json, |name| format!("/v1/vms/{name}{q}")).await
}

/// DELETE each name's resource, saying `removed WHAT NAME` or the error
/// (with `json`: one array of `{name, removed, error}`); exit code 1 if
/// any failed, after trying them all.
pub async fn delete_each(
    c: &Client,
    names: &[String],
    what: &str,
    json: bool,
    path: impl Fn(&str) -> String,
) -> Result<i32> {
    let mut code = 0;
    let mut report = Vec::new();
    for name in names {
        let result = c.call(Method::DELETE, &path(name), None).await;
        match &result {
            Ok(_) if !json => println!("removed {what}{name}"),
            Err(e) => {
                eprintln!("skiff: error: {e:#}");
                code = 1;
            }
            Ok(_) => {}
        }
        let error = result.err().map(|e| format!("{e:#}"));
        report.push(json!({ "name": name, "removed": error.is_none(), "error": error }));
    }
    if json {
        print_json(&report)?;
    }
    Ok(code)
}

/// Whether `vm` passes every `ls --filter`.
fn passes(vm: &skiff_api::Vm, filters: &[VmFilter]) -> bool {
    filters.iter().all(|f| match f {
        VmFilter::State(s) => vm.state.as_str() == s,
        VmFilter::Name(part) => vm.name.contains(part.as_str()),
    })
}

pub async fn list(c: &Client, json: bool, quiet: bool, filters: &[VmFilter]) -> Result<i32> {
    let body = c.call(Method::GET, "/v1/vms", None).await?;
    let vms: Vec<skiff_api::Vm> = typed(&body)?;
    let vms: Vec<skiff_api::Vm> = vms.into_iter().filter(|v| passes(v, filters)).collect();
    if json {
        return print_json(&vms).map(|_| 0);
    }
    if quiet {
        for vm in vms {
            println!("{}", vm.name);
        }
        return Ok(0);
    }
    println!(
        "{:<24} {:<10} {:>5} {:>8} {:>8}  NOTE",
        "NAME", "STATE", "VCPUS", "MEMORY", "RESTARTS"
    );
    for vm in vms {
        println!(
            "{:<24} {:<10} {:>5} {:>6}Mi {:>8}  {}",
            vm.name,
            vm.state.as_str(),
            vm.spec.vcpus,
            vm.spec.memory_mib,
            vm.restarts,
            vm.note
        );
    }
    Ok(0)
}

/// One VM's record as JSON; an array of them when several are named.
pub async fn inspect(c: &Client, names: &[String]) -> Result<i32> {
    let mut found = Vec::new();
    for name in names {
        let body = c
            .call(Method::GET, &format!("/v1/vms/{name}"), None)
            .await?;
        found.push(serde_json::from_slice::<Value>(&body)?);
    }
    match found.as_slice() {
        [one] => print_json(one)?,
        many => print_json(&many)?,
    }
    Ok(0)
}

pub async fn logs(
    c: &Client,
    name: &str,
    follow: bool,
    tail: Option<u64>,
    timestamps: bool,
    since: Option<u64>,
) -> Result<i32> {
    let mut q = format!("?follow={follow}&timestamps={timestamps}");
    if let Some(n) = tail {
        q += &format!("&tail={n}");
    }
    if let Some(t) = since {
        q += &format!("&since={t}");
    }
    let mut body = c.stream(&format!("/v1/vms/{name}/logs{q}")).await?;
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.context("the log stream broke")?.into_data() {
            if out.write_all(&data).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    }
    Ok(0)
}

/// What `exec` and `shell` may set for the command besides its argv.
#[derive(Default)]
pub struct ExecOptions {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// `skiff exec`: same streaming and exit-code rules as `skiff run`.
pub async fn exec(
    c: &Client,
    name: &str,
    argv: Vec<String>,
    opts: ExecOptions,
    interactive: bool,
) -> Result<i32> {
    let forward_stdin = interactive || !std::io::stdin().is_terminal();
    let body = json!({ "argv": argv, "env": opts.env, "workdir": opts.workdir, "stdin": forward_stdin, "user": opts.user });
    exec_stream(
        c,
        &format!("/v1/vms/{name}/exec"),
        body,
        forward_stdin,
        false,
    )
    .await
}

/// `skiff shell` (and `exec -t`): an interactive command on a
/// pseudo-terminal in the guest. The local terminal goes to raw mode
/// (restored on every exit path), so Ctrl-C and friends travel to the
/// guest; window size changes follow.
pub async fn shell(c: &Client, name: &str, argv: Vec<String>, opts: ExecOptions) -> Result<i32> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "a terminal session needs a terminal on stdin; for scripts use `skiff exec {name} COMMAND` (without -t)"
        );
    }
    let argv = if argv.is_empty() {
        vec!["/bin/sh".to_owned(), "-l".to_owned()]
    } else {
        argv
    };
    let size = crate::tty::window_size().unwrap_or(WindowSize { rows: 24, cols: 80 });
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let mut env = vec![("TERM".to_owned(), term)];
    env.extend(opts.env);
    let _raw = crate::tty::RawMode::enable().context("cannot put the terminal in raw mode")?;
    let body = json!({ "argv": argv, "stdin": true, "tty": size, "env": env, "workdir": opts.workdir, "user": opts.user });
    exec_stream(c, &format!("/v1/vms/{name}/exec"), body, true, true).await
}

/// Stream an upgraded exec or run connection: stdin out, output in, exit
/// with the command's status. A signal (Ctrl-C, SIGTERM, SIGHUP) closes our
/// side of the connection, which makes the daemon stop the command (and,
/// for a run, tear the VM down); the daemon closes its side when that is
/// done, and then this exits with 128 + the signal.
pub async fn exec_stream(
    c: &Client,
    path: &str,
    body: Value,
    forward_stdin: bool,
    follow_winch: bool,
) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = c.upgrade(path, body).await?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let (r, mut w) = tokio::io::split(io);
    let mut reader = FrameReader::new(r);
    let (_no_stdin, empty) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let mut rx = if forward_stdin {
        crate::cli_run::spawn_stdin_reader()
    } else {
        empty
    };
    let mut stdin_open = forward_stdin;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(hang_up(&mut w, &mut reader, &mut sigint, libc::SIGINT).await),
            _ = sigterm.recv() => return Ok(hang_up(&mut w, &mut reader, &mut sigint, libc::SIGTERM).await),
            _ = sighup.recv() => return Ok(hang_up(&mut w, &mut reader, &mut sigint, libc::SIGHUP).await),
            _ = winch.recv(), if follow_winch => {
                if let Some(size) = crate::tty::window_size() {
                    // As for stdin: the answer, not this write, says how it ended.
                    let _ = frames::send(&mut w, &Message::Resize(size)).await;
                }
            }
            msg = reader.recv() => match msg? {
                Some(Message::Stdout(b)) => {
                    // The reader went away (`skiff exec ... | head`): end as
                    // a shell pipeline's writer does, with SIGPIPE's status;
                    // closing the connection stops the command in the guest.
                    if let Err(e) = stdout.write_all(&b).and_then(|_| stdout.flush()) {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(128 + libc::SIGPIPE);
                        }
                    }
                }
                Some(Message::Stderr(b)) => { let _ = stderr.write_all(&b).and_then(|_| stderr.flush()); }
                Some(Message::Exited(ExitStatus::Code(c))) => return Ok(c),
                Some(Message::Exited(ExitStatus::Signal(s))) => return Ok(128 + s),
                Some(Message::Error(m)) => bail!("{m}"),
                Some(other) => bail!("unexpected {} message from the daemon", other.name()),
                None => bail!("the daemon closed the exec connection before the command finished"),
            },
            chunk = rx.recv(), if stdin_open => {
                let chunk = chunk.unwrap_or_default();
                // A command that ended already has its output and exit
                // status on the way, and the daemon may have closed its
                // side: a failed write ends stdin, never the session.
                let eof = chunk.is_empty();
                let sent = frames::send(&mut w, &Message::Stdin(chunk)).await.is_ok();
                stdin_open = sent && !eof;
            }
        }
    }
}

/// How long a signalled client waits for the daemon to finish (a VM's
/// teardown: a second to power off, then kills and cleanup).
const TEARDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// After `signal`: close our side, wait until the daemon closes its side
/// (the command stopped, a run's VM torn down), and give the exit status.
/// A second Ctrl-C stops waiting.
async fn hang_up<W, R>(
    w: &mut W,
    reader: &mut FrameReader<R>,
    sigint: &mut tokio::signal::unix::Signal,
    signal: i32,
) -> i32
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let _ = w.shutdown().await;
    let drain = async { while let Ok(Some(_)) = reader.recv().await {} };
    tokio::select! {
        _ = drain => {}
        _ = sigint.recv() => {}
        _ = tokio::time::sleep(TEARDOWN_WAIT) => {
            eprintln!("skiff: the daemon did not finish within {} s; it tears down on its own", TEARDOWN_WAIT.as_secs());
        }
    }
    128 + signal
}

pub async fn volume(c: &Client, cmd: crate::VolumeCommand) -> Result<i32> {
    match cmd {
        crate::VolumeCommand::Create { name, size, json } => {
            let body = c
                .call(
                    Method::POST,
                    "/v1/volumes",
                    Some(json!({ "name": name, "size": size })),
                )
                .await?;
            if json {
                print_json(&serde_json::from_slice::<Value>(&body)?)?;
            } else {
                println!("created volume {name}");
            }
            Ok(0)
        }
        crate::VolumeCommand::Ls { json } => {
            let body = c.call(Method::GET, "/v1/volumes", None).await?;
            let volumes: Vec<skiff_api::VolumeInfo> = typed(&body)?;
            if json {
                return print_json(&volumes).map(|_| 0);
            }
            println!("{:<24} {:>10}  USED BY", "NAME", "SIZE");
            for vol in volumes {
                println!(
                    "{:<24} {:>8}Mi  {}",
                    vol.name,
                    vol.size_mib,
                    vol.used_by.join(", ")
                );
            }
            Ok(0)
        }
        crate::VolumeCommand::Rm { names, json } => {
            delete_each(c, &names, "volume ", json, |n| format!("/v1/volumes/{n}")).await
        }
    }
}
