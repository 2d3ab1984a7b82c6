//! End-to-end behaviour of five real cores with real cryptography, driven by
//! the deterministic simulator (turmoil hosts, simulated network and clock).

mod common;

use bitcoin::consensus::encode::serialize;
use common::*;
use mpc_core::message::{PartialSig, SigningRefusal};
use mpc_core::vote::{Decision, SignedVote, VoteBody};
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, Record, TxState};
use mpc_sim::wallet::Spend;
use mpc_sim::{scenario, Delivery};
use std::cell::RefCell;
use std::rc::Rc;

const SIGN_BUDGET_MS: u64 = 600_000;

#[test]
fn happy_path_signs_transactions_bitcoin_core_accepts() {
    let (mut cluster, key) = keyed_cluster(11, |_| {});
    scenario::fill_pool(&mut cluster, NodeId(1), 3).unwrap();

    // One input, proposed to node 2.
    let one = Spend::simple("happy-1", &[200_000], &destination(), 120_000, 2_000);
    let tx1 = scenario::submit(&mut cluster, NodeId(2), one.psbt_bytes(&key)).unwrap();
    // Two inputs, proposed to node 4: one presignature per input.
    let two = Spend::simple("happy-2", &[80_000, 90_000], &destination(), 150_000, 3_000);
    let tx2 = scenario::submit(&mut cluster, NodeId(4), two.psbt_bytes(&key)).unwrap();

    for tx in [tx1, tx2] {
        assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS), "transaction did not finish");
        for id in cluster.ids() {
            assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed), "{id}");
        }
    }
    // Independent check with Bitcoin Core's interpreter, from the raw bytes
    // and the prevouts alone.
    for (tx, spend) in [(tx1, &one), (tx2, &two)] {
        let signed = scenario::signed_tx(&cluster, tx).expect("signed transaction recorded");
        assert_eq!(signed.input.len(), spend.inputs.len());
        let raw = serialize(&signed);
        for (i, (_, value)) in spend.inputs.iter().enumerate() {
            key.script_pubkey().verify(i, *value, &raw).expect("input verifies under libbitcoinconsensus");
            let witness = &signed.input[i].witness;
            assert_eq!(witness.len(), 2, "P2WPKH witness: signature and key");
            assert_eq!(witness.nth(1).unwrap(), key.compressed.as_slice());
            let sig = bitcoin::ecdsa::Signature::from_slice(witness.nth(0).unwrap()).expect("strict DER + sighash");
            assert_eq!(sig.sighash_type, bitcoin::EcdsaSighashType::All);
            let mut normalized = sig.signature;
            normalized.normalize_s();
            assert_eq!(normalized, sig.signature, "signature is low-S");
        }
        // A tampered signature fails the same check: the check can fail.
        let mut bad = signed.clone();
        let mut items = bad.input[0].witness.to_vec();
        items[0][10] ^= 1;
        bad.input[0].witness = bitcoin::Witness::from_slice(&items);
        assert!(key.script_pubkey().verify(0, spend.inputs[0].1, &serialize(&bad)).is_err());
    }
    // Three presignatures consumed (1 + 2 inputs), each by its t signers.
    let consumed: usize = cluster
        .hosts()
        .values()
        .map(|h| h.store.iter().filter(|r| matches!(r, Record::PresigConsumed { .. })).count())
        .sum();
    assert_eq!(consumed, 3 * T as usize);
    assert_invariants(&cluster, &[]);
}

#[test]
fn equivocating_voter_is_detected_attributed_and_discounted() {
    let (mut cluster, key) = keyed_cluster(12, |_| {});
    // Node 5 approves to nodes 1 and 2 but shows nodes 3 and 4 a rejection,
    // properly signed with its own key: a Byzantine voter.
    let byzantine_key = mpc_sim::setup::vote_key("test-cluster", NodeId(5));
    cluster.set_interceptor(move |from, env: &mut Envelope| {
        if from == NodeId(5) && (env.to == NodeId(3) || env.to == NodeId(4)) {
            if let PeerMessage::Vote(v) = &env.msg {
                let body = VoteBody { decision: Decision::Reject("equivocating".into()), ..v.body.clone() };
                env.msg = PeerMessage::Vote(SignedVote::sign(body, &byzantine_key, "test-cluster"));
            }
        }
        Delivery::Deliver
    });
    scenario::fill_pool(&mut cluster, NodeId(1), 1).unwrap();
    let spend = Spend::simple("equivocation", &[100_000], &destination(), 50_000, 1_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS));

    let detected = observed_at(&cluster, |o| matches!(o, Observation::Equivocation { voter: NodeId(5), .. }));
    assert!(detected.len() >= 3, "honest nodes detecting node 5: {detected:?}");
    assert!(cluster
        .observed(|o| matches!(o, Observation::Equivocation { voter, .. } if *voter != NodeId(5)))
        .is_empty());
    // Both signed votes are kept as evidence.
    let evidence = cluster.hosts()[&NodeId(3)].store.iter().find_map(|r| match r {
        Record::Evidence(e) => Some(e.clone()),
        _ => None,
    });
    let e = evidence.expect("node 3 keeps evidence");
    assert_eq!(e.voter, NodeId(5));
    assert_ne!(e.first.body.decision, e.second.body.decision);
    let cfg = &cluster.hosts()[&NodeId(1)].config.cluster;
    assert!(e.first.verify(cfg).is_ok() && e.second.verify(cfg).is_ok(), "evidence is two valid signatures");
    // Four honest approvals still certify and sign it.
    assert_eq!(scenario::state_at(&cluster, NodeId(3), tx), Some(TxState::Signed));
    assert_invariants(&cluster, &[5]);
}

