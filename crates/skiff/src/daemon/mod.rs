//! `skiff daemon`: the long-lived process that owns VMs. It serves the
//! HTTP/JSON API on a Unix socket; its state is one SQLite file; VMs run in
//! their own processes and survive a daemon restart.

pub mod api;
pub mod manager;
pub mod store;
pub mod streams;

use anyhow::{bail, Context, Result};
use manager::{DaemonPaths, Manager};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

pub struct DaemonConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

fn private_dir(p: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

/// Bind the API socket, refusing to steal it from a live daemon and
/// removing a stale one left by a daemon that died.
async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("a skiff daemon is already listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Owner and group only (a `skiff` group can be given access).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(cfg: DaemonConfig) -> Result<()> {
    private_dir(&cfg.state_dir)?;
    private_dir(&cfg.runtime_dir)?;
    let listener = bind_socket(&cfg.socket).await?;
    let store = store::Store::open(&cfg.state_dir.join("state.db"))?;
    let manager = Manager::new(
        store,
        DaemonPaths {
            state_dir: cfg.state_dir.clone(),
            runtime_dir: cfg.runtime_dir.clone(),
        },
    );
    manager
        .adopt_and_autostart()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "skiff daemon {}: listening on {}",
        env!("CARGO_PKG_VERSION"),
        cfg.socket.display()
    );
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let socket = cfg.socket.clone();
    axum::serve(listener, api::router(manager))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await
        .context("the API server failed")?;
    // VMs keep running: the next daemon adopts them.
    let _ = std::fs::remove_file(socket);
    Ok(())
}
