//! BIP 174's and BIP 370's invalid-PSBT test vectors are each refused as
//! malformed, with a reason and without a panic; BIP 174's valid vectors
//! get past the format checks (they are then refused for what the cluster
//! will not sign: inputs that are not its own), so the checks do not simply
//! refuse everything. The vectors are in `tests/vectors/`, copied from the
//! BIPs.

use base64::Engine;
use bitcoin::ScriptBuf;
use mpc_core::tx::{ProposedTx, TxError};

fn vectors(file: &str) -> Vec<(String, String, Vec<u8>)> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, " | ");
            let (bip, case, b64) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).expect("base64");
            (bip.to_string(), case.to_string(), bytes)
        })
        .collect()
}

/// Some key of the cluster's: none of the vectors spends it.
fn cluster_script() -> ScriptBuf {
    let key = mpc_core::tx::GroupKey::from_compressed([
        0x02, 0x79, 0xbe, 0x66, 0x7e, 0xf9, 0xdc, 0xbb, 0xac, 0x55, 0xa0, 0x62, 0x95, 0xce, 0x87, 0x0b, 0x07, 0x02,
        0x9b, 0xfc, 0xdb, 0x2d, 0xce, 0x28, 0xd9, 0x59, 0xf2, 0x81, 0x5b, 0x16, 0xf8, 0x17, 0x98,
    ])
    .unwrap();
    key.script_pubkey()
}

#[test]
fn every_invalid_vector_of_bip_174_and_bip_370_is_refused_as_malformed_with_a_reason() {
    let all = vectors("psbt_invalid.txt");
    assert_eq!(
        (all.iter().filter(|v| v.0 == "174").count(), all.iter().filter(|v| v.0 == "370").count()),
        (20, 24),
        "every vector of both BIPs"
    );
    let script = cluster_script();
    let mut by_our_checks = Vec::new();
    for (bip, case, bytes) in &all {
        let refused = std::panic::catch_unwind(|| ProposedTx::from_psbt(bytes, &script))
            .unwrap_or_else(|_| panic!("BIP {bip} {case:?}: panicked"));
        match refused {
            Err(TxError::Malformed(reason)) => {
                assert!(!reason.trim().is_empty(), "BIP {bip} {case:?}: no reason");
                if bitcoin::psbt::Psbt::deserialize(bytes).is_ok() {
                    by_our_checks.push(format!("{case}: {reason}"));
                }
            }
            other => panic!("BIP {bip} {case:?}: not refused as malformed: {other:?}"),
        }
    }
    // The vectors the `bitcoin` crate's parser lets through are caught by
    // the version 0 checks: at least BIP 370's version 2 fields in a
    // version 0 PSBT.
    eprintln!("refused by our own checks:\n  {}", by_our_checks.join("\n  "));
    assert!(by_our_checks.len() >= 12, "{by_our_checks:#?}");
}

#[test]
fn the_valid_vectors_of_bip_174_pass_the_format_checks() {
    let script = cluster_script();
    let valid = vectors("psbt_valid.txt");
    assert_eq!(valid.len(), 10);
    for (_, case, bytes) in valid {
        match ProposedTx::from_psbt(&bytes, &script) {
            Err(TxError::Malformed(reason)) => panic!("{case:?} refused as malformed: {reason}"),
            // Refused for what they spend (not the cluster's key), or for
            // having nothing to spend.
            Err(_) => {}
            Ok(_) => panic!("{case:?}: a PSBT that spends no cluster output was accepted"),
        }
    }
}
