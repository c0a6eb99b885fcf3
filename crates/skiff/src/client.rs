//! The CLI's side of the daemon API: HTTP/1.1 over the Unix socket.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_api::VERSION_HEADER;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use tokio::net::UnixStream;

pub struct Client {
    pub socket: PathBuf,
}

/// A JSON error body from the daemon.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    /// Make sure a daemon answers on the socket, starting one in the
    /// background (with this process's environment) if none does.
    pub async fn ensure_daemon(&self) -> Result<()> {
        self.check_socket_owner()?;
        match self.connect_checked().await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bail!("refusing {}: {e}", self.socket.display())
            }
            Err(_) => {}
        }
        let exe = std::env::current_exe()
            .context("cannot find the skiff executable to start a daemon")?;
        let state = crate::paths::state_dir()?;
        crate::paths::private_dir(&state, None, "SKIFF_STATE_DIR")?;
        let log_path = state.join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut child = std::process::Command::new(exe)
            .arg("daemon")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            // Its own process group: Ctrl-C in this terminal must not reach it.
            .process_group(0)
            .spawn()
            .context("cannot start a skiff daemon")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            match self.connect_checked().await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    bail!("refusing {}: {e}", self.socket.display())
                }
                Err(_) => {}
            }
            // Another `skiff run` may have started the daemon that won the
            // socket; ours then exits, which is fine as long as one answers.
            let ours_exited = matches!(child.try_wait(), Ok(Some(_)));
            if std::time::Instant::now() > deadline || (ours_exited && !self.socket.exists()) {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last: Vec<&str> = text.lines().rev().take(5).collect();
                let last: Vec<&str> = last.into_iter().rev().collect();
                bail!("started a skiff daemon but it does not answer on {}; its log ({}) ends with:\n{}", self.socket.display(), log_path.display(), last.join("\n"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Connect, and refuse a peer that is neither this user nor root
    /// (`InvalidData`; by
    /// the kernel's credentials of the listening process, which no one can
    /// forge by swapping the socket between a check and the connect).
    async fn connect_checked(&self) -> std::io::Result<UnixStream> {
        let stream = UnixStream::connect(&self.socket).await?;
        let peer = stream.peer_cred()?.uid();
        let me = nix::unistd::geteuid().as_raw();
        if peer != me && peer != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the process listening there runs as uid {peer}, neither you (uid {me}) nor root, so another local user may be listening; remove the socket, or set SKIFF_SOCKET to your daemon's socket"),
            ));
        }
        Ok(stream)
    }

    /// Whether the daemon on the socket runs as this user, and so (with
    /// this environment) shares this user's cache. The system daemon keeps
    /// its own (/var/cache/skiff): a group member's, and root's when systemd
    /// runs it (the system socket with systemd as init).
    pub fn socket_is_mine(&self) -> bool {
        let systemd_daemon = self.socket
            == std::path::Path::new(skiff_daemon::paths::SYSTEM_SOCKET)
            && std::path::Path::new("/run/systemd/system").is_dir();
        !systemd_daemon
            && std::fs::symlink_metadata(&self.socket)
                .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
    }

    /// Refuse a socket that neither this user nor root owns: whoever made
    /// it would see every request (and could answer them).
    fn check_socket_owner(&self) -> Result<()> {
        let Ok(meta) = std::fs::symlink_metadata(&self.socket) else {
            return Ok(()); // nothing there yet: connecting says so
        };
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            bail!(
                "refusing to talk to {}: it is owned by uid {}, neither you (uid {me}) nor root, so another local user may be listening there; remove it, or set SKIFF_SOCKET to your daemon's socket",
                self.socket.display(),
                meta.uid()
            );
        }
        Ok(())
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        self.check_socket_owner()?;
        let stream = self.connect_checked().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                return anyhow!("refusing {}: {e}", self.socket.display());
            }
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return anyhow!(
                    "cannot connect to the skiff daemon at {}: {e}; you may not open its socket: ask its owner to add you to the socket's group (the system daemon's is `skiff`: `sudo usermod -aG skiff $USER`, then log in again), or set SKIFF_SOCKET to a daemon of your own",
                    self.socket.display()
                );
            }
            let hint = if self.socket.exists() {
                "the socket exists but nothing answers: the daemon is not running (a stale socket); start it with `skiff daemon`"
            } else {
                "no daemon is running; start one with `skiff daemon` (or set SKIFF_SOCKET to its socket)"
            };
            anyhow!("cannot connect to the skiff daemon at {}: {e}; {hint}", self.socket.display())
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon failed")?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn build(
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Request<Full<Bytes>>> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        Ok(Request::builder()
            .method(method)
            .uri(path)
            .header("host", "skiff")
            .header("content-type", "application/json")
            .body(Full::new(bytes))?)
    }

    /// Send a request; return the body of a 2xx answer or the daemon's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes> {
        let mut sender = self.connect().await?;
        let res = sender
            .send_request(Self::build(method, path, body.as_ref())?)
            .await
            .context("the daemon did not answer")?;
        check_version(&res)?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .context("cannot read the daemon's answer")?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(bytes)
    }

    /// The daemon's versions, asked even when they do not match ours
    /// (what `skiff version` shows).
    pub async fn daemon_version(&self) -> Result<skiff_api::Version> {
        let mut sender = self.connect().await?;
        let res = sender
            .send_request(Self::build(Method::GET, "/v1/version", None)?)
            .await
            .context("the daemon did not answer")?;
        let bytes = res
            .into_body()
            .collect()
            .await
            .context("cannot read the daemon's answer")?
            .to_bytes();
        serde_json::from_slice(&bytes).context("the daemon's version answer is not JSON")
    }

    /// Start a streaming GET; returns the response body to read from.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming> {
        let request = Self::build(Method::GET, path, None)?;
        self.send(request).await
    }

    /// POST a JSON body and return the answer's body as it comes (the
    /// commands API's event lines), or the daemon's error.
    pub async fn post_stream(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<hyper::body::Incoming> {
        let request = Self::build(Method::POST, path, Some(&body))?;
        self.send(request).await
    }

    /// Send `body` as raw bytes (a file's content); returns the answer's
    /// body, unread, or the daemon's error.
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<hyper::body::Incoming> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "skiff")
            .header("content-type", "application/octet-stream")
            .body(Full::new(body))?;
        self.send(request).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<hyper::body::Incoming> {
        let mut sender = self.connect().await?;
        let res = sender
            .send_request(request)
            .await
            .context("the daemon did not answer")?;
        check_version(&res)?;
        if !res.status().is_success() {
            return Err(error_from(res).await);
        }
        Ok(res.into_body())
    }

    /// POST and switch the connection to the exec frame protocol.
    pub async fn upgrade(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        let mut sender = self.connect().await?;
        let mut req = Self::build(Method::POST, path, Some(&body))?;
        req.headers_mut().insert("connection", "upgrade".parse()?);
        req.headers_mut()
            .insert("upgrade", skiff_api::EXEC_UPGRADE.parse()?);
        let res = sender
            .send_request(req)
            .await
            .context("the daemon did not answer")?;
        check_version(&res)?;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_from(res).await);
        }
        let upgraded = hyper::upgrade::on(res)
            .await
            .context("the daemon did not switch protocols")?;
        Ok(TokioIo::new(upgraded))
    }
}

