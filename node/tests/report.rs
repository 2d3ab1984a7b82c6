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
