//! The network_partition suite: five real `mpc-node` processes (SQLite),
//! every QUIC link through a fault proxy the test controls
//! (`mpc_tests::fault_proxy`), cut and repaired while transactions are
//! submitted on both sides.
//!
//! - One node cut off: it sees no peer (health and `mpc_peers_connected`),
//!   the other four see three and sign; what is submitted to the cut-off
//!   node cannot be approved by it alone and waits. Healed, it reconnects,
//!   learns what was signed without it, and its own transaction is signed.
//! - A 2/3 split with the lease holder on the side of two: it gives the
//!   lease up (it reaches too few members to presign) and the side of
//!   three takes it, approves and signs (the approve quorum is 3 of 5)
//!   while a transaction submitted to the side of two waits; healed, it is
//!   signed too and all five agree.
//!
//! Etcd is not partitioned (one server on loopback): every node still
//! reaches it, so only the leadership gate (`mpc_node::leadership`) moves
//! the lease to the side that can sign and refill. Afterwards the five databases show
//! no presignature share used for two messages. Timeouts only guard
//! against hangs.

use mpc_node::api::types::{HealthView, TxStateName};
use mpc_sim::wallet::Spend;
use mpc_tests::audit::{assert_no_share_signed_two_messages, metric, records};
use mpc_tests::flow::{
    destination, dkg, signed_at, submit_psbt, transaction, wait_live, wait_pool, wait_state, MINUTES,
};
use mpc_tests::{wait_for, LocalCluster, Options};
use std::time::Duration;

fn spend(label: &str) -> Spend {
    Spend::simple(label, &[60_000], &destination(), 50_000, 2_000)
}

fn health(c: &LocalCluster, id: u16) -> Option<HealthView> {
    let (_, body) = c.api(id).get_public("/api/v1/health")?;
    serde_json::from_str::<HealthView>(&body).ok()
}

fn peers_connected(c: &LocalCluster, id: u16) -> Option<u64> {
    Some(health(c, id)?.peers_connected)
}

/// The lease holder all five agree on.
fn leader(c: &LocalCluster) -> u16 {
    wait_for("all five to agree on a leader", MINUTES, || {
        let seen: Vec<Option<u16>> =
            c.ids().iter().map(|id| health(c, *id).map(|h| h.leader)).collect::<Option<_>>()?;
        seen[0].filter(|l| seen.iter().all(|s| *s == Some(*l)))
    })
}

/// Waits until each node of `nodes` reports `peers` connected peers, in
/// health and in its metric.
fn wait_peers(c: &LocalCluster, nodes: &[u16], peers: u64) {
    for id in nodes {
        wait_for(&format!("node {id} to see {peers} peers"), 3 * MINUTES, || {
            (peers_connected(c, *id)? == peers).then_some(())
        });
        assert_eq!(metric(c, &[*id], "mpc_peers_connected"), peers as f64, "node {id}'s metric");
    }
}

/// `tx` is still short of approval at `nodes` after a pause in which it
/// would otherwise have been signed many times over.
fn still_waiting(c: &LocalCluster, nodes: &[u16], tx: &str) {
    std::thread::sleep(Duration::from_secs(5));
    for id in nodes {
        let v = transaction(c, *id, tx).expect("node answers");
        assert!(
            matches!(v.state, TxStateName::Received | TxStateName::Voting),
            "node {id}: {tx} is {} without a quorum of votes",
            v.state
        );
    }
}

#[test]
fn one_node_cut_off_then_a_two_three_split_each_healed() {
    let mut options = Options { fault_proxy: true, ..Options::default() };
    options.timeouts.signing_ms = 10_000;
    let mut c = LocalCluster::new("partition", options);
    c.start_all();
    wait_live(&c, &c.ids());
    wait_peers(&c, &c.ids(), 4);
    let key = dkg(&c);
    wait_pool(&c, 4);
    let proxy = c.proxy.as_ref().expect("the fault proxy");

    // One node cut off.
    proxy.isolate(5);
    wait_peers(&c, &[5], 0);
    wait_peers(&c, &[1, 2, 3, 4], 3);
    let by_four = spend("partition-four");
    let by_four_tx = submit_psbt(&c, 1, by_four.psbt_bytes(&key));
    wait_state(&c, &[1, 2, 3, 4], &by_four_tx, TxStateName::Signed, 5 * MINUTES);
    let alone = spend("partition-alone");
    let alone_tx = submit_psbt(&c, 5, alone.psbt_bytes(&key));
    still_waiting(&c, &[5], &alone_tx);
    assert!(transaction(&c, 1, &alone_tx).is_none(), "node 1 heard of a proposal made behind the cut");
    proxy.heal();
    wait_peers(&c, &c.ids(), 4);
    signed_at(&c, &c.ids(), &key, &by_four_tx, &by_four);
    signed_at(&c, &c.ids(), &key, &alone_tx, &alone);
    eprintln!("cut off and healed: node 5 caught up and its own transaction was signed");

    // A 2/3 split with the lease holder on the side of two: etcd still
    // answers it, but it reaches too few members to presign, so it gives
    // the lease up and the side of three takes it (and the refill of the
    // pool, whose presignatures may all name a member of the small side).
    wait_pool(&c, 4);
    let holder = leader(&c);
    let small: Vec<u16> = vec![holder, if holder == 1 { 2 } else { 1 }];
    let big: Vec<u16> = c.ids().into_iter().filter(|n| !small.contains(n)).collect();
    proxy.split(&small, &big);
    wait_peers(&c, &small, 1);
    wait_peers(&c, &big, 2);
    let moved = wait_for("the side of three to hold the lease", MINUTES, || {
        let seen: Vec<u16> = c.ids().iter().map(|id| health(&c, *id)?.leader).collect::<Option<_>>()?;
        (big.contains(&seen[0]) && seen.iter().all(|l| *l == seen[0])).then_some(seen[0])
    });
    eprintln!("split {small:?} / {big:?}: node {holder} gave the lease up, node {moved} took it");
    let three = spend("partition-three");
    let three_tx = submit_psbt(&c, big[0], three.psbt_bytes(&key));
    wait_state(&c, &big, &three_tx, TxStateName::Signed, 5 * MINUTES);
    let two = spend("partition-two");
    let two_tx = submit_psbt(&c, small[0], two.psbt_bytes(&key));
    still_waiting(&c, &small, &two_tx);
    proxy.heal();
    wait_peers(&c, &c.ids(), 4);
    signed_at(&c, &c.ids(), &key, &three_tx, &three);
    signed_at(&c, &c.ids(), &key, &two_tx, &two);
    eprintln!("split 2/3 and healed: both sides' transactions signed, all five agree");

    let consumed = assert_no_share_signed_two_messages(&records(&c));
    assert!(consumed >= 4 * 3, "four single-input transactions signed, yet {consumed} consumptions recorded");
}
