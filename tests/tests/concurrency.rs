//! The concurrency suite: five real `mpc-node` processes (node 2 on
//! PostgreSQL, the others on SQLite) taking submissions from many clients at
//! once.
//!
//! - Twenty distinct PSBTs from twenty threads, spread over the five
//!   nodes, with a pool far smaller than the load (signing waits for
//!   presignatures being made): every one ends Signed at every node, each
//!   verifies, and no two transactions were signed with one presignature.
//! - One PSBT submitted to all five nodes at the same moment: one
//!   transaction id from all five, signed once.
//!
//! Afterwards the five databases show no presignature share used for two
//! messages. Timeouts only guard against hangs.

use mpc_core::{PoolConfig, Record, TxId};
use mpc_node::api::types::TxStateName;
use mpc_sim::wallet::Spend;
use mpc_tests::audit::{assert_no_share_signed_two_messages, parse_tx, records, verify_signed};
use mpc_tests::flow::{destination, dkg, submit_psbt, transaction, wait_live, wait_pool, wait_state, MINUTES};
use mpc_tests::{LocalCluster, Options};
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn twenty_clients_at_once_and_one_psbt_submitted_to_all_five() {
    let mut options =
        Options { pool: PoolConfig { low_water: 3, target: 5, max: 6, parallel_sessions: 3 }, ..Options::default() };
    options.database_urls.insert(2, mpc_tests::fresh_postgres_database("concurrency"));
    let mut c = LocalCluster::new("concurrency", options);
    c.start_all();
    wait_live(&c, &c.ids());
    let key = dkg(&c);
    wait_pool(&c, 3);

    let spends: Vec<Spend> = (0..20)
        .map(|k| Spend::simple(&format!("concurrency-{k}"), &[50_000 + k as u64], &destination(), 40_000, 2_000))
        .collect();
    let submitted: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = spends
            .iter()
            .enumerate()
            .map(|(k, spend)| {
                let (c, key) = (&c, &key);
                s.spawn(move || submit_psbt(c, 1 + (k % 5) as u16, spend.psbt_bytes(key)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
    });
    assert_eq!(submitted.iter().collect::<BTreeSet<_>>().len(), 20, "twenty PSBTs, twenty transactions");
    for (tx, spend) in submitted.iter().zip(&spends) {
        wait_state(&c, &c.ids(), tx, TxStateName::Signed, 15 * MINUTES);
        for id in c.ids() {
            verify_signed(&transaction(&c, id, tx).unwrap(), spend, &key);
        }
    }

    // One PSBT, five nodes, one moment.
    let same = Spend::simple("concurrency-same", &[77_000], &destination(), 70_000, 2_000);
    let psbt = same.psbt_bytes(&key);
    let ids: BTreeSet<String> = std::thread::scope(|s| {
        let handles: Vec<_> = c
            .ids()
            .into_iter()
            .map(|node| {
                let (c, psbt) = (&c, psbt.clone());
                s.spawn(move || submit_psbt(c, node, psbt))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
    });
    assert_eq!(ids.len(), 1, "one PSBT became several transactions: {ids:?}");
    let same_tx = ids.into_iter().next().unwrap();
    wait_state(&c, &c.ids(), &same_tx, TxStateName::Signed, 5 * MINUTES);
    for id in c.ids() {
        verify_signed(&transaction(&c, id, &same_tx).unwrap(), &same, &key);
    }

    // No two signatures share a nonce: the r of every ECDSA signature (the
    // x coordinate of its presignature's R) is distinct across all 21.
    let mut nonces: BTreeMap<[u8; 32], String> = BTreeMap::new();
    for tx in submitted.iter().chain([&same_tx]) {
        let view = transaction(&c, 3, tx).unwrap();
        let raw = hex::decode(view.signed_tx_hex.unwrap()).unwrap();
        let signed: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(&raw).unwrap();
        for input in &signed.input {
            let der = input.witness.nth(0).expect("a signature");
            let sig = bitcoin::secp256k1::ecdsa::Signature::from_der(&der[..der.len() - 1]).expect("DER");
            let r: [u8; 32] = sig.serialize_compact()[..32].try_into().unwrap();
            if let Some(other) = nonces.insert(r, tx.clone()) {
                panic!("{tx} and {other} were signed with one presignature");
            }
        }
    }
    // From the databases: every transaction consumed presignatures, and no
    // share served two messages.
    let all = records(&c);
    assert_no_share_signed_two_messages(&all);
    let consumed: BTreeSet<TxId> = all
        .values()
        .flatten()
        .filter_map(|r| match r {
            Record::PresigConsumed { tx, .. } => Some(*tx),
            _ => None,
        })
        .collect();
    for tx in submitted.iter().chain([&same_tx]) {
        assert!(consumed.contains(&parse_tx(tx)), "no presignature consumed for {tx}");
    }
}
