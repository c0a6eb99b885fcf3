//! File operations in a VM, done by its agent (`Message::Fs`, see
//! `skiff_proto::fs`): what skiff's file API and E2B's share.

use crate::manager::{Manager, ManagerError};
use bytes::Bytes;
use skiff_proto::fs::{FileInfo, FsCall, FsError, FsErrorKind, FsOp};
use skiff_proto::{Message, MAX_CHUNK};
use skiff_vmm::AgentConn;
use std::sync::Arc;
use std::time::Duration;

/// How long one answer of the agent may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to VM `vm`'s agent with `op` sent, as `user`.
pub async fn call(
    m: &Arc<Manager>,
    vm: &str,
    user: Option<String>,
    op: FsOp,
) -> Result<AgentConn, ManagerError> {
    let mut conn = m.connect(vm).await?;
    conn.writer
        .send(&Message::Fs(FsCall { user, op }))
        .await
        .map_err(|source| ManagerError::Agent {
            name: vm.to_owned(),
            source,
        })?;
    Ok(conn)
}

fn lost(why: impl std::fmt::Display) -> FsError {
    FsError::new(FsErrorKind::Other, format!("the VM's agent: {why}"))
}

/// The agent's next answer (`Info`, `Data`, `End`, `FsEvent`); its
/// failure, or the connection's, as an error.
pub async fn answer(conn: &mut AgentConn) -> Result<Message, FsError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, conn.reader.recv()).await {
        Err(_) => Err(lost("no answer within 60 s")),
        Ok(Err(e)) => Err(lost(e)),
        Ok(Ok(None)) => Err(lost("it closed the connection")),
        Ok(Ok(Some(Message::FsFailed(e)))) => Err(e),
        Ok(Ok(Some(Message::Error(e)))) => Err(lost(e)),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// An answer that must be `Info`.
pub async fn info(conn: &mut AgentConn) -> Result<FileInfo, FsError> {
    match answer(conn).await? {
        Message::Info(i) => Ok(i),
        other => Err(lost(format!("it answered {}", other.name()))),
    }
}

/// An answer that must be `Usage`.
pub async fn usage(conn: &mut AgentConn) -> Result<skiff_proto::fs::GuestUsage, FsError> {
    match answer(conn).await? {
        Message::Usage(u) => Ok(u),
        other => Err(lost(format!("it answered {}", other.name()))),
    }
}

/// An answer that must be `End`.
pub async fn end(conn: &mut AgentConn) -> Result<(), FsError> {
    match answer(conn).await? {
        Message::End => Ok(()),
        other => Err(lost(format!("it answered {}", other.name()))),
    }
}

/// The most text one listing may hold (its names, paths, owners), however
/// long the names a guest makes up.
const MAX_LIST_BYTES: usize = 64 << 20;

/// The text an entry holds.
fn entry_bytes(i: &FileInfo) -> usize {
    i.name.len()
        + i.path.len()
        + i.owner.len()
        + i.group.len()
        + i.target.as_ref().map_or(0, String::len)
}

/// A `list`'s entries, at most `max` (and [`MAX_LIST_BYTES`] of text).
pub async fn entries(conn: &mut AgentConn, max: usize) -> Result<Vec<FileInfo>, FsError> {
    let mut all = Vec::new();
    let mut bytes = 0usize;
    loop {
        match answer(conn).await? {
            Message::Info(i) if all.len() >= max || bytes + entry_bytes(&i) > MAX_LIST_BYTES => {
                return Err(FsError::new(
                    FsErrorKind::Invalid,
                    format!(
                        "more than {max} entries or {} MiB of names; list less deep",
                        MAX_LIST_BYTES >> 20
                    ),
                ))
            }
            Message::Info(i) => {
                bytes += entry_bytes(&i);
                all.push(i);
            }
            Message::End => return Ok(all),
            other => return Err(lost(format!("it answered {}", other.name()))),
        }
    }
}

/// Send a `write`'s bytes as they come, then its end; the file's info.
pub async fn write_stream<S, E>(conn: &mut AgentConn, mut chunks: S) -> Result<FileInfo, FsError>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use futures_util::StreamExt;
    while let Some(chunk) = chunks.next().await {
        // A client gone midway: the connection closes with this function's
        // caller, and the agent drops the half-written file.
        let chunk = chunk.map_err(|e| {
            FsError::new(FsErrorKind::Invalid, format!("the upload broke off: {e}"))
        })?;
        for part in chunk.chunks(MAX_CHUNK) {
            conn.writer
                .send(&Message::Data(part.to_vec()))
                .await
                .map_err(lost)?;
        }
    }
    conn.writer.send(&Message::End).await.map_err(lost)?;
    info(conn).await
}

/// A `read`'s bytes as a stream, after its `Info`; a failure midway ends
/// the stream with an error (the client sees a short read, never a wrong
/// file).
pub fn read_stream(
    conn: AgentConn,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(conn), |conn| async move {
        let mut conn = conn?;
        match conn.reader.recv().await {
            Ok(Some(Message::Data(b))) => Some((Ok(Bytes::from(b)), Some(conn))),
            Ok(Some(Message::End)) => None,
            Ok(Some(Message::FsFailed(e))) => Some((Err(std::io::Error::other(e.message)), None)),
            Ok(Some(other)) => Some((
                Err(std::io::Error::other(format!(
                    "unexpected {}",
                    other.name()
                ))),
                None,
            )),
            Ok(None) => Some((Err(std::io::Error::other("the VM's agent went away")), None)),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    })
}
