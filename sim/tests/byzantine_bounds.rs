//! Issue 11 item 4: what one Byzantine member can cost is bounded by what an
//! honest member can legitimately send. Each test is one Byzantine act in
//! the simulator (messages injected as if node 5 sent them, or node 5's own
//! answers rewritten) against the fixture cluster's real presignatures.

mod common;

use common::*;
use mpc_core::engine::PresigPublic;
use mpc_core::message::SigningRefusal;
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, PresigId, Record, SessionId, TxState};
use mpc_sim::wallet::Spend;
use mpc_sim::{scenario, Cluster, Delivery};
use std::collections::BTreeSet;

const BYZ: NodeId = NodeId(5);
const BUDGET_MS: u64 = 600_000;

/// Real presignatures with their signers and commitments, from node 1's records.
fn presignatures(cluster: &Cluster) -> Vec<(PresigId, Vec<NodeId>, PresigPublic)> {
    let hosts = cluster.hosts();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in &hosts[&NodeId(1)].store {
        let (id, signers, public) = match r {
            Record::PresigReady { id, signers, share } => (*id, signers.clone(), share.expose().public.clone()),
            Record::PresigAnnounced { id, signers, public, .. } => (*id, signers.clone(), public.clone()),
            _ => continue,
        };
        if seen.insert(id) {
            out.push((id, signers, public));
        }
    }
    out
}

fn rejected(cluster: &Cluster, at: NodeId, kind: &str) -> usize {
    cluster
        .observed(|o| matches!(o, Observation::RejectedMessage { from, kind: k, .. } if *from == BYZ && k == kind))
        .iter()
        .filter(|(n, _)| *n == at)
        .count()
}

#[test]
fn a_flood_of_made_up_presignature_announcements_is_bounded() {
    let (mut cluster, _key) = fixture_cluster(61);
    let real = presignatures(&cluster);
    let public = real[0].2.clone();
    let before = cluster.node(NodeId(1)).pool_entries();
    let ready_before = cluster.node(NodeId(1)).status().pool_ready;
    // Node 5 announces 2,000 presignatures nobody started, naming itself
    // a signer, and re-announces real ones it does not sign with itself in
    // the signer list (which would spoil them in every view).
    for seq in 0..2_000u64 {
        let id = PresigId { origin: NodeId(2), seq: 1_000_000 + seq };
        let signers = vec![NodeId(1), NodeId(2), BYZ];
        cluster.inject(BYZ, NodeId(1), PeerMessage::PresigReady { id, signers, public: public.clone() });
    }
    let foreign: Vec<_> = real.iter().filter(|(_, s, _)| !s.contains(&BYZ)).cloned().collect();
    assert!(!foreign.is_empty(), "the fixture has presignatures without node 5");
    for (id, signers, public) in &foreign {
        let mut fake: Vec<NodeId> = signers.iter().copied().filter(|s| *s != signers[0]).chain([BYZ]).collect();
        fake.sort();
        cluster.inject(BYZ, NodeId(1), PeerMessage::PresigReady { id: *id, signers: fake, public: public.clone() });
    }
    cluster.run_for(5_000);
    let cfg = cluster.hosts()[&NodeId(1)].config.cluster.pool.clone();
    let allowance = cfg.max + cfg.parallel_sessions;
    let after = cluster.node(NodeId(1)).pool_entries();
    assert!(after <= before + allowance, "{after} pool entries from {before}: the flood was not bounded");
    assert!(rejected(&cluster, NodeId(1), "presig_ready") >= 2_000 - allowance, "the excess was not refused");
    assert_eq!(cluster.node(NodeId(1)).status().pool_ready, ready_before, "a fake signer list spoiled a presignature");
    let persisted = cluster.hosts()[&NodeId(1)]
        .store
        .iter()
        .filter(|r| matches!(r, Record::PresigAnnounced { from, .. } if *from == BYZ))
        .count();
    assert!(persisted <= allowance, "{persisted} announcements of node 5 persisted");
    // Made-up announcements are not sessions in flight: neither the total
    // (which would stall refill) nor the per-set status counts them.
    let status = cluster.node(NodeId(1)).status();
    let sets_generating: usize = status.pool_sets.iter().map(|p| p.generating).sum();
    assert_eq!((status.pool_generating, sets_generating), (0, 0), "announcements counted as generating");
}

