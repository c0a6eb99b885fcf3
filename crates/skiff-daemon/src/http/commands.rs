//! `POST /v1/vms/{name}/commands`: run a command and stream what happens as
//! newline-delimited JSON, for clients that do not speak the framed upgrade
//! protocol of `exec` (the Python SDK, curl). A time limit kills the
//! command's whole process group and says so.
//!
//! Events, one JSON object per line, output base64-encoded:
//! `{"type":"stdout","data":"..."}`, `{"type":"stderr","data":"..."}`, and
//! last `{"type":"exit","exit_code":N,"signal":S|null,"timed_out":bool}` or
//! `{"type":"error","message":"..."}`.

use crate::http::error::{api_error, ApiError};
use crate::image::CommandSetting;
use crate::manager::{error_chain, Manager, ManagerError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;
pub use skiff_api::CommandBody;
use skiff_proto::{ExecRequest, ExitStatus, Message};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// After a time limit kills the command, how long to wait for its end.
const KILL_GRACE: Duration = Duration::from_secs(10);

fn event(v: serde_json::Value) -> bytes::Bytes {
    let mut line = v.to_string();
    line.push('\n');
    bytes::Bytes::from(line)
}

fn error_event(message: &str) -> bytes::Bytes {
    event(json!({"type": "error", "message": message}))
}

pub async fn run(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Json(body): Json<CommandBody>,
) -> Result<Response, ApiError> {
    if body.argv.is_empty() {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "argv is empty; give the command to run".into(),
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let stdin = match &body.stdin {
        None => Vec::new(),
        Some(s) => b64
            .decode(s)
            .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("stdin is not base64: {e}")))?,
    };
    let timeout = match body.timeout_secs {
        Some(t) if !(t > 0.0 && t <= 86_400.0) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                format!("timeout_secs: {t} is out of range; allowed: above 0, up to 86400"),
            ));
        }
        t => t.map(Duration::from_secs_f64),
    };
    let mut conn = m.connect(&name).await?;
    let agent_err = |e: skiff_vmm::AgentError| {
        ApiError::from(ManagerError::Agent {
            name: name.clone(),
            source: e,
        })
    };
    let setting = m.command_setting(
        &name,
        CommandSetting {
            env: body.env,
            workdir: body.workdir,
            user: body.user.clone(),
        },
    );
    let req = ExecRequest {
        env: setting.env,
        argv: body.argv,
        workdir: setting.workdir,
        stdin: true,
        service: false,
        tty: None,
        user: setting.user,
        report_pid: false,
    };
    conn.writer
        .send(&Message::Exec(req))
        .await
        .map_err(agent_err)?;
    for chunk in stdin.chunks(skiff_proto::MAX_CHUNK) {
        conn.writer
            .send(&Message::Stdin(chunk.to_vec()))
            .await
            .map_err(agent_err)?;
    }
    conn.writer
        .send(&Message::Stdin(Vec::new()))
        .await
        .map_err(agent_err)?;
    m.metrics.exec_started(&name);
    if body.background {
        let id = crate::background::spawn(&m.background, &name, conn, timeout);
        return Ok((StatusCode::CREATED, Json(json!({ "id": id, "vm": name }))).into_response());
    }

    let (tx, rx) = mpsc::channel::<bytes::Bytes>(16);
    let started = Instant::now();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        loop {
            let next = match (deadline, timed_out) {
                (Some(d), false) => tokio::time::timeout_at(d, conn.reader.recv()).await,
                (_, true) => tokio::time::timeout(KILL_GRACE, conn.reader.recv()).await,
                (None, false) => Ok(conn.reader.recv().await),
            };
            let (line, last) = match next {
                Err(_) if !timed_out => {
                    timed_out = true;
                    let _ = conn.writer.send(&Message::Signal(libc::SIGKILL)).await;
                    continue;
                }
                Err(_) => (
                    error_event("the command did not end after it was killed"),
                    true,
                ),
                Ok(Ok(Some(Message::Stdout(b)))) => (
                    event(json!({"type": "stdout", "data": b64.encode(b)})),
                    false,
                ),
                Ok(Ok(Some(Message::Stderr(b)))) => (
                    event(json!({"type": "stderr", "data": b64.encode(b)})),
                    false,
                ),
                Ok(Ok(Some(Message::Exited(status)))) => {
                    let signal = match status {
                        ExitStatus::Signal(s) => Some(s),
                        ExitStatus::Code(_) => None,
                    };
                    let exit = json!({"type": "exit", "exit_code": status.shell_code(),
                        "signal": signal, "timed_out": timed_out});
                    let _ = tx.send(event(exit)).await;
                    m.metrics.exec_finished("commands", started.elapsed());
                    return;
                }
                Ok(Ok(Some(Message::Error(msg)))) => (error_event(&msg), true),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => (error_event("the VM went away during the command"), true),
                Ok(Err(e)) => (error_event(&error_chain(&e)), true),
            };
            if tx.send(line).await.is_err() || last {
                // The client left, or the command cannot go on: stop it.
                let _ = conn.writer.send(&Message::Signal(libc::SIGKILL)).await;
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