#[test]
fn bad_partial_signature_is_detected_attributed_and_retried() {
    let (mut cluster, key) = keyed_cluster(13, |_| {});
    scenario::fill_pool(&mut cluster, NodeId(1), 3).unwrap();
    // Node 2 answers every signing request with a corrupted partial signature.
    cluster.set_interceptor(|from, env: &mut Envelope| {
        if from == NodeId(2) {
            if let PeerMessage::SigningResponse { result: Ok(PartialSig(sigma)), .. } = &mut env.msg {
                sigma[31] ^= 0x01;
            }
        }
        Delivery::Deliver
    });
    // Transactions until one's presignature has node 2 among its signers
    // (which one is picked depends on the transaction); each is signed.
    let named_yet =
        |c: &mpc_sim::Cluster| !c.observed(|o| matches!(o, Observation::BadPartialSignature { .. })).is_empty();
    let mut tx = None;
    for i in 0..4 {
        let spend = Spend::simple(&format!("bad-partial-{i}"), &[100_000], &destination(), 50_000, 1_000);
        let t = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
        assert!(scenario::wait_final(&mut cluster, t, SIGN_BUDGET_MS));
        assert_eq!(scenario::state_at(&cluster, NodeId(1), t), Some(TxState::Signed));
        tx = Some(t);
        if named_yet(&cluster) {
            break;
        }
    }
    let tx = tx.expect("submitted");
    let named = cluster.observed(|o| matches!(o, Observation::BadPartialSignature { .. }));
    assert!(!named.is_empty(), "the cheating signer must be named");
    for (_, o) in &named {
        assert!(matches!(o, Observation::BadPartialSignature { signer: NodeId(2), .. }), "{o:?}");
    }
    assert!(!cluster.observed(|o| matches!(o, Observation::SigningRetried { .. })).is_empty());
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Signed));
    assert_invariants(&cluster, &[2]);
}

