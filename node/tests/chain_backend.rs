//! What the node's shell tells the core about a signed transaction, from a
//! real regtest bitcoind (issue 12 item 3): mempool, block and depth, a
//! conflicting spend in the mempool and then in a block (its spender
//! named), a transaction nobody broadcast, and a reorg (`invalidateblock`)
//! that puts a confirmed transaction back into the mempool until a new
//! chain confirms it.
//!
//! One test, in order: `invalidateblock` changes the chain every other test
//! of this binary would see.

mod regtest;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Transaction, Txid};
use mpc_core::{ChainReport, ChainRequest, ChainSight, TxId};
use mpc_node::bitcoin_rpc::BitcoinRpc;
use mpc_node::chain_backend::{answer, sight};
use regtest::*;
use serde_json::{json, Value};

async fn tip(rpc: &BitcoinRpc) -> (u64, BlockHash) {
    let height = rpc.block_count().await.unwrap();
    (height, rpc.block_hash(height).await.unwrap())
}

async fn seen(rpc: &BitcoinRpc, tx: &Transaction) -> ChainSight {
    sight(rpc, tx).await.unwrap_or_else(|e| panic!("lookup of {}: {e}", tx.compute_txid()))
}

#[tokio::test]
async fn bitcoind_reports_mempool_depth_conflicts_absence_and_a_reorg_as_the_core_expects() {
    let node = rpc();
    let (wallet, address) = funded_wallet("chain-backend", 102).await;
    let unspent: Vec<Value> = wallet.call("listunspent", vec![]).await.unwrap();
    let outpoint =
        |u: &Value| (u["txid"].as_str().unwrap().parse::<Txid>().unwrap(), u["vout"].as_u64().unwrap() as u32);
    // Coinbases shrink with every halving the shared node has mined past.
    let half = |u: &Value| (u["amount"].as_f64().unwrap() / 2.0 * 1e8).round() / 1e8;
    assert!(unspent.len() >= 2, "two mature coinbases: {unspent:?}");

    // Broadcast through the core's request: mempool, then one and two deep.
    let ours = wallet_spend(&wallet, Some(outpoint(&unspent[0])), half(&unspent[0])).await;
    let id = TxId([5; 32]);
    let raw_tx = bitcoin::consensus::serialize(&ours);
    let report = answer(&node, ChainRequest::Broadcast { tx: id, raw_tx: raw_tx.clone() }).await;
    assert_eq!(report, ChainReport::Broadcast { tx: id, outcome: Ok(()) });
    let again = answer(&node, ChainRequest::Broadcast { tx: id, raw_tx: raw_tx.clone() }).await;
    assert_eq!(again, ChainReport::Broadcast { tx: id, outcome: Ok(()) }, "a repeat broadcast is success");
    let checked = answer(&node, ChainRequest::Check { tx: id, raw_tx }).await;
    assert_eq!(checked, ChainReport::Checked { tx: id, sight: Ok(ChainSight::InMempool) });
    mine(&node, &address, 1).await;
    let (height, block) = tip(&node).await;
    let one_deep = ChainSight::InBlock { block: block.to_string(), height, confirmations: 1 };
    assert_eq!(seen(&node, &ours).await, one_deep);
    mine(&node, &address, 1).await;
    assert_eq!(seen(&node, &ours).await, ChainSight::InBlock { block: block.to_string(), height, confirmations: 2 });

    // A spend nobody broadcast, of an unspent output: absent.
    let unbroadcast = wallet_spend(&wallet, Some(outpoint(&unspent[1])), half(&unspent[1])).await;
    assert_eq!(seen(&node, &unbroadcast).await, ChainSight::Absent);

    // Another spend of that output reaches the mempool first: a conflict
    // in the mempool, then one block deep, its spender named both times.
    let theirs = wallet_spend(&wallet, Some(outpoint(&unspent[1])), half(&unspent[1]) / 2.0).await;
    node.send_raw_transaction(&theirs).await.unwrap();
    let spender = Some(theirs.compute_txid().to_string());
    assert_eq!(
        seen(&node, &unbroadcast).await,
        ChainSight::Conflict { input: 0, spender: spender.clone(), confirmations: 0 }
    );
    let refused =
        answer(&node, ChainRequest::Broadcast { tx: id, raw_tx: bitcoin::consensus::serialize(&unbroadcast) }).await;
    assert!(
        matches!(&refused, ChainReport::Broadcast { outcome: Err(reason), .. } if reason.contains("-26") || reason.contains("conflict")),
        "{refused:?}"
    );
    mine(&node, &address, 1).await;
    assert_eq!(seen(&node, &unbroadcast).await, ChainSight::Conflict { input: 0, spender, confirmations: 1 });

    // A reorg: the block holding ours is invalidated, ours goes back to
    // the mempool; two new blocks confirm it again, in another block.
    let _: Value = node.call("invalidateblock", vec![json!(block)]).await.unwrap();
    assert_eq!(seen(&node, &ours).await, ChainSight::InMempool, "back in the mempool after the reorg");
    mine(&node, &address, 2).await;
    match seen(&node, &ours).await {
        ChainSight::InBlock { block: again, height: h, confirmations: 2 } => {
            assert_ne!(again, block.to_string(), "confirmed in the new chain");
            assert_eq!(h, height, "at the same height");
        }
        other => panic!("not confirmed again: {other:?}"),
    }

    // A made-up prevout is an error naming it, never a conflict.
    let mut made_up = ours.clone();
    made_up.input[0].previous_output.txid = Txid::from_byte_array([9; 32]);
    let err = sight(&node, &made_up).await.expect_err("a prevout that never existed");
    assert!(err.to_string().contains("does not know"), "{err}");

    // Garbage is an error with the reason, not a sight.
    let garbage = answer(&node, ChainRequest::Check { tx: id, raw_tx: vec![1, 2, 3] }).await;
    assert!(
        matches!(&garbage, ChainReport::Checked { sight: Err(r), .. } if r.contains("does not decode")),
        "{garbage:?}"
    );
}
