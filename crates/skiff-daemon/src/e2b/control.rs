//! E2B's control plane: sandboxes made, listed, extended, paused and
//! killed, each visible only to the API key that made it. A template is a
//! skiff pool; a create takes one of its warm sandboxes.

use super::store::E2bSandbox;
use super::{rfc3339, ApiError, E2b, CLIENT_ID, ENVD_VERSION, MAX_CONTROL_BODY};
use crate::manager::ManagerError;
use crate::store::VmState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A create's default lifetime, as E2B's.
const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// The longest lifetime one call may ask for (30 days).
const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// How long a create waits for a pool to have a warm sandbox (less than
/// the SDK's 60 s request timeout; then 503, which it retries).
const TAKE_WAIT: Duration = Duration::from_secs(30);
/// The most sandboxes one list page holds.
pub(super) const MAX_PAGE: usize = 100;

pub fn router(e2b: Arc<E2b>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v2/sandboxes", post(create).get(super::list::list))
        .route("/sandboxes", post(create).get(super::list::list_running))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/metrics", get(super::metrics::metrics))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/resume", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "skiff's E2B-compatible API has no such endpoint (docs/e2b.md lists what it serves)",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_CONTROL_BODY))
        .with_state(e2b)
}

/// The key's owner id, or E2B's 401.
pub(super) fn owner(e2b: &E2b, headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    e2b.keys.owner(key).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown API key (send it as X-API-Key; E2B's SDKs read E2B_API_KEY)",
        )
    })
}

/// The sandbox `id` if the key owns it; to others it does not exist.
pub(super) fn owned(e2b: &E2b, owner: &str, id: &str) -> Result<E2bSandbox, ApiError> {
    match e2b.m.store.e2b(id) {
        Ok(Some(s)) if s.owner == owner && e2b.m.inspect(id).is_ok() => Ok(s),
        Ok(_) => Err(not_found(id)),
        Err(e) => Err(internal(e)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("sandbox {id:?} not found"))
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn manager_error(e: ManagerError) -> ApiError {
    crate::http::error::ApiError::from(e).into()
}

/// `Json` whose rejection is E2B's 400.
fn body<T: serde::de::DeserializeOwned>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

fn timeout_secs(t: Option<u64>) -> Result<u64, ApiError> {
    match t.unwrap_or(DEFAULT_TIMEOUT_SECS) {
        0 => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "timeout must be at least 1 second",
        )),
        t if t > MAX_TIMEOUT_SECS => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("timeout {t} is over the limit of {MAX_TIMEOUT_SECS} seconds (30 days)"),
        )),
        t => Ok(t),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    auto_pause: Option<bool>,
    /// Spelled so by E2B (snake_case in a camelCase body).
    #[serde(default, rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    #[serde(default)]
    network: Option<Value>,
}

fn new_token() -> Result<String, ApiError> {
    super::new_id().map_err(|e| internal(e.message))
}

async fn create(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    req: Result<Json<NewSandbox>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let owner = owner(&e2b, &headers)?;
    let req = body(req)?;
    let timeout = timeout_secs(req.timeout)?;
    if req.auto_pause == Some(true) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "autoPause is not supported by skiff's E2B-compatible API yet; leave lifecycle.on_timeout unset",
        ));
    }
    if req.allow_internet_access == Some(false) || req.network.is_some() {
        // Code meant to run offline must not get a network it did not ask for.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "allow_internet_access and network rules are not supported by skiff's E2B-compatible API; a sandbox has the network its pool's spec gives it (make a pool without one for offline code)",
        ));
    }
    let template = req.template_id;
    // A pool's warm sandbox, else a cold boot of the image of that name.
    let from_pool = e2b.m.store.pool(&template).map_err(internal)?.is_some();
    if !from_pool && !image_in_cache(&template) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("template {template:?} not found; on skiff a template is a pool or an image: `skiff pool create NAME --image IMAGE --size N` for fast creates, or `skiff image pull`/`import` for an image booted at each create"),
        ));
    }
    let access_token = new_token()?;
    let (metadata, env_vars) = (
        req.metadata.unwrap_or_default(),
        req.env_vars.unwrap_or_default(),
    );
    let m = e2b.m.clone();
    // To its end even if the client goes away: a sandbox taken but not
    // recorded would belong to no key until its time ran out.
    let made = crate::http::detached(async move {
        let taken = if from_pool {
            m.take(&template, Some(timeout), TAKE_WAIT).await?
        } else {
            m.boot_sandbox(&template, &vm_label(&template), timeout)
                .await?
        };
        let sandbox = E2bSandbox {
            vm: taken.vm.clone(),
            owner,
            template,
            metadata,
            env_vars,
            started_at: crate::store::now(),
            access_token,
        };
        if let Err(e) = m.store.insert_e2b(&sandbox) {
            let _ = m.remove(&taken.vm, true, true).await;
            return Err(ManagerError::internal("record the E2B sandbox", e));
        }
        Ok(sandbox)
    })
    .await;
    let sandbox = match made {
        Ok(s) => s,
        Err(e) if e.0 == StatusCode::CONFLICT => {
            // The pool had no warm sandbox in time: busy, try again.
            let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.1).into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return Ok(r);
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(vm = %sandbox.vm, template = %sandbox.template, "E2B sandbox created");
    let mut resp = (StatusCode::CREATED, Json(sandbox_json(&sandbox))).into_response();
    // A retry after this must not make a second sandbox.
    resp.headers_mut()
        .insert("should-retry", HeaderValue::from_static("false"));
    Ok(resp)
}

