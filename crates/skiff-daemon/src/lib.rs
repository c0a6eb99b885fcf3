//! skiff's daemon as a library: the manager that owns VMs (store,
//! lifecycle, supervision, pools, networks, proxy, metrics), the HTTP/JSON
//! API it serves on a Unix socket, and the one road every VM takes from a
//! spec to running processes ([`resolve`], then `skiff_vmm::launch`), which
//! `skiff run --standalone` ([`run::run_standalone`]) uses in-process.
//! State is one SQLite file; VMs run in their own processes and survive a
//! daemon restart. The `skiff` binary is a thin CLI over this crate.

pub mod activity;
pub mod background;
pub mod certs;
pub mod drives;
pub mod e2b;
pub mod forward;
pub mod frames;
pub mod guest_fs;
pub mod hostops;
pub mod http;
pub mod image;
pub mod manager;
pub mod metrics;
pub mod modules_drive;
pub mod netstore;
pub mod paths;
pub mod poolstore;
pub mod proxy;
pub mod resolve;
pub mod rootdisk;
pub mod run;
pub mod run_spec;
pub mod stats;
pub mod store;
pub mod support;
pub mod systemd;
pub mod timings;
pub mod ui;

use anyhow::{bail, Context, Result};
use manager::{DaemonPaths, Manager};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// An optional TCP listener and the bearer token it requires.
    pub tcp: Option<(std::net::SocketAddr, String)>,
    /// The reverse proxy's listeners (none: no proxy).
    pub proxy: proxy::ProxyConfig,
    /// How long a VM may take to become ready.
    pub boot_timeout: std::time::Duration,
    /// The E2B-compatible API's listener and the keys it lets in.
    pub e2b: Option<(std::net::SocketAddr, e2b::keys::ApiKeys)>,
}

/// Read a bearer token: the file's first line, at least 16 characters.
pub fn read_token(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the token file {}", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < 16 {
        bail!(
            "the token in {} is too short ({} characters); use at least 16 random characters",
            file.display(),
            token.len()
        );
    }
    Ok(token)
}

/// Equal-time comparison, so that response timing does not reveal how much
/// of a guessed token was right.
pub(crate) fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn require_token(
    axum::extract::State(token): axum::extract::State<std::sync::Arc<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token_matches(given.as_bytes(), token.as_bytes()) {
        next.run(req).await
    } else {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(skiff_api::ErrorBody {
                error: "missing or wrong bearer token (Authorization: Bearer <token>)".into(),
            }),
        )
            .into_response()
    }
}

/// The backend VMs run on: QEMU, unless `SKIFF_BACKEND=fake` asks for the
/// test double (`skiff-fake-vm`, found through `$SKIFF_FAKE_VM` or next to
/// this program), which the fast test tier uses.
fn backend_from_env() -> Result<Box<dyn skiff_vmm::Backend>> {
    use skiff_vmm::backend::{backend, BackendKind};
    let kind = match std::env::var("SKIFF_BACKEND").unwrap_or_default().as_str() {
        "" | "qemu" => BackendKind::Qemu,
        "fake" => {
            let program = match std::env::var_os("SKIFF_FAKE_VM").filter(|p| !p.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => std::env::current_exe()
                    .context("cannot find this program's path")?
                    .with_file_name("skiff-fake-vm"),
            };
            BackendKind::Fake { program }
        }
        other => bail!("SKIFF_BACKEND={other:?} is not a backend; use qemu (the default)"),
    };
    Ok(backend(kind))
}

/// Group that may use the API socket when the daemon runs as root.
const SOCKET_GROUP: &str = "skiff";

/// The group the API socket is shared with: `skiff`, when the daemon runs
/// as root and the group exists.
fn socket_group() -> Option<nix::unistd::Gid> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    nix::unistd::Group::from_name(SOCKET_GROUP)
        .ok()
        .flatten()
        .map(|g| g.gid)
}

/// Make the daemon's trees private before anything is written to them:
/// files it creates are 0600 and directories 0700 (umask 077), the state
/// and runtime directories are narrowed if they exist wider, and a
/// directory another user owns is refused (a squatted `/tmp/skiff-UID`).
fn secure_trees(cfg: &DaemonConfig) -> Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let group = socket_group();
    paths::private_dir(&cfg.state_dir, None, "SKIFF_STATE_DIR")?;
    let socket_dir = cfg.socket.parent().filter(|p| !p.as_os_str().is_empty());
    let runtime_group = group.filter(|_| socket_dir == Some(cfg.runtime_dir.as_path()));
    paths::private_dir(&cfg.runtime_dir, runtime_group, "SKIFF_RUNTIME_DIR")?;
    if let Some(dir) = socket_dir.filter(|d| *d != cfg.runtime_dir.as_path()) {
        paths::private_dir(dir, group, "SKIFF_SOCKET")?;
    }
    let db = cfg.state_dir.join("state.db");
    if db.exists() {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", db.display()))?;
    }
    Ok(())
}

