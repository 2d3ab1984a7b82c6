//! What the suites check after the fact: the signed transaction against
//! the consensus rules, the five databases as a restart reads them, the
//! nodes' metrics, and promtool's view of them.

use crate::LocalCluster;
use mpc_core::tx::GroupKey;
use mpc_core::{NodeId, PresigId, Record, TxId};
use mpc_node::api::types::TransactionView;
use mpc_sim::wallet::Spend;
use std::collections::{BTreeMap, BTreeSet};

/// libbitcoinconsensus on every input, from the signed bytes and the
/// prevouts alone; a flipped signature byte fails the same check; and the
/// signed PSBT a wallet takes back extracts to the same transaction.
pub fn verify_signed(view: &TransactionView, spend: &Spend, key: &GroupKey) {
    use base64::Engine;
    let raw = hex::decode(view.signed_tx_hex.as_ref().expect("signed transaction")).unwrap();
    let signed: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(&raw).unwrap();
    assert_eq!(view.txid.as_deref(), Some(signed.compute_txid().to_string().as_str()));
    for (i, (_, value)) in spend.inputs.iter().enumerate() {
        key.script_pubkey().verify(i, *value, &raw).unwrap_or_else(|e| panic!("input {i}: {e:?}"));
    }
    let mut bad = signed.clone();
    let mut items = bad.input[0].witness.to_vec();
    items[0][8] ^= 1;
    bad.input[0].witness = bitcoin::Witness::from_slice(&items);
    let bad_raw = bitcoin::consensus::encode::serialize(&bad);
    assert!(key.script_pubkey().verify(0, spend.inputs[0].1, &bad_raw).is_err());
    let psbt = base64::engine::general_purpose::STANDARD
        .decode(view.signed_psbt_base64.as_ref().expect("a signed PSBT once signed"))
        .unwrap();
    let extracted = bitcoin::psbt::Psbt::deserialize(&psbt).unwrap().extract_tx().expect("finalized");
    assert_eq!(bitcoin::consensus::encode::serialize(&extracted), raw);
}

/// Every node's records, read from its database as a restart reads them
/// (the nodes should be stopped or idle: SQLite allows the reader).
pub fn records(c: &LocalCluster) -> BTreeMap<u16, Vec<Record>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    c.ids()
        .into_iter()
        .map(|id| {
            let recs = rt.block_on(async {
                let key = mpc_io_store::MasterKey::from_file(&c.master_key_file(id)).unwrap();
                let store = mpc_io_store::Store::open(&c.database_url(id), key, NodeId(id)).await.unwrap();
                let r = store.recover().await.unwrap();
                store.close().await;
                r.records
            });
            (id, recs)
        })
        .collect()
}

/// DESIGN §5 invariant 1, from the databases: each signer's share of a
/// presignature served at most one message. Returns how many consumptions
/// the databases hold.
pub fn assert_no_share_signed_two_messages(all: &BTreeMap<u16, Vec<Record>>) -> usize {
    let mut messages: BTreeMap<PresigId, BTreeSet<[u8; 32]>> = BTreeMap::new();
    let mut consumed = 0;
    for (node, recs) in all {
        let mut mine: BTreeMap<PresigId, [u8; 32]> = BTreeMap::new();
        for r in recs {
            if let Record::PresigConsumed { id, message, .. } = r {
                consumed += 1;
                if let Some(other) = mine.insert(*id, *message) {
                    assert_eq!(other, *message, "node {node} used its share of {id} for two messages");
                }
                messages.entry(*id).or_default().insert(*message);
            }
        }
    }
    // Different signers of one presignature answering different messages
    // (two coordinators that collided) is waste, not a leak: each share
    // still signed one message. Counted, as the simulator counts it.
    let split = messages.values().filter(|m| m.len() > 1).count();
    if split > 0 {
        eprintln!("{split} presignature(s) split between messages by colliding coordinators (wasted, safe)");
    }
    consumed
}

/// The signers of every presignature, as node `from` recorded them.
pub fn signer_sets(all: &BTreeMap<u16, Vec<Record>>, from: u16) -> BTreeMap<PresigId, Vec<NodeId>> {
    all[&from]
        .iter()
        .filter_map(|r| match r {
            Record::PresigAnnounced { id, signers, .. }
            | Record::PresigReady { id, signers, .. }
            | Record::PresigGenerating { id, signers } => Some((*id, signers.clone())),
            _ => None,
        })
        .collect()
}