fn image_in_cache(name: &str) -> bool {
    crate::paths::cache_dir().is_ok_and(|cache| skiff_oci::find_image(&cache, name).is_some())
}

/// The start of the names of sandboxes booted from image `template`: its
/// letters and digits, the rest as single hyphens (`python:3.12` gives
/// `python-3-12`), at most 20 characters.
fn vm_label(template: &str) -> String {
    let mut label = String::new();
    for c in template.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
        if label.len() >= 20 {
            break;
        }
    }
    let label = label.trim_end_matches('-');
    if label.is_empty() {
        "e2b".to_owned()
    } else {
        label.to_owned()
    }
}

/// What create and connect answer: E2B's `Sandbox`.
fn sandbox_json(s: &E2bSandbox) -> Value {
    json!({
        "sandboxID": s.vm,
        "templateID": s.template,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": s.access_token,
        "domain": null,
    })
}

/// E2B's `ListedSandbox` (and, with more, `SandboxDetail`).
pub(super) fn listed_json(e2b: &E2b, s: &E2bSandbox) -> Option<Value> {
    let rec = e2b.m.inspect(&s.vm).ok()?;
    let state = match rec.state {
        VmState::Paused | VmState::Pausing => "paused",
        _ => "running",
    };
    let end = e2b
        .m
        .store
        .sandbox(&s.vm)
        .ok()
        .flatten()
        .and_then(|r| r.expires_at)
        .unwrap_or(s.started_at);
    Some(json!({
        "templateID": s.template,
        "sandboxID": s.vm,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(s.started_at),
        "endAt": rfc3339(end),
        "cpuCount": rec.spec.vcpus,
        "memoryMB": rec.spec.memory_mib,
        "diskSizeMB": 0,
        "state": state,
        "envdVersion": ENVD_VERSION,
        "metadata": s.metadata,
    }))
}

async fn detail(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = owner(&e2b, &headers)?;
    let s = owned(&e2b, &owner, &id)?;
    let mut v = listed_json(&e2b, &s).ok_or_else(|| not_found(&id))?;
    v["envdAccessToken"] = json!(s.access_token);
    v["domain"] = Value::Null;
    Ok(Json(v))
}

async fn kill(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&e2b, &headers)?;
    owned(&e2b, &owner, &id)?;
    let m = e2b.m.clone();
    crate::http::detached(async move { m.remove(&id, true, true).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Timeout {
    timeout: u64,
}

async fn set_timeout(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<Timeout>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&e2b, &headers)?;
    owned(&e2b, &owner, &id)?;
    let secs = timeout_secs(Some(body(req)?.timeout))?;
    e2b.m.extend_ttl(&id, secs).map_err(manager_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct ConnectBody {
    timeout: Option<u64>,
}

/// Connect (and resume): a paused sandbox is resumed (201), a running one
/// only gets its lifetime extended (200).
async fn connect(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<ConnectBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let owner = owner(&e2b, &headers)?;
    let s = owned(&e2b, &owner, &id)?;
    // No body at all is the same as `{}`.
    let req = match req {
        Ok(Json(b)) => b,
        Err(axum::extract::rejection::JsonRejection::MissingJsonContentType(_)) => {
            ConnectBody::default()
        }
        Err(e) => return Err(ApiError::new(StatusCode::BAD_REQUEST, e.body_text())),
    };
    let secs = timeout_secs(req.timeout)?;
    let rec = e2b.m.inspect(&id).map_err(manager_error)?;
    let status = if rec.state == VmState::Paused {
        let m = e2b.m.clone();
        let vm = id.clone();
        crate::http::detached(async move { m.resume(&vm).await }).await?;
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // Only ever longer: a connect does not cut a lifetime short.
    let left = e2b
        .m
        .store
        .sandbox(&id)
        .ok()
        .flatten()
        .and_then(|r| r.expires_at)
        .map_or(0, |at| (at - crate::store::now()).max(0) as u64);
    if secs > left {
        e2b.m.extend_ttl(&id, secs).map_err(manager_error)?;
    }
    Ok((status, Json(sandbox_json(&s))).into_response())
}

async fn pause(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&e2b, &headers)?;
    owned(&e2b, &owner, &id)?;
    let rec = e2b.m.inspect(&id).map_err(manager_error)?;
    if rec.state == VmState::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id:?} is already paused"),
        ));
    }
    let m = e2b.m.clone();
    crate::http::detached(async move { m.pause(&id).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_of_an_image_are_named_after_it() {
        assert_eq!(vm_label("python:3.12-slim"), "python-3-12-slim");
        assert_eq!(vm_label("ghcr.io/Org/App:1"), "ghcr-io-org-app-1");
        assert_eq!(
            vm_label("a-very-long-image-name-indeed"),
            "a-very-long-image-na"
        );
        assert_eq!(vm_label("::"), "e2b");
        for t in ["python:3.12-slim", "x/y:", "a-very-long-image-name-"] {
            let name = format!("{}-abcdef", vm_label(t));
            assert!(skiff_spec::check_name(&name).is_ok(), "{name}");
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_secs(None).expect("default"), 300);
        assert!(timeout_secs(Some(0)).is_err());
        assert!(timeout_secs(Some(MAX_TIMEOUT_SECS + 1)).is_err());
        assert_eq!(timeout_secs(Some(60)).expect("60"), 60);
    }
}
