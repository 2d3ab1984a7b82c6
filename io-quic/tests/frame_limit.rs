//! The default frame limit against the largest messages the protocol really
//! sends, for every kind that is cheap to make here: a maximal proposal, the
//! largest signed transaction, a maximal sync request, a full signing
//! request, and every message of real keygen (fixture aux info) and real
//! presigning (fixture key shares) sessions at the production security
//! level. Aux info, the costly one (about a minute of CPU), is measured by
//! the `message_sizes` example and quoted at `frame::DEFAULT_MAX_FRAME`.
//! The maximal messages also cross a real connection with the default
//! configuration.

#[path = "support/net.rs"]
mod net;
#[path = "support/sessions.rs"]
mod sessions;

use mpc_core::engine::{ProtocolOutput, SessionKind};
use mpc_core::key_confirmation::MAX_ABANDONMENTS_ANNOUNCED;
use mpc_core::message::SYNC_LIST_LIMIT;
use mpc_core::tx::{MAX_INPUTS, MAX_PSBT_BYTES};
use mpc_core::vote::{ApprovalCertificate, Decision, SignedVote, VoteBody};
use mpc_core::{DkgClaim, DkgId, DkgStatement, NodeId, PeerMessage, PresigId, Record, SessionId, TxId};
use mpc_io_quic::frame::{self, WireEnvelope, DEFAULT_MAX_FRAME, MAX_SIGNED_TX_BYTES};
use mpc_io_quic::{Inbound, Transport};
use mpc_sim::fixtures;
use std::sync::Arc;

const N: u16 = 5;
const T: u16 = 3;
/// How far above the largest real frame the limit may be: sized to the
/// protocol, not a generous round number.
const HEADROOM: usize = 64 * 1024;

fn worst_id() -> PresigId {
    PresigId { origin: NodeId(u16::MAX), seq: u64::MAX }
}

fn vote(voter: u16) -> SignedVote {
    SignedVote {
        body: VoteBody { tx: TxId([0xff; 32]), voter: NodeId(voter), decision: Decision::Approve },
        signature: [0xff; 64],
    }
}

/// The largest message of each kind whose size does not depend on a
/// protocol run.
fn maximal_messages() -> Vec<(&'static str, PeerMessage)> {
    vec![
        ("proposal of a maximal PSBT", PeerMessage::Proposal { psbt: vec![0xff; MAX_PSBT_BYTES] }),
        (
            "largest signed transaction",
            PeerMessage::TxSigned {
                tx: TxId([0xff; 32]),
                raw_tx: vec![0xff; MAX_SIGNED_TX_BYTES],
                presigs: vec![worst_id(); MAX_INPUTS],
            },
        ),
        (
            "maximal sync request",
            PeerMessage::SyncRequest {
                known_final: vec![TxId([0xff; 32]); SYNC_LIST_LIMIT],
                open: vec![TxId([0xff; 32]); SYNC_LIST_LIMIT],
            },
        ),
        (
            "key generation start with the most abandonments it carries",
            PeerMessage::DkgStart {
                dkg: DkgId { origin: NodeId(u16::MAX), seq: u64::MAX },
                abandoned: vec![
                    DkgStatement {
                        dkg: DkgId { origin: NodeId(u16::MAX), seq: u64::MAX },
                        member: NodeId(u16::MAX),
                        claim: DkgClaim::Abandoned,
                        signature: [0xff; 64],
                    };
                    MAX_ABANDONMENTS_ANNOUNCED + 1
                ],
            },
        ),
        (
            "confirmation of a group key",
            PeerMessage::DkgStatement(DkgStatement {
                dkg: DkgId { origin: NodeId(u16::MAX), seq: u64::MAX },
                member: NodeId(u16::MAX),
                claim: DkgClaim::Confirmed { public_key: vec![0xff; 33] },
                signature: [0xff; 64],
            }),
        ),
        (
            "signing request with every member's vote",
            PeerMessage::SigningRequest {
                tx: TxId([0xff; 32]),
                input: u32::MAX,
                presig: worst_id(),
                certificate: ApprovalCertificate { tx: TxId([0xff; 32]), votes: (1..=N).map(vote).collect() },
            },
        ),
    ]
}

