//! The HTTP/JSON API: the router and its handlers. Handlers parse and
//! validate, then call the manager; nothing below imports this module.

mod background;
mod commands;
pub mod error;
mod files;
mod log_lines;
mod metrics;
mod networks;
mod pools;
pub mod run;
mod snapshots;
pub mod streams;
mod volumes;

use crate::manager::{Manager, ManagerError, MAX_STOP_TIMEOUT};
use crate::store::VmRecord;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// Every response carries the daemon's version, so that a CLI of another
/// version can say so instead of misreading answers.
pub use skiff_api::{ErrorBody, RemoveQuery, SpecText, StopQuery};
pub use skiff_api::{API_HEADER, API_VERSION, VERSION_HEADER};
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

pub use error::{api_error, ApiError};

type AppState = Arc<Manager>;

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Every route, as (method, path). docs/openapi.json must list exactly
/// these; a test checks both that and that the router answers each one.
#[cfg_attr(not(test), allow(dead_code))]
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/version"),
    ("get", "/v1/events"),
    ("get", "/v1/stats"),
    ("get", "/openapi.json"),
    ("get", "/v1/vms"),
    ("post", "/v1/vms"),
    ("get", "/v1/vms/{name}"),
    ("delete", "/v1/vms/{name}"),
    ("post", "/v1/vms/{name}/start"),
    ("post", "/v1/vms/{name}/stop"),
    ("post", "/v1/vms/{name}/restart"),
    ("post", "/v1/vms/{name}/pause"),
    ("post", "/v1/vms/{name}/resume"),
    ("post", "/v1/vms/{name}/snapshot"),
    ("get", "/v1/snapshots"),
    ("delete", "/v1/snapshots/{tag}"),
    ("post", "/v1/snapshots/{tag}/start"),
    ("get", "/v1/vms/{name}/logs"),
    ("post", "/v1/vms/{name}/exec"),
    ("post", "/v1/apply"),
    ("post", "/v1/run"),
    ("post", "/v1/vms/{name}/copy-in"),
    ("post", "/v1/vms/{name}/copy-out"),
    ("get", "/v1/volumes"),
    ("post", "/v1/volumes"),
    ("delete", "/v1/volumes/{name}"),
    ("get", "/v1/networks"),
    ("post", "/v1/networks"),
    ("delete", "/v1/networks/{name}"),
    ("post", "/v1/networks/prune"),
    ("get", "/v1/pools"),
    ("post", "/v1/pools"),
    ("delete", "/v1/pools/{name}"),
    ("post", "/v1/pools/{name}/resize"),
    ("post", "/v1/pools/{name}/take"),
    ("post", "/v1/vms/{name}/ttl"),
    ("post", "/v1/vms/{name}/commands"),
    ("get", "/v1/vms/{name}/commands/{id}"),
    ("delete", "/v1/vms/{name}/commands/{id}"),
    ("get", "/v1/vms/{name}/files"),
    ("put", "/v1/vms/{name}/files"),
    ("delete", "/v1/vms/{name}/files"),
    ("get", "/v1/vms/{name}/files/info"),
    ("get", "/v1/vms/{name}/files/list"),
    ("post", "/v1/vms/{name}/files/mkdir"),
    ("post", "/v1/vms/{name}/files/rename"),
    ("get", "/metrics"),
];

pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/events", get(crate::http::streams::events))
        .route("/v1/stats", get(stats))
        .route("/openapi.json", get(openapi))
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(inspect).delete(remove))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/restart", post(restart))
        .route("/v1/vms/{name}/pause", post(pause))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/logs", get(crate::http::streams::logs))
        .route("/v1/vms/{name}/exec", post(crate::http::streams::exec))
        .route("/v1/apply", post(apply))
        .route("/v1/run", post(crate::http::run::run))
        .route(
            "/v1/vms/{name}/copy-in",
            post(crate::http::streams::copy_in),
        )
        .route(
            "/v1/vms/{name}/copy-out",
            post(crate::http::streams::copy_out),
        )
        .route(
            "/v1/volumes",
            get(crate::http::volumes::list).post(crate::http::volumes::create),
        )
        .route(
            "/v1/volumes/{name}",
            axum::routing::delete(crate::http::volumes::remove),
        )
        .route(
            "/v1/networks",
            get(crate::http::networks::list).post(crate::http::networks::create),
        )
        .route(
            "/v1/networks/prune",
            axum::routing::post(crate::http::networks::prune),
        )
        .route(
            "/v1/networks/{name}",
            axum::routing::delete(crate::http::networks::remove),
        )
        .route(
            "/v1/pools",
            get(crate::http::pools::list).post(crate::http::pools::create),
        )
        .route(
            "/v1/vms/{name}/snapshot",
            post(crate::http::snapshots::create),
        )
        .route("/v1/snapshots", get(crate::http::snapshots::list))
        .route(
            "/v1/snapshots/{tag}",
            axum::routing::delete(crate::http::snapshots::remove),
        )
        .route(
            "/v1/snapshots/{tag}/start",
            post(crate::http::snapshots::start),
        )
        .route(
            "/v1/pools/{name}",
            axum::routing::delete(crate::http::pools::remove),
        )
        .route(
            "/v1/pools/{name}/resize",
            axum::routing::post(crate::http::pools::resize),
        )
        .route(
            "/v1/pools/{name}/take",
            axum::routing::post(crate::http::pools::take),
        )
        .route(
            "/v1/vms/{name}/ttl",
            axum::routing::post(crate::http::pools::ttl),
        )
        .route(
            "/v1/vms/{name}/commands",
            axum::routing::post(crate::http::commands::run),
        )
        .route(
            "/v1/vms/{name}/commands/{id}",
            get(crate::http::background::get).delete(crate::http::background::kill),
        )
        .route(
            "/v1/vms/{name}/files",
            get(crate::http::files::read)
                .put(crate::http::files::write)
                .delete(crate::http::files::remove),
        )
        .route("/v1/vms/{name}/files/info", get(crate::http::files::info))
        .route("/v1/vms/{name}/files/list", get(crate::http::files::list))
        .route(
            "/v1/vms/{name}/files/mkdir",
            post(crate::http::files::make_dir),
        )
        .route(
            "/v1/vms/{name}/files/rename",
            post(crate::http::files::rename),
        )
        .route("/metrics", get(crate::http::metrics::metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(add_version_header))
        .with_state(manager)
}

async fn add_version_header(mut res: Response) -> Response {
    res.headers_mut().insert(
        VERSION_HEADER,
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    res.headers_mut()
        .insert(API_HEADER, HeaderValue::from_static(API_VERSION));
    res
}

async fn not_found(req: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn version() -> Json<skiff_api::Version> {
    Json(skiff_api::Version {
        version: env!("CARGO_PKG_VERSION").into(),
        api: API_VERSION.into(),
    })
}

/// `GET /v1/stats`: what each VM uses now.
async fn stats(State(m): State<AppState>) -> ApiResult<Vec<skiff_api::VmStats>> {
    let vms = m.store.list().map_err(ManagerError::from)?;
    let samples =
        tokio::task::spawn_blocking(move || vms.iter().map(crate::stats::sample).collect())
            .await
            .map_err(|e| ManagerError::internal("read the VMs' usage", e))?;
    Ok(Json(samples))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(OPENAPI),
    )
        .into_response()
}

/// A VM as the API shows it.
pub(crate) fn vm(rec: VmRecord) -> skiff_api::Vm {
    let process = |p: Option<skiff_vmm::ProcessRef>| {
        p.map(|p| skiff_api::ProcessInfo {
            pid: p.pid,
            start_time: p.start_time,
        })
    };
    skiff_api::Vm {
        qemu: process(rec.qemu),
        vsock: process(rec.vsock),
        name: rec.name,
        id: rec.id,
        spec: rec.spec,
        spec_hash: rec.spec_hash,
        state: rec.state,
        note: rec.note,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
        run_dir: rec.run_dir,
        boots: rec.boots,
        restarts: rec.restarts,
        ephemeral: rec.ephemeral,
    }
}

async fn list(State(m): State<AppState>) -> ApiResult<Vec<skiff_api::Vm>> {
    Ok(Json(m.list()?.into_iter().map(vm).collect()))
}

async fn inspect(State(m): State<AppState>, Path(name): Path<String>) -> ApiResult<skiff_api::Vm> {
    Ok(Json(vm(m.inspect(&name)?)))
}

fn parse_specs(text: &str) -> Result<Vec<skiff_spec::VmSpec>, ApiError> {
    skiff_spec::parse_file(text).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string().trim_end().to_owned(),
        )
    })
}

