//! Measures the frames the protocol really sends, to size the frame limit
//! (`frame::DEFAULT_MAX_FRAME` quotes its output): every round of aux info
//! generation (n = 5), threshold keygen (3-of-5) and presigning (3 signers)
//! at this build's cggmp24 security level, run by mpc-core's engine from
//! the TEST-ONLY fixtures (safe primes, aux info, key shares), next to the
//! largest messages of the other kinds. Aux info takes about a minute of
//! CPU; `--no-aux` skips it.
//!
//!   cargo run --release -p mpc-io-quic --example message_sizes [-- --no-aux]

#[path = "../tests/support/sessions.rs"]
mod sessions;

use bincode::Options;
use mpc_core::engine::{ProtocolOutput, SessionKind};
use mpc_core::message::SYNC_LIST_LIMIT;
use mpc_core::tx::{MAX_INPUTS, MAX_PSBT_BYTES};
use mpc_core::vote::{ApprovalCertificate, Decision, SignedVote, VoteBody};
use mpc_core::{DkgId, NodeId, PeerMessage, PresigId, Record, Secret, SessionId, TxId};
use mpc_io_quic::frame::{DEFAULT_MAX_FRAME, MAX_SIGNED_TX_BYTES};
use mpc_sim::fixtures;
use sessions::Sent;
use std::sync::Arc;
use std::time::Instant;

const N: u16 = 5;
const T: u16 = 3;

fn main() {
    let with_aux = !std::env::args().any(|a| a == "--no-aux");
    let level =
        if mpc_core::REDUCED_SECURITY_TEST_ONLY { "ReducedTestOnlyLevel (TEST ONLY)" } else { "SecurityLevel128" };
    println!("frames the protocol sends, cggmp24 at {level}; frame limit {DEFAULT_MAX_FRAME} bytes");
    println!("{:<44} {:>10} {:>10} {:>8}", "message", "payload", "frame", "of limit");

    if with_aux {
        let primes = fixtures::load_primes(N).expect("fixture primes");
        let kinds = primes
            .into_values()
            .enumerate()
            .map(|(i, p)| SessionKind::AuxInfo { i: i as u16, n: N, primes: Secret::new(p), multiexp_tables: false })
            .collect();
        let started = Instant::now();
        let (sent, _) = sessions::run(SessionId::AuxInfo(DkgId { origin: NodeId(1), seq: 1 }), kinds);
        rounds("aux info, n = 5", &sent);
        println!("  (aux info took {:.1} s)", started.elapsed().as_secs_f64());
    }

    let kinds = (0..N).map(|i| SessionKind::Keygen { i, n: N, t: T }).collect();
    let (sent, _) = sessions::run(SessionId::Keygen(DkgId { origin: NodeId(1), seq: 2 }), kinds);
    rounds("keygen 3-of-5", &sent);

    let shares: Vec<_> = fixtures::load_cluster(N)
        .expect("fixture cluster")
        .into_values()
        .map(|records| {
            records
                .into_iter()
                .find_map(|r| match r {
                    Record::KeyShare { share, .. } => Some(Arc::new(share)),
                    _ => None,
                })
                .expect("every fixture node holds a key share")
        })
        .collect();
    let signers = [NodeId(1), NodeId(2), NodeId(3)];
    let parties_at_keygen: Vec<u16> = signers.iter().map(|s| s.keygen_index()).collect();
    let kinds = signers
        .iter()
        .enumerate()
        .map(|(i, s)| SessionKind::Presign {
            i: i as u16,
            parties_at_keygen: parties_at_keygen.clone(),
            key_share: shares[s.keygen_index() as usize].clone(),
        })
        .collect();
    let id = PresigId { origin: NodeId(1), seq: 3 };
    let (sent, outputs) = sessions::run(SessionId::Presign(id), kinds);
    rounds("presigning, 3 signers", &sent);
    let Some(ProtocolOutput::Presign(share)) = outputs.into_iter().next() else { panic!("a presignature") };
    let public = share.expose().public.clone();

    let vote = |voter: u16| SignedVote {
        body: VoteBody { tx: TxId([0xff; 32]), voter: NodeId(voter), decision: Decision::Approve },
        signature: [0xff; 64],
    };
    let worst_id = PresigId { origin: NodeId(u16::MAX), seq: u64::MAX };
    let fixed = [
        ("Proposal, PSBT of MAX_PSBT_BYTES", PeerMessage::Proposal { psbt: vec![0; MAX_PSBT_BYTES] }),
        (
            "TxSigned, MAX_SIGNED_TX_BYTES, 64 presigs",
            PeerMessage::TxSigned {
                tx: TxId([0xff; 32]),
                raw_tx: vec![0; MAX_SIGNED_TX_BYTES],
                presigs: vec![worst_id; MAX_INPUTS],
            },
        ),
        (
            "SyncRequest, 1024 known and 1024 open transactions",
            PeerMessage::SyncRequest {
                known_final: vec![TxId([0xff; 32]); SYNC_LIST_LIMIT],
                open: vec![TxId([0xff; 32]); SYNC_LIST_LIMIT],
            },
        ),
        (
            "SigningRequest, certificate of 5 votes",
            PeerMessage::SigningRequest {
                tx: TxId([0xff; 32]),
                input: u32::MAX,
                presig: worst_id,
                certificate: ApprovalCertificate { tx: TxId([0xff; 32]), votes: (1..=N).map(vote).collect() },
            },
        ),
        (
            "SigningProbe, certificate of 5 votes",
            PeerMessage::SigningProbe {
                tx: TxId([0xff; 32]),
                input: u32::MAX,
                presig: worst_id,
                certificate: ApprovalCertificate { tx: TxId([0xff; 32]), votes: (1..=N).map(vote).collect() },
            },
        ),
        ("PresigReady, real commitments", PeerMessage::PresigReady { id: worst_id, signers: signers.to_vec(), public }),
        ("Vote", PeerMessage::Vote(vote(1))),
    ];
    for (label, msg) in fixed {
        // The message as the envelope carries it (bincode, varint integers).
        let payload = bincode::DefaultOptions::new().serialize(&msg).expect("encodes").len();
        row(label, payload, sessions::frame_len(msg));
    }
}

fn rounds(label: &str, sent: &[Sent]) {
    for s in sessions::largest_per_round(sent) {
        let kind = if s.to.is_none() { "broadcast" } else { "p2p" };
        row(&format!("{label}, round {} largest ({kind})", s.round), s.payload, s.frame);
    }
}

fn row(label: &str, payload: usize, frame: usize) {
    println!("{label:<44} {payload:>10} {frame:>10} {:>7.1}%", 100.0 * frame as f64 / DEFAULT_MAX_FRAME as f64);
}
