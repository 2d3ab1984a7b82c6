//! `mpc-demo`: the README main command's helpers (DEMO ONLY). `psbt` writes
//! a PSBT paying from the cluster address, funded by made-up outputs of it
//! (there is no blockchain yet); `report` gathers, through the nodes' APIs,
//! everything an outsider needs to check the signed transaction: the raw
//! transaction, each input's prevout (from the PSBT), the signed approve
//! votes with the voters' keys, and the presignatures used.

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand};
use mpc_node::api::types::{DecisionName, TransactionView, TxStateName};
use mpc_node::report::{Approval, ClusterSummary, Output, Prevout, Report, Timings};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "mpc-demo", about = "DEMO ONLY: the main command's PSBT and report")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a PSBT spending two made-up outputs of the cluster address to
    /// the test destination, with change back.
    Psbt {
        /// The group public key, compressed, hex (`mpc-cli --json dkg status`).
        #[arg(long)]
        public_key: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes the verifiable report of a signed transaction.
    Report {
        /// The cluster's mpc-cli.toml (its directory holds node-<id>/node.toml).
        #[arg(long)]
        cluster: PathBuf,
        /// The transaction id (`mpc-cli tx submit` printed it).
        #[arg(long)]
        tx: String,
        #[arg(long)]
        out: PathBuf,
        /// Phase durations in seconds, `name=secs,...` (dkg, pool, signing).
        #[arg(long)]
        timings: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Psbt { public_key, out } => {
            let bytes: [u8; 33] = hex::decode(&public_key)
                .context("public key is not hex")?
                .try_into()
                .map_err(|_| anyhow::anyhow!("a compressed public key is 33 bytes"))?;
            let key = mpc_core::tx::GroupKey::from_compressed(bytes)?;
            let to = mpc_sim::setup::TEST_DESTINATION.parse::<bitcoin::Address<_>>()?.assume_checked();
            let spend = mpc_sim::wallet::Spend::simple("mpc-demo", &[150_000, 75_000], &to, 180_000, 2_500);
            std::fs::write(&out, spend.psbt_bytes(&key)).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "PSBT: {} (2 inputs of {}, 180000 sat to {to})",
                out.display(),
                key.address(bitcoin::Network::Regtest)
            );
        }
        Cmd::Report { cluster, tx, out, timings } => {
            let report = report(&cluster, &tx, timings.as_deref())?;
            let summary = mpc_node::report::verify(&report)?;
            std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
            println!("report: {} ({summary})", out.display());
        }
    }
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
    if view.state != TxStateName::Signed {
        bail!("transaction {tx} is {} at node {first}, not signed", view.state);
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
        timings_s: t,
    })
}
