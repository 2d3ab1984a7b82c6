//! Issue 11 item 9: an expired transaction has one outcome the whole
//! cluster agrees on, and a late certificate cannot sign it after an
//! operator was told it is safe to resubmit.

mod common;

use common::*;
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, TxState};
use mpc_sim::wallet::Spend;
use mpc_sim::{scenario, Delivery};
use std::cell::RefCell;
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
