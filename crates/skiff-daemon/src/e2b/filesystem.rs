//! envd's filesystem service (Connect RPC) over the agent's own file
//! operations: Stat, ListDir, MakeDir, Move, Remove, WatchDir and the
//! polled watchers (CreateWatcher, GetWatcherEvents, RemoveWatcher).

use super::connect::{self, Code, RpcError};
use super::envd::{
    authorize, keepalive, stream_error, stream_response, unary_error, unary_ok, user,
};
use super::store::E2bSandbox;
use super::E2b;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use skiff_proto::fs::{FileInfo, FileKind, FsError, FsErrorKind, FsEvent, FsEventKind, FsOp};
use skiff_proto::Message;
use skiff_vmm::AgentConn;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Entries one ListDir may answer.
const MAX_ENTRIES: usize = 100_000;
/// Events a polled watcher keeps until they are fetched, and the text they
/// may hold (a guest makes up the names).
const MAX_PENDING_EVENTS: usize = 10_000;
const MAX_PENDING_BYTES: usize = 4 << 20;
/// Polled watchers per sandbox.
const MAX_WATCHERS: usize = 64;

pub fn routes(router: Router<Arc<E2b>>) -> Router<Arc<E2b>> {
    router
        .route("/filesystem.Filesystem/Stat", post(stat))
        .route("/filesystem.Filesystem/ListDir", post(list_dir))
        .route("/filesystem.Filesystem/MakeDir", post(make_dir))
        .route("/filesystem.Filesystem/Move", post(move_entry))
        .route("/filesystem.Filesystem/Remove", post(remove))
        .route("/filesystem.Filesystem/WatchDir", post(watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(create_watcher))
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(get_watcher_events),
        )
        .route("/filesystem.Filesystem/RemoveWatcher", post(remove_watcher))
}

/// A polled watcher: its sandbox's scope (unique to one sandbox), the
/// events not yet fetched, and the task that holds its agent connection.
struct Watcher {
    scope: String,
    events: Arc<Mutex<Vec<FsEvent>>>,
    task: tokio::task::AbortHandle,
}

/// Polled watchers (the SDK's sync `watch_dir`), by id.
#[derive(Default)]
pub struct Watchers {
    all: Mutex<HashMap<String, Watcher>>,
}

impl Watchers {
    fn count(&self, scope: &str) -> usize {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.values().filter(|w| w.scope == scope).count()
    }

    fn remove(&self, id: &str) -> Option<Watcher> {
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }
}

pub(crate) fn code_of(kind: FsErrorKind) -> Code {
    match kind {
        FsErrorKind::NotFound => Code::NotFound,
        FsErrorKind::AlreadyExists => Code::AlreadyExists,
        FsErrorKind::NotADirectory | FsErrorKind::IsADirectory | FsErrorKind::Invalid => {
            Code::InvalidArgument
        }
        FsErrorKind::PermissionDenied => Code::PermissionDenied,
        FsErrorKind::UnknownUser => Code::Unauthenticated,
        FsErrorKind::NoSpace => Code::ResourceExhausted,
        FsErrorKind::Other => Code::Internal,
    }
}

pub(crate) fn rpc_of(e: FsError) -> RpcError {
    RpcError::new(code_of(e.kind), e.message)
}