fn bad_json(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        format!("invalid request body: {}", e.body_text()),
    )
}

async fn create(
    State(m): State<AppState>,
    Query(q): Query<skiff_api::CreateQuery>,
    body: Result<Json<SpecText>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Vec<skiff_api::Vm>>), ApiError> {
    let Json(body) = body.map_err(bad_json)?;
    let specs = parse_specs(&body.spec)?;
    // Refuse the whole file if any name is taken: nothing half-created.
    for s in &specs {
        if m.store.get(&s.name).map_err(ManagerError::from)?.is_some() {
            return Err(ManagerError::Exists(s.name.clone()).into());
        }
    }
    pull_missing_images(&m, &specs).await?;
    let mut created = Vec::new();
    for s in &specs {
        let made = m.create(s).and_then(|r| {
            if q.remove_when_ended {
                if let Err(e) = m.store.mark_remove_when_ended(&r.name) {
                    created.push(r);
                    return Err(e.into());
                }
            }
            Ok(r)
        });
        match made {
            Ok(r) => created.push(r),
            Err(e) => {
                for r in &created {
                    let _ = m.remove(&r.name, true, false).await;
                }
                return Err(e.into());
            }
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(created.into_iter().map(vm).collect()),
    ))
}

async fn apply(
    State(m): State<AppState>,
    body: Result<Json<SpecText>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Vec<crate::manager::ApplyChange>> {
    let Json(body) = body.map_err(bad_json)?;
    let specs = parse_specs(&body.spec)?;
    pull_missing_images(&m, &specs).await?;
    Ok(Json(m.apply(specs).await?))
}

/// The OCI images the specs name that the cache lacks, pulled before
/// anything is created (the CLI pulls them first, with progress; this is
/// for the API's other clients).
async fn pull_missing_images(m: &AppState, specs: &[skiff_spec::VmSpec]) -> Result<(), ApiError> {
    for image in specs.iter().flat_map(|s| s.images()) {
        m.ensure_image(image).await?;
    }
    Ok(())
}

/// Run `work` to its end even if the client goes away: a lifecycle change
/// dropped halfway (a VM left paused for a snapshot, a clone half made, a
/// boot cut short) is worse than an answer nobody reads.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ManagerError>> + Send + 'static,
) -> Result<T, ApiError> {
    let done = tokio::spawn(work)
        .await
        .map_err(|e| ManagerError::internal("finish the request", e))?;
    Ok(done?)
}

async fn start(State(m): State<AppState>, Path(name): Path<String>) -> ApiResult<skiff_api::Vm> {
    Ok(Json(vm(
        detached(async move { m.start(&name).await }).await?
    )))
}

