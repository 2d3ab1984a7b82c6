//! Answers the core's chain requests ([`ChainRequest`]) from bitcoind:
//! what the shell feeds back as [`mpc_core::Input::Chain`]. Only facts are
//! gathered here; what they mean for the transaction is decided in the core
//! (`mpc_core::chain`).
//!
//! A lookup asks, in order: does bitcoind know the transaction
//! (`getrawtransaction`: the mempool always, the chain with `-txindex`)?
//! Is one of its outputs unspent in the chain (`gettxout`, which needs no
//! index and gives the depth)? If neither, are its inputs still unspent
//! (`gettxout`, with and without the mempool)? An input spent in the mempool
//! is a conflict named by `gettxspendingprevout`; one spent in a block (its
//! funding transaction known: `-txindex`) is looked for in the last
//! [`SPEND_SEARCH_BLOCKS`] blocks, where finding the
//! transaction itself means it is confirmed and finding another is a
//! conflict. Anything that cannot be told apart is an error, never a
//! guess: a wrong "conflict" would end a valid transaction.

use crate::bitcoin_rpc::{BitcoinRpc, RpcError};
use bitcoin::{OutPoint, Transaction, Txid};
use mpc_core::{ChainReport, ChainRequest, ChainSight};

/// How many of the latest blocks are searched for the spender of an input
/// spent in the chain. The node looks every few seconds, so a conflict is
/// normally found in the tip.
pub const SPEND_SEARCH_BLOCKS: u64 = 24;

/// bitcoind's answer to `request`.
pub async fn answer(rpc: &BitcoinRpc, request: ChainRequest) -> ChainReport {
    let (tx, raw_tx) = match &request {
        ChainRequest::Broadcast { tx, raw_tx } | ChainRequest::Check { tx, raw_tx } => (*tx, raw_tx),
    };
    let signed: Result<Transaction, String> =
        bitcoin::consensus::deserialize(raw_tx).map_err(|e| format!("the signed transaction does not decode: {e}"));
    match request {
        ChainRequest::Broadcast { .. } => {
            let outcome = match signed {
                Ok(signed) => rpc.send_raw_transaction(&signed).await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            ChainReport::Broadcast { tx, outcome }
        }
        ChainRequest::Check { .. } => {
            let sight = match signed {
                Ok(signed) => sight(rpc, &signed).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            ChainReport::Checked { tx, sight }
        }
    }
}

/// Where bitcoind sees `signed` (see the module docs).
pub async fn sight(rpc: &BitcoinRpc, signed: &Transaction) -> Result<ChainSight, LookupError> {
    let txid = signed.compute_txid();
    if let Some(status) = rpc.transaction_status(txid).await? {
        return match status.block_hash {
            Some(_) if status.confirmations > 0 => in_block(rpc, status.confirmations).await,
            _ => Ok(ChainSight::InMempool),
        };
    }
    for vout in 0..signed.output.len() as u32 {
        if let Some(out) = rpc.tx_out(txid, vout, false).await? {
            if out.confirmations > 0 {
                return in_block(rpc, out.confirmations).await;
            }
        }
    }
    for (index, input) in signed.input.iter().enumerate() {
        let outpoint = input.previous_output;
        if rpc.tx_out(outpoint.txid, outpoint.vout, true).await?.is_some() {
            continue;
        }
        let input = index as u32;
        if rpc.tx_out(outpoint.txid, outpoint.vout, false).await?.is_some() {
            // Unspent in the chain, spent in the mempool.
            let spender = rpc.mempool_spender(outpoint).await?.map(|t| t.to_string());
            return Ok(ChainSight::Conflict { input, spender, confirmations: 0 });
        }
        // Spent in the chain, or never there: only a known transaction's
        // output is worth searching the blocks for.
        if rpc.transaction_status(outpoint.txid).await?.is_none() {
            return Err(LookupError::PrevoutUnknown { input, outpoint });
        }
        return match spent_in_block(rpc, outpoint).await? {
            Some((by, depth)) if by == txid => in_block(rpc, depth).await,
            Some((by, depth)) => {
                Ok(ChainSight::Conflict { input, spender: Some(by.to_string()), confirmations: depth })
            }
            None => Err(LookupError::SpenderUnknown { input, outpoint }),
        };
    }
    Ok(ChainSight::Absent)
}

/// The block `confirmations` deep in the best chain.
async fn in_block(rpc: &BitcoinRpc, confirmations: u64) -> Result<ChainSight, LookupError> {
    let tip = rpc.block_count().await?;
    let height = (tip + 1).checked_sub(confirmations).ok_or(LookupError::Moved)?;
    let block = rpc.block_hash(height).await?;
    Ok(ChainSight::InBlock { block: block.to_string(), height, confirmations: tip + 1 - height })
}

/// Which transaction of the last [`SPEND_SEARCH_BLOCKS`] blocks spends
/// `outpoint`, and how deep its block is.
async fn spent_in_block(rpc: &BitcoinRpc, outpoint: OutPoint) -> Result<Option<(Txid, u64)>, LookupError> {
    let tip = rpc.block_count().await?;
    for depth in 1..=SPEND_SEARCH_BLOCKS.min(tip + 1) {
        let hash = rpc.block_hash(tip + 1 - depth).await?;
        for (txid, spends) in rpc.block_spends(hash).await? {
            if spends.contains(&outpoint) {
                return Ok(Some((txid, depth)));
            }
        }
    }
    Ok(None)
}

/// Why a lookup could not say where a transaction stands.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(
        "input {input} ({outpoint}) is spent or unknown in the chain and no spender is in the last \
         {SPEND_SEARCH_BLOCKS} blocks: it may be a prevout that never existed, or a spend older than that \
         (run bitcoind with -txindex to find a confirmed transaction at any depth)"
    )]
    SpenderUnknown { input: u32, outpoint: OutPoint },
    #[error(
        "input {input} spends {outpoint}, whose transaction bitcoind does not know: a prevout that never \
         existed (or bitcoind runs without -txindex, which conflict detection needs)"
    )]
    PrevoutUnknown { input: u32, outpoint: OutPoint },
    #[error("the chain moved during the lookup")]
    Moved,
}
