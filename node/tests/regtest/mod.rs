//! The regtest bitcoind `scripts/test.sh` starts, as the node tests reach
//! it: login from the environment, wallets, spends and blocks.
#![allow(dead_code)]

use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::{Transaction, Txid};
use mpc_node::bitcoin_rpc::{BitcoinRpc, RpcAuth};
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start bitcoind with `eval \"$(scripts/bitcoind.sh start /tmp/mpc-btc)\"`")
    })
}

pub fn url() -> Url {
    Url::parse(&env("MPC_TEST_BITCOIND_URL")).expect("MPC_TEST_BITCOIND_URL is a URL")
}

pub fn login() -> RpcAuth {
    RpcAuth::UserPassword {
        user: env("MPC_TEST_BITCOIND_USER"),
        password: Zeroizing::new(env("MPC_TEST_BITCOIND_PASSWORD")),
    }
}

pub fn rpc() -> BitcoinRpc {
    BitcoinRpc::new(url(), login(), Duration::from_secs(30)).unwrap()
}

/// A fresh wallet named for the test, with `blocks` mined to it (101
/// makes one coinbase spendable).
pub async fn funded_wallet(name: &str, blocks: u64) -> (BitcoinRpc, String) {
    let node = rpc();
    let name = format!("{name}-{}", std::process::id());
    let _: Value = node.call("createwallet", vec![json!(name)]).await.expect("createwallet");
    let wallet = node.wallet(&name);
    let address: String = wallet.call("getnewaddress", vec![json!(""), json!("bech32")]).await.unwrap();
    let _: Value = node.call("generatetoaddress", vec![json!(blocks), json!(address)]).await.unwrap();
    (wallet, address)
}

/// A signed transaction from `wallet` paying `btc` to a new address of its
/// own, spending `input` when given.
pub async fn wallet_spend(wallet: &BitcoinRpc, input: Option<(Txid, u32)>, btc: f64) -> Transaction {
    let to: String = wallet.call("getnewaddress", vec![json!(""), json!("bech32")]).await.unwrap();
    let inputs = match input {
        Some((txid, vout)) => json!([{ "txid": txid, "vout": vout }]),
        None => json!([]),
    };
    let raw: String = wallet.call("createrawtransaction", vec![inputs, json!({ to: btc })]).await.unwrap();
    let funded: Value =
        wallet.call("fundrawtransaction", vec![json!(raw), json!({ "add_inputs": input.is_none() })]).await.unwrap();
    let signed: Value = wallet.call("signrawtransactionwithwallet", vec![funded["hex"].clone()]).await.unwrap();
    assert_eq!(signed["complete"], json!(true), "{signed}");
    deserialize_hex(signed["hex"].as_str().unwrap()).unwrap()
}

pub async fn mine(rpc: &BitcoinRpc, address: &str, blocks: u64) {
    let _: Value = rpc.call("generatetoaddress", vec![json!(blocks), json!(address)]).await.unwrap();
}
