//! Issue 11 item 12: a lost message or a signer that missed the proposal
//! costs no presignature. Each of the signers that answered consumed its
//! share for this message, so giving the presignature up would waste it.

mod common;

use common::*;
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, TxId};
use mpc_sim::wallet::Spend;
use mpc_sim::{scenario, Cluster, Delivery};
use std::cell::RefCell;
use std::rc::Rc;

fn retried(cluster: &Cluster, tx: TxId) -> Vec<(NodeId, Observation)> {
    cluster.observed(|o| matches!(o, Observation::SigningRetried { tx: t, .. } if *t == tx))
}

#[test]
fn a_lost_signing_request_is_asked_again_not_retried_with_another_presignature() {
    let (mut cluster, key) = fixture_cluster(601);
    cluster.set_leader(Some(NodeId(1)));
    // The first signing request to any signer other than the coordinator
    // is lost.
    let dropped = Rc::new(RefCell::new(0));
    {
        let dropped = dropped.clone();
        cluster.set_interceptor(move |from, env: &mut Envelope| {
            if *dropped.borrow() == 0 && from != env.to && matches!(env.msg, PeerMessage::SigningRequest { .. }) {
                *dropped.borrow_mut() += 1;
                return Delivery::Drop;
            }
            Delivery::Deliver
        });
    }
    let spend = Spend::simple("lost-request", &[60_000], &destination(), 50_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    assert!(scenario::wait_final(&mut cluster, tx, 600_000));
    assert_eq!(*dropped.borrow(), 1, "no request was lost: the test proves nothing");
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(mpc_core::TxState::Signed));
    assert!(retried(&cluster, tx).is_empty(), "a presignature was given up: {:?}", retried(&cluster, tx));
    let discarded = cluster.observed(|o| matches!(o, Observation::PresigDiscarded { .. }));
    assert!(discarded.is_empty(), "a share was discarded: {discarded:?}");
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_signer_that_missed_the_proposal_is_handed_it_and_signs() {
    let (mut cluster, key) = fixture_cluster(602);
    cluster.set_leader(Some(NodeId(1)));
    // Node 3 never receives votes, and the first copy of each proposal is
    // lost on its way to it: it learns of each transaction only when a
    // coordinator hands it over.
    let seen: Rc<RefCell<std::collections::BTreeSet<Vec<u8>>>> = Rc::default();
    cluster.set_interceptor(move |_, env: &mut Envelope| {
        if env.to != NodeId(3) {
            return Delivery::Deliver;
        }
        match &env.msg {
            PeerMessage::Vote(_) => Delivery::Drop,
            PeerMessage::Proposal { psbt } if seen.borrow_mut().insert(psbt.clone()) => Delivery::Drop,
            _ => Delivery::Deliver,
        }
    });
    let mut txs = Vec::new();
    for k in 0..4 {
        let spend = Spend::simple(&format!("missed-{k}"), &[60_000, 70_000], &destination(), 100_000, 2_000);
        txs.push(scenario::submit(&mut cluster, NodeId(2), spend.psbt_bytes(&key)).unwrap());
    }
    for tx in &txs {
        assert!(scenario::wait_final(&mut cluster, *tx, 600_000));
    }
    let unknown = cluster
        .observed(|o| matches!(o, Observation::SigningRefused { reason, .. } if reason.contains("UnknownTransaction")));
    assert!(!unknown.is_empty(), "node 3 was never asked while it lacked a proposal: the test proves nothing");
    for tx in &txs {
        let gave_up: Vec<_> = retried(&cluster, *tx)
            .into_iter()
            .filter(|(_, o)| matches!(o, Observation::SigningRetried { reason, .. } if reason.contains("UnknownTransaction")))
            .collect();
        assert!(gave_up.is_empty(), "{tx}: a presignature was given up for a missed proposal: {gave_up:?}");
    }
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_coordinator_that_crashed_before_announcing_a_signature_announces_it_on_restart() {
    let (mut cluster, key) = fixture_cluster(603);
    cluster.set_leader(Some(NodeId(1)));
    // The coordinator crashes right after its signed transaction is
    // durable, before its announcement leaves: nobody else knows.
    let crashed = Rc::new(RefCell::new(false));
    {
        let crashed = crashed.clone();
        cluster.set_crash_point(move |node, records| {
            let signed = records.iter().any(|r| matches!(r, mpc_core::Record::SignedTx { .. }));
            if node == NodeId(1) && signed && !*crashed.borrow() {
                *crashed.borrow_mut() = true;
                return true;
            }
            false
        });
    }
    let spend = Spend::simple("crash-signed", &[60_000], &destination(), 50_000, 2_000);
    let tx = scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap();
    cluster.run_until(600_000, |c| !c.is_up(NodeId(1)));
    assert!(*crashed.borrow(), "the coordinator never signed: the test proves nothing");
    cluster.clear_crash_point();
    assert!(
        (2..=5).all(|n| scenario::state_at(&cluster, NodeId(n), tx) != Some(mpc_core::TxState::Signed)),
        "a signature left node 1 before the crash point"
    );
    cluster.run_for(1_000);
    cluster.restart(NodeId(1)).unwrap();
    // Long before any other member would take over signing.
    cluster
        .run_until(5_000, |c| (2..=5).all(|n| scenario::state_at(c, NodeId(n), tx) == Some(mpc_core::TxState::Signed)));
    for n in 2..=5 {
        assert_eq!(scenario::state_at(&cluster, NodeId(n), tx), Some(mpc_core::TxState::Signed), "node {n}");
    }
    assert!(retried(&cluster, tx).is_empty(), "a presignature was spent again: {:?}", retried(&cluster, tx));
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_signer_down_before_its_request_costs_a_probe_not_a_presignature() {
    let (mut cluster, key) = fixture_cluster(604);
    cluster.set_leader(Some(NodeId(1)));
    // Crashed moments ago: still among the freshest for picking (heard
    // within a signing timeout), but it casts no vote on what comes next.
    cluster.crash(NodeId(4));
    cluster.run_for(500);
    let mut txs = Vec::new();
    for k in 0..3 {
        let spend = Spend::simple(&format!("down-{k}"), &[60_000, 70_000], &destination(), 100_000, 2_000);
        txs.push(scenario::submit(&mut cluster, NodeId(1), spend.psbt_bytes(&key)).unwrap());
    }
    for tx in &txs {
        assert!(scenario::wait_final(&mut cluster, *tx, 600_000));
        assert_eq!(scenario::state_at(&cluster, NodeId(1), *tx), Some(mpc_core::TxState::Signed));
    }
    let probed_4 = cluster
        .observed(|o| matches!(o, Observation::MemberSuspected { member, .. } if *member == NodeId(4)))
        .into_iter()
        .any(|(at, _)| at == NodeId(1));
    assert!(probed_4, "node 4 was never picked, so never found silent: the test proves nothing");
    for tx in &txs {
        assert!(retried(&cluster, *tx).is_empty(), "{tx}: a presignature was given up: {:?}", retried(&cluster, *tx));
    }
    let used = mpc_sim::checker::presignature_use(&cluster);
    assert_eq!(used.wasted, 0, "{used:?}");
    assert_eq!(used.served, 6, "one presignature per input: {used:?}");
    assert_invariants(&cluster, &[]);
}
