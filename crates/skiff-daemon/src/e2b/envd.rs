//! envd, E2B's in-sandbox API, served by the daemon for the sandbox an
//! `E2b-Sandbox-Id` header names: `GET /health` and the process service
//! (Connect RPC, JSON codec) over skiff's guest agent. Each call must
//! carry the sandbox's access token (`X-Access-Token`).

use super::connect::{self, Code, RpcError};
use super::procs::{Config, End, Input, Item, Output, Proc};
use super::store::E2bSandbox;
use super::E2b;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use skiff_proto::{ExecRequest, Message, WindowSize};
use std::sync::Arc;
use std::time::Duration;

/// Keepalives on a quiet stream when the client names no interval.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);
/// How long a command may take to start in the guest.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body of an envd call.
const MAX_ENVD_BODY: usize = 16 << 20;

pub fn router(e2b: Arc<E2b>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_to))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/Update", post(update));
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
fn lenient_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(s)
}

fn b64(bytes: &[u8]) -> String {
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

fn unary_request(body: &[u8]) -> Result<Value, RpcError> {
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
fn deadline(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

fn event(e: Value) -> Value {
    json!({ "event": e })
}

fn item_json(item: &Item) -> Value {
    match item {
        Item::Data(out, bytes) => {
            let key = match out {
                Output::Stdout => "stdout",
                Output::Stderr => "stderr",
                Output::Pty => "pty",
            };
            event(json!({ "data": { key: b64(bytes) } }))
        }
        Item::End(end) => event(json!({ "end": end_json(end) })),
    }
}

fn end_json(end: &End) -> Value {
    let mut v = json!({ "exitCode": end.exit_code, "exited": end.exited, "status": end.status });
    if end.exit_code != 0 {
        v["error"] = json!(end.status);
    }
    v
}

/// The events of a process for one watcher: start, its output, its end,
/// and keepalives while it is quiet.
fn process_stream(pid: u32, rx: tokio::sync::mpsc::Receiver<Item>, every: Duration) -> Response {
    let first = connect::envelope(&event(json!({ "start": { "pid": pid } })));
    let state = (Some(first), rx, false);
    let stream = futures_util::stream::unfold(state, move |(first, mut rx, done)| async move {
        if let Some(b) = first {
            return Some((Ok::<Bytes, std::convert::Infallible>(b), (None, rx, done)));
        }
        if done {
            return None;
        }
        match tokio::time::timeout(every, rx.recv()).await {
            Err(_) => {
                let k = connect::envelope(&event(json!({ "keepalive": {} })));
                Some((Ok(k), (None, rx, false)))
            }
            Ok(Some(item)) => {
                let end = matches!(item, Item::End(_));
                let mut out = connect::envelope(&item_json(&item)).to_vec();
                if end {
                    out.extend_from_slice(&connect::end_stream(None));
                }
                Some((Ok(Bytes::from(out)), (None, rx, end)))
            }
            Ok(None) => {
                let e = RpcError::new(Code::Unavailable, "the process's output ended early");
                Some((Ok(connect::end_stream(Some(&e))), (None, rx, true)))
            }
        }
    });
    stream_response(Body::from_stream(stream))
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// `ProcessConfig` from a `Start` request.
fn config_of(req: &Value) -> Result<Config, RpcError> {
    let p = &req["process"];
    let cmd = str_of(&p["cmd"]).filter(|c| !c.is_empty()).ok_or_else(|| {
        RpcError::new(
            Code::InvalidArgument,
            "process.cmd is missing: name the program to run",
        )
    })?;
    let args = match &p["args"] {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                str_of(x).ok_or_else(|| {
                    RpcError::new(Code::InvalidArgument, "process.args must be strings")
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(RpcError::new(
                Code::InvalidArgument,
                "process.args must be a list",
            ))
        }
    };
    let envs = match &p["envs"] {
        Value::Null => Vec::new(),
        Value::Object(o) => {
            let mut envs = Vec::with_capacity(o.len());
            for (k, v) in o {
                let v = str_of(v).ok_or_else(|| {
                    RpcError::new(Code::InvalidArgument, "process.envs values must be strings")
                })?;
                envs.push((k.clone(), v));
            }
            envs
        }
        _ => {
            return Err(RpcError::new(
                Code::InvalidArgument,
                "process.envs must be a map",
            ))
        }
    };
    let cwd = str_of(&p["cwd"]).filter(|c| !c.is_empty());
    Ok(Config {
        cmd,
        args,
        envs,
        cwd,
    })
}

fn pty_size(v: &Value) -> Option<WindowSize> {
    let size = &v["size"];
    let n = |k: &str| size[k].as_u64().and_then(|x| u16::try_from(x).ok());
    Some(WindowSize {
        cols: n("cols")?.max(1),
        rows: n("rows")?.max(1),
    })
}

fn agent_lost(vm: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::new(
        Code::Unavailable,
        format!("cannot reach the agent of sandbox {vm}: {e}"),
    )
}

async fn start(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match authorize(&e2b, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match start_process(&e2b, &sandbox, &headers, &body).await {
        Ok((proc, rx)) => process_stream(proc.pid, rx, keepalive(&headers)),
        Err(e) => stream_error(&e),
    }
}

async fn start_process(
    e2b: &E2b,
    sandbox: &E2bSandbox,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Arc<Proc>, tokio::sync::mpsc::Receiver<Item>), RpcError> {
    let req = connect::single_message(body)?;
    let config = config_of(&req)?;
    let tty =
        if req["pty"].is_object() {
            Some(pty_size(&req["pty"]).ok_or_else(|| {
                RpcError::new(Code::InvalidArgument, "pty.size needs cols and rows")
            })?)
        } else {
            None
        };
    // A pipe unless `stdin: false`.
    let stdin = req["stdin"].as_bool().unwrap_or(true);
    let tag = str_of(&req["tag"]);
    let mut env: Vec<(String, String)> = sandbox.env_vars.clone().into_iter().collect();
    env.extend(config.envs.iter().cloned());
    let mut argv = vec![config.cmd.clone()];
    argv.extend(config.args.iter().cloned());
    let exec = ExecRequest {
        argv,
        env,
        workdir: config.cwd.clone(),
        stdin: stdin || tty.is_some(),
        service: false,
        tty,
        user: user(headers),
        report_pid: true,
    };
    let mut conn = e2b
        .m
        .connect(&sandbox.vm)
        .await
        .map_err(|e| agent_lost(&sandbox.vm, crate::support::error_chain(&e)))?;
    conn.writer
        .send(&Message::Exec(exec))
        .await
        .map_err(|e| agent_lost(&sandbox.vm, e))?;
    // The pid first; a command that cannot start says why on stderr.
    let mut why = Vec::new();
    let pid = loop {
        let msg = tokio::time::timeout(START_TIMEOUT, conn.reader.recv())
            .await
            .map_err(|_| {
                RpcError::new(
                    Code::DeadlineExceeded,
                    "the command did not start within 30 s",
                )
            })?
            .map_err(|e| agent_lost(&sandbox.vm, e))?;
        match msg {
            Some(Message::Started(pid)) => break pid,
            Some(Message::Stderr(b)) => why.extend_from_slice(&b),
            Some(Message::Exited(_)) => {
                let text = String::from_utf8_lossy(&why).trim().to_owned();
                let text = text.strip_prefix("skiff: ").unwrap_or(&text).to_owned();
                return Err(RpcError::new(Code::InvalidArgument, text));
            }
            Some(Message::Error(e)) => return Err(RpcError::new(Code::Internal, e)),
            Some(_) => {}
            None => return Err(agent_lost(&sandbox.vm, "it closed the connection")),
        }
    };
    let lifetime = deadline(headers);
    Ok(e2b.procs.adopt(
        &sandbox.vm,
        pid,
        conn,
        config,
        tag,
        tty.is_some(),
        stdin,
        lifetime,
    ))
}

/// The process a `ProcessSelector` names (by pid or tag).
fn selected(e2b: &E2b, vm: &str, sel: &Value) -> Result<Arc<Proc>, RpcError> {
    if let Some(tag) = sel["tag"].as_str() {
        return e2b.procs.by_tag(vm, tag).ok_or_else(|| {
            RpcError::new(Code::NotFound, format!("process with tag {tag} not found"))
        });
    }
    let pid = sel["pid"]
        .as_u64()
        .or_else(|| sel["pid"].as_str().and_then(|s| s.parse().ok()))
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process needs a pid or a tag"))?;
    e2b.procs
        .get(vm, pid)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("process with pid {pid} not found")))
}

/// The process a unary call names, if it still runs.
fn running(e2b: &E2b, vm: &str, sel: &Value) -> Result<Arc<Proc>, RpcError> {
    let p = selected(e2b, vm, sel)?;
    if p.end().is_some() {
        return Err(RpcError::new(
            Code::NotFound,
            format!("process with pid {} not found (it has ended)", p.pid),
        ));
    }
    Ok(p)
}

async fn connect_to(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    let sandbox = match authorize(&e2b, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let found =
        connect::single_message(&body).and_then(|req| selected(&e2b, &sandbox.vm, &req["process"]));
    match found {
        Ok(p) => process_stream(p.pid, p.watch(), keepalive(&headers)),
        Err(e) => stream_error(&e),
    }
}

/// A unary call on the sandbox: parse, authorize, run `f`.
fn unary(
    e2b: &E2b,
    headers: &HeaderMap,
    body: &[u8],
    f: impl FnOnce(&E2bSandbox, Value) -> Result<Value, RpcError>,
) -> Response {
    let sandbox = match authorize(e2b, headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match unary_request(body).and_then(|req| f(&sandbox, req)) {
        Ok(v) => unary_ok(v),
        Err(e) => unary_error(&e),
    }
}

async fn list(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&e2b, &headers, &body, |sandbox, _| {
        let procs: Vec<Value> = e2b
            .procs
            .running(&sandbox.vm)
            .iter()
            .map(|p| {
                let envs: serde_json::Map<String, Value> = p
                    .config
                    .envs
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                let mut v = json!({
                    "pid": p.pid,
                    "config": { "cmd": p.config.cmd, "args": p.config.args, "envs": envs },
                });
                if let Some(cwd) = &p.config.cwd {
                    v["config"]["cwd"] = json!(cwd);
                }
                if let Some(tag) = &p.tag {
                    v["tag"] = json!(tag);
                }
                v
            })
            .collect();
        Ok(json!({ "processes": procs }))
    })
}

/// Bytes for a process's input (`{"stdin": b64}` or `{"pty": b64}`),
/// checked against how it runs.
fn input_of(p: &Proc, input: &Value) -> Result<Input, RpcError> {
    let decode = |v: &Value| {
        lenient_b64(v.as_str().unwrap_or(""))
            .map_err(|e| RpcError::new(Code::InvalidArgument, format!("input is not base64: {e}")))
    };
    match (&input["stdin"], &input["pty"]) {
        (v, Value::Null) if !v.is_null() => {
            if p.pty {
                return Err(RpcError::new(
                    Code::Internal,
                    "this process runs on a pty: send input.pty",
                ));
            }
            if !p.stdin {
                return Err(RpcError::new(
                    Code::Internal,
                    "this process was started without stdin (stdin: false)",
                ));
            }
            Ok(Input::Stdin(decode(v)?))
        }
        (Value::Null, v) if !v.is_null() => {
            if !p.pty {
                return Err(RpcError::new(
                    Code::Internal,
                    "this process has no pty: send input.stdin",
                ));
            }
            Ok(Input::Stdin(decode(v)?))
        }
        _ => Err(RpcError::new(
            Code::InvalidArgument,
            "input needs stdin or pty",
        )),
    }
}

fn deliver(p: &Proc, input: Input) -> Result<Value, RpcError> {
    if p.send(input) {
        Ok(json!({}))
    } else {
        Err(RpcError::new(
            Code::NotFound,
            format!("process with pid {} not found (it has ended)", p.pid),
        ))
    }
}

async fn send_input(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&e2b, &headers, &body, |sandbox, req| {
        let p = running(&e2b, &sandbox.vm, &req["process"])?;
        let input = input_of(&p, &req["input"])?;
        deliver(&p, input)
    })
}

async fn send_signal(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&e2b, &headers, &body, |sandbox, req| {
        let p = running(&e2b, &sandbox.vm, &req["process"])?;
        let signal = match &req["signal"] {
            Value::String(s) if s == "SIGNAL_SIGKILL" => 9,
            Value::String(s) if s == "SIGNAL_SIGTERM" => 15,
            Value::Number(n) if n.as_i64() == Some(9) || n.as_i64() == Some(15) => {
                n.as_i64().unwrap_or(9) as i32
            }
            other => {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    format!("signal {other} is not supported (SIGNAL_SIGKILL or SIGNAL_SIGTERM)"),
                ))
            }
        };
        deliver(&p, Input::Signal(signal))
    })
}

async fn close_stdin(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&e2b, &headers, &body, |sandbox, req| {
        let p = running(&e2b, &sandbox.vm, &req["process"])?;
        if p.pty {
            return Err(RpcError::new(
                Code::Internal,
                "a pty has no stdin to close; send Ctrl-D (0x04) as pty input",
            ));
        }
        deliver(&p, Input::CloseStdin)
    })
}

