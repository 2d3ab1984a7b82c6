//! What the shells tell the core beyond messages: that consumptions cannot
//! be fenced (etcd unreachable), and that the node shuts down.

mod common;

use common::*;
use mpc_core::{Envelope, Input, NodeId, Observation, PeerMessage, Record, TxState};
use mpc_sim::scenario;
use mpc_sim::wallet::Spend;
use mpc_sim::Delivery;

const BUDGET_MS: u64 = 600_000;

/// DESIGN §4: while a node cannot fence a consumption in etcd it consumes
/// nothing; it refuses with a retryable reason and other signer sets sign.
#[test]
fn a_node_that_cannot_fence_refuses_to_sign_and_other_sets_sign() {
    let (mut cluster, key) = keyed_cluster(21, |c| {
        c.pool.low_water = 6;
        c.pool.target = 6;
        c.pool.max = 8;
    });
    scenario::fill_pool(&mut cluster, NodeId(1), 6).unwrap();
    cluster.input(NodeId(3), Input::Coordination { reachable: false });
    cluster.run_for(1_000);
    let mut txs = Vec::new();
    for i in 0..3 {
        let spend = Spend::simple(&format!("unfenced-{i}"), &[60_000, 70_000], &destination(), 100_000, 2_000);
        txs.push(scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap());
    }
    for tx in &txs {
        assert!(scenario::wait_final(&mut cluster, *tx, BUDGET_MS), "signing stalled");
        for id in cluster.ids() {
            assert_eq!(scenario::state_at(&cluster, id, *tx), Some(TxState::Signed), "{id}");
        }
    }
    let released = observed_at(&cluster, |o| matches!(o, Observation::PartialSignatureReleased { .. }));
    assert_eq!(released.get(&NodeId(3)), None, "node 3 released a partial signature it could not fence");
    let consumed =
        cluster.hosts()[&NodeId(3)].store.iter().filter(|r| matches!(r, Record::PresigConsumed { .. })).count();
    assert_eq!(consumed, 0, "node 3 consumed a presignature");
    let refused = observed_at(
        &cluster,
        |o| matches!(o, Observation::SigningRefused { reason, .. } if reason.contains("CoordinationUnavailable")),
    );
    assert!(refused.get(&NodeId(3)).copied().unwrap_or(0) > 0, "node 3 was never asked: the test proves nothing");

    // Fencing is back: once the others stop avoiding it (one suspicion
    // period, no strikes: a retryable refusal is no fault), node 3 signs again.
    cluster.input(NodeId(3), Input::Coordination { reachable: true });
    cluster.run_for(70_000);
    scenario::fill_pool(&mut cluster, NodeId(1), 6).unwrap();
    let before = released.get(&NodeId(3)).copied().unwrap_or(0);
    for i in 0..3 {
        let spend = Spend::simple(&format!("fenced-{i}"), &[60_000, 70_000], &destination(), 100_000, 2_000);
        let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
        assert!(scenario::wait_final(&mut cluster, tx, BUDGET_MS));
    }
    let after = observed_at(&cluster, |o| matches!(o, Observation::PartialSignatureReleased { .. }));
    assert!(after.get(&NodeId(3)).copied().unwrap_or(0) > before, "node 3 never signed again");
    assert_invariants(&cluster, &[]);
}

