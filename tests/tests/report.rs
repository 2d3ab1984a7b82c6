//! The report verifier (`mpc-node verify-report` and the independent
//! `scripts/verify_report.py`): a report of a transaction an in-process
//! fixture cluster signed verifies from its own contents, and tampering with
//! any part of it is caught. (The main command's report, from five real
//! processes, is checked by `scripts/test.sh` and the cluster suite.)

use anyhow::{bail, Context};
use bitcoin::{Address, Network};
use mpc_core::tx::GroupKey;
use mpc_core::{NodeId, Observation, Record, TxState};
use mpc_node::report::{verify, Approval, ClusterSummary, Output, Prevout, Report, Timings};
use mpc_sim::{scenario, setup, wallet::Spend, Cluster};
use std::str::FromStr;
use std::time::Instant;

fn signed_report() -> Report {
    let (mut cluster, key) = scenario::fixture_cluster("report-cluster", 51, 5, 3, |_| {}).unwrap();
    scenario::fill_pool(&mut cluster, NodeId(1), 2).unwrap();
    sign_and_report(&mut cluster, &key, 51).unwrap()
}

#[test]
fn report_verifies_and_every_tampering_is_caught() {
    let report = signed_report();
    let ok = verify(&report).unwrap();
    assert!(ok.starts_with("ok: 2 inputs"), "{ok}");
    assert_eq!(report.prevouts.len(), 2);
    assert!(report.approvals.len() >= 3);

    let json = serde_json::to_string(&report).unwrap();
    let tampered = |f: &dyn Fn(&mut Report)| {
        let mut r: Report = serde_json::from_str(&json).unwrap();
        f(&mut r);
        verify(&r)
    };
    // A different amount for a prevout changes the BIP-143 message.
    assert!(tampered(&|r| r.prevouts[0].value_sat += 1).is_err());
    // A byte of a signature.
    assert!(tampered(&|r| {
        let mut raw = hex::decode(&r.signed_tx_hex).unwrap();
        let len = raw.len();
        raw[len - 60] ^= 1;
        r.signed_tx_hex = hex::encode(raw);
    })
    .is_err());
    // The claimed txid.
    assert!(tampered(&|r| r.txid = "00".repeat(32)).is_err());
    // An approval signature, and too few approvals.
    assert!(tampered(&|r| r.approvals[0].signature_hex = "11".repeat(64)).is_err());
    assert!(tampered(&|r| r.approvals.truncate(2)).is_err());
    // Another cluster id changes what the votes signed.
    assert!(tampered(&|r| r.cluster_id = "other".into()).is_err());
}

/// The pure-Python verifier shares no code with the cluster: it recomputes
/// BIP-143 and checks ECDSA itself. python3 is on every machine the
/// project supports, so a missing one fails the test rather than passing it
/// unchecked.
#[test]
fn independent_python_verifier_agrees() {
    let python = std::process::Command::new("python3").arg("--version").output();
    assert!(
        python.map(|o| o.status.success()).unwrap_or(false),
        "python3 is needed for the independent verifier (scripts/verify_report.py)"
    );
    let report = signed_report();
    let dir = std::env::temp_dir().join(format!("mpc-report-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/verify_report.py");
    let run = |r: &Report, name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string(r).unwrap()).unwrap();
        let out = std::process::Command::new("python3").arg(script).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = run(&report, "good.json");
    assert!(ok && text.starts_with("ok: 2 inputs"), "{text}");
    let mut bad: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    bad.prevouts[1].value_sat += 1;
    let (ok, text) = run(&bad, "bad.json");
    assert!(!ok && text.contains("input 1: ECDSA signature does not verify"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A PSBT paying from the cluster address, approved and signed by an
/// in-process fixture cluster (the simulator's), and its report.
fn sign_and_report(cluster: &mut Cluster, key: &GroupKey, seed: u64) -> anyhow::Result<Report> {
    let config = cluster.hosts()[&NodeId(1)].config.cluster.clone();
    let members = config.members.clone();
    let address = key.address(Network::Regtest);
    // Two made-up outputs of the cluster address fund a payment to the
    // test address, with change back to the cluster.
    let t3 = Instant::now();
    let destination = Address::from_str(setup::TEST_DESTINATION)?.require_network(Network::Regtest)?;
    let spend = Spend::simple(&format!("demo-funding-{seed}"), &[150_000, 75_000], &destination, 180_000, 2_500);
    let psbt = spend.psbt_bytes(key);
    let tx = scenario::submit(cluster, NodeId(2), psbt)?;
    println!("PSBT submitted to node 2: transaction {}", tx.short());
    if !scenario::wait_final(cluster, tx, 600_000) {
        bail!("transaction did not reach a final state");
    }
    let state = scenario::state_at(cluster, NodeId(2), tx);
    if state != Some(TxState::Signed) {
        bail!("transaction ended {state:?}, not Signed");
    }
    let signing_s = t3.elapsed().as_secs_f64();
    let signed = scenario::signed_tx(cluster, tx).context("signed transaction recorded")?;
    let violations = mpc_sim::checker::check(cluster, &Default::default());
    if !violations.is_empty() {
        bail!("invariant violations: {violations:?}");
    }

    let approvals = cluster.hosts()[&NodeId(2)]
        .store
        .iter()
        .filter_map(|r| match r {
            Record::OwnVote { vote, .. } | Record::Vote(vote)
                if vote.body.tx == tx && vote.body.decision.is_approve() =>
            {
                Some(Approval {
                    voter: vote.body.voter.0,
                    vote_key_hex: hex::encode(members[&vote.body.voter].vote_key),
                    signature_hex: hex::encode(vote.signature),
                })
            }
            _ => None,
        })
        .collect();
    let presignatures = cluster
        .observed(|o| matches!(o, Observation::PartialSignatureReleased { tx: t, .. } if *t == tx))
        .into_iter()
        .filter_map(|(_, o)| match o {
            Observation::PartialSignatureReleased { presig, .. } => Some(presig.to_string()),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let report = Report {
        txid: signed.compute_txid().to_string(),
        signed_tx_hex: bitcoin::consensus::encode::serialize_hex(&signed),
        network: "regtest".into(),
        public_key_hex: key.hex(),
        address: address.to_string(),
        prevouts: spend
            .inputs
            .iter()
            .map(|(op, value)| Prevout {
                txid: op.txid.to_string(),
                vout: op.vout,
                script_pubkey_hex: hex::encode(key.script_pubkey().as_bytes()),
                value_sat: value.to_sat(),
            })
            .collect(),
        outputs: signed
            .output
            .iter()
            .map(|o| Output {
                script_pubkey_hex: hex::encode(o.script_pubkey.as_bytes()),
                address: Address::from_script(&o.script_pubkey, Network::Regtest).ok().map(|a| a.to_string()),
                value_sat: o.value.to_sat(),
            })
            .collect(),
        fee_sat: 2_500,
        cluster_id: config.cluster_id.clone(),
        tx_digest_hex: tx.to_hex(),
        cluster: ClusterSummary {
            nodes: config.n(),
            threshold: config.threshold,
            approve_quorum: config.approve_quorum,
            reject_quorum: config.reject_quorum,
        },
        approvals,
        presignatures,
        verified_with: "libbitcoinconsensus (Bitcoin Core's script interpreter, via rust-bitcoin), every input".into(),
        state: "signed".into(),
        block_hash: None,
        block_height: None,
        confirmations: None,
        timings_s: Timings { signing: signing_s, ..Timings::default() },
    };
    verify(&report)?;
    Ok(report)
}