/// Go's `FileMode.String()`, as envd shows permissions: `drwxr-xr-x`.
pub(crate) fn permissions(kind: FileKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'L',
        FileKind::File => '-',
        FileKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// An `EntryInfo` as envd's JSON has it.
pub(crate) fn entry_json(i: &FileInfo) -> Value {
    let kind = match i.kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    let modified = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(i.modified_ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let mut v = json!({
        "name": i.name,
        "type": kind,
        "path": i.path,
        "size": i.size.to_string(),
        "mode": i.mode & 0o777,
        "permissions": permissions(i.kind, i.mode),
        "owner": i.owner,
        "group": i.group,
        "modifiedTime": modified,
    });
    if let Some(t) = &i.target {
        v["symlinkTarget"] = json!(t);
        v["isSymlink"] = json!(true);
    }
    v
}

/// A connection to the sandbox's agent with `op` sent, as `user`.
pub(crate) async fn fs_call(
    e2b: &E2b,
    sandbox: &E2bSandbox,
    user: Option<String>,
    op: FsOp,
) -> Result<AgentConn, RpcError> {
    crate::guest_fs::call(&e2b.m, &sandbox.vm, user, op)
        .await
        .map_err(|e| {
            RpcError::new(
                Code::Unavailable,
                format!(
                    "cannot reach the agent of sandbox {}: {}",
                    sandbox.vm,
                    crate::support::error_chain(&e)
                ),
            )
        })
}

async fn one_info(
    e2b: &E2b,
    sandbox: &E2bSandbox,
    user: Option<String>,
    op: FsOp,
) -> Result<FileInfo, RpcError> {
    let mut conn = fs_call(e2b, sandbox, user, op).await?;
    crate::guest_fs::info(&mut conn).await.map_err(rpc_of)
}

fn path_of(req: &Value, key: &str) -> Result<String, RpcError> {
    req[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, format!("{key} is missing")))
}

/// A unary call: authorize, parse, then `f` (async).
async fn unary<F, Fut>(e2b: Arc<E2b>, headers: HeaderMap, body: Bytes, f: F) -> Response
where
    F: FnOnce(Arc<E2b>, E2bSandbox, Option<String>, Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, RpcError>>,
{
    let sandbox = match authorize(&e2b, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return unary_error(&RpcError::new(
                Code::InvalidArgument,
                format!("the request is not JSON: {e}"),
            ))
        }
    };
    match f(e2b, sandbox, user(&headers), req).await {
        Ok(v) => unary_ok(v),
        Err(e) => unary_error(&e),
    }
}

async fn stat(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, user, req| async move {
        let path = path_of(&req, "path")?;
        let i = one_info(&e2b, &sandbox, user, FsOp::Stat { path }).await?;
        Ok(json!({ "entry": entry_json(&i) }))
    })
    .await
}

async fn make_dir(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, user, req| async move {
        let path = path_of(&req, "path")?;
        let i = one_info(&e2b, &sandbox, user, FsOp::MakeDir { path }).await?;
        Ok(json!({ "entry": entry_json(&i) }))
    })
    .await
}

async fn move_entry(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, user, req| async move {
        let from = path_of(&req, "source")?;
        let to = path_of(&req, "destination")?;
        let i = one_info(&e2b, &sandbox, user, FsOp::Rename { from, to }).await?;
        Ok(json!({ "entry": entry_json(&i) }))
    })
    .await
}

async fn remove(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, user, req| async move {
        let path = path_of(&req, "path")?;
        let mut conn = fs_call(&e2b, &sandbox, user, FsOp::Remove { path }).await?;
        crate::guest_fs::end(&mut conn).await.map_err(rpc_of)?;
        Ok(json!({}))
    })
    .await
}

async fn list_dir(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, user, req| async move {
        let path = path_of(&req, "path")?;
        let depth = req["depth"].as_u64().unwrap_or(1).clamp(1, 64) as u32;
        let mut conn = fs_call(&e2b, &sandbox, user, FsOp::List { path, depth }).await?;
        let entries: Vec<Value> = crate::guest_fs::entries(&mut conn, MAX_ENTRIES)
            .await
            .map_err(rpc_of)?
            .iter()
            .map(entry_json)
            .collect();
        Ok(json!({ "entries": entries }))
    })
    .await
}

fn event_json(e: &FsEvent) -> Value {
    let kind = match e.kind {
        FsEventKind::Create => "EVENT_TYPE_CREATE",
        FsEventKind::Write => "EVENT_TYPE_WRITE",
        FsEventKind::Remove => "EVENT_TYPE_REMOVE",
        FsEventKind::Rename => "EVENT_TYPE_RENAME",
        FsEventKind::Chmod => "EVENT_TYPE_CHMOD",
    };
    json!({ "name": e.name, "type": kind })
}

/// A watch set up in the guest: its connection, which then carries events.
async fn start_watch(
    e2b: &E2b,
    sandbox: &E2bSandbox,
    user: Option<String>,
    req: &Value,
) -> Result<AgentConn, RpcError> {
    let path = path_of(req, "path")?;
    let recursive = req["recursive"].as_bool().unwrap_or(false);
    let mut conn = fs_call(e2b, sandbox, user, FsOp::Watch { path, recursive }).await?;
    crate::guest_fs::info(&mut conn).await.map_err(rpc_of)?;
    Ok(conn)
}

