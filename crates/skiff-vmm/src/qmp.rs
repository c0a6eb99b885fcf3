//! QEMU's monitor (QMP): the ACPI power button (`system_powerdown`), which
//! asks a guest without skiff's agent to shut down through its own init,
//! and the commands that save and restore a pausable VM.

use serde_json::{json, Value};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot talk to QEMU's monitor at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU's monitor did not answer within {0:?}")]
    Timeout(Duration),
    #[error("QEMU's monitor closed the connection (QEMU is exiting?)")]
    Closed,
    #[error("{0} is not QEMU's monitor (its greeting is missing)")]
    NotQmp(String),
    #[error("QEMU's monitor refused {command}: {answer}")]
    Refused {
        command: &'static str,
        answer: String,
    },
}

/// Longest QMP line read; QEMU's own are far shorter.
const LINE_MAX: u64 = 64 * 1024;

/// Press the guest's power button.
pub async fn system_powerdown(socket: &Path, timeout: Duration) -> Result<(), QmpError> {
    tokio::time::timeout(timeout, async {
        Qmp::connect(socket)
            .await?
            .execute("system_powerdown", None)
            .await
            .map(|_| ())
    })
    .await
    .map_err(|_| QmpError::Timeout(timeout))?
}

/// A negotiated QMP connection.
pub struct Qmp {
    path: String,
    lines: BufReader<tokio::io::Take<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Qmp {
    /// Connect, read the greeting and leave negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Qmp, QmpError> {
        let path = socket.display().to_string();
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| QmpError::Io {
                path: path.clone(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut qmp = Qmp {
            path,
            lines: BufReader::new(tokio::io::AsyncReadExt::take(read, u64::MAX)),
            write,
        };
        let greeting = qmp.line().await?;
        if greeting.is_empty() {
            return Err(QmpError::Closed);
        }
        if !greeting.contains("\"QMP\"") {
            return Err(QmpError::NotQmp(qmp.path.clone()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    fn io(&self, source: std::io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }

    async fn line(&mut self) -> Result<String, QmpError> {
        self.lines.get_mut().set_limit(LINE_MAX);
        read_line(&mut self.lines).await.map_err(|e| self.io(e))
    }

    /// Run a command and return what it returned; events that come first
    /// are skipped.
    pub async fn execute(
        &mut self,
        command: &'static str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = match arguments {
            Some(a) => json!({ "execute": command, "arguments": a }),
            None => json!({ "execute": command }),
        }
        .to_string();
        request.push('\n');
        let written = self.write.write_all(request.as_bytes()).await;
        written.map_err(|e| self.io(e))?;
        self.answer(command).await
    }

    async fn answer(&mut self, command: &'static str) -> Result<Value, QmpError> {
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Err(QmpError::Closed);
            }
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(r) = value.get("return") {
                return Ok(r.clone());
            }
            if value.get("error").is_some() {
                return Err(QmpError::Refused {
                    command,
                    answer: line.chars().take(200).collect(),
                });
            }
        }
    }

    /// Hand QEMU a descriptor under `name` (`getfd`), for `fd:NAME` URIs.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let request = format!(
            "{}\n",
            json!({ "execute": "getfd", "arguments": { "fdname": name } })
        );
        let socket = self.write.as_ref().as_raw_fd();
        let fds = [fd.as_raw_fd()];
        self.write
            .as_ref()
            .writable()
            .await
            .map_err(|e| self.io(e))?;
        let sent = sendmsg::<UnixAddr>(
            socket,
            &[std::io::IoSlice::new(request.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        match sent {
            Ok(n) if n == request.len() => {}
            Ok(_) => return Err(self.io(std::io::Error::other("getfd was cut short"))),
            Err(e) => return Err(self.io(e.into())),
        }
        self.answer("getfd").await.map(|_| ())
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(r, LINE_MAX);
    limited.read_until(b'\n', &mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monitor that speaks QMP's greeting, sends an event before its
    /// answer (as QEMU does for POWERDOWN), and records the commands.
    #[tokio::test]
    async fn powerdown_negotiates_and_waits_for_the_answer_past_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n")
                .await
                .expect("greet");
            let mut seen = Vec::new();
            while let Ok(Some(l)) = lines.next_line().await {
                seen.push(l.clone());
                if l.contains("system_powerdown") {
                    w.write_all(b"{\"event\": \"POWERDOWN\"}\n{\"return\": {}}\n")
                        .await
                        .expect("w");
                } else {
                    w.write_all(b"{\"return\": {}}\n").await.expect("w");
                }
            }
            seen
        });
        system_powerdown(&path, Duration::from_secs(5))
            .await
            .expect("powerdown");
        let seen = server.await.expect("server");
        assert_eq!(
            seen,
            [
                "{\"execute\":\"qmp_capabilities\"}",
                "{\"execute\":\"system_powerdown\"}"
            ]
        );
    }

    #[tokio::test]
    async fn a_refusal_and_a_silent_monitor_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(b"{\"QMP\": {}}\n{\"error\": {\"class\": \"GenericError\"}}\n")
                .await
                .expect("w");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = system_powerdown(&path, Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("refused qmp_capabilities"),
            "{err}"
        );
        // A monitor that greets and then says nothing: bounded by the timeout.
        let silent = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&silent).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(b"{\"QMP\": {}}\n").await.expect("w");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert!(matches!(
            system_powerdown(&silent, Duration::from_millis(300)).await,
            Err(QmpError::Timeout(_))
        ));
        let nobody = dir.path().join("none.sock");
        assert!(matches!(
            system_powerdown(&nobody, Duration::from_secs(1)).await,
            Err(QmpError::Io { .. })
        ));
    }
}
