//! Streaming endpoints: the console log, and exec over an upgraded
//! connection that carries skiff-proto frames both ways.

use super::api::{api_error, ApiError};
use super::manager::{Manager, ManagerError};
use crate::frames::{self, FrameReader};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use skiff_proto::{ExecRequest, Message};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

/// The upgrade token for exec connections.
pub const EXEC_UPGRADE: &str = "skiff-exec";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
}

pub async fn logs(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    m.inspect(&name)?;
    let path = m.paths.vm_dir(&name).join("console.log");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::spawn(async move {
        let mut offset = 0u64;
        loop {
            let chunk = tokio::task::spawn_blocking({
                let path = path.clone();
                move || read_from(&path, offset)
            })
            .await
            .unwrap_or_default();
            if let Some((bytes, new_offset)) = chunk {
                offset = new_offset;
                if !bytes.is_empty() && tx.send(Ok(bytes)).await.is_err() {
                    return; // the client went away
                }
            }
            let still_there = matches!(m.store.get(&name), Ok(Some(_)));
            if !q.follow || !still_there || tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let stream = tokio_stream_from(rx);
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

/// Bytes of `path` from `offset` (at most 1 MiB at a time), and the new
/// offset. A file that shrank (the log was trimmed) is read from the start.
fn read_from(path: &std::path::Path, mut offset: u64) -> Option<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < offset {
        offset = 0;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    f.take(1024 * 1024).read_to_end(&mut buf).ok()?;
    let next = offset + buf.len() as u64;
    Some((buf, next))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The body of an exec request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size.
    #[serde(default)]
    pub tty: Option<skiff_proto::WindowSize>,
}

/// Check that `req` asks to switch to the frame protocol, and read its
/// JSON body. `what` names the endpoint in errors.
pub async fn upgrade_request<T: serde::de::DeserializeOwned>(
    mut req: Request,
    what: &str,
) -> Result<(hyper::upgrade::OnUpgrade, T), ApiError> {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_UPGRADE));
    if !wants_upgrade {
        return Err(api_error(
            StatusCode::UPGRADE_REQUIRED,
            format!("{what} needs `Connection: upgrade` and `Upgrade: {EXEC_UPGRADE}`"),
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let bytes = axum::body::to_bytes(req.into_body(), 1024 * 1024)
        .await
        .map_err(|e| {
            api_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request: {e}"),
            )
        })?;
    let body = serde_json::from_slice(&bytes).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("invalid {what} request: {e}"),
        )
    })?;
    Ok((on_upgrade, body))
}

/// The answer that switches the connection to the frame protocol.
pub fn switching_protocols() -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static(EXEC_UPGRADE))
        .body(Body::empty())
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub async fn exec(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (on_upgrade, body): (_, ExecBody) = upgrade_request(req, "exec").await?;
    if body.argv.is_empty() {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "argv is empty; give the command to run".into(),
        ));
    }
    let mut conn = m.connect(&name).await?;
    let exec = ExecRequest {
        argv: body.argv,
        env: body.env,
        workdir: body.workdir,
        stdin: body.stdin,
        service: false,
        tty: body.tty,
    };
    conn.writer.send(&Message::Exec(exec)).await.map_err(|e| {
        ApiError::from(ManagerError::Agent {
            name: name.clone(),
            reason: e.to_string(),
        })
    })?;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (client_r, mut client_w) = tokio::io::split(TokioIo::new(upgraded));
        let mut client = FrameReader::new(client_r);
        loop {
            tokio::select! {
                from_guest = conn.reader.recv() => {
                    let msg = match from_guest {
                        Ok(Some(m @ (Message::Stdout(_) | Message::Stderr(_) | Message::Exited(_) | Message::Error(_)))) => m,
                        Ok(Some(other)) => Message::Error(format!("the guest agent sent an unexpected {} message", other.name())),
                        Ok(None) => Message::Error("the guest closed the control channel before the command finished".into()),
                        Err(e) => Message::Error(format!("lost the guest's control channel: {e}")),
                    };
                    let last = !matches!(msg, Message::Stdout(_) | Message::Stderr(_));
                    if frames::send(&mut client_w, &msg).await.is_err() || last {
                        return;
                    }
                }
                from_client = client.recv() => match from_client {
                    // Only input, signals and resizes go from the client to the guest.
                    Ok(Some(m @ (Message::Stdin(_) | Message::Signal(_) | Message::Resize(_)))) => {
                        if conn.writer.send(&m).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    // The client went away: closing the agent connection kills the command.
                    Ok(None) | Err(_) => return,
                },
            }
        }
    });
    Ok(switching_protocols())
}