#[test]
fn early_protocol_messages_for_sessions_that_never_start_are_bounded_and_aged_out() {
    let (mut cluster, _key) = fixture_cluster(62);
    let megabyte = vec![0xab; 1 << 20];
    for seq in 0..200u64 {
        let session = SessionId::Presign(PresigId { origin: NodeId(3), seq: 5_000_000 + seq });
        for _ in 0..2 {
            let msg = PeerMessage::Protocol { session, broadcast: true, payload: megabyte.clone() };
            cluster.inject(BYZ, NodeId(1), msg);
        }
    }
    cluster.run_for(2_000);
    let (messages, bytes) = cluster.node(NodeId(1)).early_messages_held();
    assert!(messages > 0, "nothing was held: the test proves nothing");
    assert!(bytes <= 32 << 20, "{bytes} bytes held for one sender");
    assert!(rejected(&cluster, NodeId(1), "protocol") > 0, "the excess was not refused");
    // Nothing waits longer than its session could run.
    let presign_ms = cluster.hosts()[&NodeId(1)].config.cluster.timeouts.presign_ms;
    cluster.run_for(presign_ms + 2_000);
    assert_eq!(cluster.node(NodeId(1)).early_messages_held(), (0, 0), "held messages never aged out");
}

#[test]
fn only_signers_initiators_and_requesters_may_abandon_a_presignature() {
    let (mut cluster, _key) = fixture_cluster(63);
    let ready_before = cluster.node(NodeId(1)).status().pool_ready;
    let foreign: Vec<PresigId> =
        presignatures(&cluster).into_iter().filter(|(_, s, _)| !s.contains(&BYZ)).map(|(id, _, _)| id).collect();
    for id in &foreign {
        for to in [NodeId(1), NodeId(2), NodeId(3), NodeId(4)] {
            cluster.inject(BYZ, to, PeerMessage::PresigAbandon { id: *id });
        }
    }
    // Its initiator may give up on a session still running, not on a
    // finished presignature.
    let finished: Vec<(PresigId, Vec<NodeId>)> = presignatures(&cluster)
        .into_iter()
        .filter(|(id, s, _)| !s.contains(&id.origin))
        .map(|(id, s, _)| (id, s))
        .collect();
    assert!(!finished.is_empty(), "the fixture has presignatures their initiator does not sign");
    for (id, signers) in &finished {
        for s in signers {
            cluster.inject(id.origin, *s, PeerMessage::PresigAbandon { id: *id });
        }
    }
    cluster.run_for(5_000);
    let discarded = cluster.observed(|o| matches!(o, Observation::PresigDiscarded { .. }));
    assert!(discarded.is_empty(), "honest signers discarded finished presignatures: {discarded:?}");
    assert!(rejected(&cluster, NodeId(1), "presig_abandon") > 0);
    assert_eq!(cluster.node(NodeId(1)).status().pool_ready, ready_before);
}

#[test]
fn a_member_that_refuses_every_request_is_suspected_and_the_cluster_still_signs() {
    let (mut cluster, key) = fixture_cluster(64);
    cluster.set_leader(Some(NodeId(1)));
    // Node 5 answers every signing request with a refusal that costs the
    // presignature.
    cluster.set_interceptor(|from, env: &mut Envelope| {
        if from == BYZ {
            if let PeerMessage::SigningResponse { result, .. } = &mut env.msg {
                *result = Err(SigningRefusal::PresignatureUsedElsewhere);
            }
        }
        Delivery::Deliver
    });
    let mut txs = Vec::new();
    for i in 0..4 {
        let spend = Spend::simple(&format!("refused-{i}"), &[60_000, 70_000], &destination(), 100_000, 2_000);
        txs.push(scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap());
    }
    for tx in &txs {
        assert!(scenario::wait_final(&mut cluster, *tx, BUDGET_MS), "signing stalled");
        assert_eq!(scenario::state_at(&cluster, NodeId(1), *tx), Some(TxState::Signed));
    }
    let suspected = cluster.observed(|o| matches!(o, Observation::MemberSuspected { member, .. } if *member == BYZ));
    assert!(suspected.iter().any(|(n, _)| *n == NodeId(1)), "the coordinator never suspected the refuser");
    // Suspicion keeps node 5 out of the signer sets picked afterwards: it
    // costs a few presignatures, not one per input of every transaction.
    let refused = cluster
        .observed(|o| matches!(o, Observation::SigningRetried { reason, .. } if reason.contains("node-5 refused")))
        .len();
    assert!(refused > 0, "node 5 was never asked: the test proves nothing");
    assert!(refused <= 2, "node 5's refusals cost {refused} presignatures");
    assert_invariants(&cluster, &[5]);
}