#[test]
fn crash_right_after_consumption_never_leads_to_reuse() {
    let (mut cluster, key) = keyed_cluster(14, |_| {});
    scenario::fill_pool(&mut cluster, NodeId(1), 3).unwrap();
    // The first signer other than the coordinator (node 1) to consume
    // crashes right after its consumption is durable, before its partial
    // signature leaves. (Which signer that is depends on the seed.)
    let crashed = Rc::new(RefCell::new(None));
    let seen = crashed.clone();
    cluster.set_crash_point(move |node, records| {
        let consumed = records.iter().find_map(|r| match r {
            Record::PresigConsumed { id, .. } => Some(*id),
            _ => None,
        });
        match consumed {
            Some(id) if node != NodeId(1) && seen.borrow().is_none() => {
                *seen.borrow_mut() = Some((node, id));
                true
            }
            _ => false,
        }
    });
    // Capture what the signers answer from now on.
    let answers: Rc<RefCell<Vec<(NodeId, PeerMessage)>>> = Rc::default();
    let sink = answers.clone();
    cluster.set_interceptor(move |from, env: &mut Envelope| {
        if matches!(env.msg, PeerMessage::SigningResponse { .. }) {
            sink.borrow_mut().push((from, env.msg.clone()));
        }
        Delivery::Deliver
    });
    let spend = Spend::simple("crash", &[70_000, 80_000], &destination(), 100_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    cluster.run_until(SIGN_BUDGET_MS, |c| c.ids().iter().any(|id| !c.is_up(*id)));
    let (victim, presig) = crashed.borrow().expect("a signer consumed a presignature and crashed");
    assert!(!answers.borrow().iter().any(|(from, _)| *from == victim), "nothing left {victim} after the crash point");
    cluster.clear_crash_point();
    cluster.run_for(1_000);
    cluster.restart(victim).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS));
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Signed));
    // The coordinator asked the silent signer again half a signing timeout
    // in; restarted by then, it repeated the partial signature its records
    // hold, so the input finished with the same presignature, no retry.
    let retried = cluster.observed(|o| matches!(o, Observation::SigningRetried { .. }));
    assert!(retried.is_empty(), "the restarted signer's answer should have served: {retried:?}");

    // The restarted node still knows the presignature as consumed: asked to
    // use it for the other input's message, it refuses; asked again for the
    // original message, it repeats the same partial signature.
    let (input, certificate) = {
        let store = &cluster.hosts()[&victim].store;
        let input = store
            .iter()
            .find_map(|r| match r {
                Record::PresigConsumed { id, input, .. } if *id == presig => Some(*input),
                _ => None,
            })
            .unwrap();
        let votes: Vec<SignedVote> = cluster.hosts()[&NodeId(1)]
            .store
            .iter()
            .filter_map(|r| match r {
                Record::OwnVote { vote, .. } | Record::Vote(vote) if vote.body.tx == tx => Some(vote.clone()),
                _ => None,
            })
            .collect();
        (input, mpc_core::vote::ApprovalCertificate { tx, votes })
    };
    answers.borrow_mut().clear();
    let other = 1 - input;
    for asked in [other, input] {
        let msg = PeerMessage::SigningRequest { tx, input: asked, presig, certificate: certificate.clone() };
        cluster.inject(NodeId(1), victim, msg);
    }
    cluster.run_for(1_000);
    let answers: Vec<PeerMessage> =
        answers.borrow().iter().filter(|(from, _)| *from == victim).map(|(_, m)| m.clone()).collect();
    assert_eq!(answers.len(), 2);
    assert!(matches!(
        &answers[0],
        PeerMessage::SigningResponse { result: Err(SigningRefusal::PresignatureUsedElsewhere), .. }
    ));
    let stored_sigma = cluster.hosts()[&victim].store.iter().find_map(|r| match r {
        Record::PresigConsumed { id, sigma, .. } if *id == presig => Some(*sigma),
        _ => None,
    });
    assert!(matches!(
        &answers[1],
        PeerMessage::SigningResponse { result: Ok(PartialSig(s)), .. } if Some(*s) == stored_sigma
    ));
    assert_invariants(&cluster, &[]);
}

