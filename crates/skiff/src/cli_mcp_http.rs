//! `skiff mcp --listen ADDR`: the same tools over MCP's streamable HTTP
//! transport. A client POSTs each JSON-RPC message to `/mcp` and gets the
//! answer as one JSON body (the transport's non-streaming form: no tool
//! sends anything before its result). `initialize` opens a session, named
//! by the `Mcp-Session-Id` header after it; each session has its own
//! sandboxes, removed when the client DELETEs the session or leaves it
//! idle for an hour. Every request needs one of the bearer tokens of
//! `--tokens`, and a session is reachable only with the token that
//! opened it.

use crate::cli_mcp::{answer, Server};
use crate::client::Client;
use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use skiff_daemon::e2b::keys::ApiKeys;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// The largest message taken (as on stdio).
const MAX_BODY: usize = 8 << 20;
/// Sessions open at once, over all tokens, and for one token.
const MAX_SESSIONS: usize = 64;
const MAX_SESSIONS_PER_TOKEN: usize = 16;
/// A command's longest time limit over HTTP: the answer comes at its end,
/// and MCP's Python client stops reading after 300 s.
const MAX_TIMEOUT_SECS: f64 = 240.0;
/// A session unused this long is closed and its sandboxes removed.
const IDLE: Duration = Duration::from_secs(3600);
/// The MCP revisions this server speaks.
const KNOWN_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

struct Session {
    /// The token's owner id that opened it.
    owner: String,
    server: tokio::sync::Mutex<Server>,
    last_used: Mutex<Instant>,
}

impl Session {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle(&self) -> bool {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            > IDLE
    }
}

