//! `mpc-demo`: the README main command's report (DEMO ONLY). `report`
//! gathers, through the nodes' APIs, everything an outsider needs to check
//! the signed transaction: the raw transaction, each input's prevout, the
//! signed approve votes with the voters' keys, the presignatures used, and
//! the block that confirmed it. With `--chain` it first checks the report
//! against the regtest bitcoind the demo runs (`MPC_TEST_BITCOIND_*`): each
//! prevout is an output of a transaction in its chain with that script and
//! amount, and the transaction is in the named block at the named depth.

use anyhow::{bail, ensure, Context};
use base64::Engine;
use clap::Parser;
use mpc_node::api::types::{DecisionName, TransactionView, TxStateName};
use mpc_node::report::{Approval, ClusterSummary, Output, Prevout, Report, Timings};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// DEMO ONLY: writes the verifiable report of a signed transaction.
#[derive(Parser)]
#[command(name = "mpc-demo", about = "DEMO ONLY: the main command's report")]
enum Cli {
    Report {
        /// The cluster's mpc-cli.toml (its directory holds node-<id>/node.toml).
        #[arg(long)]
        cluster: PathBuf,
        /// The transaction id (`mpc-cli tx submit` printed it).
        #[arg(long)]
        tx: String,
        #[arg(long)]
        out: PathBuf,
        /// Phase durations in seconds, `name=secs,...` (dkg, pool, signing, confirmation).
        #[arg(long)]
        timings: Option<String>,
        /// Check prevouts and block against the regtest bitcoind of
        /// `MPC_TEST_BITCOIND_*` (`scripts/bitcoind.sh start`).
        #[arg(long)]
        chain: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let Cli::Report { cluster, tx, out, timings, chain } = Cli::parse();
    let report = report(&cluster, &tx, timings.as_deref())?;
    let summary = mpc_node::report::verify(&report)?;
    if chain {
        check_against_chain(&report)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("report: {} ({summary})", out.display());
    Ok(())
}

/// The report agrees with bitcoind: its prevouts are real outputs, and the
/// transaction is where the cluster says it is.
fn check_against_chain(report: &Report) -> anyhow::Result<()> {
    let chain = mpc_tests::Regtest::connect();
    for (i, p) in report.prevouts.iter().enumerate() {
        let funding = chain.call("getrawtransaction", vec![json!(p.txid), json!(true)]);
        let output = &funding["vout"][p.vout as usize];
        ensure!(
            output["scriptPubKey"]["hex"] == json!(p.script_pubkey_hex),
            "input {i}: bitcoind's output {}:{} has another script: {output}",
            p.txid,
            p.vout
        );
        let sat = (output["value"].as_f64().context("an amount")? * 1e8).round() as u64;
        ensure!(sat == p.value_sat, "input {i}: bitcoind's output holds {sat} sat, the report {}", p.value_sat);
    }
    let block = report.block_hash.as_ref().context("the transaction is not confirmed: no block to check")?;
    let held = chain.call("getrawtransaction", vec![json!(report.txid), json!(true)]);
    ensure!(held["blockhash"] == json!(block), "bitcoind has {} in another block: {held}", report.txid);
    let depth = held["confirmations"].as_u64().unwrap_or(0);
    ensure!(
        Some(depth) >= report.confirmations,
        "bitcoind counts {depth} confirmations, the report {:?}",
        report.confirmations
    );
    ensure!(held["hex"] == Value::String(report.signed_tx_hex.clone()), "bitcoind holds other bytes");
    println!("chain: every prevout is a real output; the transaction is in the reported block");
    Ok(())
}

#[derive(serde::Deserialize)]
struct CliFile {
    token_file: PathBuf,
    nodes: BTreeMap<String, String>,
}

fn report(cli_file: &Path, tx: &str, timings: Option<&str>) -> anyhow::Result<Report> {
    let dir = cli_file.parent().unwrap_or(Path::new("."));
    let cli: CliFile = toml::from_str(&std::fs::read_to_string(cli_file)?)?;
    let token = std::fs::read_to_string(dir.join(&cli.token_file))?.trim().to_string();
    let client = reqwest::blocking::Client::new();
    let mut views = BTreeMap::new();
    for (id, base) in &cli.nodes {
        let view: TransactionView = client
            .get(format!("{base}/api/v1/transactions/{tx}"))
            .bearer_auth(&token)
            .send()
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("node {id}: GET transaction {tx}"))?
            .json()?;
        views.insert(id.parse::<u16>()?, view);
    }
    let (first, view) = views.iter().next().context("no nodes in the cluster file")?;
    if !matches!(view.state, TxStateName::Signed | TxStateName::Broadcast | TxStateName::Confirmed) {
        bail!("transaction {tx} is {} at node {first}, not signed", view.state);
    }
    if let Some((other, v)) = views.iter().find(|(_, v)| v.state != view.state) {
        bail!("transaction {tx} is {} at node {first} but {} at node {other}", view.state, v.state);
    }
    let config = mpc_node::config::Config::load(&dir.join(format!("node-{first}/node.toml")))?;
    let cluster = &config.core.cluster;
    let signed_hex = view.signed_tx_hex.clone().context("no signed transaction")?;
    let signed: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(&hex::decode(&signed_hex)?)?;
    let psbt = bitcoin::psbt::Psbt::deserialize(&base64::engine::general_purpose::STANDARD.decode(&view.psbt_base64)?)?;
    let prevouts: Vec<Prevout> = psbt
        .unsigned_tx
        .input
        .iter()
        .zip(&psbt.inputs)
        .map(|(txin, input)| {
            let utxo = input.witness_utxo.as_ref().context("a PSBT input without witness_utxo")?;
            Ok(Prevout {
                txid: txin.previous_output.txid.to_string(),
                vout: txin.previous_output.vout,
                script_pubkey_hex: hex::encode(utxo.script_pubkey.as_bytes()),
                value_sat: utxo.value.to_sat(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let spent: u64 = prevouts.iter().map(|p| p.value_sat).sum();
    let paid: u64 = signed.output.iter().map(|o| o.value.to_sat()).sum();
    let approvals = view
        .votes
        .iter()
        .filter(|v| v.decision == DecisionName::Approve)
        .map(|v| Approval {
            voter: v.voter,
            vote_key_hex: hex::encode(cluster.members[&mpc_core::NodeId(v.voter)].vote_key),
            signature_hex: v.signature_hex.clone(),
        })
        .collect();
    let presignatures: BTreeSet<String> =
        views.values().flat_map(|v| v.presignatures_consumed.iter().map(|p| p.presignature_id.clone())).collect();
    let public_key_hex = hex::encode(signed.input[0].witness.nth(1).context("no witness key")?);
    let key = mpc_core::tx::GroupKey::from_compressed(
        hex::decode(&public_key_hex)?.try_into().map_err(|_| anyhow::anyhow!("key"))?,
    )?;
    let mut t = Timings::default();
    for part in timings.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (name, secs) = part.split_once('=').context("timings are name=secs")?;
        let secs: f64 = secs.parse()?;
        match name {
            "primes" => t.safe_primes = secs,
            "dkg" => t.dkg = secs,
            "pool" => t.pool = secs,
            "signing" => t.signing = secs,
            "confirmation" => t.confirmation = secs,
            other => bail!("unknown timing {other}"),
        }
        t.total += secs;
    }
    Ok(Report {
        txid: signed.compute_txid().to_string(),
        signed_tx_hex: signed_hex,
        network: cluster.network.to_string(),
        public_key_hex,
        address: key.address(cluster.network).to_string(),
        prevouts,
        outputs: signed
            .output
            .iter()
            .map(|o| Output {
                script_pubkey_hex: hex::encode(o.script_pubkey.as_bytes()),
                address: bitcoin::Address::from_script(&o.script_pubkey, cluster.network).ok().map(|a| a.to_string()),
                value_sat: o.value.to_sat(),
            })
            .collect(),
        fee_sat: spent.saturating_sub(paid),
        cluster_id: cluster.cluster_id.clone(),
        tx_digest_hex: view.tx_id.clone(),
        cluster: ClusterSummary {
            nodes: cluster.n(),
            threshold: cluster.threshold,
            approve_quorum: cluster.approve_quorum,
            reject_quorum: cluster.reject_quorum,
        },
        approvals,
        presignatures: presignatures.into_iter().collect(),
        verified_with: "libbitcoinconsensus (Bitcoin Core's script interpreter, via rust-bitcoin), every input".into(),
        state: view.state.to_string(),
        block_hash: view.block_hash.clone(),
        block_height: view.block_height,
        confirmations: view.confirmations,
        timings_s: t,
    })
}