/// The daemon's error answer as an error for the user.
async fn error_from(res: hyper::Response<hyper::body::Incoming>) -> anyhow::Error {
    let status = res.status();
    let bytes = match res.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return anyhow!(
                "the daemon answered HTTP {} and then failed: {e}",
                status.as_u16()
            )
        }
    };
    let msg = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    anyhow!("{msg} (HTTP {})", status.as_u16())
}

fn check_version<B>(res: &hyper::Response<B>) -> Result<()> {
    let header = |name| {
        res.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    compatible(
        header(skiff_api::API_HEADER).as_deref(),
        header(VERSION_HEADER).as_deref(),
    )
}

/// Whether a daemon that answered with these API and package versions
/// serves this CLI: the same API version. A daemon too old to say its API
/// version must be this very version.
fn compatible(api: Option<&str>, version: Option<&str>) -> Result<()> {
    let ours = env!("CARGO_PKG_VERSION");
    match api {
        Some(api) if api == skiff_api::API_VERSION => Ok(()),
        Some(api) => bail!(
            "the daemon speaks API {api} (skiff {}) but this command speaks {}; use a skiff of the daemon's API, or restart the daemon with this version",
            version.unwrap_or("unknown"),
            skiff_api::API_VERSION
        ),
        None if version == Some(ours) => Ok(()),
        None => bail!(
            "the daemon is skiff {} but this command is skiff {ours}; restart the daemon with this version",
            version.unwrap_or("unknown")
        ),
    }
}

#[cfg(test)]
mod version_tests {
    use super::compatible;

    #[test]
    fn compatibility_is_decided_by_the_api_version() {
        let ours = env!("CARGO_PKG_VERSION");
        assert!(compatible(Some(skiff_api::API_VERSION), Some("0.0.1-other")).is_ok());
        let e = compatible(Some("v2"), Some("9.0.0"))
            .expect_err("v2")
            .to_string();
        assert!(
            e.contains("API v2 (skiff 9.0.0)") && e.contains("speaks v1"),
            "{e}"
        );
        assert!(compatible(None, Some(ours)).is_ok());
        assert!(compatible(None, Some("0.0.1-other")).is_err());
        assert!(compatible(None, None).is_err());
    }
}