struct Http {
    socket: PathBuf,
    pools: Vec<String>,
    tokens: ApiKeys,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

type Shared = Arc<Http>;

pub(crate) async fn serve(
    client: Client,
    pools: Vec<String>,
    addr: std::net::SocketAddr,
    tokens: &Path,
) -> Result<i32> {
    check_listen(addr)?;
    let tokens = ApiKeys::read(tokens).context("--tokens")?;
    let http = Arc::new(Http {
        socket: client.socket.clone(),
        pools,
        tokens,
        sessions: Mutex::new(HashMap::new()),
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!("skiff mcp: streamable HTTP on http://{bound}/mcp");
    tokio::spawn(close_idle_sessions(http.clone()));
    let app = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::post(post).delete(delete).get(no_stream),
        )
        .with_state(http.clone());
    tokio::select! {
        () = skiff_daemon::e2b::serve(listener, app) => {}
        () = stop_signal() => {}
    }
    // Every session's sandboxes go with the server.
    let all: Vec<Arc<Session>> = {
        let mut sessions = http.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.drain().map(|(_, s)| s).collect()
    };
    for session in all {
        match tokio::time::timeout(Duration::from_secs(10), session.server.lock()).await {
            Ok(mut server) => server.close().await,
            Err(_) => eprintln!(
                "skiff mcp: a session is still busy; its sandboxes end at their time to live"
            ),
        }
    }
    Ok(0)
}

/// SIGTERM (systemd's stop) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Tokens travel in clear text over `http://`.
fn check_listen(addr: std::net::SocketAddr) -> Result<()> {
    if !addr.ip().to_canonical().is_loopback() {
        bail!("--listen {addr}: the clients' bearer tokens would cross the network in clear text; listen on a loopback address (for example 127.0.0.1:{}) and put a TLS-terminating proxy in front for other hosts", addr.port());
    }
    Ok(())
}

fn rpc_failure(status: StatusCode, code: i64, message: &str) -> Response {
    let body =
        json!({"jsonrpc": "2.0", "id": Value::Null, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// A browser page on another site must not drive a local server (DNS
/// rebinding): an Origin, when sent, must be this host's loopback.
fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// The owner id of the request's bearer token, or the answer refusing it.
fn authorize(http: &Http, headers: &HeaderMap) -> Result<String, Box<Response>> {
    if !origin_allowed(headers) {
        return Err(Box::new(rpc_failure(
            StatusCode::FORBIDDEN,
            -32600,
            "requests from web pages of other origins are refused",
        )));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token.and_then(|t| http.tokens.owner(t.trim())) {
        Some(owner) => Ok(owner),
        None => {
            let mut r = rpc_failure(
                StatusCode::UNAUTHORIZED,
                -32600,
                "a bearer token of the server's --tokens file is needed (Authorization: Bearer TOKEN)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(Box::new(r))
        }
    }
}

/// The session a request names, if it exists and is the token's.
fn session_of(
    http: &Http,
    headers: &HeaderMap,
    owner: &str,
) -> Result<(String, Arc<Session>), Box<Response>> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(rpc_failure(
            StatusCode::BAD_REQUEST,
            -32600,
            "no Mcp-Session-Id header: send initialize first, then its session id with every request",
        )));
    };
    let sessions = http.sessions.lock().unwrap_or_else(|e| e.into_inner());
    match sessions.get(id) {
        // Another token's session does not exist for this one.
        Some(s) if s.owner == owner => Ok((id.to_owned(), s.clone())),
        _ => Err(Box::new(rpc_failure(
            StatusCode::NOT_FOUND,
            -32001,
            "no such session (it ended, or it was idle for an hour): initialize again",
        ))),
    }
}

fn new_session_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn post(State(http): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let owner = match authorize(&http, &headers) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    // Read only once the token is known good.
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return rpc_failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "the message is over 8 MiB, or its body broke off",
            )
        }
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return rpc_failure(StatusCode::BAD_REQUEST, -32700, &format!("not JSON: {e}")),
    };
    if msg.is_array() {
        return rpc_failure(
            StatusCode::BAD_REQUEST,
            -32600,
            "JSON-RPC batches are not taken: send one message per request",
        );
    }
    if let Some(v) = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()) {
        if !KNOWN_VERSIONS.contains(&v) {
            return rpc_failure(
                StatusCode::BAD_REQUEST,
                -32600,
                &format!(
                    "MCP-Protocol-Version {v:?} is not one this server speaks ({})",
                    KNOWN_VERSIONS.join(", ")
                ),
            );
        }
    }
    if msg["method"] == "initialize" && msg.get("id").is_some() {
        return initialize(&http, owner, &msg).await;
    }
    let (_, session) = match session_of(&http, &headers, &owner) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    session.touch();
    // Notifications and the client's answers need no reply.
    if msg.get("id").is_none() || msg.get("method").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    // In a task of its own: a client that goes away mid-call must not cut
    // a take off before its sandbox is recorded (or a run_code before its
    // sandbox is removed).
    let call = tokio::spawn(async move {
        let mut server = session.server.lock().await;
        let reply = answer(&mut server, &msg).await;
        session.touch();
        reply
    });
    match call.await {
        Ok(Some(reply)) => axum::Json(reply).into_response(),
        Ok(None) => StatusCode::ACCEPTED.into_response(),
        Err(e) => rpc_failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            &format!("the call failed: {e}"),
        ),
    }
}

