//! Runs cggmp24 sessions through mpc-core's real [`Engine`] (one engine per
//! party, every message routed to its recipients round by round) and
//! records the size of every frame the transport would carry for them.
//! Shared by the frame-limit test and the `message_sizes` example.

#![allow(dead_code)] // each includer uses part of it

use mpc_core::engine::{ProtocolOutput, SessionKind};
use mpc_core::{ComputeJob, Engine, NodeId, PeerMessage, SessionId};
use mpc_io_quic::frame::{self, WireEnvelope};

/// The sender's sequence number as large as it gets, so each frame's
/// envelope is measured at its longest varint encoding.
pub const WORST_SEQ: u64 = u64::MAX;

/// One protocol message a party sent.
#[derive(Clone, Debug)]
pub struct Sent {
    /// 1 for the messages a party sends when it starts, then one more per
    /// round of deliveries.
    pub round: usize,
    pub from: u16,
    /// `None`: broadcast to every other party.
    pub to: Option<u16>,
    pub payload: usize,
    /// The whole frame on the wire: length, version, envelope.
    pub frame: usize,
}

/// The frame carrying `msg`, with worst-case envelope numbers.
pub fn frame_len(msg: PeerMessage) -> usize {
    let envelope = WireEnvelope { from: NodeId(u16::MAX), to: NodeId(u16::MAX), seq: WORST_SEQ, msg };
    frame::encode(&envelope, usize::MAX).expect("encodes").len()
}

/// Runs `session` with one party per entry of `kinds` (party index = the
/// entry's position) to the end; every party must finish without error.
pub fn run(session: SessionId, kinds: Vec<SessionKind>) -> (Vec<Sent>, Vec<ProtocolOutput>) {
    let parties = kinds.len();
    let execution_id = session.execution_id("io-quic-message-sizes");
    let mut engines: Vec<Engine> = (0..parties).map(|_| Engine::new()).collect();
    let mut outputs: Vec<Option<ProtocolOutput>> = (0..parties).map(|_| None).collect();
    let mut sent = Vec::new();
    let mut batch = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let seed = [i as u8 + 1; 32];
        let result = engines[i].run(ComputeJob::Start { session, execution_id: execution_id.clone(), seed, kind });
        collect(i, result, &mut batch, &mut outputs);
    }
    let mut round = 1;
    while !batch.is_empty() {
        let mut next = Vec::new();
        for (from, send) in std::mem::take(&mut batch) {
            let send: mpc_core::engine::ProtocolSend = send;
            let payload_len = send.payload.len();
            let msg = PeerMessage::Protocol { session, broadcast: send.to.is_none(), payload: send.payload.clone() };
            sent.push(Sent { round, from: from as u16, to: send.to, payload: payload_len, frame: frame_len(msg) });
            let recipients: Vec<usize> = match send.to {
                Some(to) => vec![to as usize],
                None => (0..parties).filter(|p| *p != from).collect(),
            };
            for to in recipients {
                let job = ComputeJob::Deliver {
                    session,
                    from: from as u16,
                    broadcast: send.to.is_none(),
                    payload: send.payload.clone(),
                };
                let result = engines[to].run(job);
                collect(to, result, &mut next, &mut outputs);
            }
        }
        batch = next;
        round += 1;
    }
    let outputs =
        outputs.into_iter().enumerate().map(|(i, o)| o.unwrap_or_else(|| panic!("party {i} did not finish"))).collect();
    (sent, outputs)
}

fn collect(
    party: usize,
    result: mpc_core::ComputeResult,
    batch: &mut Vec<(usize, mpc_core::engine::ProtocolSend)>,
    outputs: &mut [Option<ProtocolOutput>],
) {
    batch.extend(result.sends.into_iter().map(|s| (party, s)));
    match result.finished {
        None => {}
        Some(Ok(output)) => outputs[party] = Some(output),
        Some(Err(e)) => panic!("party {party} failed: {e}"),
    }
}

/// The largest frame of each round, with its payload and whether it was a
/// broadcast.
pub fn largest_per_round(sent: &[Sent]) -> Vec<&Sent> {
    let rounds = sent.iter().map(|s| s.round).max().unwrap_or(0);
    (1..=rounds).filter_map(|r| sent.iter().filter(|s| s.round == r).max_by_key(|s| s.frame)).collect()
}