/// The presignatures any node consumed for `tx`, with the nodes that did.
pub fn consumed_for(all: &BTreeMap<u16, Vec<Record>>, tx: TxId) -> BTreeMap<PresigId, BTreeSet<u16>> {
    let mut out: BTreeMap<PresigId, BTreeSet<u16>> = BTreeMap::new();
    for (node, recs) in all {
        for r in recs {
            if let Record::PresigConsumed { id, tx: t, .. } = r {
                if *t == tx {
                    out.entry(*id).or_default().insert(*node);
                }
            }
        }
    }
    out
}

/// The reasons each node recorded for discarding its shares.
pub fn discards(all: &BTreeMap<u16, Vec<Record>>) -> BTreeMap<u16, Vec<(PresigId, String)>> {
    all.iter()
        .map(|(node, recs)| {
            let d = recs
                .iter()
                .filter_map(|r| match r {
                    Record::PresigDiscarded { id, reason } => Some((*id, reason.clone())),
                    _ => None,
                })
                .collect();
            (*node, d)
        })
        .collect()
}

/// The sum of every sample of `series` (a metric name with its labels, as
/// exposed, e.g. `mpc_signing_retries_total`) on `nodes`' `/metrics`.
pub fn metric(c: &LocalCluster, nodes: &[u16], series: &str) -> f64 {
    nodes
        .iter()
        .map(|n| {
            let (status, text) = c.api(*n).get_public("/metrics").unwrap_or_else(|| panic!("node {n} /metrics"));
            assert_eq!(status, 200, "node {n} /metrics");
            text.lines()
                .filter_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
                .map(|v| v.trim().parse::<f64>().expect("a sample value"))
                .sum::<f64>()
        })
        .sum()
}

/// `presig-<origin>-<seq>`, as `PresigId` displays (the API's form).
pub fn parse_presig(text: &str) -> PresigId {
    let mut parts = text.strip_prefix("presig-").expect("presig id").split('-');
    let origin = parts.next().unwrap().parse().unwrap();
    let seq = parts.next().unwrap().parse().unwrap();
    PresigId { origin: NodeId(origin), seq }
}

/// The transaction id of the API's hex form.
pub fn parse_tx(text: &str) -> TxId {
    TxId(hex::decode(text).expect("hex tx id").try_into().expect("32 bytes"))
}

/// `promtool check metrics` accepts `metrics` (skipped, with a word, when
/// promtool is missing, unless `MPC_REQUIRE_PROMTOOL=1`, as in CI).
pub fn check_with_promtool(metrics: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("MPC_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "promtool is not installed (scripts/setup.sh --promtool installs Debian's prometheus)"
        );
        eprintln!("promtool not installed: metrics not checked with it");
        return;
    };
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database check bites: a share consumed for two messages is
    /// caught; two signers answering different messages is waste, passed.
    #[test]
    fn the_two_messages_check_catches_a_reused_share() {
        let id = PresigId { origin: NodeId(1), seq: 7 };
        let tx = TxId([1; 32]);
        let consumed =
            |message: u8| Record::PresigConsumed { id, tx, input: 0, message: [message; 32], sigma: [0; 32] };
        let fine: BTreeMap<u16, Vec<Record>> = [(1, vec![consumed(5)]), (2, vec![consumed(5)])].into();
        assert_eq!(assert_no_share_signed_two_messages(&fine), 2);
        let split: BTreeMap<u16, Vec<Record>> = [(1, vec![consumed(5)]), (2, vec![consumed(6)])].into();
        assert_eq!(assert_no_share_signed_two_messages(&split), 2);
        let reused = BTreeMap::from([(1u16, vec![consumed(5), consumed(6)])]);
        let caught = std::panic::catch_unwind(|| assert_no_share_signed_two_messages(&reused));
        assert!(caught.is_err(), "a share used for two messages passed the check");
        assert_eq!(consumed_for(&fine, tx).get(&id).map(|s| s.len()), Some(2));
        assert!(consumed_for(&fine, TxId([2; 32])).is_empty());
    }

    #[test]
    fn presignature_and_transaction_ids_parse_from_the_api_form() {
        let id = PresigId { origin: NodeId(4), seq: 12 };
        assert_eq!(parse_presig(&id.to_string()), id);
        let tx = TxId([0xab; 32]);
        assert_eq!(parse_tx(&hex::encode(tx.0)), tx);
    }
}
