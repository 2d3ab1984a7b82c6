//! Issue 11 item 5: final transactions and spent presignatures leave a
//! node's memory (the store keeps them), and nothing that left comes back:
//! a late proposal, vote or presigning start for it is recognised.

mod common;

use common::*;
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, PresigId, Record, TxId, TxState};
use mpc_sim::wallet::Spend;
use mpc_sim::{scenario, Cluster, Delivery};
use std::cell::RefCell;
use std::rc::Rc;

/// A short retention, so the test need not run an hour of virtual time.
const RETAIN_MS: u64 = 60_000;

fn cluster(seed: u64) -> (Cluster, mpc_core::tx::GroupKey) {
    fixture_cluster_with(seed, |c| {
        c.timeouts.gossip_window_ms = RETAIN_MS;
        c.timeouts.retain_final_ms = RETAIN_MS;
    })
}

fn accepted(cluster: &Cluster, node: NodeId, tx: TxId) -> usize {
    cluster.hosts()[&node].store.iter().filter(|r| matches!(r, Record::TxAccepted { tx: t, .. } if *t == tx)).count()
}

#[test]
fn a_final_transaction_leaves_memory_and_late_messages_never_revive_it() {
    let (mut cluster, key) = cluster(501);
    cluster.set_leader(Some(NodeId(1)));
    // Keep a copy of every message about the transaction, to replay later.
    let sent: Rc<RefCell<Vec<(NodeId, Envelope)>>> = Rc::default();
    {
        let sent = sent.clone();
        cluster.set_interceptor(move |from, env: &mut Envelope| {
            if matches!(env.msg, PeerMessage::Proposal { .. } | PeerMessage::Vote(_)) {
                sent.borrow_mut().push((from, env.clone()));
            }
            Delivery::Deliver
        });
    }
    let spend = Spend::simple("pruned", &[60_000], &destination(), 50_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(2), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, 600_000));
    for id in cluster.ids() {
        assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed), "{id}");
        assert_eq!(cluster.node(id).retained().transactions, 1, "{id}: held whole while recent");
    }
    cluster.run_for(RETAIN_MS + 20_000);
    for id in cluster.ids() {
        let held = cluster.node(id).retained();
        assert_eq!((held.transactions, held.settled), (0, 1), "{id}: {held:?}");
        assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Signed), "{id}: status lost the outcome");
    }
    // Everything said about it, said again.
    let late = std::mem::take(&mut *sent.borrow_mut());
    assert!(late.iter().any(|(_, e)| matches!(e.msg, PeerMessage::Proposal { .. })), "no proposal was captured");
    let votes_before = cluster.observed(|o| matches!(o, Observation::VoteCast { tx: t, .. } if *t == tx)).len();
    for (from, env) in late {
        cluster.inject(from, env.to, env.msg);
    }
    cluster.run_for(5_000);
    for id in cluster.ids() {
        assert_eq!(accepted(&cluster, id, tx), 1, "{id} accepted a settled transaction again");
        let held = cluster.node(id).retained();
        assert_eq!((held.transactions, held.orphan_votes), (0, 0), "{id} holds it again: {held:?}");
    }
    let votes_after = cluster.observed(|o| matches!(o, Observation::VoteCast { tx: t, .. } if *t == tx)).len();
    assert_eq!(votes_before, votes_after, "a node voted again on a settled transaction");
    assert_invariants(&cluster, &[]);
}

