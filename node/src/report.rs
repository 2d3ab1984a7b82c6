//! The demo's report, and a check of it that uses nothing but the report:
//! the signed transaction, and for each input the script and amount it
//! spends, run through Bitcoin Core's script interpreter.

use anyhow::{bail, Context};
use bitcoin::consensus::encode::deserialize;
use bitcoin::{Amount, ScriptBuf, Transaction};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub txid: String,
    pub signed_tx_hex: String,
    pub network: String,
    pub public_key_hex: String,
    pub address: String,
    pub prevouts: Vec<Prevout>,
    pub outputs: Vec<Output>,
    pub fee_sat: u64,
    pub cluster_id: String,
    /// The digest every vote signed (see `mpc_core::tx::ProposedTx::digest`).
    pub tx_digest_hex: String,
    pub cluster: ClusterSummary,
    /// The signed approve votes that certified the transaction.
    pub approvals: Vec<Approval>,
    pub presignatures: Vec<String>,
    pub verified_with: String,
    /// The transaction's state at every node when the report was written:
    /// `confirmed` once a block holds it at the configured depth.
    pub state: String,
    /// The block that holds it, when confirmed (check it with
    /// `bitcoin-cli getrawtransaction <txid> true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_height: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<u64>,
    pub timings_s: Timings,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Prevout {
    pub txid: String,
    pub vout: u32,
    pub script_pubkey_hex: String,
    pub value_sat: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Output {
    pub script_pubkey_hex: String,
    pub address: Option<String>,
    pub value_sat: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterSummary {
    pub nodes: u16,
    pub threshold: u16,
    pub approve_quorum: u16,
    pub reject_quorum: u16,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Approval {
    pub voter: u16,
    pub vote_key_hex: String,
    pub signature_hex: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub safe_primes: f64,
    pub dkg: f64,
    pub pool: f64,
    pub signing: f64,
    /// From signed to confirmed: broadcast, a block mined, the nodes seeing it.
    #[serde(default)]
    pub confirmation: f64,
    pub total: f64,
}

/// Verifies the report's transaction input by input with libbitcoinconsensus.
pub fn verify(report: &Report) -> anyhow::Result<String> {
    let raw = hex::decode(&report.signed_tx_hex).context("signed_tx_hex is not hex")?;
    let tx: Transaction = deserialize(&raw).context("signed_tx_hex is not a transaction")?;
    if tx.compute_txid().to_string() != report.txid {
        bail!("txid {} does not match the transaction ({})", report.txid, tx.compute_txid());
    }
    if tx.input.len() != report.prevouts.len() {
        bail!("{} inputs but {} prevouts", tx.input.len(), report.prevouts.len());
    }
    for (i, (input, prevout)) in tx.input.iter().zip(&report.prevouts).enumerate() {
        if input.previous_output.txid.to_string() != prevout.txid || input.previous_output.vout != prevout.vout {
            bail!("input {i} spends {} but the report lists {}:{}", input.previous_output, prevout.txid, prevout.vout);
        }
        let script = ScriptBuf::from_bytes(hex::decode(&prevout.script_pubkey_hex).context("script hex")?);
        script
            .verify(i, Amount::from_sat(prevout.value_sat), &raw)
            .map_err(|e| anyhow::anyhow!("input {i} fails Bitcoin Core's script check: {e:?}"))?;
        let key = input.witness.nth(1).map(hex::encode);
        if key.as_deref() != Some(report.public_key_hex.as_str()) {
            bail!("input {i} is not signed by the cluster key");
        }
    }
    let approvers = verify_approvals(report)?;
    Ok(format!(
        "ok: {} inputs of {} verified by libbitcoinconsensus against the cluster key {}; \
         {approvers} valid Ed25519 approvals (quorum {})",
        tx.input.len(),
        report.txid,
        report.public_key_hex,
        report.cluster.approve_quorum
    ))
}

/// Checks each approval's Ed25519 signature over the exact vote bytes and
/// that distinct approvers reach the approve quorum.
fn verify_approvals(report: &Report) -> anyhow::Result<usize> {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    use mpc_core::vote::{Decision, VoteBody};
    let digest: [u8; 32] = hex::decode(&report.tx_digest_hex)
        .ok()
        .and_then(|d| d.try_into().ok())
        .context("tx_digest_hex must be 32 bytes of hex")?;
    let mut approvers = std::collections::BTreeSet::new();
    for a in &report.approvals {
        let key: [u8; 32] = hex::decode(&a.vote_key_hex).ok().and_then(|k| k.try_into().ok()).context("vote key")?;
        let sig: [u8; 64] = hex::decode(&a.signature_hex).ok().and_then(|s| s.try_into().ok()).context("signature")?;
        let body =
            VoteBody { tx: mpc_core::TxId(digest), voter: mpc_core::NodeId(a.voter), decision: Decision::Approve };
        VerifyingKey::from_bytes(&key)
            .context("vote key is not an Ed25519 key")?
            .verify(&body.signing_bytes(&report.cluster_id), &Signature::from_bytes(&sig))
            .map_err(|_| anyhow::anyhow!("approval of node {} does not verify", a.voter))?;
        approvers.insert(a.voter);
    }
    if approvers.len() < report.cluster.approve_quorum as usize {
        bail!("{} approvals, quorum is {}", approvers.len(), report.cluster.approve_quorum);
    }
    Ok(approvers.len())
}

pub fn verify_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Report = serde_json::from_str(&text).context("report is not valid JSON of the expected shape")?;
    verify(&report)
}
