//! The Bitcoin backend client against a real regtest bitcoind (issue 12
//! item 2). `scripts/test.sh` starts one; by hand:
//! `eval "$(scripts/bitcoind.sh start /tmp/mpc-btc)"`.
//!
//! Each test works in its own wallet, so the tests share one node.

use bitcoin::{Network, Txid};
use mpc_node::backend_watch::backend_check;
use mpc_node::bitcoin_rpc::{codes, BitcoinRpc, Broadcast, RpcAuth, RpcError};
use serde_json::Value;
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

mod regtest;
use regtest::*;

#[tokio::test]
async fn a_spend_is_accepted_confirmed_and_a_repeat_broadcast_is_success() {
    let (wallet, address) = funded_wallet("broadcast", 101).await;
    let node = rpc();
    let tx = wallet_spend(&wallet, None, 1.5).await;
    let txid = tx.compute_txid();
    let verdict = node.test_mempool_accept(std::slice::from_ref(&tx)).await.unwrap();
    assert!(verdict[0].allowed && verdict[0].txid == txid, "{verdict:?}");
    assert_eq!(node.transaction_status(txid).await.unwrap(), None, "not broadcast yet");

    assert_eq!(node.send_raw_transaction(&tx).await.unwrap(), Broadcast::Accepted(txid));
    let in_mempool = node.transaction_status(txid).await.unwrap().expect("bitcoind knows it");
    assert_eq!((in_mempool.confirmations, in_mempool.block_hash), (0, None));
    // A second node broadcasting the same transaction is not an error.
    assert!(
        matches!(node.send_raw_transaction(&tx).await, Ok(Broadcast::Accepted(t) | Broadcast::AlreadyKnown(t)) if t == txid)
    );
    let out = node.tx_out(txid, 0, true).await.unwrap().expect("its first output is unspent");
    assert_eq!(out.confirmations, 0);
    assert_eq!(out.script_pubkey, tx.output[0].script_pubkey);
    assert_eq!(out.value, tx.output[0].value);

    let before = node.block_count().await.unwrap();
    mine(&node, &address, 1).await;
    assert_eq!(node.block_count().await.unwrap(), before + 1);
    let tip = node.block_hash(before + 1).await.unwrap();
    let confirmed = node.transaction_status(txid).await.unwrap().expect("in the chain (txindex)");
    assert_eq!((confirmed.confirmations, confirmed.block_hash), (1, Some(tip)));
    // In the chain already: still success, and said so.
    assert_eq!(node.send_raw_transaction(&tx).await.unwrap(), Broadcast::AlreadyKnown(txid));
}

#[tokio::test]
async fn a_double_spend_is_refused_with_bitcoinds_reason_and_the_output_shows_spent() {
    let (wallet, address) = funded_wallet("double-spend", 101).await;
    let node = rpc();
    let unspent: Vec<Value> = wallet.call("listunspent", vec![]).await.unwrap();
    let coin = &unspent[0];
    let outpoint = (coin["txid"].as_str().unwrap().parse::<Txid>().unwrap(), coin["vout"].as_u64().unwrap() as u32);
    let first = wallet_spend(&wallet, Some(outpoint), 10.0).await;
    let second = wallet_spend(&wallet, Some(outpoint), 20.0).await;
    assert_ne!(first.compute_txid(), second.compute_txid());
    assert!(node.tx_out(outpoint.0, outpoint.1, false).await.unwrap().is_some(), "unspent before");
    node.send_raw_transaction(&first).await.unwrap();
    mine(&node, &address, 1).await;
    assert_eq!(node.tx_out(outpoint.0, outpoint.1, true).await.unwrap(), None, "spent by the first");

    let verdict = node.test_mempool_accept(std::slice::from_ref(&second)).await.unwrap();
    assert!(!verdict[0].allowed, "{verdict:?}");
    assert!(verdict[0].reject_reason.is_some(), "a reason is given: {verdict:?}");
    match node.send_raw_transaction(&second).await {
        Err(e @ RpcError::Rpc { .. }) => {
            assert_eq!(e.code(), Some(codes::VERIFY_ERROR), "{e}");
            assert!(e.to_string().contains("missingorspent"), "{e}");
            assert!(!e.is_unavailable());
        }
        other => panic!("the double spend was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_unknown_transaction_is_none_not_an_error() {
    let txid: Txid = "11".repeat(32).parse().unwrap();
    assert_eq!(rpc().transaction_status(txid).await.unwrap(), None);
    assert_eq!(rpc().tx_out(txid, 0, true).await.unwrap(), None);
}

#[tokio::test]
async fn bad_credentials_a_closed_port_and_the_wrong_network_each_say_what_is_wrong() {
    let wrong = RpcAuth::UserPassword { user: env("MPC_TEST_BITCOIND_USER"), password: Zeroizing::new("nope".into()) };
    let e = BitcoinRpc::new(url(), wrong, Duration::from_secs(5)).unwrap().block_count().await.unwrap_err();
    assert!(matches!(e, RpcError::Unauthorized { .. }), "{e}");
    assert!(!e.is_unavailable());

    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let down = BitcoinRpc::new(closed, login(), Duration::from_secs(5)).unwrap();
    let e = down.block_count().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    let check = backend_check(&down, Network::Regtest).await;
    assert!(!check.ok && check.reason.as_deref().unwrap_or("").contains("unreachable"), "{check:?}");

    assert_eq!(backend_check(&rpc(), Network::Regtest).await, mpc_node::control::Check::ok());
    let mainnet = backend_check(&rpc(), Network::Bitcoin).await;
    assert!(!mainnet.ok, "a regtest node must not pass for mainnet");
    assert!(mainnet.reason.as_deref().unwrap_or("").contains("\"regtest\""), "{mainnet:?}");
}

#[tokio::test]
async fn a_cookie_file_is_read_again_after_a_refusal() {
    let dir = std::env::temp_dir().join(format!("mpc-cookie-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cookie = dir.join(".cookie");
    std::fs::write(&cookie, format!("{}:stale", env("MPC_TEST_BITCOIND_USER"))).unwrap();
    let rpc = BitcoinRpc::new(url(), RpcAuth::CookieFile(cookie.clone()), Duration::from_secs(5)).unwrap();
    let e = rpc.block_count().await.unwrap_err();
    assert!(matches!(e, RpcError::Unauthorized { .. }), "{e}");
    // bitcoind restarted and wrote a new cookie: the next call reads it.
    std::fs::write(&cookie, format!("{}:{}", env("MPC_TEST_BITCOIND_USER"), env("MPC_TEST_BITCOIND_PASSWORD")))
        .unwrap();
    assert!(rpc.block_count().await.is_ok());
    std::fs::write(&cookie, "no colon here").unwrap();
    let fresh = BitcoinRpc::new(url(), RpcAuth::CookieFile(cookie), Duration::from_secs(5)).unwrap();
    let e = fresh.block_count().await.unwrap_err();
    assert!(matches!(e, RpcError::Cookie { .. }) && e.to_string().contains("user:password"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
