//! Framing of peer messages on a QUIC stream.
//!
//! A frame is `length (u32, big-endian) || version (u8) || envelope`, where
//! `length` counts the version byte and the envelope, and the envelope is
//! bincode (varint integers, no trailing bytes). The length is checked
//! against the limit before any of the frame is buffered, so an oversized
//! or garbage length costs four bytes, not memory; the envelope is decoded
//! with the same limit. A frame of an unknown version, a malformed
//! envelope, or a stream that ends inside a frame is refused with an error
//! naming what was wrong; the caller closes that stream (one peer's garbage
//! never touches another peer's traffic).
//!
//! The envelope names its sender and recipient and carries a per-stream
//! sequence number: the receiver checks the sender against the node id in
//! the peer's certificate and the sequence for gaps and replays.

use bincode::Options;
use mpc_core::{NodeId, PeerMessage};
use serde::{Deserialize, Serialize};

/// The envelope format this build speaks.
pub const VERSION: u8 = 1;
/// Default largest frame: room for cggmp24's aux-info rounds (the largest
/// messages, with their ZK proofs), small enough that a hostile peer cannot
/// make a node buffer much.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;
const LEN_BYTES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEnvelope {
    pub from: NodeId,
    pub to: NodeId,
    /// Per sending stream, from 0, without gaps.
    pub seq: u64,
    pub msg: PeerMessage,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame version {found} is not spoken here (version {VERSION})")]
    UnknownVersion { found: u8 },
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
}

fn codec(max: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(max as u64).reject_trailing_bytes()
}

/// One frame for `envelope`.
pub fn encode(envelope: &WireEnvelope, max: usize) -> Result<Vec<u8>, FrameError> {
    // Our own message: sized after encoding, so the error says how large.
    let body = bincode::DefaultOptions::new().serialize(envelope).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = body.len() + 1;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut frame = Vec::with_capacity(LEN_BYTES + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.push(VERSION);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reassembles frames from the bytes of one stream, in order.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder { buf: Vec::new(), max }
    }

    /// How many more bytes the current frame needs (at least one), so a
    /// reader never pulls more than the limit allows into the buffer.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < LEN_BYTES {
            return LEN_BYTES - self.buf.len();
        }
        let len = self.declared_len();
        (LEN_BYTES + len).saturating_sub(self.buf.len()).max(1)
    }

    fn declared_len(&self) -> usize {
        u32::from_be_bytes(self.buf[..LEN_BYTES].try_into().expect("four bytes")) as usize
    }

    /// Adds received bytes. Refuses an oversized length as soon as its four
    /// bytes are in.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= LEN_BYTES {
            let len = self.declared_len();
            if len > self.max {
                return Err(FrameError::TooLarge { len, max: self.max });
            }
            if len == 0 {
                return Err(FrameError::Empty);
            }
        }
        Ok(())
    }

    /// The next complete envelope, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<WireEnvelope>, FrameError> {
        if self.buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = self.declared_len();
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if self.buf.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..LEN_BYTES + len).skip(LEN_BYTES).collect();
        if frame[0] != VERSION {
            return Err(FrameError::UnknownVersion { found: frame[0] });
        }
        let envelope = codec(self.max).deserialize(&frame[1..]).map_err(|e| FrameError::Malformed(e.to_string()))?;
        Ok(Some(envelope))
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered: self.buf.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpc_core::{PresigId, SessionId};
    use proptest::prelude::*;

    fn envelope(seq: u64, payload: usize) -> WireEnvelope {
        WireEnvelope {
            from: NodeId(2),
            to: NodeId(4),
            seq,
            msg: PeerMessage::Protocol {
                session: SessionId::Presign(PresigId { origin: NodeId(1), seq: 7 }),
                broadcast: true,
                payload: vec![0xab; payload],
            },
        }
    }

    fn decode_all(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<WireEnvelope>, FrameError> {
        let mut d = FrameDecoder::new(max);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            d.push(piece)?;
            while let Some(e) = d.next_envelope()? {
                out.push(e);
            }
        }
        d.finish()?;
        Ok(out)
    }

    proptest! {
        #[test]
        fn frames_round_trip_however_the_stream_is_cut(sizes in prop::collection::vec(0usize..3000, 1..6), chunk in 1usize..700) {
            let envelopes: Vec<WireEnvelope> = sizes.iter().enumerate().map(|(i, n)| envelope(i as u64, *n)).collect();
            let bytes: Vec<u8> = envelopes.iter().flat_map(|e| encode(e, DEFAULT_MAX_FRAME).unwrap()).collect();
            prop_assert_eq!(decode_all(&bytes, chunk, DEFAULT_MAX_FRAME).unwrap(), envelopes);
        }

        #[test]
        fn garbage_is_refused_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), chunk in 1usize..64) {
            let _ = decode_all(&bytes, chunk, 4096);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_they_are_buffered() {
        let big = encode(&envelope(0, 5000), DEFAULT_MAX_FRAME).unwrap();
        let mut d = FrameDecoder::new(1024);
        // The four length bytes alone are enough to refuse it.
        assert!(matches!(d.push(&big[..4]), Err(FrameError::TooLarge { max: 1024, .. })));
        assert!(matches!(encode(&envelope(0, 5000), 1024), Err(FrameError::TooLarge { .. })));
        // A length field claiming 4 GiB.
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        assert!(matches!(d.push(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn unknown_versions_truncation_and_malformed_envelopes_are_named() {
        let mut frame = encode(&envelope(0, 10), DEFAULT_MAX_FRAME).unwrap();
        frame[4] = 9;
        assert_eq!(decode_all(&frame, 100, DEFAULT_MAX_FRAME), Err(FrameError::UnknownVersion { found: 9 }));

        let frame = encode(&envelope(0, 10), DEFAULT_MAX_FRAME).unwrap();
        let cut = &frame[..frame.len() - 3];
        assert_eq!(decode_all(cut, 100, DEFAULT_MAX_FRAME), Err(FrameError::Truncated { buffered: cut.len() }));

        let mut frame = encode(&envelope(0, 10), DEFAULT_MAX_FRAME).unwrap();
        let len = frame.len();
        frame[len - 1] = 0; // payload shorter than its declared length...
        frame.push(0); // ...and a trailing byte inside the frame
        frame[3] += 1;
        assert!(matches!(decode_all(&frame, 100, DEFAULT_MAX_FRAME), Err(FrameError::Malformed(_))));

        assert_eq!(decode_all(&[0, 0, 0, 0], 4, DEFAULT_MAX_FRAME), Err(FrameError::Empty));
        assert!(matches!(decode_all(&[0, 0, 0, 1, VERSION], 5, DEFAULT_MAX_FRAME), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn the_reader_never_asks_for_more_than_the_frame() {
        let frame = encode(&envelope(0, 100), DEFAULT_MAX_FRAME).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        assert_eq!(d.wanted(), 4);
        d.push(&frame[..4]).unwrap();
        assert_eq!(d.wanted(), frame.len() - 4);
        d.push(&frame[4..]).unwrap();
        assert!(d.next_envelope().unwrap().is_some());
        assert_eq!(d.wanted(), 4);
    }
}
