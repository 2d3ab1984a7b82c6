//! The signed PSBT a node hands back (issue 12 item 4, `signed_psbt_base64`
//! in `GET /api/v1/transactions/{id}`): the submitted PSBT finalized with the
//! cluster's signatures. Checked against rust-bitcoin's extractor here and
//! against Bitcoin Core's own `decodepsbt`, `analyzepsbt` and `finalizepsbt`
//! on the regtest bitcoind `scripts/test.sh` starts.

use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::psbt::{raw, Psbt};
use bitcoin::{Address, Network, Transaction};
use mpc_core::tx::signed_psbt;
use mpc_core::{NodeId, TxState};
use mpc_node::bitcoin_rpc::{BitcoinRpc, RpcAuth};
use mpc_sim::{scenario, setup, wallet::Spend};
use serde_json::{json, Value};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

/// A two-input PSBT carrying what real wallets add (a key origin on the
/// inputs and the change output, an unknown and a proprietary field), and
/// the transaction the fixture cluster signed from it. Made once.
fn signed_by_the_cluster() -> &'static (Vec<u8>, Transaction) {
    static SIGNED: OnceLock<(Vec<u8>, Transaction)> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let (mut cluster, key) = scenario::fixture_cluster("signed-psbt", 61, 5, 3, |_| {}).unwrap();
        scenario::fill_pool(&mut cluster, NodeId(1), 2).unwrap();
        let to = Address::from_str(setup::TEST_DESTINATION).unwrap().require_network(Network::Regtest).unwrap();
        let spend = Spend::simple("signed-psbt", &[150_000, 75_000], &to, 180_000, 2_500);
        let mut psbt = spend.psbt(&key);
        let origin = (Fingerprint::from([1, 2, 3, 4]), DerivationPath::from_str("m/84'/1'/0'/0/7").unwrap());
        for input in &mut psbt.inputs {
            input.bip32_derivation.insert(key.secp_key(), origin.clone());
        }
        psbt.outputs[1].bip32_derivation.insert(key.secp_key(), origin);
        psbt.inputs[0].unknown.insert(raw::Key { type_value: 0xf0, key: vec![7] }, vec![1, 2, 3]);
        let proprietary = raw::ProprietaryKey { prefix: b"mpc".to_vec(), subtype: 1, key: vec![] };
        psbt.inputs[1].proprietary.insert(proprietary, vec![9]);
        let bytes = psbt.serialize();
        let tx = scenario::submit(&mut cluster, NodeId(2), bytes.clone()).expect("the cluster accepts it");
        assert!(scenario::wait_final(&mut cluster, tx, 600_000));
        assert_eq!(scenario::state_at(&cluster, NodeId(2), tx), Some(TxState::Signed));
        (bytes, scenario::signed_tx(&cluster, tx).expect("a signed transaction"))
    })
}

#[test]
fn the_signed_psbt_is_finalized_extracts_to_the_signed_transaction_and_keeps_what_wallets_need() {
    let (submitted, signed) = signed_by_the_cluster();
    let out = Psbt::deserialize(&signed_psbt(submitted, signed).unwrap()).expect("a valid PSBT");
    let before = Psbt::deserialize(submitted).unwrap();
    for (i, (input, was)) in out.inputs.iter().zip(&before.inputs).enumerate() {
        assert_eq!(input.final_script_witness.as_ref(), Some(&signed.input[i].witness), "input {i}");
        assert!(input.final_script_sig.is_none(), "P2WPKH has an empty scriptSig");
        assert!(input.partial_sigs.is_empty() && input.bip32_derivation.is_empty(), "signer data cleared: {input:?}");
        assert_eq!(input.witness_utxo, was.witness_utxo, "the UTXO stays");
        assert_eq!((&input.unknown, &input.proprietary), (&was.unknown, &was.proprietary), "unknown fields stay");
    }
    assert_eq!(out.outputs, before.outputs, "outputs untouched (change key origin kept)");
    let extracted = out.extract_tx().expect("extractable");
    assert_eq!(serialize_hex(&extracted), serialize_hex(signed));

    // Refused: a transaction that is not this PSBT's, or one unsigned.
    let mut other = signed.clone();
    other.output[0].value -= bitcoin::Amount::from_sat(1);
    assert!(signed_psbt(submitted, &other).is_err());
    let mut unsigned = signed.clone();
    unsigned.input[1].witness.clear();
    assert!(signed_psbt(submitted, &unsigned).is_err());
    assert!(signed_psbt(b"not a psbt", signed).is_err());
}

#[test]
fn bitcoin_core_decodes_analyzes_and_finalizes_the_signed_psbt() {
    let env = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: start bitcoind with `eval \"$(scripts/bitcoind.sh start /tmp/mpc-btc)\"`")
        })
    };
    let (submitted, signed) = signed_by_the_cluster();
    let psbt = base64_of(&signed_psbt(submitted, signed).unwrap());
    let auth = RpcAuth::UserPassword {
        user: env("MPC_TEST_BITCOIND_USER"),
        password: zeroize::Zeroizing::new(env("MPC_TEST_BITCOIND_PASSWORD")),
    };
    let url = url::Url::parse(&env("MPC_TEST_BITCOIND_URL")).unwrap();
    let rpc = BitcoinRpc::new(url, auth, Duration::from_secs(30)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let decoded: Value = rpc.call("decodepsbt", vec![json!(psbt)]).await.expect("bitcoind decodes it");
        assert_eq!(decoded["tx"]["txid"], json!(signed.compute_txid().to_string()));
        let analysis: Value = rpc.call("analyzepsbt", vec![json!(psbt)]).await.unwrap();
        assert_eq!(analysis["next"], json!("extractor"), "{analysis}");
        for input in analysis["inputs"].as_array().unwrap() {
            assert_eq!(input["is_final"], json!(true), "{analysis}");
        }
        let finalized: Value = rpc.call("finalizepsbt", vec![json!(psbt)]).await.unwrap();
        assert_eq!(finalized["complete"], json!(true), "{finalized}");
        assert_eq!(finalized["hex"], json!(serialize_hex(signed)), "bitcoind extracts the same transaction");

        // The check bites: the submitted, unsigned PSBT is not final.
        let unsigned: Value = rpc.call("analyzepsbt", vec![json!(base64_of(submitted))]).await.unwrap();
        assert_ne!(unsigned["next"], json!("extractor"), "{unsigned}");
    });
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
