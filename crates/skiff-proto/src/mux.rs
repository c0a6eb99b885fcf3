//! Several agent connections over one byte stream: the virtio-serial port
//! of a VM that can be snapshotted (QEMU cannot save a VM with the
//! vhost-user vsock device).
//!
//! Each mux frame is COBS-encoded and ends with a zero byte, so a reader
//! that starts in the middle of the stream (after a resume, the guest may
//! still hold half a frame from before the pause) finds the next frame
//! boundary by itself and drops the broken piece. Inside a frame:
//!
//! ```text
//! +---------------+---------+-----------------+
//! | channel u32BE | kind u8 | body            |
//! +---------------+---------+-----------------+
//! ```
//!
//! Channels carry the ordinary agent protocol as bytes, like a vsock
//! stream does. The host opens even channels, the guest odd ones. Every
//! channel has a window of [`WINDOW`] bytes in each direction: a sender
//! may have at most that much data unacknowledged ([`MuxFrame::Credit`]
//! acknowledges it), so a reader that stops reading stalls only its own
//! channel, and a peer that sends past its window is breaking the protocol.
//! A host that (re)connects sends [`MuxFrame::Attach`]: the guest drops
//! every channel of the previous host and answers [`MuxFrame::Attached`]
//! with the same nonce, which is how the host knows where the new
//! session's bytes start.

/// The name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "skiff.agent";

/// Largest data body in one frame.
pub const MAX_DATA: usize = 32 * 1024;

/// Bytes a sender may have in flight on one channel.
pub const WINDOW: u32 = 256 * 1024;

/// The channel of session frames (attach, attached).
pub const SESSION: u32 = 0;

/// Largest encoded frame a reader accepts (a data frame plus COBS overhead).
const MAX_ENCODED: usize = MAX_DATA + MAX_DATA / 254 + 16;

/// One mux frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxFrame {
    /// host -> guest: a new host; forget the old one's channels.
    Attach { nonce: u64 },
    /// guest -> host: the answer to the attach with this nonce.
    Attached { nonce: u64 },
    /// Open `channel` to `port` (the vsock port the connection would use).
    Open { channel: u32, port: u32 },
    /// The open of `channel` succeeded.
    Accept { channel: u32 },
    /// Bytes on `channel`.
    Data { channel: u32, bytes: Vec<u8> },
    /// The receiver consumed `bytes` more of `channel`'s data.
    Credit { channel: u32, bytes: u32 },
    /// `channel` is closed (or could not be opened).
    Close { channel: u32 },
}

const KIND_ATTACH: u8 = 1;
const KIND_ATTACHED: u8 = 2;
const KIND_OPEN: u8 = 3;
const KIND_ACCEPT: u8 = 4;
const KIND_DATA: u8 = 5;
const KIND_CREDIT: u8 = 6;
const KIND_CLOSE: u8 = 7;

/// Why a frame was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    #[error("a mux frame is not valid COBS")]
    Encoding,
    #[error("a mux frame is longer than {MAX_ENCODED} bytes")]
    TooLong,
    #[error("a mux frame of kind {kind} has a {len}-byte body")]
    Malformed { kind: u8, len: usize },
    #[error("unknown mux frame kind {0}")]
    UnknownKind(u8),
}

