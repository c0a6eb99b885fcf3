//! An E2B-compatible API, so that code written for E2B's SDKs runs its
//! sandboxes on skiff with only its connection settings changed
//! (`E2B_API_URL`, `E2B_SANDBOX_URL`, `E2B_API_KEY`). One TCP listener
//! serves both of E2B's planes: the control plane (REST, `X-API-Key`) and
//! envd, the in-sandbox API (Connect RPC and `/files`), which E2B's SDKs
//! address with an `E2b-Sandbox-Id` header. Templates are skiff pools.
//! docs/e2b.md says what works; docs/dev/e2b-wire.md is the protocol.

pub mod connect;
mod control;
mod envd;
mod files;
mod filesystem;
pub mod keys;
mod list;
mod metrics;
mod process;
mod procs;
pub mod store;

use crate::manager::Manager;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use tower::ServiceExt;

/// The envd version reported: the lowest whose features the SDK may use
/// against skiff (see docs/dev/e2b-wire.md, section 7). Below 0.4.0 the
/// SDK would name user `user` in every call.
pub const ENVD_VERSION: &str = "0.5.7";
/// The port E2B's SDKs address envd on.
pub const ENVD_PORT: u16 = 49983;
/// What `clientID` says (E2B deprecated the field; clients ignore it).
const CLIENT_ID: &str = "skiff";
/// The largest request body of the control plane.
const MAX_CONTROL_BODY: usize = 1 << 20;

pub struct E2b {
    pub m: Arc<Manager>,
    pub keys: keys::ApiKeys,
    procs: procs::Processes,
    watchers: filesystem::Watchers,
}

impl E2b {
    pub fn new(m: Arc<Manager>, keys: keys::ApiKeys) -> Arc<E2b> {
        Arc::new(E2b {
            m,
            keys,
            procs: procs::Processes::default(),
            watchers: filesystem::Watchers::default(),
        })
    }
}

/// A control-plane error, in E2B's shape: `{"code": N, "message": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<crate::http::error::ApiError> for ApiError {
    fn from(e: crate::http::error::ApiError) -> Self {
        ApiError::new(e.0, e.1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.status.as_u16(), "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// The sandbox a request for envd is for: the `E2b-Sandbox-Id` header, or
/// a host name `49983-ID.DOMAIN`.
fn envd_sandbox(headers: &HeaderMap) -> Option<String> {
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        return Some(id.to_owned());
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok())?;
    let first = host.split('.').next()?;
    let (port, id) = first.split_once('-')?;
    (port == ENVD_PORT.to_string() && !id.is_empty() && host.contains('.')).then(|| id.to_owned())
}

/// The whole listener: each request to the plane it is for.
pub fn router(e2b: Arc<E2b>) -> axum::Router {
    let control = control::router(e2b.clone());
    let envd = envd::router(e2b);
    axum::Router::new().fallback(move |req: Request<Body>| {
        let (control, envd) = (control.clone(), envd.clone());
        async move {
            let plane = if envd_sandbox(req.headers()).is_some() {
                envd
            } else {
                control
            };
            match plane.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
    })
}

/// Connections the E2B listener holds at once (every client is on
/// loopback, so there is no per-address share).
const MAX_CONNECTIONS: usize = 1024;
/// How long a client has to send a request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `app` on `listener` until the daemon ends, with at most
/// [`MAX_CONNECTIONS`] at once and [`HEADER_TIMEOUT`] for each request head
/// (a client that opens connections and sends nothing cannot fill it).
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "a TCP listener cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // full: the connection is closed at once
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Without a timer hyper's header-read timeout is silently off.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A random id of 32 hex characters (access tokens, watcher ids).
pub(crate) fn new_id() -> Result<String, connect::RpcError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| {
            connect::RpcError::new(
                connect::Code::Internal,
                format!("cannot read /dev/urandom: {e}"),
            )
        })?;
    Ok(hex::encode(bytes))
}

/// Unix seconds as RFC 3339, as E2B's clients parse times.
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn envd_requests_are_told_by_their_sandbox_header_or_host_name() {
        let mut h = HeaderMap::new();
        assert_eq!(envd_sandbox(&h), None);
        h.insert("host", HeaderValue::from_static("127.0.0.1:3000"));
        assert_eq!(envd_sandbox(&h), None, "the control plane");
        h.insert("host", HeaderValue::from_static("49983-py-1a2b3c.e2b.test"));
        assert_eq!(envd_sandbox(&h).as_deref(), Some("py-1a2b3c"));
        h.insert("host", HeaderValue::from_static("8080-py-1a2b3c.e2b.test"));
        assert_eq!(envd_sandbox(&h), None, "a guest port, not envd");
        h.insert("e2b-sandbox-id", HeaderValue::from_static("sb-1"));
        assert_eq!(envd_sandbox(&h).as_deref(), Some("sb-1"));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }
}
