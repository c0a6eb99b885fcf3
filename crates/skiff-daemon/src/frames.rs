//! skiff-proto frames over any async byte stream (the daemon's upgraded
//! exec connections, on both ends). Bounded by the protocol's frame limit.

use skiff_proto::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Decode(#[from] skiff_proto::DecodeError),
    #[error(transparent)]
    Encode(#[from] skiff_proto::FrameError),
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    #[error("the connection closed in the middle of a frame")]
    Truncated,
}

pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next message; `None` at a clean end of stream. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            if let Some((msg, used)) = skiff_proto::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(msg));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Truncated);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    skiff_proto::encode(msg, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}
