//! Keeps the node's health current on its Bitcoin backend: asks bitcoind
//! every poll interval which chain it follows, and publishes what it found
//! (ok, unreachable, wrong credentials, the wrong network, still syncing)
//! in words an operator can act on. A failing backend degrades the node; it
//! never stops it.

use crate::bitcoin_rpc::BitcoinRpc;
use crate::control::Check;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Starts the watch; it ends when `stop` turns true.
pub fn spawn(
    rpc: BitcoinRpc,
    network: bitcoin::Network,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<Check> {
    let (tx, rx) = watch::channel(Check::failing("not asked yet"));
    tokio::spawn(async move {
        loop {
            let check = backend_check(&rpc, network).await;
            if *tx.borrow() != check {
                match &check.reason {
                    None => info!(backend = %rpc.url(), "bitcoin backend ok"),
                    Some(reason) => warn!(backend = %rpc.url(), "bitcoin backend failing: {reason}"),
                }
            }
            tx.send_replace(check);
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    rx
}

/// One look at the backend.
pub async fn backend_check(rpc: &BitcoinRpc, network: bitcoin::Network) -> Check {
    match rpc.chain_info().await {
        Err(e) => Check::failing(e.to_string()),
        Ok(info) if !info.is_network(network) => Check::failing(format!(
            "bitcoind at {} follows chain {:?}, the cluster is on {network}",
            rpc.url(),
            info.chain
        )),
        Ok(info) if info.initial_block_download => {
            Check::failing(format!("bitcoind at {} is still syncing (at block {})", rpc.url(), info.blocks))
        }
        Ok(_) => Check::ok(),
    }
}
