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

/// What the watch last saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendView {
    pub check: Check,
    /// The best block's height, when bitcoind answered.
    pub tip: Option<u64>,
}

/// Starts the watch; it ends when `stop` turns true.
pub fn spawn(
    rpc: BitcoinRpc,
    network: bitcoin::Network,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<BackendView> {
    let (tx, rx) = watch::channel(BackendView { check: Check::failing("not asked yet"), tip: None });
    tokio::spawn(async move {
        loop {
            let view = look(&rpc, network).await;
            if tx.borrow().check != view.check {
                match &view.check.reason {
                    None => info!(backend = %rpc.url(), "bitcoin backend ok"),
                    Some(reason) => warn!(backend = %rpc.url(), "bitcoin backend failing: {reason}"),
                }
            }
            tx.send_replace(view);
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
    look(rpc, network).await.check
}

async fn look(rpc: &BitcoinRpc, network: bitcoin::Network) -> BackendView {
    match rpc.chain_info().await {
        Err(e) => BackendView { check: Check::failing(e.to_string()), tip: None },
        Ok(info) => BackendView { tip: Some(info.blocks), check: judge(rpc, network, &info) },
    }
}

/// What bitcoind's chain info says of the backend: the wrong chain, or
/// still syncing, fails.
pub fn judge(rpc: &BitcoinRpc, network: bitcoin::Network, info: &crate::bitcoin_rpc::ChainInfo) -> Check {
    match info {
        info if !info.is_network(network) => Check::failing(format!(
            "bitcoind at {} follows chain {:?}, the cluster is on {network}",
            rpc.url(),
            info.chain
        )),
        info if info.initial_block_download => {
            Check::failing(format!("bitcoind at {} is still syncing (at block {})", rpc.url(), info.blocks))
        }
        _ => Check::ok(),
    }
}