#[test]
fn tampered_foreign_and_misaddressed_votes_are_refused() {
    let (mut cluster, key) = keyed_cluster(15, |_| {});
    let spend = Spend::simple("forged", &[100_000], &destination(), 50_000, 1_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    cluster.run_for(100);
    // Node 4 relays node 2's vote with the decision flipped: the signature
    // no longer verifies.
    let genuine = cluster.hosts()[&NodeId(2)]
        .store
        .iter()
        .find_map(|r| match r {
            Record::OwnVote { vote, .. } => Some(vote.clone()),
            _ => None,
        })
        .unwrap();
    let mut tampered = genuine.clone();
    tampered.body.decision = Decision::Reject("forged".into());
    cluster.inject(NodeId(4), NodeId(1), PeerMessage::Vote(tampered));
    // A vote from a key that is not a member, claiming id 9.
    let stranger = mpc_sim::setup::vote_key("test-cluster", NodeId(9));
    let foreign =
        SignedVote::sign(VoteBody { tx, voter: NodeId(9), decision: Decision::Approve }, &stranger, "test-cluster");
    cluster.inject(NodeId(4), NodeId(1), PeerMessage::Vote(foreign.clone()));
    // A vote arriving over a connection from a non-member.
    cluster.inject(NodeId(9), NodeId(1), PeerMessage::Vote(foreign));
    // Node 2's genuine vote, re-signed by node 4's key: forged.
    let mut impersonated =
        SignedVote::sign(genuine.body.clone(), &mpc_sim::setup::vote_key("test-cluster", NodeId(4)), "test-cluster");
    impersonated.body.voter = NodeId(2);
    cluster.inject(NodeId(4), NodeId(1), PeerMessage::Vote(impersonated));
    cluster.run_for(100);

    let forged = cluster.observed(|o| matches!(o, Observation::ForgedVote { .. }));
    assert_eq!(forged.len(), 2, "{forged:?}");
    assert!(forged.iter().all(|(at, o)| *at == NodeId(1)
        && matches!(o, Observation::ForgedVote { claimed_voter: NodeId(2), from: NodeId(4) })));
    assert_eq!(
        cluster.observed(|o| matches!(o, Observation::ForeignVote { voter: NodeId(9), from: NodeId(4) })).len(),
        1
    );
    assert_eq!(cluster.observed(|o| matches!(o, Observation::RejectedMessage { from: NodeId(9), .. })).len(), 1);
    // None of it counted: no equivocation blamed on node 2, and the
    // transaction approved on the genuine votes.
    assert!(cluster.observed(|o| matches!(o, Observation::Equivocation { .. })).is_empty());
    let state = scenario::state_at(&cluster, NodeId(1), tx);
    assert!(matches!(state, Some(TxState::Approved | TxState::Signing | TxState::Signed)), "{state:?}");
    // Node 4 sent the forgeries: it is the one blamed, node 2 is not.
    assert_invariants(&cluster, &[4]);
    assert!(mpc_sim::scenario::blame(&cluster).iter().all(|(_, accused)| *accused == NodeId(4)));
}

#[test]
fn same_seed_same_trace_and_restart_resumes_from_records() {
    let run = |seed: u64| {
        let (mut cluster, key) = keyed_cluster(seed, |c| {
            c.pool.low_water = 1;
            c.pool.target = 1;
            c.pool.parallel_sessions = 1;
        });
        scenario::fill_pool(&mut cluster, NodeId(1), 1).unwrap();
        let spend = Spend::simple("determinism", &[100_000], &destination(), 50_000, 1_000);
        let tx = scenario::submit(&mut cluster, NodeId(2), spend.psbt_bytes(&key)).unwrap();
        // Node 5 crashes mid-vote and comes back from its records.
        cluster.crash(NodeId(5));
        cluster.run_for(50);
        cluster.restart(NodeId(5)).unwrap();
        assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS));
        for id in cluster.ids() {
            assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed), "{id} after restart");
        }
        assert_eq!(cluster.node(NodeId(5)).group_key(), Some(&key), "key share recovered from records");
        assert_invariants(&cluster, &[]);
        cluster.trace_hash()
    };
    let a = run(21);
    let b = run(21);
    assert_eq!(a, b, "the same seed must give the same trace");
    let c = run(22);
    assert_ne!(a, c, "another seed gives another trace");
}

#[test]
fn a_two_of_three_cluster_signs_too() {
    // The threshold and membership are configuration: the same code signs
    // with two of three nodes (qa = 2, qr = 3, f = 0).
    let (mut cluster, key) = scenario::fixture_cluster("small-cluster", 16, 3, 2, |_| {}).unwrap();
    let config = cluster.hosts()[&NodeId(1)].config.cluster.clone();
    assert_eq!((config.threshold, config.approve_quorum, config.reject_quorum), (2, 2, 3));
    scenario::fill_pool(&mut cluster, NodeId(1), 1).unwrap();
    let spend = Spend::simple("small", &[100_000], &destination(), 50_000, 1_000);
    let tx = scenario::submit(&mut cluster, NodeId(3), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS));
    for id in cluster.ids() {
        assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed));
    }
    let signed = scenario::signed_tx(&cluster, tx).unwrap();
    key.script_pubkey().verify(0, spend.inputs[0].1, &serialize(&signed)).expect("libbitcoinconsensus accepts");
    let released = cluster.observed(|o| matches!(o, Observation::PartialSignatureReleased { .. }));
    assert_eq!(released.len(), 2, "exactly t = 2 partial signatures");
    assert_invariants(&cluster, &[]);
}

#[test]
fn duplicated_and_reordered_messages_are_harmless() {
    let (mut cluster, key) = keyed_cluster(61, |_| {});
    let mut k = 0u64;
    cluster.set_interceptor(move |_, _| {
        k += 1;
        match k % 3 {
            0 => Delivery::Duplicate(k % 17),
            1 => Delivery::Delay(k % 23),
            _ => Delivery::Deliver,
        }
    });
    scenario::fill_pool(&mut cluster, NodeId(1), 2).unwrap();
    let spend = Spend::simple("dup", &[100_000], &destination(), 50_000, 1_000);
    let tx = scenario::submit(&mut cluster, NodeId(2), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, 600_000));
    assert_eq!(scenario::state_at(&cluster, NodeId(3), tx), Some(TxState::Signed));
    // Duplicates never break a presigning session: the only presignatures
    // given up are ones the coordinator abandoned after a signer refused a
    // request that overtook the proposal (a waste, never a reuse).
    let failed = cluster.observed(
        |o| matches!(o, Observation::PresigDiscarded { reason, .. } if !reason.starts_with("abandoned by node-1")),
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_invariants(&cluster, &[]);
}