impl MuxFrame {
    /// The frame as it goes on the wire: COBS bytes and the closing zero.
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(16);
        let (channel, kind) = match self {
            MuxFrame::Attach { .. } => (SESSION, KIND_ATTACH),
            MuxFrame::Attached { .. } => (SESSION, KIND_ATTACHED),
            MuxFrame::Open { channel, .. } => (*channel, KIND_OPEN),
            MuxFrame::Accept { channel } => (*channel, KIND_ACCEPT),
            MuxFrame::Data { channel, .. } => (*channel, KIND_DATA),
            MuxFrame::Credit { channel, .. } => (*channel, KIND_CREDIT),
            MuxFrame::Close { channel } => (*channel, KIND_CLOSE),
        };
        raw.extend_from_slice(&channel.to_be_bytes());
        raw.push(kind);
        match self {
            MuxFrame::Attach { nonce } | MuxFrame::Attached { nonce } => {
                raw.extend_from_slice(&nonce.to_be_bytes())
            }
            MuxFrame::Open { port, .. } => raw.extend_from_slice(&port.to_be_bytes()),
            MuxFrame::Credit { bytes, .. } => raw.extend_from_slice(&bytes.to_be_bytes()),
            MuxFrame::Data { bytes, .. } => raw.extend_from_slice(bytes),
            MuxFrame::Accept { .. } | MuxFrame::Close { .. } => {}
        }
        let mut wire = cobs::encode_vec(&raw);
        wire.push(0);
        wire
    }

    /// A zero byte, then the frame: what a side sends first in a session,
    /// to end whatever half frame the other side still holds.
    pub fn encode_resync(&self) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(self.encode());
        bytes
    }

    fn decode(raw: &[u8]) -> Result<MuxFrame, MuxError> {
        let (Some(head), Some(&kind)) = (raw.get(..4), raw.get(4)) else {
            return Err(MuxError::Malformed {
                kind: 0,
                len: raw.len(),
            });
        };
        let channel = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let body = &raw[5..];
        let malformed = || MuxError::Malformed {
            kind,
            len: body.len(),
        };
        let u32_body = || -> Result<u32, MuxError> {
            let b: [u8; 4] = body.try_into().map_err(|_| malformed())?;
            Ok(u32::from_be_bytes(b))
        };
        let u64_body = || -> Result<u64, MuxError> {
            let b: [u8; 8] = body.try_into().map_err(|_| malformed())?;
            Ok(u64::from_be_bytes(b))
        };
        let empty = || -> Result<(), MuxError> {
            if body.is_empty() {
                Ok(())
            } else {
                Err(malformed())
            }
        };
        Ok(match kind {
            KIND_ATTACH => MuxFrame::Attach { nonce: u64_body()? },
            KIND_ATTACHED => MuxFrame::Attached { nonce: u64_body()? },
            KIND_OPEN => MuxFrame::Open {
                channel,
                port: u32_body()?,
            },
            KIND_ACCEPT => {
                empty()?;
                MuxFrame::Accept { channel }
            }
            KIND_DATA if body.len() <= MAX_DATA => MuxFrame::Data {
                channel,
                bytes: body.to_vec(),
            },
            KIND_DATA => return Err(malformed()),
            KIND_CREDIT => MuxFrame::Credit {
                channel,
                bytes: u32_body()?,
            },
            KIND_CLOSE => {
                empty()?;
                MuxFrame::Close { channel }
            }
            other => return Err(MuxError::UnknownKind(other)),
        })
    }
}

/// Splits a byte stream into frames. It never holds more than one maximal
/// encoded frame: a longer run without a zero byte is dropped up to the
/// next zero.
#[derive(Debug, Default)]
pub struct MuxDecoder {
    pending: Vec<u8>,
    /// The current run is too long; drop bytes up to the next zero.
    skipping: bool,
}

impl MuxDecoder {
    pub fn new() -> MuxDecoder {
        MuxDecoder::default()
    }

