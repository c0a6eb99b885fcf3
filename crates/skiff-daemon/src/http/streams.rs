//! Streaming endpoints: the console log, and exec over an upgraded
//! connection that carries skiff-proto frames both ways.

use crate::frames::{self, FrameReader};
use crate::http::error::{api_error, ApiError};
use crate::manager::{Manager, ManagerError};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use skiff_proto::{ExecRequest, Message};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

/// The upgrade token for exec connections.
pub use skiff_api::{CopyBody, ExecBody, LogsQuery, EXEC_UPGRADE};

pub async fn logs(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    m.inspect(&name)?;
    let path = m.paths.vm_dir(&name).join("console.log");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let start = match q.tail {
        None => 0,
        Some(n) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || tail_offset(&path, n))
                .await
                .unwrap_or(0)
        }
    };
    // With timestamps or a start time, whole lines, each with its time.
    let mut lines = (q.timestamps || q.since.is_some())
        .then(|| super::log_lines::LineFilter::new(start, q.timestamps, q.since));
    let times = skiff_vmm::console::times_path(&path);
    tokio::spawn(async move {
        let mut offset = start;
        // Without -f the read ends even if the guest never stops writing.
        let mut budget = 2 * skiff_vmm::console::CONSOLE_LOG_MAX;
        loop {
            let chunk = tokio::task::spawn_blocking({
                let path = path.clone();
                move || read_from(&path, offset)
            })
            .await
            .unwrap_or_default();
            let still_there = matches!(m.store.get(&name), Ok(Some(_)));
            // A read of the whole allowance may have left more behind: read
            // on before the end counts (a log is up to 8 MiB).
            let read = chunk.as_ref().map_or(0, |(bytes, _)| bytes.len() as u64);
            budget = budget.saturating_sub(read);
            let more = read == READ_MAX && (q.follow || budget > 0);
            let last = (!q.follow || !still_there) && !more;
            if let Some((mut bytes, new_offset)) = chunk {
                if let Some(filter) = lines.as_mut() {
                    let now_ms = skiff_vmm::console::unix_ms();
                    let stamps = skiff_vmm::console::Stamps::load(&times);
                    if new_offset < offset {
                        filter.restart(new_offset - bytes.len() as u64);
                    }
                    bytes = filter.feed(&bytes, &stamps, now_ms);
                    if last {
                        bytes.extend(filter.flush(&stamps, now_ms));
                    }
                }
                offset = new_offset;
                if !bytes.is_empty() && tx.send(Ok(bytes)).await.is_err() {
                    return; // the client went away
                }
            }
            if last || tx.is_closed() {
                return;
            }
            if more {
                continue;
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

/// `GET /v1/events`: every VM event from now on, one JSON object per line,
/// until the client goes away. A client too slow to keep up is told how
/// many it missed (an event with action `lagged`) rather than slowing the
/// daemon.
pub async fn events(
    State(m): State<Arc<Manager>>,
    Query(q): Query<skiff_api::EventsQuery>,
) -> Response {
    let mut rx = m.store.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        loop {
            // A client that filters may hear nothing for a long time: its
            // going away is watched for, not only noticed at a send.
            let received = tokio::select! {
                r = rx.recv() => r,
                _ = tx.closed() => return,
            };
            let event = match received {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => skiff_api::VmEvent {
                    time: crate::store::now(),
                    vm: String::new(),
                    action: "lagged".into(),
                    state: None,
                    note: format!("{n} events were missed"),
                },
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let wanted =
                q.vm.as_ref()
                    .is_none_or(|v| *v == event.vm || event.action == "lagged")
                    && q.action.as_ref().is_none_or(|a| *a == event.action);
            if !wanted {
                continue;
            }
            let Ok(mut line) = serde_json::to_vec(&event) else {
                continue;
            };
            line.push(b'\n');
            if tx.send(Ok(line)).await.is_err() {
                return; // the client went away
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(tokio_stream_from(out)))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Where the last `lines` lines of `path` begin (0: the file has no more).
/// Read backwards 64 KiB at a time: a long log is not read whole.
fn tail_offset(path: &std::path::Path, lines: u64) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return 0;
    };
    if lines == 0 {
        return len;
    }
    // A last line without its newline counts as a line too.
    let mut newlines_wanted = lines;
    let mut end = len;
    let mut last_byte_seen = false;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        if f.seek(SeekFrom::Start(start)).is_err() || f.read_exact(chunk).is_err() {
            return 0;
        }
        for (i, b) in chunk.iter().enumerate().rev() {
            if !last_byte_seen {
                last_byte_seen = true;
                if *b == b'\n' {
                    continue; // the file's own final newline ends the last line
                }
            }
            if *b == b'\n' {
                newlines_wanted -= 1;
                if newlines_wanted == 0 {
                    return start + i as u64 + 1;
                }
            }
        }
        end = start;
    }
    0
}

/// The most of a log read at once.
const READ_MAX: u64 = 1024 * 1024;

/// Bytes of `path` from `offset` (at most [`READ_MAX`] at a time), and the
/// new offset. A file that shrank (the log was trimmed) is read from the
/// start.
fn read_from(path: &std::path::Path, mut offset: u64) -> Option<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len < offset {
        offset = 0;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    f.take(READ_MAX).read_to_end(&mut buf).ok()?;
    let next = offset + buf.len() as u64;
    Some((buf, next))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
    let setting = m.command_setting(
        &name,
        crate::image::CommandSetting {
            env: body.env,
            workdir: body.workdir,
            user: body.user,
        },
    );
    let exec = ExecRequest {
        env: setting.env,
        argv: body.argv,
        workdir: setting.workdir,
        stdin: body.stdin,
        service: false,
        tty: body.tty.map(|t| skiff_proto::WindowSize {
            rows: t.rows,
            cols: t.cols,
        }),
        user: setting.user,
        report_pid: false,
    };
    conn.writer
        .send(&Message::Exec(exec))
        .await
        .map_err(|source| {
            ApiError::from(ManagerError::Agent {
                name: name.clone(),
                source,
            })
        })?;
    m.metrics.exec_started(&name);
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        proxy(on_upgrade, conn, Direction::EXEC).await;
        m.metrics.exec_finished("exec", started.elapsed());
    });
    Ok(switching_protocols())
}

/// Which frames may pass between a client and a guest agent, per endpoint.
#[derive(Clone, Copy)]
pub struct Direction {
    /// client -> guest
    up: fn(&Message) -> bool,
    /// guest -> client; the ones for which `last` holds end the stream.
    down: fn(&Message) -> bool,
    last: fn(&Message) -> bool,
}

impl Direction {
    pub const EXEC: Direction = Direction {
        up: |m| {
            matches!(
                m,
                Message::Stdin(_) | Message::Signal(_) | Message::Resize(_)
            )
        },
        down: |m| {
            matches!(
                m,
                Message::Stdout(_) | Message::Stderr(_) | Message::Exited(_) | Message::Error(_)
            )
        },
        last: |m| matches!(m, Message::Exited(_) | Message::Error(_)),
    };
    pub const COPY_IN: Direction = Direction {
        up: |m| matches!(m, Message::Entry(_) | Message::Data(_) | Message::End),
        down: |m| matches!(m, Message::Exited(_) | Message::Error(_)),
        last: |m| matches!(m, Message::Exited(_) | Message::Error(_)),
    };
    pub const COPY_OUT: Direction = Direction {
        up: |_| false,
        down: |m| {
            matches!(
                m,
                Message::Entry(_) | Message::Data(_) | Message::End | Message::Error(_)
            )
        },
        last: |m| matches!(m, Message::End | Message::Error(_)),
    };
}

/// Forward frames between an upgraded client connection and an agent
/// connection until the stream's last frame, either side closing, or a
/// frame that is not allowed (which the guest, being untrusted, may send:
/// the client then gets an error instead).
pub async fn proxy(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut conn: skiff_vmm::AgentConn,
    dir: Direction,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let (client_r, mut client_w) = tokio::io::split(TokioIo::new(upgraded));
    let mut client = FrameReader::new(client_r);
    loop {
        tokio::select! {
            from_guest = conn.reader.recv() => {
                let msg = match from_guest {
                    Ok(Some(m)) if (dir.down)(&m) => m,
                    Ok(Some(other)) => Message::Error(format!("the guest agent sent an unexpected {} message", other.name())),
                    Ok(None) => Message::Error("the guest closed the control channel before the operation finished".into()),
                    Err(e) => Message::Error(format!("lost the guest's control channel: {e}")),
                };
                let last = (dir.last)(&msg) || !(dir.down)(&msg) || matches!(msg, Message::Error(_));
                if frames::send(&mut client_w, &msg).await.is_err() || last {
                    return;
                }
            }
            from_client = client.recv() => match from_client {
                Ok(Some(m)) if (dir.up)(&m) => {
                    if conn.writer.send(&m).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                // The client went away: closing the agent connection stops
                // whatever it started (the agent kills a running command).
                Ok(None) | Err(_) => return,
            },
        }
    }
}

async fn copy(
    m: Arc<Manager>,
    name: String,
    req: Request,
    into_guest: bool,
) -> Result<Response, ApiError> {
    let what = if into_guest { "copy-in" } else { "copy-out" };
    let (on_upgrade, body): (_, CopyBody) = upgrade_request(req, what).await?;
    if !body.path.starts_with('/') {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not an absolute guest path", body.path),
        ));
    }
    let mut conn = m.connect(&name).await?;
    let (msg, dir) = if into_guest {
        (Message::CopyIn(body.path), Direction::COPY_IN)
    } else {
        (Message::CopyOut(body.path), Direction::COPY_OUT)
    };
    conn.writer.send(&msg).await.map_err(|source| {
        ApiError::from(ManagerError::Agent {
            name: name.clone(),
            source,
        })
    })?;
    tokio::spawn(proxy(on_upgrade, conn, dir));
    Ok(switching_protocols())
}

pub async fn copy_in(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    copy(m, name, req, true).await
}

pub async fn copy_out(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    copy(m, name, req, false).await
}

#[cfg(test)]
mod tail_tests {
    use super::tail_offset;

    #[test]
    fn the_tail_starts_that_many_lines_before_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("log");
        let text: String = (1..=100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).expect("write");
        let from = |n| text[tail_offset(&p, n) as usize..].to_owned();
        assert_eq!(from(1), "line 100000\n");
        assert_eq!(from(3), "line 99998\nline 99999\nline 100000\n");
        assert_eq!(from(0), "");
        assert_eq!(from(200_000), text, "more lines than there are: all");
        // Across the 64 KiB reads.
        assert_eq!(from(20_000).lines().count(), 20_000);
        std::fs::write(&p, "a\nb").expect("write");
        assert_eq!(tail_offset(&p, 1), 2, "an unfinished last line is a line");
        assert_eq!(tail_offset(&dir.path().join("none"), 5), 0);
    }
}