#[test]
fn spent_presignatures_leave_memory_and_a_late_start_for_one_is_refused() {
    let (mut cluster, key) = cluster(502);
    cluster.set_leader(Some(NodeId(1)));
    let pool_before: Vec<usize> = cluster.ids().iter().map(|id| cluster.node(*id).retained().pool).collect();
    let consumed_before = cluster.node(NodeId(1)).status().own_consumed;
    let spend = Spend::simple("spent", &[60_000, 70_000], &destination(), 100_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, 600_000));
    let used: Vec<(NodeId, PresigId)> = cluster
        .observed(|o| matches!(o, Observation::PartialSignatureReleased { tx: t, .. } if *t == tx))
        .into_iter()
        .filter_map(|(node, o)| match o {
            Observation::PartialSignatureReleased { presig, .. } => Some((node, presig)),
            _ => None,
        })
        .collect();
    assert!(used.len() >= 6, "two inputs, three signers each: {used:?}");
    let consumed_after = cluster.node(NodeId(1)).status().own_consumed;
    // Past the retention of the transaction, then a presigning timeout and
    // a sweep for the presignatures its inputs used.
    let presign_ms = cluster.hosts()[&NodeId(1)].config.cluster.timeouts.presign_ms;
    cluster.run_for(RETAIN_MS + presign_ms + 30_000);
    for (k, id) in cluster.ids().into_iter().enumerate() {
        let pool = cluster.node(id).retained().pool;
        assert!(pool + 2 <= pool_before[k], "{id}: pool view {} before, {pool} after", pool_before[k]);
    }
    assert_eq!(
        cluster.node(NodeId(1)).status().own_consumed,
        consumed_after,
        "status forgot consumed shares that left memory"
    );
    assert!(consumed_after > consumed_before);
    // A start for a presignature that was spent and forgotten: refused, and
    // no share is generated for it again.
    let (signer, presig) = used[0];
    let signers = cluster.hosts()[&signer]
        .store
        .iter()
        .find_map(|r| match r {
            Record::PresigReady { id, signers, .. } if *id == presig => Some(signers.clone()),
            _ => None,
        })
        .expect("the signer recorded its share");
    let generating = |c: &Cluster| {
        c.hosts()[&signer]
            .store
            .iter()
            .filter(|r| matches!(r, Record::PresigGenerating { id, .. } if *id == presig))
            .count()
    };
    let generating_before = generating(&cluster);
    let term = cluster.lease_term();
    cluster.inject(presig.origin, signer, PeerMessage::PresignStart { id: presig, signers, term });
    cluster.run_for(2_000);
    let refused = cluster.observed(|o| {
        matches!(o, Observation::RejectedMessage { kind, reason, .. }
            if kind == "presign_start" && reason.contains("spent and forgotten"))
    });
    assert!(refused.iter().any(|(n, _)| *n == signer), "the late start was not refused: {refused:?}");
    let regenerated = generating(&cluster);
    assert_eq!(regenerated, generating_before, "{signer} started a session for a spent presignature");
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_node_back_after_the_gossip_window_learns_how_its_open_transactions_ended() {
    let (mut cluster, key) = fixture_cluster_with(503, |c| {
        c.timeouts.gossip_window_ms = 30_000;
        c.timeouts.retain_final_ms = 3_600_000;
    });
    cluster.set_leader(Some(NodeId(1)));
    // Node 5 proposes the transaction and votes, but hears nothing back,
    // and goes down once the others have signed it.
    let deaf = Rc::new(RefCell::new(true));
    {
        let deaf = deaf.clone();
        cluster.set_interceptor(move |_, env: &mut Envelope| {
            if *deaf.borrow() && env.to == NodeId(5) {
                return Delivery::Drop;
            }
            Delivery::Deliver
        });
    }
    let spend = Spend::simple("lagging", &[60_000], &destination(), 50_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(5), spend.psbt_bytes(&key)).unwrap();
    assert!(
        cluster.run_until(600_000, |c| (1..=4).all(|i| scenario::state_at(c, NodeId(i), tx) == Some(TxState::Signed)))
    );
    cluster.crash(NodeId(5));
    *deaf.borrow_mut() = false;
    // Down for well past the gossip window: its peers no longer offer the
    // transaction to everyone, only to a node that lists it as open.
    cluster.run_for(120_000);
    cluster.restart(NodeId(5)).unwrap();
    let state = scenario::state_at(&cluster, NodeId(5), tx);
    assert!(state.as_ref().is_some_and(|s| !s.is_final()), "node 5 should come back with it open: {state:?}");
    assert!(
        cluster.run_until(120_000, |c| scenario::state_at(c, NodeId(5), tx) == Some(TxState::Signed)),
        "node 5 never learned the transaction was signed: {:?}",
        scenario::state_at(&cluster, NodeId(5), tx)
    );
    assert_invariants(&cluster, &[]);
}
