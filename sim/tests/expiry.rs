//! Issue 11 item 9: an expired transaction has one outcome the whole
//! cluster agrees on, and a late certificate cannot sign it after an
//! operator was told it is safe to resubmit.

mod common;

use common::*;
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, TxState};
use mpc_sim::wallet::Spend;
use mpc_sim::{scenario, Delivery};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

#[test]
fn an_expiry_promised_by_a_quorum_fails_the_transaction_for_good_and_late_votes_change_nothing() {
    let (mut cluster, key) = fixture_cluster(81);
    cluster.set_leader(Some(NodeId(1)));
    // Every vote is held back until after the deadline: nobody can count
    // a quorum in time.
    let held: Rc<RefCell<Vec<(NodeId, Envelope)>>> = Rc::default();
    let holding = Rc::new(RefCell::new(true));
    {
        let (held, holding) = (held.clone(), holding.clone());
        cluster.set_interceptor(move |from, env: &mut Envelope| {
            if *holding.borrow() && matches!(env.msg, PeerMessage::Vote(_)) {
                held.borrow_mut().push((from, env.clone()));
                return Delivery::Drop;
            }
            Delivery::Deliver
        });
    }
    let spend = Spend::simple("late", &[60_000, 70_000], &destination(), 100_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    let vote_ms = cluster.hosts()[&NodeId(1)].config.cluster.timeouts.vote_ms;
    cluster.run_for(vote_ms + 5_000);
    let expired_reason = |s: &Option<TxState>| matches!(s, Some(TxState::Failed(r)) if r.starts_with("expired:"));
    for id in cluster.ids() {
        let state = scenario::state_at(&cluster, id, tx);
        assert!(expired_reason(&state), "{id}: {state:?}");
    }
    // The votes arrive after all: every node now holds a full approval.
    *holding.borrow_mut() = false;
    let late = std::mem::take(&mut *held.borrow_mut());
    assert!(late.len() >= 5, "the votes were held: the test proves nothing");
    for (from, env) in late {
        cluster.inject(from, env.to, env.msg);
    }
    cluster.run_for(120_000);
    for id in cluster.ids() {
        let state = scenario::state_at(&cluster, id, tx);
        assert!(expired_reason(&state), "{id} moved on after the expiry was certified: {state:?}");
    }
    let released = cluster.observed(|o| matches!(o, Observation::PartialSignatureReleased { tx: t, .. } if *t == tx));
    assert!(released.is_empty(), "a partial signature for an expired transaction: {released:?}");
    // Safe to resubmit: the same spend as a new PSBT is signed.
    let again = Spend::simple("late-again", &[60_000, 70_000], &destination(), 100_000, 2_000);
    let tx2 = scenario::submit(&mut cluster, NodeId(1), again.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx2, 600_000));
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx2), Some(TxState::Signed));
    assert_invariants(&cluster, &[]);
}

/// The case a plain count of promises left open: two members released
/// their partial signatures with a presignature whose third signer then
/// promised never to sign. Before, the two kept retrying (`Signing`)
/// while the other three showed `Expired`. Now the two see that, with the
/// promises kept, nothing can finish it: they stop and promise never to
/// release anything beyond what they did, and every node shows `Expired`.
/// It is not `Failed`: the third signer could be the Byzantine member and
/// still finish it, so no one may call it safe to resubmit.
#[test]
fn signers_that_released_partials_before_a_blocking_expiry_stop_and_the_cluster_agrees_it_expired() {
    let (mut cluster, key) = fixture_cluster(83);
    cluster.set_leader(Some(NodeId(1)));
    // Nodes 3, 4 and 5 hear of the proposal and of expiry notices only:
    // no votes, no certificate, no signing request reaches them, so their
    // deadlines pass while 1 and 2 approve and release their parts.
    let cut_off = |to: NodeId| to.0 >= 3;
    cluster.set_interceptor(move |_from, env: &mut Envelope| {
        if cut_off(env.to) && !matches!(env.msg, PeerMessage::Proposal { .. } | PeerMessage::Expiry(_)) {
            return Delivery::Drop;
        }
        Delivery::Deliver
    });
    let spend = Spend::simple("blocked", &[90_000], &destination(), 80_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    let timeouts = cluster.hosts()[&NodeId(1)].config.cluster.timeouts.clone();
    cluster.run_for(timeouts.vote_ms + 5_000);
    let released: BTreeSet<NodeId> = cluster
        .observed(|o| matches!(o, Observation::PartialSignatureReleased { tx: t, .. } if *t == tx))
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    assert_eq!(released, BTreeSet::from([NodeId(1), NodeId(2)]), "the premise: 1 and 2 released, no one else");
    for id in cluster.ids() {
        let state = scenario::state_at(&cluster, id, tx);
        assert_eq!(state, Some(TxState::Expired), "{id}");
    }
    // Nobody keeps trying: no retry, no new partial signature, later.
    let retries =
        |c: &mpc_sim::Cluster| c.observed(|o| matches!(o, Observation::SigningRetried { tx: t, .. } if *t == tx)).len();
    let (retries_then, released_then) = (retries(&cluster), released.len());
    cluster.run_for(20 * timeouts.signing_ms);
    assert_eq!(retries(&cluster), retries_then, "a node kept retrying an expired transaction");
    let released_later =
        cluster.observed(|o| matches!(o, Observation::PartialSignatureReleased { tx: t, .. } if *t == tx)).len();
    assert_eq!(released_later, released_then);
    for id in cluster.ids() {
        assert_eq!(scenario::state_at(&cluster, id, tx), Some(TxState::Expired), "{id}");
    }
    assert_invariants(&cluster, &[]);
}
