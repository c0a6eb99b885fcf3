//! envd, E2B's in-sandbox API, served by the daemon for the sandbox an
//! `E2b-Sandbox-Id` header names: `GET /health`, and the process service
//! (process.rs), the filesystem service (filesystem.rs) and `/files`
//! (files.rs). Each call must carry the sandbox's access token
//! (`X-Access-Token`). What they share is here.

use super::connect::{self, Code, RpcError};
use super::store::E2bSandbox;
use super::E2b;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Keepalives on a quiet stream when the client names no interval.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);
/// The largest request body of a unary envd call (read before the call is
/// authorized, so kept small). Files and input streams are not bounded by
/// it: they are read as they come, after the check.
const MAX_ENVD_BODY: usize = 1 << 20;

pub fn router(e2b: Arc<E2b>) -> Router {
    let router = Router::new().route("/health", get(health));
    let router = super::process::routes(router);
    let router = super::files::routes(super::filesystem::routes(router));
    router
        .fallback(|| async {
            unary_error(&RpcError::new(
                Code::Unimplemented,
                "skiff's envd does not serve this yet (docs/e2b.md lists what it serves)",
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ENVD_BODY))
        .with_state(e2b)
}

/// What E2B's own router answers for a sandbox it does not know: the
/// SDK tells "not running" by this message.
fn sandbox_not_found(id: &str) -> Response {
    let body = json!({ "sandboxId": id, "message": "The sandbox was not found", "code": 502 });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// The sandbox the request is for, if its access token is right.
/// A refused request's answer (boxed: a `Response` is large).
pub(super) type Refused = Box<Response>;

pub(super) fn authorize(e2b: &E2b, headers: &HeaderMap) -> Result<E2bSandbox, Refused> {
    let id = super::envd_sandbox(headers).unwrap_or_default();
    let sandbox = match e2b.m.store.e2b(&id) {
        Ok(Some(s)) if e2b.m.inspect(&id).is_ok() => s,
        _ => return Err(Box::new(sandbox_not_found(&id))),
    };
    let given = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !crate::token_matches(given.as_bytes(), sandbox.access_token.as_bytes()) {
        return Err(Box::new(unary_error(&RpcError::new(
            Code::Unauthenticated,
            "missing or wrong X-Access-Token for this sandbox (it is the envdAccessToken the create answered)",
        ))));
    }
    Ok(sandbox)
}

async fn health(State(e2b): State<Arc<E2b>>, headers: HeaderMap) -> Response {
    let id = super::envd_sandbox(&headers).unwrap_or_default();
    match e2b.m.store.e2b(&id) {
        Ok(Some(_)) if e2b.m.inspect(&id).is_ok() => StatusCode::NO_CONTENT.into_response(),
        _ => sandbox_not_found(&id),
    }
}

/// The user a call names with `Authorization: Basic base64(USER:)`.
pub(super) fn user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let text = lenient_b64(b64).ok()?;
    let text = String::from_utf8(text).ok()?;
    let name = text.split(':').next()?.to_owned();
    (!name.is_empty()).then_some(name)
}

/// Standard base64, padded or not (ProtoJSON accepts both).
pub(super) fn lenient_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(s)
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn unary_error(e: &RpcError) -> Response {
    (e.code.status(), axum::Json(e.to_json())).into_response()
}

pub(super) fn unary_ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

pub(super) fn stream_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(connect::STREAM_CONTENT_TYPE),
    );
    r
}

/// A stream that fails before its first message (connect-go's way).
pub(super) fn stream_error(e: &RpcError) -> Response {
    stream_response(Body::from(connect::end_stream(Some(e))))
}

pub(super) fn unary_request(body: &[u8]) -> Result<Value, RpcError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        RpcError::new(
            Code::InvalidArgument,
            format!("the request is not JSON: {e}"),
        )
    })
}

/// The interval the client wants keepalives at (seconds), bounded.
pub(super) fn keepalive(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_KEEPALIVE, |s| Duration::from_secs(s.clamp(1, 3600)))
}

/// `Connect-Timeout-Ms`: for `Start`, how long the process may live.
pub(super) fn deadline(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_from_basic_auth_with_an_empty_password() {
        let mut h = HeaderMap::new();
        assert_eq!(user(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cm9vdDo="),
        );
        assert_eq!(user(&h).as_deref(), Some("root"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cm9vdDo"),
        );
        assert_eq!(user(&h).as_deref(), Some("root"), "unpadded");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(user(&h), None);
    }

    #[test]
    fn deadlines_and_keepalives_come_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(deadline(&h), None);
        assert_eq!(keepalive(&h), DEFAULT_KEEPALIVE);
        h.insert("connect-timeout-ms", HeaderValue::from_static("60000"));
        h.insert("keepalive-ping-interval", HeaderValue::from_static("50"));
        assert_eq!(deadline(&h), Some(Duration::from_secs(60)));
        assert_eq!(keepalive(&h), Duration::from_secs(50));
        h.insert("connect-timeout-ms", HeaderValue::from_static("0"));
        assert_eq!(deadline(&h), None, "0: no deadline");
    }
}