async fn update(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&e2b, &headers, &body, |sandbox, req| {
        let p = running(&e2b, &sandbox.vm, &req["process"])?;
        if !p.pty {
            return Err(RpcError::new(
                Code::Internal,
                "this process has no pty to resize",
            ));
        }
        let size = pty_size(&req["pty"])
            .ok_or_else(|| RpcError::new(Code::InvalidArgument, "pty.size needs cols and rows"))?;
        deliver(&p, Input::Resize(size))
    })
}

/// Client-streaming input: `start` names the process, `data` carries its
/// input, `keepalive` nothing.
async fn stream_input(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Body) -> Response {
    let sandbox = match authorize(&e2b, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match feed_stream(&e2b, &sandbox, body).await {
        Ok(()) => {
            let mut out = connect::envelope(&json!({})).to_vec();
            out.extend_from_slice(&connect::end_stream(None));
            stream_response(Body::from(out))
        }
        Err(e) => stream_error(&e),
    }
}

async fn feed_stream(e2b: &E2b, sandbox: &E2bSandbox, body: Body) -> Result<(), RpcError> {
    use futures_util::StreamExt;
    let mut decoder = connect::Decoder::default();
    let mut target: Option<Arc<Proc>> = None;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk
            .map_err(|e| RpcError::new(Code::Canceled, format!("the input stream broke: {e}")))?;
        for msg in decoder.feed(&chunk)? {
            let connect::Incoming::Message(m) = msg else {
                return Ok(());
            };
            if m["start"].is_object() {
                target = Some(running(e2b, &sandbox.vm, &m["start"]["process"])?);
            } else if m["data"].is_object() {
                let p = target.as_ref().ok_or_else(|| {
                    RpcError::new(Code::FailedPrecondition, "send start before data")
                })?;
                let input = input_of(p, &m["data"]["input"])?;
                deliver(p, input)?;
            }
        }
    }
    Ok(())
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
    fn a_start_request_becomes_a_config() {
        let req = json!({"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false});
        let c = config_of(&req).expect("config");
        assert_eq!(c.cmd, "/bin/bash");
        assert_eq!(c.args, vec!["-l", "-c", "echo hi"]);
        assert_eq!(c.envs, vec![("A".to_owned(), "1".to_owned())]);
        assert_eq!(c.cwd.as_deref(), Some("/tmp"));
        let bad = config_of(&json!({"process":{"args":["x"]}})).expect_err("no cmd");
        assert_eq!(bad.code, Code::InvalidArgument);
        assert!(config_of(&json!({"process":{"cmd":"x","envs":{"A":1}}})).is_err());
    }

    #[test]
    fn ends_and_output_read_as_envd_sends_them() {
        let ok = item_json(&Item::End(End::from_status(skiff_proto::ExitStatus::Code(
            0,
        ))));
        assert_eq!(
            ok,
            json!({"event":{"end":{"exitCode":0,"exited":true,"status":"exit status 0"}}})
        );
        let failed = item_json(&Item::End(End::from_status(skiff_proto::ExitStatus::Code(
            3,
        ))));
        assert_eq!(failed["event"]["end"]["error"], "exit status 3");
        let out = item_json(&Item::Data(Output::Stderr, b"hi\n".to_vec()));
        assert_eq!(out, json!({"event":{"data":{"stderr":"aGkK"}}}));
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