/// The async SDK's watch: a stream of events until the client goes.
async fn watch_dir(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match authorize(&e2b, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let req = match connect::single_message(&body) {
        Ok(r) => r,
        Err(e) => return stream_error(&e),
    };
    let conn = match start_watch(&e2b, &sandbox, user(&headers), &req).await {
        Ok(c) => c,
        Err(e) => return stream_error(&e),
    };
    let every = keepalive(&headers);
    let first = connect::envelope(&json!({ "start": {} }));
    let stream = futures_util::stream::unfold(
        (Some(first), conn, false),
        move |(first, mut conn, done)| async move {
            if let Some(b) = first {
                return Some((Ok::<Bytes, std::convert::Infallible>(b), (None, conn, done)));
            }
            if done {
                return None;
            }
            match tokio::time::timeout(every, conn.reader.recv()).await {
                Err(_) => Some((
                    Ok(connect::envelope(&json!({ "keepalive": {} }))),
                    (None, conn, false),
                )),
                Ok(Ok(Some(Message::FsEvent(e)))) => Some((
                    Ok(connect::envelope(&json!({ "filesystem": event_json(&e) }))),
                    (None, conn, false),
                )),
                Ok(Ok(Some(_))) => Some((Ok(Bytes::new()), (None, conn, false))),
                Ok(_) => {
                    let e = RpcError::new(Code::Unavailable, "the sandbox's agent ended the watch");
                    Some((Ok(connect::end_stream(Some(&e))), (None, conn, true)))
                }
            }
        },
    );
    stream_response(Body::from_stream(stream))
}

async fn create_watcher(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, user, req| async move {
        let scope = sandbox.access_token.clone();
        if e2b.watchers.count(&scope) >= MAX_WATCHERS {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("a sandbox has at most {MAX_WATCHERS} watchers; remove some"),
            ));
        }
        let id = super::new_id()?;
        let conn = start_watch(&e2b, &sandbox, user, &req).await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let kept = events.clone();
        let registry = Arc::downgrade(&e2b);
        let own_id = id.clone();
        let task = tokio::spawn(async move {
            // The whole connection, not just its reader (a block captures
            // only the fields it uses): a dropped writer would end the watch.
            let mut conn = conn;
            let mut bytes = 0usize;
            while let Ok(Some(m)) = conn.reader.recv().await {
                if let Message::FsEvent(e) = m {
                    let mut ev = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if ev.is_empty() {
                        bytes = 0; // all fetched since
                    }
                    if ev.len() < MAX_PENDING_EVENTS && bytes + e.name.len() <= MAX_PENDING_BYTES {
                        bytes += e.name.len();
                        ev.push(e);
                    }
                }
            }
            // The guest's watch ended (its sandbox went): so does this one.
            if let Some(e2b) = registry.upgrade() {
                e2b.watchers.remove(&own_id);
            }
        });
        e2b.watchers
            .all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Watcher {
                    scope,
                    events,
                    task: task.abort_handle(),
                },
            );
        Ok(json!({ "watcherId": id }))
    })
    .await
}

fn watcher(e2b: &E2b, scope: &str, req: &Value) -> Result<String, RpcError> {
    let id = path_of(req, "watcherId").or_else(|_| path_of(req, "watcher_id"))?;
    let all = e2b.watchers.all.lock().unwrap_or_else(|p| p.into_inner());
    match all.get(&id) {
        Some(w) if w.scope == scope => Ok(id),
        _ => Err(RpcError::new(
            Code::NotFound,
            format!("watcher {id} not found"),
        )),
    }
}

async fn get_watcher_events(
    State(e2b): State<Arc<E2b>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, _user, req| async move {
        let id = watcher(&e2b, &sandbox.access_token, &req)?;
        let all = e2b.watchers.all.lock().unwrap_or_else(|p| p.into_inner());
        let events: Vec<Value> = all
            .get(&id)
            .map(|w| std::mem::take(&mut *w.events.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
            .iter()
            .map(event_json)
            .collect();
        Ok(json!({ "events": events }))
    })
    .await
}

async fn remove_watcher(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(e2b, headers, body, |e2b, sandbox, _user, req| async move {
        let id = watcher(&e2b, &sandbox.access_token, &req)?;
        if let Some(w) = e2b.watchers.remove(&id) {
            // The task holds the agent connection: the guest's watch ends with it.
            w.task.abort();
        }
        Ok(json!({}))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_as_envd_writes_them() {
        let i = FileInfo {
            name: "a.txt".into(),
            path: "/root/a.txt".into(),
            kind: FileKind::File,
            size: 5,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            modified_ns: 1_800_000_000_500_000_000,
            target: None,
        };
        let v = entry_json(&i);
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert_eq!(v["size"], "5");
        assert_eq!(v["mode"], 420);
        assert_eq!(v["permissions"], "-rw-r--r--");
        assert_eq!(v["modifiedTime"], "2027-01-15T08:00:00.5Z");
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(code_of(FsErrorKind::AlreadyExists), Code::AlreadyExists);
        assert_eq!(code_of(FsErrorKind::NoSpace), Code::ResourceExhausted);
    }
}
