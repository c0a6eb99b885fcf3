//! The host <-> guest agent protocol.
//!
//! Every message travels in one frame:
//!
//! ```text
//! +----------------+--------+-------------------------+
//! | length: u32 BE | tag u8 | body (length - 1 bytes) |
//! +----------------+--------+-------------------------+
//! ```
//!
//! `length` counts the tag and the body and may not exceed [`MAX_FRAME_LEN`]; a
//! peer announcing more is rejected before anything is allocated. Output and
//! input streams (stdin/stdout/stderr) carry raw bytes as the body; structured
//! messages carry JSON. Both sides speak [`PROTOCOL_VERSION`]; the agent opens
//! every connection with [`Message::Hello`] and the host refuses a mismatch.
//!
//! The host treats the guest as untrusted: [`decode`] never panics, never
//! allocates more than one bounded frame, and reports every malformed input
//! as a [`DecodeError`].

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub mod copy;
mod extract;
pub mod fs;
pub mod guest;
mod message;
pub mod mux;
pub use message::{
    BootTimes, ExecRequest, ExitStatus, Hello, Message, Renewal, RenewedNet, WindowSize,
};

/// Version of this protocol. Bump it on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame (tag plus body) either side may send, in bytes.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Largest chunk of stream data (stdin/stdout/stderr) put in one frame.
/// Smaller than [`MAX_FRAME_LEN`] so that a frame always has room for its tag.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Size of the frame header: the length prefix.
pub const HEADER_LEN: usize = 4;

/// The vsock port the agent listens on for host-initiated connections.
pub const AGENT_PORT: u32 = 1024;

/// The vsock port on the host (CID 2) the agent connects to when it is ready.
pub const READY_PORT: u32 = 1025;

/// Why a byte sequence is not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame announces {len} bytes, more than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (no message tag)")]
    Empty,
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("malformed {what} message: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// Errors reading or writing frames on a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("invalid frame")]
    Decode(#[from] DecodeError),
    #[error("message too large to send ({len} bytes, limit {max})")]
    EncodeTooLarge { len: usize, max: usize },
    #[error("I/O error on the control channel")]
    Io(#[from] io::Error),
}

/// Serialize one message into a frame appended to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.push(msg.tag());
    msg.encode_body(out);
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::EncodeTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::EncodeTooLarge {
        len,
        max: MAX_FRAME_LEN,
    })?;
    out[start..start + HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Try to decode one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and try
/// again), or the message and the number of bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = frame_len(header)?;
    let total = HEADER_LEN + len;
    let Some(frame) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let msg = decode_frame(frame)?;
    Ok(Some((msg, total)))
}

/// Validate a length prefix and return the frame length it announces.
fn frame_len(header: &[u8]) -> Result<usize, DecodeError> {
    let mut bytes = [0u8; HEADER_LEN];
    bytes.copy_from_slice(header);
    let len = u32::from_be_bytes(bytes) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    Ok(len)
}

/// Decode a complete frame (tag plus body, without the length prefix).
fn decode_frame(frame: &[u8]) -> Result<Message, DecodeError> {
    let (&tag, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    Message::decode_body(tag, body)
}

/// Write one message to a blocking stream.
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    encode(msg, &mut buf)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Read one message from a blocking stream. `Ok(None)` means the peer closed
/// the stream cleanly between frames.
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        n if n < HEADER_LEN => return Err(FrameError::Truncated),
        _ => {}
    }
    let len = frame_len(&header)?;
    let mut frame = vec![0u8; len];
    if read_full(r, &mut frame)? < len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(decode_frame(&frame)?))
}

/// Read until `buf` is full or the stream ends; returns how much was read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A JSON body helper shared by the structured messages.
fn json_body<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    body: &[u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Malformed {
        what,
        reason: e.to_string(),
    })
}

fn push_json<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serializing these plain structs to a Vec cannot fail: they hold only
    // strings, numbers and vectors, and the writer is infallible.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests;
