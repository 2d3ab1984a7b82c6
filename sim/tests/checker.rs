//! The checker bites: violations planted in a cluster's durable records are
//! reported. (The simulator's fault sweeps rely on these checks.)

mod common;

use common::*;
use mpc_core::vote::{Decision, Equivocation, SignedVote, VoteBody};
use mpc_core::{NodeId, Observation, PresigId, Record, TxEvent, TxId, TxState};
use std::collections::BTreeSet;

fn violations(cluster: &mpc_sim::Cluster) -> Vec<String> {
    mpc_sim::checker::check(cluster, &BTreeSet::new()).into_iter().map(|v| v.0).collect()
}

#[test]
fn planted_violations_are_each_caught() {
    let (mut cluster, _key) = keyed_cluster(41, |_| {});
    assert!(violations(&cluster).is_empty(), "a clean cluster passes");
    let tx = TxId([5; 32]);
    let presig = PresigId { origin: NodeId(1), seq: 99 };

    // 1. One signer's share consumed for two messages (across a crash its
    //    records survive). Two signers answering different messages is
    //    waste, not a violation.
    let consumed = |message| Record::PresigConsumed { id: presig, tx, input: 0, message, sigma: [0; 32] };
    cluster.hosts_mut().get_mut(&NodeId(3)).unwrap().store.push(consumed([2; 32]));
    cluster.hosts_mut().get_mut(&NodeId(2)).unwrap().store.push(consumed([1; 32]));
    assert!(violations(&cluster).is_empty(), "{:?}", violations(&cluster));
    assert_eq!(mpc_sim::checker::split_presignatures(&cluster), 1);
    cluster.hosts_mut().get_mut(&NodeId(2)).unwrap().store.push(consumed([3; 32]));
    assert!(violations(&cluster).iter().any(|v| v.contains("node-2 used its share")), "{:?}", violations(&cluster));

    // 2. A partial released without an approval certificate, and without a
    //    durable consumption.
    let now = cluster.now();
    cluster.observations.push((
        now,
        NodeId(4),
        Observation::PartialSignatureReleased { tx: TxId([6; 32]), input: 0, presig, message: [1; 32] },
    ));
    cluster.observation_store_len.push(0);
    let v = violations(&cluster);
    assert!(v.iter().any(|v| v.contains("approvals")), "{v:?}");
    assert!(v.iter().any(|v| v.contains("without a durable consumption")), "{v:?}");

    // 3. Conflicting final outcomes on two honest nodes.
    let other = TxId([7; 32]);
    cluster.hosts_mut().get_mut(&NodeId(1)).unwrap().store.push(Record::TxState { tx: other, state: TxState::Signed });
    cluster
        .hosts_mut()
        .get_mut(&NodeId(2))
        .unwrap()
        .store
        .push(Record::TxState { tx: other, state: TxState::Rejected });
    assert!(violations(&cluster).iter().any(|v| v.contains("conflicting outcomes")));

    // 4. An honest node blamed.
    cluster.observations.push((now, NodeId(1), Observation::Equivocation { voter: NodeId(3), tx }));
    cluster.observation_store_len.push(0);
    assert!(violations(&cluster).iter().any(|v| v.contains("blamed honest")));

    // 5. A signed transaction that fails Bitcoin Core's check.
    cluster.hosts_mut().get_mut(&NodeId(5)).unwrap().store.push(Record::SignedTx {
        tx: other,
        raw_tx: vec![0, 1, 2],
        presigs: Vec::new(),
    });
    assert!(violations(&cluster).iter().any(|v| v.contains("never accepted") || v.contains("fails verification")));

    // 6. A transition the lifecycle refuses (a rejected transaction
    //    signed), as the node reports it.
    cluster.observations.push((
        now,
        NodeId(2),
        Observation::IllegalTransition { tx: other, from: TxState::Rejected, event: TxEvent::SignatureComplete },
    ));
    cluster.observation_store_len.push(0);
    assert!(violations(&cluster).iter().any(|v| v.contains("SignatureComplete")), "{:?}", violations(&cluster));

    // An honest node must not certify an approval that needs the vote of a
    // member it holds equivocation evidence against. Two transactions with
    // the same three approvals (qa = 3) on node 1: one approved cleanly,
    // one approved after node 1 recorded node 5's two votes as evidence.
    // Only the second is a violation, so the check reads the evidence
    // rather than passing or failing on the votes alone.
    let sign = |voter: u16, tx: TxId, decision: Decision| {
        let key = mpc_sim::setup::vote_key("test-cluster", NodeId(voter));
        SignedVote::sign(VoteBody { tx, voter: NodeId(voter), decision }, &key, "test-cluster")
    };
    let (clean, tainted) = (TxId([8; 32]), TxId([9; 32]));
    {
        let mut hosts = cluster.hosts_mut();
        let store = &mut hosts.get_mut(&NodeId(1)).unwrap().store;
        for tx in [clean, tainted] {
            for voter in [2, 4, 5] {
                store.push(Record::Vote(sign(voter, tx, Decision::Approve)));
            }
            if tx == tainted {
                store.push(Record::Evidence(Equivocation {
                    voter: NodeId(5),
                    tx,
                    first: sign(5, tx, Decision::Approve),
                    second: sign(5, tx, Decision::Reject("x".into())),
                }));
            }
            store.push(Record::TxState { tx, state: TxState::Approved });
        }
    }
    let v = violations(&cluster);
    let knew = |tx: TxId| v.iter().any(|v| v.contains("knew equivocated") && v.contains(&tx.short()));
    assert!(!knew(clean), "three clean approvals were reported: {v:?}");
    assert!(knew(tainted), "an approval counting a known equivocator was not reported: {v:?}");
}