async fn stop(
    State(m): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<skiff_api::Vm> {
    // Bounded: a huge value must not overflow the deadline.
    let timeout = q
        .timeout
        .map(|secs| Duration::from_secs(secs.min(MAX_STOP_TIMEOUT.as_secs())));
    let stopped = detached(async move { m.stop_on_request(&name, timeout).await }).await?;
    Ok(Json(vm(stopped)))
}

async fn restart(State(m): State<AppState>, Path(name): Path<String>) -> ApiResult<skiff_api::Vm> {
    Ok(Json(vm(
        detached(async move { m.restart(&name).await }).await?
    )))
}

async fn pause(State(m): State<AppState>, Path(name): Path<String>) -> ApiResult<skiff_api::Vm> {
    Ok(Json(vm(
        detached(async move { m.pause(&name).await }).await?
    )))
}

async fn resume(State(m): State<AppState>, Path(name): Path<String>) -> ApiResult<skiff_api::Vm> {
    Ok(Json(vm(
        detached(async move { m.resume(&name).await }).await?
    )))
}

async fn remove(
    State(m): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    m.remove(&name, q.force, q.volumes).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::DaemonPaths;
    use crate::store::Store;
    use tower::ServiceExt;

    fn test_router(dir: &std::path::Path) -> Router {
        let store = Store::open(&dir.join("state.db")).expect("store");
        let paths = DaemonPaths {
            state_dir: dir.join("state"),
            runtime_dir: dir.join("run"),
        };
        router(Manager::new(
            store,
            paths,
            Box::new(skiff_vmm::backend::Qemu),
            std::sync::Arc::new(crate::hostops::RecordingHost::default()),
        ))
    }

    async fn call(r: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request");
        let res = r.clone().oneshot(req).await.expect("response");
        let status = res.status();
        assert_eq!(
            res.headers()
                .get(VERSION_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(env!("CARGO_PKG_VERSION")),
            "{method} {path} lacks the version header"
        );
        assert_eq!(
            res.headers().get(API_HEADER).and_then(|v| v.to_str().ok()),
            Some(API_VERSION),
            "{method} {path} lacks the API header"
        );
        // A stream that does not end (GET /v1/events) is served all the
        // same: its head came.
        let body = axum::body::to_bytes(res.into_body(), 1 << 20);
        match tokio::time::timeout(std::time::Duration::from_secs(3), body).await {
            Ok(bytes) => (
                status,
                String::from_utf8_lossy(&bytes.expect("body")).into_owned(),
            ),
            Err(_) => (status, "(a stream, still open)".to_owned()),
        }
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("ops").keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[tokio::test]
    async fn every_route_is_served_and_unknown_ones_get_a_json_404() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = test_router(dir.path());
        for (method, path) in ROUTES {
            let path = path.replace("{name}", "nope").replace("{id}", "c-1");
            let (_, body) = call(&r, method, &path, "{}").await;
            assert!(
                !body.contains("no such endpoint"),
                "{method} {path} is not routed: {body}"
            );
        }
        let (status, body) = call(&r, "get", "/v1/nothing", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no such endpoint: GET /v1/nothing"), "{body}");
    }

    #[tokio::test]
    async fn create_validates_and_refuses_duplicates_without_half_creating() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = test_router(dir.path());
        let (status, body) = call(
            &r,
            "post",
            "/v1/vms",
            r#"{"spec": "[vm.web]\nmemory = 0\n"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body.contains("vm.web.memory: 0 MiB is below the 64 MiB minimum"),
            "{body}"
        );
        let (status, body) = call(&r, "post", "/v1/vms", r#"{"spek": "x"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("unknown field"), "{body}");

        let (status, _) = call(&r, "post", "/v1/vms", r#"{"spec": "[vm.web]\n"}"#).await;
        assert_eq!(status, StatusCode::CREATED);
        // A file naming an existing VM creates none of its VMs.
        let (status, body) =
            call(&r, "post", "/v1/vms", r#"{"spec": "[vm.db]\n[vm.web]\n"}"#).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (_, list) = call(&r, "get", "/v1/vms", "").await;
        let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list)
            .expect("list")
            .iter()
            .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(names, ["web"]);
    }

    #[tokio::test]
    async fn operations_in_the_wrong_state_are_conflicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = test_router(dir.path());
        call(&r, "post", "/v1/vms", r#"{"spec": "[vm.web]\n"}"#).await;
        let (status, body) = call(&r, "post", "/v1/vms/web/stop", "").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body.contains(r#"cannot stop \"web\": it is created"#),
            "{body}"
        );
        let (status, body) = call(&r, "get", "/v1/vms/ghost", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains(r#"no VM named \"ghost\""#), "{body}");
        let (status, _) = call(&r, "delete", "/v1/vms/web", "").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(
            !dir.path().join("state/vms/web").exists(),
            "the VM directory is removed"
        );
    }
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod openapi_tests;
