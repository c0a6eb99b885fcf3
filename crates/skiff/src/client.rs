//! The CLI's side of the daemon API: HTTP/1.1 over the Unix socket.

use crate::daemon::api::VERSION_HEADER;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
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

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
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

    /// Start a streaming GET; returns the response body to read from.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming> {
        let mut sender = self.connect().await?;
        let res = sender
            .send_request(Self::build(Method::GET, path, None)?)
            .await
            .context("the daemon did not answer")?;
        check_version(&res)?;
        if !res.status().is_success() {
            let status = res.status();
            let bytes = res.into_body().collect().await?.to_bytes();
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_default();
            bail!("{msg} (HTTP {})", status.as_u16());
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
            .insert("upgrade", crate::daemon::streams::EXEC_UPGRADE.parse()?);
        let res = sender
            .send_request(req)
            .await
            .context("the daemon did not answer")?;
        check_version(&res)?;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = res.status();
            let bytes = res.into_body().collect().await?.to_bytes();
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_default();
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        let upgraded = hyper::upgrade::on(res)
            .await
            .context("the daemon did not switch protocols")?;
        Ok(TokioIo::new(upgraded))
    }
}

fn check_version<B>(res: &hyper::Response<B>) -> Result<()> {
    let theirs = res
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    let ours = env!("CARGO_PKG_VERSION");
    if theirs != ours {
        bail!("the daemon is skiff {theirs} but this command is skiff {ours}; restart the daemon with this version");
    }
    Ok(())
}