async fn initialize(http: &Shared, owner: String, msg: &Value) -> Response {
    let id = match new_session_id() {
        Ok(id) => id,
        Err(e) => return rpc_failure(StatusCode::INTERNAL_SERVER_ERROR, -32603, &format!("{e:#}")),
    };
    let mut server = Server::new(
        Client::new(http.socket.clone()),
        http.pools.clone(),
        MAX_TIMEOUT_SECS,
    );
    let Some(reply) = answer(&mut server, msg).await else {
        return StatusCode::ACCEPTED.into_response();
    };
    let session = Arc::new(Session {
        owner,
        server: tokio::sync::Mutex::new(server),
        last_used: Mutex::new(Instant::now()),
    });
    {
        let mut sessions = http.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let of_token = sessions
            .values()
            .filter(|s| s.owner == session.owner)
            .count();
        if sessions.len() >= MAX_SESSIONS || of_token >= MAX_SESSIONS_PER_TOKEN {
            return rpc_failure(
                StatusCode::SERVICE_UNAVAILABLE,
                -32000,
                &format!("too many sessions are open ({MAX_SESSIONS_PER_TOKEN} per token, {MAX_SESSIONS} in all): end one (DELETE /mcp) or wait for an idle one to close"),
            );
        }
        sessions.insert(id.clone(), session);
    }
    let mut r = axum::Json(reply).into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// The client ends its session: its sandboxes go.
async fn delete(State(http): State<Shared>, headers: HeaderMap) -> Response {
    let owner = match authorize(&http, &headers) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (id, session) = match session_of(&http, &headers, &owner) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    http.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    // To its end, even if this client goes.
    let closing = tokio::spawn(async move { session.server.lock().await.close().await });
    let _ = closing.await;
    StatusCode::NO_CONTENT.into_response()
}

/// No tool sends anything unasked, so there is no stream to open.
async fn no_stream() -> Response {
    let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    r
}

/// Close sessions unused for [`IDLE`]; one in the middle of a call is in
/// use, however long the call.
async fn close_idle_sessions(http: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let idle = {
            let mut sessions = http.sessions.lock().unwrap_or_else(|e| e.into_inner());
            take_idle(&mut sessions)
        };
        for session in idle {
            tokio::spawn(async move { session.server.lock().await.close().await });
        }
    }
}

/// The sessions idle for [`IDLE`] and not in a call, out of `sessions`.
fn take_idle(sessions: &mut HashMap<String, Arc<Session>>) -> Vec<Arc<Session>> {
    let ids: Vec<String> = sessions
        .iter()
        .filter(|(_, s)| s.idle() && s.server.try_lock().is_ok())
        .map(|(id, _)| id.clone())
        .collect();
    ids.iter().filter_map(|id| sessions.remove(id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_str(origin).expect("header"),
        );
        h
    }

    #[test]
    fn only_loopback_origins_may_drive_the_server() {
        assert!(origin_allowed(&HeaderMap::new()), "not a browser");
        assert!(origin_allowed(&with_origin("http://localhost:5173")));
        assert!(origin_allowed(&with_origin("http://127.0.0.1")));
        assert!(origin_allowed(&with_origin("http://[::1]:8080")));
        assert!(!origin_allowed(&with_origin("https://evil.example")));
        assert!(!origin_allowed(&with_origin(
            "http://localhost.evil.example:80"
        )));
        assert!(!origin_allowed(&with_origin("null")));
    }

    fn session(unused_for: Duration) -> Arc<Session> {
        let server = Server::new(Client::new("/nonexistent".into()), Vec::new(), 1.0);
        Arc::new(Session {
            owner: "o".into(),
            server: tokio::sync::Mutex::new(server),
            last_used: Mutex::new(
                Instant::now()
                    .checked_sub(unused_for)
                    .unwrap_or_else(Instant::now),
            ),
        })
    }

    #[test]
    fn only_idle_sessions_not_in_a_call_are_closed() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let mut sessions = HashMap::new();
        sessions.insert("fresh".to_owned(), session(Duration::ZERO));
        sessions.insert("idle".to_owned(), session(hours(2)));
        let busy = session(hours(2));
        let call = busy.server.try_lock().expect("lock");
        sessions.insert("busy".to_owned(), busy.clone());
        let closed = take_idle(&mut sessions);
        assert_eq!(closed.len(), 1);
        let mut left: Vec<&String> = sessions.keys().collect();
        left.sort();
        assert_eq!(left, ["busy", "fresh"], "a long call keeps its session");
        drop(call);
        assert_eq!(take_idle(&mut sessions).len(), 1, "once the call ends");
    }

    #[test]
    fn the_listener_must_be_loopback() {
        assert!(check_listen("127.0.0.1:8000".parse().expect("addr")).is_ok());
        assert!(check_listen("[::1]:8000".parse().expect("addr")).is_ok());
        let refused = check_listen("0.0.0.0:8000".parse().expect("addr"));
        assert!(format!("{:#}", refused.expect_err("refused")).contains("loopback"));
    }
}
