//! envd's process service (Connect RPC, JSON codec) over skiff's guest
//! agent: Start and Connect streams, List, SendInput, StreamInput,
//! SendSignal, CloseStdin and Update (a pty's size).

use super::connect::{self, Code, RpcError};
use super::envd::{
    authorize, b64, deadline, keepalive, lenient_b64, stream_error, stream_response, unary_error,
    unary_ok, unary_request, user,
};
use super::procs::{Config, End, Input, Item, Output, Proc, Refused, Spawned, MAX_RUNNING};
use super::store::E2bSandbox;
use super::E2b;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use skiff_proto::{ExecRequest, Message, WindowSize};
use std::sync::Arc;
use std::time::Duration;

/// How long a command may take to start in the guest.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What a command that cannot start may say about it (on stderr).
const MAX_START_ERROR: usize = 4096;
/// The largest body of a SendInput (base64 of about 12 MiB of input).
const MAX_INPUT_BODY: usize = 16 << 20;

pub fn routes(router: Router<Arc<E2b>>) -> Router<Arc<E2b>> {
    router
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_to))
        .route("/process.Process/List", post(list))
        .route(
            "/process.Process/SendInput",
            post(send_input).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/process.Process/StreamInput", post(stream_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/Update", post(update))
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
    if e2b.procs.running(&sandbox.access_token).len() >= MAX_RUNNING {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("a sandbox runs at most {MAX_RUNNING} processes through this API; kill some"),
        ));
    }
    let mut conn = e2b
        .m
        .connect(&sandbox.vm)
        .await
        .map_err(|e| agent_lost(&sandbox.vm, crate::support::error_chain(&e)))?;
    conn.writer
        .send(&Message::Exec(exec))
        .await
        .map_err(|e| match e {
            // Too large for a frame: the request, not the sandbox.
            skiff_vmm::AgentError::Encode(e) => RpcError::new(
                Code::InvalidArgument,
                format!("the command is too large to send: {e}"),
            ),
            e => agent_lost(&sandbox.vm, e),
        })?;
    // The pid first; a command that cannot start says why on stderr. The
    // whole wait is bounded, however much the guest sends meanwhile.
    let started = tokio::time::timeout(START_TIMEOUT, async {
        let mut why = Vec::new();
        loop {
            let msg = conn
                .reader
                .recv()
                .await
                .map_err(|e| agent_lost(&sandbox.vm, e))?;
            match msg {
                Some(Message::Started(pid)) => return Ok(pid),
                Some(Message::Stderr(b)) => {
                    let room = MAX_START_ERROR.saturating_sub(why.len());
                    why.extend_from_slice(&b[..b.len().min(room)]);
                }
                Some(Message::Exited(_)) => {
                    let text = String::from_utf8_lossy(&why).trim().to_owned();
                    let text = text.strip_prefix("skiff: ").unwrap_or(&text).to_owned();
                    return Err(RpcError::new(Code::InvalidArgument, text));
                }
                Some(Message::Error(e)) => return Err(RpcError::new(Code::Internal, e)),
                Some(_) => {}
                None => return Err(agent_lost(&sandbox.vm, "it closed the connection")),
            }
        }
    })
    .await
    .map_err(|_| {
        RpcError::new(
            Code::DeadlineExceeded,
            "the command did not start within 30 s",
        )
    })?;
    let pid = started?;
    let spawned = Spawned {
        pid,
        conn,
        config,
        tag,
        pty: tty.is_some(),
        stdin,
        lifetime: deadline(headers),
    };
    Ok(e2b.procs.adopt(&sandbox.access_token, spawned))
}

/// The process a `ProcessSelector` names (by pid or tag).
fn selected(e2b: &E2b, scope: &str, sel: &Value) -> Result<Arc<Proc>, RpcError> {
    if let Some(tag) = sel["tag"].as_str() {
        return e2b.procs.by_tag(scope, tag).ok_or_else(|| {
            RpcError::new(Code::NotFound, format!("process with tag {tag} not found"))
        });
    }
    let pid = sel["pid"]
        .as_u64()
        .or_else(|| sel["pid"].as_str().and_then(|s| s.parse().ok()))
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| RpcError::new(Code::InvalidArgument, "process needs a pid or a tag"))?;
    e2b.procs
        .get(scope, pid)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("process with pid {pid} not found")))
}

/// The process a unary call names, if it still runs.
fn running(e2b: &E2b, scope: &str, sel: &Value) -> Result<Arc<Proc>, RpcError> {
    let p = selected(e2b, scope, sel)?;
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
    let found = connect::single_message(&body)
        .and_then(|req| selected(&e2b, &sandbox.access_token, &req["process"]));
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
            .running(&sandbox.access_token)
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
    match p.send(input) {
        Ok(()) => Ok(json!({})),
        Err(Refused::Ended) => Err(RpcError::new(
            Code::NotFound,
            format!("process with pid {} not found (it has ended)", p.pid),
        )),
        Err(Refused::Busy) => Err(RpcError::new(
            Code::ResourceExhausted,
            format!(
                "process {} is not reading its input; try again later",
                p.pid
            ),
        )),
    }
}

/// Input in one call: its body is read only once the call is authorized,
/// up to [`MAX_INPUT_BODY`] (stdin may be larger than other calls' bodies).
async fn send_input(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = authorize(&e2b, &headers) {
        return *r;
    }
    let body = match axum::body::to_bytes(body, MAX_INPUT_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return unary_error(&RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "the input is over {} MiB, or broke off ({e}); send it in parts",
                    MAX_INPUT_BODY >> 20
                ),
            ))
        }
    };
    unary(&e2b, &headers, &body, |sandbox, req| {
        let p = running(&e2b, &sandbox.access_token, &req["process"])?;
        let input = input_of(&p, &req["input"])?;
        deliver(&p, input)
    })
}

async fn send_signal(State(e2b): State<Arc<E2b>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&e2b, &headers, &body, |sandbox, req| {
        let p = running(&e2b, &sandbox.access_token, &req["process"])?;
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
        let p = running(&e2b, &sandbox.access_token, &req["process"])?;
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
        let p = running(&e2b, &sandbox.access_token, &req["process"])?;
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
                target = Some(running(e2b, &sandbox.access_token, &m["start"]["process"])?);
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
}
