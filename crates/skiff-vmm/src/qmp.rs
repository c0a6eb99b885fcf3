//! The one QMP command skiff sends: `system_powerdown`, the ACPI power
//! button, which asks a guest without skiff's agent to shut down through
//! its own init (systemd-logind or acpid act on it).

use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
    tokio::time::timeout(timeout, powerdown(socket))
        .await
        .map_err(|_| QmpError::Timeout(timeout))?
}

async fn powerdown(socket: &Path) -> Result<(), QmpError> {
    let io = |source| QmpError::Io {
        path: socket.display().to_string(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(tokio::io::AsyncReadExt::take(read, 1 << 20));
    let greeting = read_line(&mut lines).await.map_err(io)?;
    if greeting.is_empty() {
        return Err(QmpError::Closed);
    }
    if !greeting.contains("\"QMP\"") {
        return Err(QmpError::NotQmp(socket.display().to_string()));
    }
    for command in ["qmp_capabilities", "system_powerdown"] {
        let request = format!("{{\"execute\":\"{command}\"}}\n");
        write.write_all(request.as_bytes()).await.map_err(io)?;
        // Events (POWERDOWN) may come before the answer.
        loop {
            let line = read_line(&mut lines).await.map_err(io)?;
            if line.contains("\"return\"") {
                break;
            }
            if line.is_empty() {
                return Err(QmpError::Closed);
            }
            if line.contains("\"error\"") {
                return Err(QmpError::Refused {
                    command,
                    answer: line.chars().take(200).collect(),
                });
            }
        }
    }
    Ok(())
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