/// Bind the API socket, refusing to steal it from a live daemon and
/// removing a stale one left by a daemon that died.
async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("a skiff daemon is already listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Owner and group only; as root, the group is `skiff` when it exists.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    if let Some(gid) = socket_group() {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {SOCKET_GROUP}", path.display()))?;
    }
    Ok(listener)
}

/// Raise the soft limit on open files to the hard one: every proxied
/// connection holds two descriptors and every VM several, and the usual
/// soft limit of 1024 would let a thousand idle clients starve the API.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!("cannot raise the open files limit");
        }
    }
}

/// E2B's clients send their API key and sandbox tokens in headers: in
/// clear text on anything but loopback.
pub fn check_e2b_listen(addr: std::net::SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!("--e2b-listen {addr}: E2B's SDKs would send their API keys and sandbox tokens in clear text; listen on a loopback address (for example 127.0.0.1:{}) and put a TLS-terminating proxy in front for other hosts", addr.port());
    }
    Ok(())
}

/// The TCP listener's bearer token opens the whole API, which is root
/// over this host (docs/daemon.md): it may only travel over loopback.
pub fn check_tcp_listen(addr: std::net::SocketAddr) -> Result<()> {
    if !addr.ip().to_canonical().is_loopback() {
        bail!("--listen-tcp {addr}: the API's bearer token would cross the network in clear text, and the API is root on this host; listen on a loopback address (for example 127.0.0.1:{}) and reach it through an SSH tunnel or a TLS-terminating proxy", addr.port());
    }
    Ok(())
}

pub async fn serve(cfg: DaemonConfig) -> Result<()> {
    secure_trees(&cfg)?;
    raise_open_files_limit();
    if let Some((addr, _)) = &cfg.e2b {
        check_e2b_listen(*addr)?;
    }
    if let Some((addr, _)) = &cfg.tcp {
        check_tcp_listen(*addr)?;
    }
    // Refuse to start rather than run every VM's QEMU as root by surprise.
    support::qemu_user()?;
    // Under skiff.socket, systemd holds the socket and passes it; the
    // daemon then neither binds nor removes it.
    let activated = systemd::activated_listener()?;
    systemd::take_notify_socket();
    let from_systemd = activated.is_some();
    let listener = match activated {
        Some(l) => {
            l.set_nonblocking(true)
                .context("cannot use the socket systemd passed")?;
            UnixListener::from_std(l).context("cannot use the socket systemd passed")?
        }
        None => bind_socket(&cfg.socket).await?,
    };
    let store = store::Store::open(&cfg.state_dir.join("state.db"))?;
    let manager = Manager::new(
        store,
        DaemonPaths {
            state_dir: cfg.state_dir.clone(),
            runtime_dir: cfg.runtime_dir.clone(),
        },
        backend_from_env()?,
        std::sync::Arc::new(hostops::LinuxHost::detect()),
    );
    manager.set_boot_timeout(cfg.boot_timeout);
    manager
        .adopt_and_autostart()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    manager.spawn_pool_keeper();
    manager.spawn_health_checks();
    manager.spawn_sleeper();
    proxy::start(manager.clone(), cfg.proxy.clone()).await?;
    let pid_file = cfg.state_dir.join("daemon.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        socket = %cfg.socket.display(),
        backend = ?manager.backend_kind(),
        from_systemd,
        "listening"
    );
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let socket = cfg.socket.clone();
    if let Some((addr, token)) = cfg.tcp {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let app = http::router(manager.clone()).layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(token),
            require_token,
        ));
        tracing::info!(%addr, "also listening on TCP (bearer token required)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app).await {
                tracing::error!(%addr, error = %e, "the TCP listener failed");
            }
        });
    }
    if let Some((addr, keys)) = cfg.e2b {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the E2B-compatible API"))?;
        let app = e2b::router(e2b::E2b::new(manager.clone(), keys));
        tracing::info!(%addr, "serving the E2B-compatible API (API keys required)");
        tokio::spawn(e2b::serve(tcp, app));
    }
    // VMs adopted, autostarts done, the socket accepting: ready.
    systemd::notify("READY=1");
    axum::serve(listener, http::router(manager))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            systemd::notify("STOPPING=1");
        })
        .await
        .context("the API server failed")?;
    // VMs keep running: the next daemon adopts them.
    if !from_systemd {
        let _ = std::fs::remove_file(socket);
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_tcp_listen, token_matches};

    #[test]
    fn the_tcp_listener_stays_on_loopback() {
        for ok in ["127.0.0.1:7070", "[::1]:7070", "127.0.0.2:1"] {
            assert!(check_tcp_listen(ok.parse().expect("addr")).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:7070", "192.0.2.1:7070", "[::]:7070"] {
            let err = check_tcp_listen(bad.parse().expect("addr")).expect_err(bad);
            assert!(err.to_string().contains("in clear text"), "{err}");
        }
    }

    #[test]
    fn tokens_must_match_exactly() {
        assert!(token_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!token_matches(b"", b"0123456789abcdef"));
    }
}
