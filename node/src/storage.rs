//! Operator commands on a node's database: `db-check` opens it as the node
//! would at start-up (master key, node binding, migrations, every sealed
//! value opened, audit chain verified) and prints what it holds;
//! `audit-verify` checks the audit chain without the master key, and with
//! `--etcd` (or a node's `--config`) also against the node's audit anchor
//! published there.

use anyhow::Context;
use mpc_core::NodeId;
use mpc_io_store::coord::{CoordConfig, Coordinator};
use mpc_io_store::{MasterKey, Store};
use std::collections::BTreeMap;
use std::path::Path;

/// Where the master key comes from: a file, or else this variable.
pub const MASTER_KEY_ENV: &str = "MPC_MASTER_KEY";

/// The master key from `file` if given, else from [`MASTER_KEY_ENV`]. The
/// error says where it looked and what is wrong, never the key.
pub fn master_key(file: Option<&Path>) -> anyhow::Result<MasterKey> {
    Ok(match file {
        Some(path) => MasterKey::from_file(path)?,
        None => MasterKey::from_env(MASTER_KEY_ENV)?,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Opens and reads the whole database; returns a readable summary.
pub fn check(url: &str, node: NodeId, key: MasterKey) -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let store = Store::open(url, key, node).await.with_context(|| format!("opening the database of {node}"))?;
        let recovered = store.recover().await.context("reading the node's records")?;
        let (head, epoch) = (store.verify_audit().await?, store.epoch().await?);
        store.close().await;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &recovered.records {
            *kinds.entry(r.kind()).or_default() += 1;
        }
        let mut out = format!(
            "{node}: {:?} database opens with this master key; {} records recovered; fencing epoch {epoch}; \
             audit chain intact ({} rows)\n",
            store.backend(),
            recovered.records.len(),
            head.next_seq
        );
        for (kind, n) in kinds {
            out.push_str(&format!("  {kind:<18} {n}\n"));
        }
        Ok(out)
    })
}

/// Verifies the audit chain of the database at `url` and, given where the
/// node's anchor is published, that the chain still reaches it: a cut or
/// rewritten tail verifies on its own and shows only against the anchor.
/// `anchor_at` names etcd, the cluster and the node whose database is
/// checked.
pub fn audit_verify(url: &str, anchor_at: Option<CoordConfig>) -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let Some(at) = anchor_at else {
            let (head, rows) = Store::verify_audit_at(url, None).await?;
            return Ok(format!("audit chain intact: {rows} rows, head {}", hex::encode(head.last_hash)));
        };
        let node = at.node;
        let coord = Coordinator::connect(at).await?;
        let key = coord.anchor_key(node);
        let anchor = coord.anchor(node).await?;
        let (head, rows) = Store::verify_audit_at(url, anchor.as_ref())
            .await
            .with_context(|| format!("checked against the anchor in etcd at {key}"))?;
        Ok(match anchor {
            Some(anchor) => format!(
                "audit chain intact: {rows} rows, head {}; it reaches the anchor in etcd at {key} (row {}, hash {})",
                hex::encode(head.last_hash),
                anchor.seq,
                hex::encode(anchor.hash)
            ),
            None if rows == 0 => format!("audit chain empty; no anchor at {key}, as for a node that wrote nothing"),
            None => anyhow::bail!(
                "audit chain of {rows} rows verifies on its own, but etcd holds no anchor at {key}: its tail cannot be \
                 checked (wrong cluster or node, or etcd lost its data)"
            ),
        })
    })
}
