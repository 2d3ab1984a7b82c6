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
//! the peer's certificate and the sequence for gaps and replays. Those
//! three fields lead the envelope, so [`Frame::header`] reads them without
//! decoding the message; a received [`Frame`] is held in a buffer of
//! exactly its length, which is what the transport accounts for.

use bincode::Options;
use mpc_core::{NodeId, PeerMessage};
use serde::{Deserialize, Serialize};

/// The envelope format this build speaks.
pub const VERSION: u8 = 1;
/// Default largest frame (the length field's count: version byte and
/// envelope), sized to the largest message the protocol really sends, with
/// room to spare, so that a peer cannot make a node buffer more per frame.
///
/// Measured with `cargo run --release -p mpc-io-quic --example
/// message_sizes` (cggmp24 `SecurityLevel128`, whole frames with worst-case
/// envelope numbers):
///
/// | message | frame bytes |
/// |---|---|
/// | `TxSigned`, a transaction of [`MAX_SIGNED_TX_BYTES`], 64 presignature ids | 1,056,381 (the largest) |
/// | `Proposal`, a PSBT of `MAX_PSBT_BYTES` (1 MiB) | 1,048,602 |
/// | aux info, n = 5: largest P2P round message (ZK proofs over 3072-bit moduli) | 208,966 |
/// | aux info, n = 5: largest broadcast (ring-Pedersen parameters and proof) | 202,434 |
/// | `SyncRequest`, 1024 known and 1024 open transactions | 65,568 |
/// | presigning, 3 signers: largest P2P round message | 27,589 |
/// | keygen 3-of-5: largest round message | 512 |
/// | `SigningRequest` or `SigningProbe` with a 5-vote certificate; a vote | 598; 120 |
///
/// So a 1 MiB PSBT, or the transaction signed from it, is what bounds the
/// frame; the limit is 1 MiB + 64 KiB (1,114,112 bytes, 5% above the
/// largest). The aux-info proofs do not grow with the number of parties.
/// `tests/frame_limit.rs` checks that the limit admits the maximal
/// proposal, signed transaction and sync request and real keygen and
/// presigning messages, and stays within 64 KiB of the largest.
pub const DEFAULT_MAX_FRAME: usize = mpc_core::tx::MAX_PSBT_BYTES + 64 * 1024;
/// Largest signed transaction a `TxSigned` message carries: the unsigned
/// transaction fits in a PSBT of at most `MAX_PSBT_BYTES`, and signing adds
/// the segwit marker and flag (2 bytes) and one P2WPKH witness per input
/// (item count, DER signature with sighash byte, key: at most 1 + 1 + 73 +
/// 1 + 33 = 109 bytes), for at most `MAX_INPUTS` inputs.
pub const MAX_SIGNED_TX_BYTES: usize = mpc_core::tx::MAX_PSBT_BYTES + 2 + mpc_core::tx::MAX_INPUTS * 109;
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

/// The fields every envelope starts with, readable without decoding the
/// message: the transport checks them as a frame arrives, and decodes the
/// message itself only when the node takes it (see [`Frame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Header {
    pub from: NodeId,
    pub to: NodeId,
    pub seq: u64,
}

/// One received frame, still encoded: the version byte and the envelope.
///
/// The transport queues frames in this form and decodes them when the node
/// takes them, because the encoded size is the size that is accounted: its
/// buffer holds exactly the frame's bytes. A decoded message can take many
/// times its encoded size (bincode's varint ids become 16-byte structs,
/// empty vectors 24-byte headers), so a queue of decoded messages could not
/// be bounded by the bytes the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    body: Vec<u8>,
}

