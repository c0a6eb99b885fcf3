//! The host end of a connection to the guest agent.
//!
//! Everything read here comes from an untrusted guest: frames are bounded by
//! the protocol, reads have deadlines where the host waits on the guest, and
//! a malformed frame is an error, never a panic.

use skiff_proto::{Hello, Message, PROTOCOL_VERSION};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent closed the control channel{context}")]
    Closed { context: &'static str },
    #[error("the guest agent sent an invalid frame")]
    Protocol(#[from] skiff_proto::DecodeError),
    #[error("cannot encode a message for the agent")]
    Encode(#[source] skiff_proto::FrameError),
    #[error("I/O error on the agent connection")]
    Io(#[from] std::io::Error),
    #[error("the guest agent speaks protocol version {agent} (agent {agent_version}) but this skiff speaks version {host}; rebuild the guest image with this skiff's agent")]
    VersionMismatch {
        agent: u32,
        agent_version: String,
        host: u32,
    },
    #[error("expected a hello from the agent, got a {0} message")]
    NoHello(&'static str),
    #[error("no answer from the agent within {0:?}")]
    Timeout(Duration),
    #[error("the vsock backend refused the connection to guest port {port}: {reply:?}")]
    ConnectRefused { port: u32, reply: String },
}

/// A framed connection to the agent, split so that reading and writing can
/// happen in different tasks.
pub struct AgentConn {
    pub reader: AgentReader,
    pub writer: AgentWriter,
    /// What the agent said when the connection opened.
    pub hello: Hello,
    /// Whatever must live exactly as long as the connection (the daemon's
    /// mark that the VM is in use).
    lease: Option<Box<dyn std::any::Any + Send + Sync>>,
}

pub struct AgentReader {
    stream: OwnedReadHalf,
    buf: Vec<u8>,
}

pub struct AgentWriter {
    stream: OwnedWriteHalf,
}

/// What must live as long as a connection whose halves went separate
/// ways ([`AgentConn::into_parts`]).
pub struct ConnLease(#[allow(dead_code)] Option<Box<dyn std::any::Any + Send + Sync>>);

impl AgentConn {
    /// The reader and the writer, for two tasks, and the lease, to keep as
    /// long as either is in use.
    pub fn into_parts(self) -> (AgentReader, AgentWriter, ConnLease) {
        (self.reader, self.writer, ConnLease(self.lease))
    }

    /// Keep `lease` until this connection is dropped.
    pub fn holding(mut self, lease: impl std::any::Any + Send + Sync) -> AgentConn {
        self.lease = Some(Box::new(lease));
        self
    }

    /// Take a fresh stream to the agent and check its hello.
    pub async fn handshake(stream: UnixStream, timeout: Duration) -> Result<AgentConn, AgentError> {
        let (r, w) = stream.into_split();
        let mut reader = AgentReader {
            stream: r,
            buf: Vec::new(),
        };
        let first = tokio::time::timeout(timeout, reader.recv())
            .await
            .map_err(|_| AgentError::Timeout(timeout))??;
        let hello = match first {
            Some(Message::Hello(h)) => h,
            Some(other) => return Err(AgentError::NoHello(other.name())),
            None => {
                return Err(AgentError::Closed {
                    context: " before saying hello",
                })
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(AgentError::VersionMismatch {
                agent: hello.protocol,
                agent_version: hello.agent_version,
                host: PROTOCOL_VERSION,
            });
        }
        Ok(AgentConn {
            reader,
            writer: AgentWriter { stream: w },
            hello,
            lease: None,
        })
    }

    /// Open a host-initiated connection through the vsock backend's Unix
    /// socket (`CONNECT <port>` / `OK <port>`), then handshake.
    pub async fn connect(
        vsock_socket: &Path,
        port: u32,
        timeout: Duration,
    ) -> Result<AgentConn, AgentError> {
        let fut = async {
            let mut stream = UnixStream::connect(vsock_socket).await?;
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await?;
            // Read the reply a byte at a time so no agent bytes are consumed.
            let mut reply = Vec::new();
            loop {
                let b = stream.read_u8().await?;
                if b == b'\n' {
                    break;
                }
                reply.push(b);
                if reply.len() > 64 {
                    break;
                }
            }
            let reply = String::from_utf8_lossy(&reply).into_owned();
            if !reply.starts_with("OK ") {
                return Err(AgentError::ConnectRefused { port, reply });
            }
            Ok(stream)
        };
        let stream = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| AgentError::Timeout(timeout))??;
        AgentConn::handshake(stream, timeout).await
    }
}

impl AgentReader {
    /// The next message, or `None` if the agent closed the connection
    /// between frames.
    ///
    /// Cancel-safe: bytes are only appended to the frame buffer after a read
    /// completed, so dropping this future (in a `select!`) loses nothing.
    pub async fn recv(&mut self) -> Result<Option<Message>, AgentError> {
        loop {
            // decode() checks the length prefix before anything else, so the
            // buffer never holds more than one maximal frame plus one chunk.
            if let Some((msg, used)) = skiff_proto::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(bounded_text(msg)));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(AgentError::Closed {
                        context: " in the middle of a frame",
                    })
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The guest's words, made safe to store and print (see
/// [`skiff_proto::guest::guest_text`]) before anything on the host sees them.
fn bounded_text(msg: Message) -> Message {
    use skiff_proto::guest::{guest_text, MAX_ERROR_CHARS, MAX_PROBLEMS, MAX_PROBLEM_CHARS};
    match msg {
        Message::Error(e) => Message::Error(guest_text(&e, MAX_ERROR_CHARS)),
        Message::Hello(mut h) => {
            let more = h.problems.len().saturating_sub(MAX_PROBLEMS);
            h.problems.truncate(MAX_PROBLEMS);
            for p in &mut h.problems {
                *p = guest_text(p, MAX_PROBLEM_CHARS);
            }
            if more > 0 {
                h.problems.push(format!("and {more} more problems"));
            }
            h.agent_version = guest_text(&h.agent_version, 64);
            Message::Hello(h)
        }
        other => other,
    }
}

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

impl AgentWriter {
    pub async fn send(&mut self, msg: &Message) -> Result<(), AgentError> {
        let mut buf = Vec::new();
        skiff_proto::encode(msg, &mut buf).map_err(AgentError::Encode)?;
        self.stream.write_all(&buf).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::{BootTimes, ExitStatus};
    use tokio::io::AsyncWriteExt;

    fn hello(protocol: u32) -> Message {
        Message::Hello(Hello {
            protocol,
            agent_version: "9.9.9".into(),
            boot: BootTimes::default(),
            problems: Vec::new(),
        })
    }

    fn frame(msg: &Message) -> Vec<u8> {
        let mut b = Vec::new();
        skiff_proto::encode(msg, &mut b).expect("encode");
        b
    }

    const T: Duration = Duration::from_secs(2);

    async fn handshake_err(host: UnixStream, timeout: Duration) -> AgentError {
        match AgentConn::handshake(host, timeout).await {
            Err(e) => e,
            Ok(_) => panic!("the handshake should have failed"),
        }
    }

    #[tokio::test]
    async fn a_matching_hello_completes_the_handshake_and_frames_flow() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        guest
            .write_all(&frame(&hello(PROTOCOL_VERSION)))
            .await
            .expect("write");
        guest
            .write_all(&frame(&Message::Stdout(b"hi".to_vec())))
            .await
            .expect("write");
        guest
            .write_all(&frame(&Message::Exited(ExitStatus::Code(4))))
            .await
            .expect("write");
        drop(guest);
        let mut conn = AgentConn::handshake(host, T).await.expect("handshake");
        assert_eq!(conn.hello.agent_version, "9.9.9");
        assert_eq!(
            conn.reader.recv().await.expect("recv"),
            Some(Message::Stdout(b"hi".to_vec()))
        );
        assert_eq!(
            conn.reader.recv().await.expect("recv"),
            Some(Message::Exited(ExitStatus::Code(4)))
        );
        assert_eq!(conn.reader.recv().await.expect("recv"), None);
    }

    #[tokio::test]
    async fn what_a_guest_says_is_bounded_and_loses_its_escapes() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let problems: Vec<String> = (0..40).map(|i| format!("p{i}\x1b[2J")).collect();
        let greeting = Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "v\n".repeat(100),
            boot: BootTimes::default(),
            problems,
        });
        guest.write_all(&frame(&greeting)).await.expect("write");
        let long = format!("\x1b]0;title\x07{}", "x".repeat(100_000));
        guest
            .write_all(&frame(&Message::Error(long)))
            .await
            .expect("write");
        let mut conn = AgentConn::handshake(host, T).await.expect("handshake");
        let p = &conn.hello.problems;
        assert_eq!(p.len(), 17, "16 problems and a count of the rest");
        assert_eq!(p[0], "p0\u{FFFD}[2J");
        assert_eq!(p[16], "and 24 more problems");
        assert!(!conn.hello.agent_version.contains('\n'));
        assert!(conn.hello.agent_version.chars().count() <= 65);
        let Some(Message::Error(e)) = conn.reader.recv().await.expect("recv") else {
            panic!("an error message");
        };
        assert!(e.starts_with("\u{FFFD}]0;title\u{FFFD}xxx"), "{e:.40}");
        assert!(
            e.chars().count() <= 2049,
            "{} characters",
            e.chars().count()
        );
    }

    #[tokio::test]
    async fn a_mismatched_protocol_version_is_refused_with_both_versions() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        guest
            .write_all(&frame(&hello(PROTOCOL_VERSION + 1)))
            .await
            .expect("write");
        let err = handshake_err(host, T).await;
        let text = err.to_string();
        assert!(
            text.contains(&format!("version {}", PROTOCOL_VERSION + 1)) && text.contains("9.9.9"),
            "{text}"
        );
        assert!(text.contains("rebuild"), "{text}");
    }

    #[tokio::test]
    async fn a_guest_that_says_nothing_times_out() {
        let (host, _guest) = UnixStream::pair().expect("pair");
        let err = handshake_err(host, Duration::from_millis(100)).await;
        assert!(matches!(err, AgentError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn a_first_message_other_than_hello_is_refused() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        guest
            .write_all(&frame(&Message::Stdout(vec![1])))
            .await
            .expect("write");
        let err = handshake_err(host, T).await;
        assert!(matches!(err, AgentError::NoHello("stdout")), "{err}");
    }

    #[tokio::test]
    async fn garbage_oversized_and_truncated_frames_are_errors_not_panics() {
        // An oversized length prefix is rejected without reading the body.
        let (host, mut guest) = UnixStream::pair().expect("pair");
        guest
            .write_all(&[0xff, 0xff, 0xff, 0xff, 1])
            .await
            .expect("write");
        let err = handshake_err(host, T).await;
        assert!(
            matches!(
                err,
                AgentError::Protocol(skiff_proto::DecodeError::TooLarge { .. })
            ),
            "{err}"
        );

        // A frame cut short by a closed connection.
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let mut bytes = frame(&hello(PROTOCOL_VERSION));
        bytes.extend_from_slice(&frame(&Message::Stdout(vec![7; 100]))[..50]);
        guest.write_all(&bytes).await.expect("write");
        drop(guest);
        let mut conn = AgentConn::handshake(host, T).await.expect("handshake");
        let err = conn.reader.recv().await.expect_err("must fail");
        assert!(matches!(err, AgentError::Closed { .. }), "{err}");

        // An unknown tag after a good hello.
        let (host, mut guest) = UnixStream::pair().expect("pair");
        guest
            .write_all(&frame(&hello(PROTOCOL_VERSION)))
            .await
            .expect("write");
        guest.write_all(&[0, 0, 0, 1, 250]).await.expect("write");
        let mut conn = AgentConn::handshake(host, T).await.expect("handshake");
        let err = conn.reader.recv().await.expect_err("must fail");
        assert!(
            matches!(
                err,
                AgentError::Protocol(skiff_proto::DecodeError::UnknownTag(250))
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn frames_split_across_many_small_writes_reassemble() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let mut bytes = frame(&hello(PROTOCOL_VERSION));
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        for chunk in payload.chunks(skiff_proto::MAX_CHUNK) {
            bytes.extend_from_slice(&frame(&Message::Stdout(chunk.to_vec())));
        }
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(7) {
                guest.write_all(piece).await.expect("write");
            }
        });
        let mut conn = AgentConn::handshake(host, T).await.expect("handshake");
        let mut got = Vec::new();
        while let Some(Message::Stdout(b)) = conn.reader.recv().await.expect("recv") {
            got.extend_from_slice(&b);
        }
        writer.await.expect("writer");
        assert_eq!(got, payload);
    }
}
