//! The main command's back half and its verifier: a fixture cluster signs a
//! PSBT, the report verifies from its own contents, and tampering with any
//! part of it is caught.

use mpc_core::NodeId;
use mpc_node::report::{verify, Report};
use mpc_sim::scenario;

fn signed_report() -> Report {
    let (mut cluster, key) = scenario::fixture_cluster("report-cluster", 51, 5, 3, |_| {}).unwrap();
    scenario::fill_pool(&mut cluster, NodeId(1), 2).unwrap();
    mpc_node::demo::sign_and_report(&mut cluster, &key, 51).unwrap()
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
/// BIP-143 and checks ECDSA itself. Runs where python3 exists (it does on
/// the project's machines).
#[test]
fn independent_python_verifier_agrees() {
    let python = std::process::Command::new("python3").arg("--version").output();
    if python.map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("python3 not available: skipping the independent verifier");
        return;
    }
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

/// The demo's storage half: every node's steps into its own SQLite database
/// (one transaction per step), reopened, audit-verified and rebuilt into
/// the node its records replay to.
#[test]
fn demo_cluster_persists_into_sqlite_and_rebuilds() {
    let (mut cluster, key) = scenario::fixture_cluster("report-cluster", 52, 5, 3, |_| {}).unwrap();
    scenario::fill_pool(&mut cluster, NodeId(1), 2).unwrap();
    mpc_node::demo::sign_and_report(&mut cluster, &key, 52).unwrap();
    let dir = std::env::temp_dir().join(format!("mpc-demo-db-{}", std::process::id()));
    let summary = mpc_node::demo::persist_to_sqlite(&cluster, &dir).unwrap();
    assert!(summary.starts_with("storage: 5 SQLite databases"), "{summary}");
    use std::os::unix::fs::PermissionsExt;
    for id in 1..=5 {
        for file in [format!("node-{id}.db"), format!("node-{id}.key")] {
            let mode = std::fs::metadata(dir.join(&file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{file} is readable by others");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
