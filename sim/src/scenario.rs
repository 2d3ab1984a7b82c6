//! Common steps of a cluster's life, shared by tests, the demo and benches:
//! key generation, filling the pool, submitting and waiting for signatures.

use crate::cluster::Cluster;
use bitcoin::consensus::encode::deserialize;
use mpc_core::tx::GroupKey;
use mpc_core::{Command, NodeId, Observation, Reply, TxId, TxState};

/// Virtual-time budget for steps that run real cryptography; CPU time does
/// not advance the virtual clock, so this only bounds protocol waits.
pub const STEP_BUDGET_MS: u64 = 3_600_000;

/// Runs DKG started at `initiator` until every up node has the key, and
/// returns the group key they agree on.
pub fn run_dkg(cluster: &mut Cluster, initiator: NodeId) -> anyhow::Result<GroupKey> {
    let request = cluster.command(initiator, Command::StartDkg);
    let up: Vec<NodeId> = cluster.ids().into_iter().filter(|id| cluster.is_up(*id)).collect();
    let done = cluster.run_until(STEP_BUDGET_MS, |c| up.iter().all(|id| c.node(*id).group_key().is_some()));
    if let Some(Reply::DkgStarted(Err(e))) = cluster.reply(request) {
        anyhow::bail!("DKG refused: {e}");
    }
    anyhow::ensure!(done, "DKG did not finish");
    let key = cluster.node(up[0]).group_key().expect("checked").clone();
    for id in &up {
        anyhow::ensure!(cluster.node(*id).group_key() == Some(&key), "{id} derived a different group key");
    }
    Ok(key)
}

/// Makes `leader` the pool coordinator and runs until the pool holds at
/// least `ready` presignatures as the leader sees it.
pub fn fill_pool(cluster: &mut Cluster, leader: NodeId, ready: usize) -> anyhow::Result<()> {
    cluster.set_leader(Some(leader));
    let done = cluster.run_until(STEP_BUDGET_MS, |c| c.node(leader).status().pool_ready >= ready);
    anyhow::ensure!(done, "pool did not reach {ready} ready presignatures");
    Ok(())
}

/// Submits a PSBT at `node` and returns its transaction id (after the
/// node's reply).
pub fn submit(cluster: &mut Cluster, node: NodeId, psbt: Vec<u8>) -> anyhow::Result<TxId> {
    let request = cluster.command(node, Command::SubmitPsbt { psbt });
    cluster.run_until(STEP_BUDGET_MS, |c| c.reply(request).is_some());
    match cluster.reply(request) {
        Some(Reply::Submitted(Ok(tx))) => Ok(*tx),
        Some(Reply::Submitted(Err(e))) => anyhow::bail!("submission refused: {e}"),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

pub fn state_at(cluster: &Cluster, node: NodeId, tx: TxId) -> Option<TxState> {
    cluster.node(node).status().transactions.into_iter().find(|(id, _)| *id == tx).map(|(_, s)| s)
}

/// Runs until every up node reports `tx` in a final state, or the budget ends.
pub fn wait_final(cluster: &mut Cluster, tx: TxId, budget_ms: u64) -> bool {
    cluster.run_until(budget_ms, |c| {
        c.ids().into_iter().filter(|id| c.is_up(*id)).all(|id| state_at(c, id, tx).is_some_and(|s| s.is_final()))
    })
}

/// The signed transaction as the cluster reported it.
pub fn signed_tx(cluster: &Cluster, tx: TxId) -> Option<bitcoin::Transaction> {
    cluster.hosts().values().flat_map(|h| h.store.iter()).find_map(|r| match r {
        mpc_core::Record::SignedTx { tx: t, raw_tx, .. } if *t == tx => deserialize(raw_tx).ok(),
        _ => None,
    })
}

/// (observer, accused) for every bad partial signature, equivocation and
/// forged vote: the blame the cluster assigned.
pub fn blame(cluster: &Cluster) -> Vec<(NodeId, NodeId)> {
    cluster
        .observations
        .iter()
        .filter_map(|(_, at, o)| match o {
            Observation::BadPartialSignature { signer, .. } => Some((*at, *signer)),
            Observation::Equivocation { voter, .. } => Some((*at, *voter)),
            // The sender of a forged vote is to blame, not the name it claimed.
            Observation::ForgedVote { from, .. } => Some((*at, *from)),
            Observation::ForgedCertificate { from, .. } => Some((*at, *from)),
            _ => None,
        })
        .collect()
}

/// A cluster of `n` members (threshold `t`) started from the TEST-ONLY aux
/// info fixture, keyed by live keygen started at node 1.
pub fn fixture_cluster(
    label: &str,
    seed: u64,
    n: u16,
    t: u16,
    configure: impl FnOnce(&mut mpc_core::ClusterConfig),
) -> anyhow::Result<(Cluster, GroupKey)> {
    let mut config = crate::setup::cluster_config(label, n, t);
    configure(&mut config);
    let recovered = crate::fixtures::aux_records(n)?;
    let mut cluster = Cluster::new(seed, crate::setup::node_configs(&config), recovered)?;
    let key = run_dkg(&mut cluster, NodeId(1))?;
    Ok((cluster, key))
}
