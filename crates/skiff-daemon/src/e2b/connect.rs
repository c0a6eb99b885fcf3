//! The Connect protocol as envd's clients speak it (JSON codec only): the
//! envelopes of a stream (a flag byte, a big-endian u32 length, a JSON
//! message; flag 2 ends the stream with a JSON trailer) and the error
//! codes with their HTTP statuses for unary calls.

use axum::http::StatusCode;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

/// Flag of the envelope that ends a stream.
const END_STREAM: u8 = 0x02;
/// Flag of a compressed message (never negotiated here).
const COMPRESSED: u8 = 0x01;
/// The largest message a client may send in one envelope.
pub const MAX_MESSAGE: usize = 16 << 20;
/// The content type of a streaming call, compared literally by clients.
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// A Connect error code (its name on the wire is snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The status of a unary call that failed with this code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A failed call: its code and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "code": self.code.name(), "message": self.message })
    }
}

/// One data envelope holding `message`.
pub fn envelope(message: &Value) -> Bytes {
    frame(0, message)
}

/// The envelope that ends a stream: `{}`, or the error it failed with.
pub fn end_stream(error: Option<&RpcError>) -> Bytes {
    let trailer = match error {
        None => json!({}),
        Some(e) => json!({ "error": e.to_json() }),
    };
    frame(END_STREAM, &trailer)
}

fn frame(flags: u8, message: &Value) -> Bytes {
    let body = message.to_string();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(flags);
    // A JSON text of more than 4 GiB is never built here.
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(body.as_bytes());
    out.freeze()
}

/// What a client's stream carried, envelope by envelope.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Message(Value),
    End,
}

/// Splits a client's request body into envelopes as its bytes arrive.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// The envelopes completed by `bytes`; an error for one that is
    /// compressed, too large or not JSON.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Incoming>, RpcError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while self.buf.len() >= 5 {
            let flags = self.buf[0];
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            let len = len as usize;
            if len > MAX_MESSAGE {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("a message of {len} bytes is over the limit of {MAX_MESSAGE}"),
                ));
            }
            if flags & COMPRESSED != 0 {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    "compressed messages are not accepted; send them uncompressed",
                ));
            }
            if self.buf.len() < 5 + len {
                break;
            }
            self.buf.advance(5);
            let body = self.buf.split_to(len);
            if flags & END_STREAM != 0 {
                out.push(Incoming::End);
                continue;
            }
            let value = serde_json::from_slice(&body).map_err(|e| {
                RpcError::new(Code::InvalidArgument, format!("a message is not JSON: {e}"))
            })?;
            out.push(Incoming::Message(value));
        }
        Ok(out)
    }

    /// Bytes of an envelope not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The first message of a server-streaming request's body.
pub fn single_message(body: &[u8]) -> Result<Value, RpcError> {
    let mut d = Decoder::default();
    match d.feed(body)?.into_iter().next() {
        Some(Incoming::Message(v)) => Ok(v),
        _ => Err(RpcError::new(
            Code::InvalidArgument,
            "the request holds no message (send one enveloped JSON message)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_flags_a_big_endian_length_and_json() {
        let e = envelope(&json!({"event":{"start":{"pid":7}}}));
        let text = br#"{"event":{"start":{"pid":7}}}"#;
        assert_eq!(e[0], 0);
        assert_eq!(&e[1..5], &(text.len() as u32).to_be_bytes());
        assert_eq!(&e[5..], text);
        let end = end_stream(Some(&RpcError::new(Code::NotFound, "no such pid")));
        assert_eq!(end[0], 2);
        assert_eq!(
            &end[5..],
            br#"{"error":{"code":"not_found","message":"no such pid"}}"#
        );
        assert_eq!(&end_stream(None)[5..], b"{}");
    }

    #[test]
    fn the_decoder_waits_for_whole_envelopes_and_refuses_bad_ones() {
        let mut all = envelope(&json!({"a":1})).to_vec();
        all.extend_from_slice(&end_stream(None));
        let mut d = Decoder::default();
        assert_eq!(d.feed(&all[..3]).expect("part"), vec![]);
        assert_eq!(
            d.feed(&all[3..8]).expect("more"),
            vec![],
            "a length without its body"
        );
        assert_eq!(
            d.feed(&all[8..]).expect("rest"),
            vec![Incoming::Message(json!({"a":1})), Incoming::End]
        );
        assert_eq!(d.pending(), 0);
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        let err = Decoder::default().feed(&huge).expect_err("too big");
        assert_eq!(err.code, Code::ResourceExhausted);
        let compressed = [1u8, 0, 0, 0, 0];
        assert_eq!(
            Decoder::default().feed(&compressed).expect_err("gz").code,
            Code::Unimplemented
        );
        let not_json = [0u8, 0, 0, 0, 1, b'{'];
        assert_eq!(
            Decoder::default().feed(&not_json).expect_err("json").code,
            Code::InvalidArgument
        );
        assert_eq!(
            single_message(&[]).expect_err("empty").code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn codes_map_to_the_statuses_connect_clients_expect() {
        assert_eq!(Code::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(Code::Unauthenticated.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Code::AlreadyExists.status(), StatusCode::CONFLICT);
        assert_eq!(Code::Canceled.status().as_u16(), 499);
    }
}
