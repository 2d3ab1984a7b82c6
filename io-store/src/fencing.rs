//! Restore fencing at start-up (DESIGN §4): the database and etcd each keep
//! the node's epoch. The database advances it in the same transaction as
//! every presignature consumption ([`crate::Applied::epoch`]) and the shell
//! publishes it to etcd right after; so a database restored from a backup
//! taken before some consumption is behind etcd for ever after, and its
//! presignatures (any of which may have been used since) are all discarded
//! before the node starts.
//!
//! Start-up needs etcd's answer: a node that cannot read its published epoch
//! does not start (the error says so), because starting would risk reusing
//! a presignature. A node that is already running keeps signing when etcd
//! goes away; only the publication of new epochs waits, and the next
//! successful one covers all before it (epochs only rise).

use crate::coord::{CoordError, Coordinator};
use crate::error::StoreError;
use crate::store::{Fencing, Store};
use mpc_core::Millis;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("restore fencing could not read the published epoch, so the node does not start: {0}")]
    Coordination(#[from] CoordError),
    #[error("restore fencing: {0}")]
    Store(#[from] StoreError),
}

/// Compares the database's epoch with the one published in etcd, discards
/// every usable presignature of a database that is behind, and publishes
/// the (possibly raised) database epoch.
pub async fn fence_at_startup(store: &Store, coord: &Coordinator, now: Millis) -> Result<Fencing, FenceError> {
    let published = coord.epoch(store.node()).await?.unwrap_or(0);
    let outcome = store.fence(now, published).await?;
    coord.advance_epoch(store.epoch().await?).await?;
    Ok(outcome)
}