/// The sweep's wasted fraction (`checker::presignature_use`) counts
/// presignatures, not shares: one abandoned by a signer is discarded
/// at each of its three signers and counts once; those that served a
/// signature count as made, not wasted.
#[test]
fn presignature_waste_counts_each_presignature_once() {
    let (mut cluster, key) = fixture_cluster(65);
    let waste = |c: &Cluster| {
        let u = mpc_sim::checker::presignature_use(c);
        (u.made, u.wasted)
    };
    assert_eq!(waste(&cluster), (40, 0), "the fixture pool: 40 made, none wasted");
    let (id, signers, _) = presignatures(&cluster)[0].clone();
    // One signer gives up on it (a signer may: its share is part of it);
    // the others discard theirs and pass it on.
    for s in &signers[1..] {
        cluster.inject(signers[0], *s, PeerMessage::PresigAbandon { id });
    }
    cluster.run_for(2_000);
    let discards = cluster.observed(|o| matches!(o, Observation::PresigDiscarded { id: d, .. } if *d == id)).len();
    assert_eq!(discards, signers.len(), "each signer discarded its share");
    assert_eq!(waste(&cluster), (40, 1));
    cluster.set_leader(Some(NodeId(1)));
    let spend = Spend::simple("served", &[60_000, 70_000], &destination(), 100_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, BUDGET_MS));
    assert_eq!(waste(&cluster), (40, 1), "a signature is no waste");
}

/// Issue 11 items 10 and 17: a member that garbles its cggmp24 round
/// messages (cut short to even-numbered members, one byte flipped to
/// odd-numbered ones) is named by the failure of the session it spoiled,
/// suspected by who named it, and the pool fills without it. No honest
/// member is ever blamed.
#[test]
fn garbled_round_messages_are_pinned_on_their_sender() {
    let garbler = NodeId(2);
    let (mut cluster, _key) = keyed_cluster(62, |c| {
        c.pool.low_water = 3;
        c.pool.target = 3;
        c.pool.max = 3;
        c.pool.parallel_sessions = 3;
    });
    cluster.set_interceptor(move |from, env: &mut Envelope| {
        if from == garbler {
            mpc_sim::sweep::garble_protocol_message(env);
        }
        Delivery::Deliver
    });
    let leader = NodeId(1);
    cluster.set_leader(Some(leader));
    let blaming = |cluster: &Cluster| -> BTreeSet<NodeId> {
        cluster
            .observed(|o| matches!(o, Observation::ProtocolFailed { blamed, .. } if blamed.contains(&garbler)))
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert!(
        cluster.run_until(BUDGET_MS, |c| !blaming(c).is_empty() && c.node(leader).status().pool_ready >= 3),
        "the garbler was never named, or the pool never filled without it"
    );
    for (node, o) in cluster.observed(|o| matches!(o, Observation::ProtocolFailed { .. })) {
        if let Observation::ProtocolFailed { blamed, reason, .. } = o {
            assert!(blamed.iter().all(|b| *b == garbler), "{node} blamed an honest member: {reason}");
        }
    }
    let suspecting: BTreeSet<NodeId> = cluster
        .observed(|o| matches!(o, Observation::MemberSuspected { member, .. } if *member == garbler))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(blaming(&cluster).is_subset(&suspecting), "a member named the garbler but did not suspect it");
    assert_invariants(&cluster, &[garbler.0]);
}
