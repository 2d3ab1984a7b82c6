//! The steps the multi-process suites take through a cluster's HTTP API:
//! wait for the nodes, run DKG, fill the pool, submit a PSBT and follow it
//! through its states. Timeouts only guard against hangs.

use crate::{wait_for, LocalCluster};
use mpc_core::tx::GroupKey;
use mpc_node::api::types::{DkgStageName, DkgStatus, PresignatureStatus, SubmitAccepted, TransactionView, TxStateName};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

pub const MINUTES: Duration = Duration::from_secs(60);

pub fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("unexpected JSON {v}: {e}"))
}

/// Every node answers its health probe.
pub fn wait_live(c: &LocalCluster, ids: &[u16]) {
    for id in ids {
        wait_for(&format!("node {id} to answer"), MINUTES, || {
            let (_, body) = c.api(*id).get_public("/api/v1/health?probe=live")?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["live"] == Value::Bool(true)).then_some(())
        });
    }
}

pub fn dkg(c: &LocalCluster) -> GroupKey {
    let started = c.api(1).post_json("/api/v1/dkg/initiate", &Value::Null).expect("node 1 answers");
    assert_eq!(started.status, 202, "{:?}", started.body);
    let key = wait_for("every node to hold the same key", 15 * MINUTES, || {
        let keys: BTreeSet<String> = c
            .ids()
            .iter()
            .map(|id| {
                let s: DkgStatus = parse(&c.api(*id).get("/api/v1/dkg/status")?.body);
                (s.stage == DkgStageName::Done).then_some(s.public_key_hex?)
            })
            .collect::<Option<_>>()?;
        (keys.len() == 1).then(|| keys.into_iter().next().unwrap())
    });
    // A second DKG is refused with the key.
    let again = c.api(3).post_json("/api/v1/dkg/initiate", &Value::Null).unwrap();
    assert_eq!(again.status, 409, "{:?}", again.body);
    assert_eq!(again.body["error"]["public_key_hex"], Value::String(key.clone()));
    GroupKey::from_compressed(hex::decode(key).unwrap().try_into().unwrap()).unwrap()
}

/// Waits until node 1 sees `ready` presignatures ready. More than the
/// pool's low water may never come (refill starts below it), so that is
/// refused at once.
pub fn wait_pool(c: &LocalCluster, ready: u64) {
    assert!(
        ready <= c.options.pool.low_water as u64,
        "waiting for {ready} ready with a low water of {}: refill may stop short of it",
        c.options.pool.low_water
    );
    wait_for(&format!("{ready} presignatures ready"), 15 * MINUTES, || {
        let s: PresignatureStatus = parse(&c.api(1).get("/api/v1/presignatures/status")?.body);
        (s.ready >= ready).then_some(())
    });
}

/// Waits until no presigning session is in flight as any of `nodes` sees
/// it. A member killed then loses no session, so none times out later
/// and strikes it for a crash the test staged.
pub fn wait_pool_idle(c: &LocalCluster, nodes: &[u16]) {
    wait_for("no presigning session in flight", 15 * MINUTES, || {
        nodes
            .iter()
            .all(|n| {
                c.api(*n)
                    .get("/api/v1/presignatures/status")
                    .is_some_and(|a| parse::<PresignatureStatus>(&a.body).generating == 0)
            })
            .then_some(())
    });
}

/// Submits a PSBT to `node`; the transaction id it answers with.
pub fn submit_psbt(c: &LocalCluster, node: u16, psbt: Vec<u8>) -> String {
    let answer = c.api(node).post_bytes("/api/v1/transactions", psbt).expect("node answers");
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    parse::<SubmitAccepted>(&answer.body).tx_id
}

pub fn transaction(c: &LocalCluster, node: u16, tx: &str) -> Option<TransactionView> {
    let a = c.api(node).get(&format!("/api/v1/transactions/{tx}"))?;
    (a.status == 200).then(|| parse(&a.body))
}

pub fn wait_state(c: &LocalCluster, nodes: &[u16], tx: &str, state: TxStateName, limit: Duration) {
    wait_states(c, nodes, tx, &[state], limit);
}

/// Waits until `tx` is in one of `states` at every node of `nodes`; a
/// state it cannot leave for one of them fails the test at once (Signed
/// and Broadcast lead on to the chain's states, and a reorg takes
/// Confirmed back to Broadcast).
pub fn wait_states(c: &LocalCluster, nodes: &[u16], tx: &str, states: &[TxStateName], limit: Duration) {
    let on_the_way =
        |s: TxStateName| matches!(s, TxStateName::Signed | TxStateName::Broadcast | TxStateName::Confirmed);
    for node in nodes {
        wait_for(&format!("{tx} {states:?} at node {node}"), limit, || {
            let v = transaction(c, *node, tx)?;
            assert!(
                !v.state.is_final() || on_the_way(v.state) || states.contains(&v.state),
                "node {node}: {tx} ended {} ({:?})",
                v.state,
                v.failure_reason
            );
            states.contains(&v.state).then_some(())
        });
    }
}

/// The address every suite's policy allows paying to.
pub fn destination() -> bitcoin::Address {
    mpc_sim::setup::TEST_DESTINATION.parse::<bitcoin::Address<_>>().unwrap().assume_checked()
}

/// Waits until `tx` is Signed at each of `nodes`, and checks the signed
/// transaction each reports against `spend` and the group key.
pub fn signed_at(c: &LocalCluster, nodes: &[u16], key: &GroupKey, tx: &str, spend: &mpc_sim::wallet::Spend) {
    wait_state(c, nodes, tx, TxStateName::Signed, 5 * MINUTES);
    for id in nodes {
        crate::audit::verify_signed(&transaction(c, *id, tx).unwrap(), spend, key);
    }
}