/// etcd unreachable, as the production coordination layer reports it: no
/// node holds the lease. Signing of approved work goes on (signing needs no
/// leader); presignature refill, the leader-only work, waits until a lease
/// holder returns.
#[test]
fn without_a_lease_holder_signing_goes_on_and_refill_waits() {
    let (mut cluster, key) = keyed_cluster(12, |c| {
        c.pool.low_water = 5;
        c.pool.target = 5;
    });
    scenario::fill_pool(&mut cluster, NodeId(1), 3).unwrap();
    let sessions = |c: &mpc_sim::Cluster| -> usize {
        c.hosts().values().map(|h| h.store.iter().filter(|r| r.kind() == "presig_generating").count()).sum()
    };
    cluster.set_leader(None);
    // Sessions already under way finish; no new one may start.
    cluster.run_for(60_000);
    let (ready, before) = (cluster.node(NodeId(1)).status().pool_ready, sessions(&cluster));

    let spend = Spend::simple("no-leader", &[200_000], &destination(), 120_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(3), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS), "signing stalled without a leader");
    for id in cluster.ids() {
        assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed), "{id}");
    }
    cluster.run_for(60_000);
    let after = cluster.node(NodeId(1)).status().pool_ready;
    assert_eq!(after, ready - 1, "one presignature used, none made");
    assert!(after < 5, "below low water: a leader would refill now");
    assert_eq!(sessions(&cluster), before, "a presigning session started with no lease holder");

    // Coordination is back: refill resumes.
    cluster.set_leader(Some(NodeId(2)));
    let refilled = cluster.run_until(SIGN_BUDGET_MS, |c| c.node(NodeId(2)).status().pool_ready >= 5);
    assert!(refilled, "refill did not resume with a lease holder");
    assert!(sessions(&cluster) > before);
    assert_invariants(&cluster, &[]);
}

/// A refusal by the transport (here: an envelope naming another sender)
/// reaches the core as an input and leaves an observation naming the peer,
/// for metrics and the audit trail; the protocol is untouched.
#[test]
fn transport_refusals_become_observations() {
    let (mut cluster, _key) = keyed_cluster(13, |_| {});
    let reason = "envelope names sender node-3 but the certificate is node-2's".to_string();
    cluster.input(NodeId(1), mpc_core::Input::TransportRefused { peer: Some(NodeId(2)), reason: reason.clone() });
    cluster.run_for(1_000);
    let seen = cluster
        .observed(|o| matches!(o, Observation::TransportRefused { peer: Some(NodeId(2)), reason: r } if *r == reason));
    assert_eq!(seen.len(), 1);
    assert_invariants(&cluster, &[]);
}

/// Found by the cluster bench: a node restarted after signing offered the
/// presignatures it had coordinated (or held no share of) as ready again,
/// their signers refused them as used, and the refusals cost those honest
/// signers a minute of suspicion. `SignedTx` now records the presignatures
/// used, and replay marks them spent.
#[test]
fn a_restarted_node_still_knows_the_presignatures_signing_used_also_those_it_held_no_share_of() {
    let (mut cluster, key) = fixture_cluster(41);
    let spend = Spend::simple("spent-after-restart", &[70_000], &destination(), 60_000, 1_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, SIGN_BUDGET_MS));
    let used: Vec<mpc_core::PresigId> = cluster.hosts()[&NodeId(1)]
        .store
        .iter()
        .find_map(|r| match r {
            Record::SignedTx { tx: t, presigs, .. } if *t == tx => Some(presigs.clone()),
            _ => None,
        })
        .expect("node 1 recorded the signed transaction");
    assert_eq!(used.len(), 1, "one input, one presignature: {used:?}");
    let signers =
        cluster.node(NodeId(1)).durable_view().pool.iter().find(|p| p.id == used[0]).map(|p| p.signers.clone());
    let signers = signers.expect("node 1 knows the presignature's signers");
    // Every node, restarted: the outsiders (no share of it) too.
    for id in cluster.ids() {
        cluster.crash(id);
        cluster.restart(id).unwrap();
        let view = cluster.node(id).durable_view();
        let entry = view.pool.iter().find(|p| p.id == used[0]);
        assert!(
            entry.is_none_or(|p| p.used),
            "restarted node {id} (a signer: {}) holds the used {} as unused: {entry:?}",
            signers.contains(&id),
            used[0]
        );
    }
}