/// `msg` fits the default limit, and its frame decodes back to it.
fn assert_admitted(what: &str, msg: PeerMessage) -> usize {
    let envelope = WireEnvelope { from: NodeId(u16::MAX), to: NodeId(u16::MAX), seq: u64::MAX, msg };
    let bytes = frame::encode(&envelope, DEFAULT_MAX_FRAME)
        .unwrap_or_else(|e| panic!("{what} is refused by the default frame limit: {e}"));
    let mut decoder = frame::FrameDecoder::new(DEFAULT_MAX_FRAME);
    decoder.push(&bytes).unwrap();
    assert!(decoder.next_envelope().unwrap().as_ref() == Some(&envelope), "{what} does not round-trip");
    bytes.len()
}

#[test]
fn the_default_frame_limit_admits_the_largest_real_messages_and_little_more() {
    let mut largest = 0;
    for (what, msg) in maximal_messages() {
        largest = largest.max(assert_admitted(what, msg));
    }

    // Keygen from the fixture aux info.
    let kinds = (0..N).map(|i| SessionKind::Keygen { i, n: N, t: T }).collect();
    let (sent, _) = sessions::run(SessionId::Keygen(DkgId { origin: NodeId(1), seq: 1 }), kinds);
    assert!(sent.len() >= N as usize, "keygen sent its messages");

    // Presigning from the fixture key shares: real Paillier ciphertexts and
    // range proofs at the production level.
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
    let signers = [NodeId(1), NodeId(3), NodeId(5)];
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
    let (presigning, outputs) = sessions::run(SessionId::Presign(PresigId { origin: NodeId(1), seq: 1 }), kinds);
    let session = SessionId::Presign(PresigId { origin: NodeId(u16::MAX), seq: u64::MAX });
    for s in sent.iter().chain(&presigning) {
        assert!(s.frame <= DEFAULT_MAX_FRAME, "a protocol message of {} bytes does not fit", s.frame);
        largest = largest.max(s.frame);
    }
    // The largest presigning message itself, encoded and decoded for real.
    let biggest = presigning.iter().max_by_key(|s| s.payload).expect("presigning sent messages");
    assert!(biggest.payload > 10_000, "presigning messages carry proofs: {} bytes", biggest.payload);
    assert_admitted(
        "largest presigning message",
        PeerMessage::Protocol { session, broadcast: biggest.to.is_none(), payload: vec![0x5a; biggest.payload] },
    );
    let Some(ProtocolOutput::Presign(share)) = outputs.into_iter().next() else { panic!("a presignature") };
    assert_admitted(
        "presignature announcement",
        PeerMessage::PresigReady { id: worst_id(), signers: signers.to_vec(), public: share.expose().public.clone() },
    );

    assert!(
        DEFAULT_MAX_FRAME <= largest + HEADROOM,
        "the limit ({DEFAULT_MAX_FRAME}) is more than {HEADROOM} bytes above the largest real frame ({largest})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_messages_cross_a_real_connection_with_the_default_configuration() {
    let dir = net::cert_dir("frame-limit", 2);
    let addrs = net::node_addrs(2);
    let (t1, _inbox1) = Transport::start(net::config(1, &addrs, &dir)).await.unwrap();
    let (_t2, mut inbox2) = Transport::start(net::config(2, &addrs, &dir)).await.unwrap();
    let messages = maximal_messages();
    for (_, msg) in &messages {
        t1.send(NodeId(2), msg.clone()).unwrap();
    }
    for (what, msg) in messages {
        match tokio::time::timeout(net::GUARD, inbox2.recv()).await.expect("hang guard") {
            Some(Inbound::Message { from: NodeId(1), msg: got }) => {
                assert!(got == msg, "{what} did not arrive: another message came in its place")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