/// DESIGN §7, shutdown: the last step abandons the node's presigning
/// sessions at their peers at once (no peer waits for the deadline) and
/// persists the discards; a restart resumes from the records.
#[test]
fn shutdown_abandons_sessions_in_flight_at_their_peers() {
    let (mut cluster, _key) = keyed_cluster(22, |c| {
        c.pool.low_water = 4;
        c.pool.target = 4;
        c.pool.parallel_sessions = 4;
    });
    cluster.set_leader(Some(NodeId(1)));
    let generating = |c: &mpc_sim::Cluster| {
        let store = &c.hosts()[&NodeId(2)].store;
        store
            .iter()
            .filter_map(|r| match r {
                Record::PresigGenerating { id, .. } => Some(*id),
                _ => None,
            })
            .filter(|id| !store.iter().any(|r| matches!(r, Record::PresigReady { id: x, .. } | Record::PresigDiscarded { id: x, .. } if x == id)))
            .collect::<Vec<_>>()
    };
    assert!(cluster.run_until(BUDGET_MS, |c| !generating(c).is_empty()), "node 2 never joined a session");
    let in_flight = generating(&cluster);
    cluster.input(NodeId(2), Input::ShutDown);
    cluster.run_for(2_000);
    let store = cluster.hosts()[&NodeId(2)].store.clone();
    for id in &in_flight {
        assert!(
            store.iter().any(
                |r| matches!(r, Record::PresigDiscarded { id: x, reason } if x == id && reason.contains("shut down"))
            ),
            "{id} was not discarded at shutdown"
        );
    }
    // The peers heard at once: well before the presigning deadline.
    let abandoned_at_peers = cluster.observed(|o| {
        matches!(o, Observation::PresigDiscarded { id, reason } if in_flight.contains(id) && reason.contains("abandoned by node-2"))
    });
    assert!(!abandoned_at_peers.is_empty(), "no peer learnt of the abandoned sessions");
    assert!(abandoned_at_peers.iter().all(|(n, _)| *n != NodeId(2)));

    cluster.crash(NodeId(2));
    cluster.restart(NodeId(2)).unwrap();
    assert!(cluster.run_until(BUDGET_MS, |c| c.node(NodeId(1)).status().pool_ready >= 4), "refill did not resume");
    assert_invariants(&cluster, &[]);
}

/// Issue 11 item 6: the time of approval is not durable, so after a restart
/// every node starts its takeover clock when it first sees the approval
/// again. With the proposer down and every other member restarted after the
/// approval, one of them still takes over and the transaction is signed.
#[test]
fn restarted_members_take_over_signing_from_a_dead_proposer() {
    let (mut cluster, key) = keyed_cluster(23, |c| {
        c.pool.low_water = 6;
        c.pool.target = 6;
        c.pool.max = 8;
    });
    scenario::fill_pool(&mut cluster, NodeId(2), 6).unwrap();
    // No lease: the proposer coordinates, the others take over in turn.
    cluster.set_leader(None);
    cluster.run_for(1_000);
    // The proposer's proposal and vote go out; it never gets to sign.
    cluster.set_interceptor(|from, env: &mut Envelope| match (&env.msg, from) {
        (PeerMessage::Proposal { .. } | PeerMessage::Vote(_), _) => Delivery::Deliver,
        (_, NodeId(1)) => Delivery::Drop,
        _ => Delivery::Deliver,
    });
    let spend = Spend::simple("orphaned", &[60_000, 70_000], &destination(), 100_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    let others = [NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
    let approved = cluster
        .run_until(BUDGET_MS, |c| others.iter().all(|id| scenario::state_at(c, *id, tx) == Some(TxState::Approved)));
    assert!(approved, "the four live members never approved");
    cluster.crash(NodeId(1));
    for id in others {
        cluster.crash(id);
        cluster.restart(id).unwrap();
    }
    let signed = cluster
        .run_until(BUDGET_MS, |c| others.iter().all(|id| scenario::state_at(c, *id, tx) == Some(TxState::Signed)));
    let states: Vec<_> = others.iter().map(|id| (*id, scenario::state_at(&cluster, *id, tx))).collect();
    assert!(signed, "nobody took over signing after the restarts: {states:?}");
    let takers = observed_at(&cluster, |o| matches!(o, Observation::TxSigned { .. }));
    assert!(takers.keys().all(|id| others.contains(id)));
    // The proposer comes back on a healed network and catches up.
    cluster.set_interceptor(|_, _| Delivery::Deliver);
    cluster.restart(NodeId(1)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, BUDGET_MS));
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Signed));
    assert_invariants(&cluster, &[]);
}