    /// Forget a partial frame (the stream was cut).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.skipping = false;
    }

    /// Feed bytes; every complete frame (or why one was dropped) comes out
    /// in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Result<MuxFrame, MuxError>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (run, rest, ended) = match bytes.iter().position(|&b| b == 0) {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                if self.pending.len() + run.len() > MAX_ENCODED {
                    self.pending.clear();
                    self.skipping = true;
                    out.push(Err(MuxError::TooLong));
                } else {
                    self.pending.extend_from_slice(run);
                }
            }
            if !ended {
                continue;
            }
            if self.skipping {
                self.skipping = false;
                continue;
            }
            let encoded = std::mem::take(&mut self.pending);
            // Two zeros in a row (a writer's resync marker) are no frame.
            if encoded.is_empty() {
                continue;
            }
            out.push(
                cobs::decode_vec(&encoded)
                    .map_err(|_| MuxError::Encoding)
                    .and_then(|raw| MuxFrame::decode(&raw)),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<MuxFrame> {
        vec![
            MuxFrame::Attach { nonce: u64::MAX },
            MuxFrame::Attached { nonce: 0 },
            MuxFrame::Open {
                channel: 2,
                port: 1024,
            },
            MuxFrame::Accept { channel: 3 },
            MuxFrame::Data {
                channel: 4,
                bytes: (0..MAX_DATA).map(|i| (i % 7) as u8).collect(),
            },
            MuxFrame::Data {
                channel: 4,
                bytes: Vec::new(),
            },
            MuxFrame::Credit {
                channel: 5,
                bytes: 77,
            },
            MuxFrame::Close { channel: 6 },
        ]
    }

    #[test]
    fn every_kind_round_trips_even_one_byte_at_a_time() {
        let frames = all_kinds();
        let wire: Vec<u8> = frames.iter().flat_map(MuxFrame::encode).collect();
        assert_eq!(wire.iter().filter(|&&b| b == 0).count(), frames.len());
        let mut whole = MuxDecoder::new();
        let got: Vec<_> = whole.feed(&wire).into_iter().map(Result::unwrap).collect();
        assert_eq!(got, frames);
        let mut bytewise = MuxDecoder::new();
        let got: Vec<_> = wire
            .iter()
            .flat_map(|b| bytewise.feed(std::slice::from_ref(b)))
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, frames);
    }

    #[test]
    fn half_a_frame_before_a_new_session_is_dropped_and_the_rest_is_read() {
        let old = MuxFrame::Data {
            channel: 2,
            bytes: vec![9; 1000],
        }
        .encode();
        let mut wire = old[..old.len() / 2].to_vec();
        // What a new writer sends first: a zero to end whatever came before.
        wire.push(0);
        wire.extend(MuxFrame::Attach { nonce: 5 }.encode());
        let got = MuxDecoder::new().feed(&wire);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(MuxFrame::Attach { nonce: 5 }));
    }

    #[test]
    fn an_endless_run_is_dropped_without_growing_and_the_next_frame_is_read() {
        let mut d = MuxDecoder::new();
        let mut errors = 0;
        for _ in 0..100 {
            errors += d.feed(&[0x55; 4096]).len();
            assert!(d.pending.len() <= MAX_ENCODED);
        }
        assert_eq!(errors, 1, "one error for the whole run");
        let mut wire = vec![0x55, 0];
        wire.extend(MuxFrame::Close { channel: 8 }.encode());
        assert_eq!(d.feed(&wire), vec![Ok(MuxFrame::Close { channel: 8 })]);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let enc = |raw: &[u8]| {
            let mut w = cobs::encode_vec(raw);
            w.push(0);
            w
        };
        let mut d = MuxDecoder::new();
        assert_eq!(
            d.feed(&enc(&[0, 0, 0, 2, 99])),
            vec![Err(MuxError::UnknownKind(99))]
        );
        assert!(matches!(
            d.feed(&enc(&[0, 0, 0, 2, KIND_OPEN, 1]))[..],
            [Err(MuxError::Malformed {
                kind: KIND_OPEN,
                len: 1
            })]
        ));
        assert!(matches!(
            d.feed(&enc(&[0, 0]))[..],
            [Err(MuxError::Malformed { .. })]
        ));
        let mut big = vec![0, 0, 0, 2, KIND_DATA];
        big.extend(vec![1; MAX_DATA + 1]);
        assert!(matches!(
            d.feed(&enc(&big))[..],
            [Err(MuxError::Malformed {
                kind: KIND_DATA,
                ..
            })]
        ));
        assert_eq!(d.feed(&[0, 0, 0]), Vec::<Result<MuxFrame, MuxError>>::new());
    }
}