impl Frame {
    /// Bytes the frame occupies in memory (its buffer is allocated at exactly
    /// the declared length).
    pub fn len(&self) -> usize {
        self.body.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The version and the envelope's leading fields. An unknown version,
    /// or a frame too short to hold the fields, is refused here.
    pub fn header(&self) -> Result<Header, FrameError> {
        let version = self.body[0];
        if version != VERSION {
            return Err(FrameError::UnknownVersion { found: version });
        }
        bincode::DefaultOptions::new()
            .with_limit(self.body.len() as u64)
            .allow_trailing_bytes()
            .deserialize(&self.body[1..])
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// The whole envelope, decoded with the frame limit.
    pub fn decode(&self, max: usize) -> Result<WireEnvelope, FrameError> {
        self.header()?;
        codec(max).deserialize(&self.body[1..]).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

/// Where the decoder is inside the current frame.
#[derive(Debug)]
enum Partial {
    /// Collecting the four length bytes.
    Length { bytes: [u8; LEN_BYTES], have: usize },
    /// The length is known and checked; the body is allocated at its first
    /// byte, at exactly that length.
    Body { len: usize, body: Vec<u8> },
}

/// Reassembles frames from the bytes of one stream, in order.
///
/// A reader that asks for at most [`FrameDecoder::wanted`] bytes at a time
/// never pushes past the current frame, so it can reserve memory for a
/// frame once [`FrameDecoder::declared_len`] tells its length and before
/// any of its body is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    partial: Partial,
    ready: std::collections::VecDeque<Frame>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder { partial: Partial::Length { bytes: [0; LEN_BYTES], have: 0 }, ready: Default::default(), max }
    }

    /// How many more bytes the current frame needs (at least one), so a
    /// reader never pulls more than the limit allows into the buffer.
    pub fn wanted(&self) -> usize {
        match &self.partial {
            Partial::Length { have, .. } => LEN_BYTES - have,
            Partial::Body { len, body } => len - body.len(),
        }
    }

    /// The length of the frame being received, once its length bytes are in
    /// and until it is complete.
    pub fn declared_len(&self) -> Option<usize> {
        match &self.partial {
            Partial::Length { .. } => None,
            Partial::Body { len, .. } => Some(*len),
        }
    }

    /// Adds received bytes. Refuses an oversized length as soon as its four
    /// bytes are in.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            match &mut self.partial {
                Partial::Length { bytes: len_bytes, have } => {
                    let take = (LEN_BYTES - *have).min(bytes.len());
                    len_bytes[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have == LEN_BYTES {
                        let len = u32::from_be_bytes(*len_bytes) as usize;
                        if len > self.max {
                            return Err(FrameError::TooLarge { len, max: self.max });
                        }
                        if len == 0 {
                            return Err(FrameError::Empty);
                        }
                        self.partial = Partial::Body { len, body: Vec::new() };
                    }
                }
                Partial::Body { len, body } => {
                    if body.capacity() == 0 {
                        body.reserve_exact(*len);
                    }
                    let take = (*len - body.len()).min(bytes.len());
                    body.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if body.len() == *len {
                        let body = std::mem::take(body);
                        self.ready.push_back(Frame { body });
                        self.partial = Partial::Length { bytes: [0; LEN_BYTES], have: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.ready.pop_front()
    }

    /// The next complete envelope, if one is buffered, decoded at once.
    pub fn next_envelope(&mut self) -> Result<Option<WireEnvelope>, FrameError> {
        self.next_frame().map(|f| f.decode(self.max)).transpose()
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        let buffered = match &self.partial {
            Partial::Length { have, .. } => *have,
            Partial::Body { body, .. } => LEN_BYTES + body.len(),
        };
        if buffered == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated { buffered })
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
        fn garbage_is_refused_never_panics(bytes in prop::collection::vec(any::<u8>(), 1..600), chunk in 1usize..64) {
            // Random bytes are not a stream of our frames, and the decoder
            // must say so; were it ever to accept some, they must be
            // exactly the encoding of what it returned.
            if let Ok(envelopes) = decode_all(&bytes, chunk, 4096) {
                let again: Vec<u8> = envelopes.iter().flat_map(|e| encode(e, 4096).unwrap()).collect();
                prop_assert_eq!(again, bytes);
            }
        }

        #[test]
        fn a_well_framed_garbage_body_is_refused_as_malformed(body in prop::collection::vec(any::<u8>(), 0..600)) {
            // Past the length and version checks: the envelope decoder
            // itself must refuse, with the error that names it.
            let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(VERSION);
            frame.extend_from_slice(&body);
            match decode_all(&frame, 64, 4096) {
                Err(FrameError::Malformed(_)) => {}
                Err(other) => prop_assert!(false, "refused for the wrong reason: {other}"),
                Ok(envelopes) => {
                    let again: Vec<u8> = envelopes.iter().flat_map(|e| encode(e, 4096).unwrap()).collect();
                    prop_assert_eq!(again, frame);
                }
            }
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
    fn a_frame_is_buffered_at_exactly_its_length_and_its_header_read_alone() {
        let env = envelope(5, 3000);
        let bytes = encode(&env, DEFAULT_MAX_FRAME).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&bytes[..3]).unwrap();
        assert_eq!(d.declared_len(), None);
        d.push(&bytes[3..4]).unwrap();
        // Known before any of the body is buffered: the transport charges it here.
        assert_eq!(d.declared_len(), Some(bytes.len() - 4));
        for piece in bytes[4..].chunks(100) {
            d.push(piece).unwrap();
        }
        assert_eq!(d.declared_len(), None);
        let frame = d.next_frame().expect("complete");
        // What is charged is what is held: no growth slack in the buffer.
        assert_eq!(frame.len(), bytes.len() - 4);
        assert_eq!(frame.header().unwrap(), Header { from: env.from, to: env.to, seq: 5 });
        assert_eq!(frame.decode(DEFAULT_MAX_FRAME).unwrap(), env);
        assert!(d.next_frame().is_none());
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
