//! Restore fencing (DESIGN §4): restoring a node's database from a backup
//! must never bring back a presignature that was consumed after the backup
//! was taken, because signing two messages with one presignature leaks the
//! key share.
//!
//! The database and etcd each keep the node's epoch. Every consumption
//! advances the database's epoch, and [`Store::apply_fenced`] raises etcd's
//! to the same value **before the database transaction commits**. So at any
//! moment etcd's epoch is at least that of every consumption any backup can
//! hold, and a database restored from a backup taken before some
//! consumption is behind etcd for ever after: [`fence_at_startup`] then
//! discards every presignature it holds before the node starts.
//!
//! The order is the whole point. Publishing after the commit (as this crate
//! once did) leaves a window in which a backup holds a consumption etcd
//! never saw: restored, it would look current while holding a Ready share
//! that was since used.
//!
//! # What the shell calls, and when
//!
//! - At start-up, after opening the database and before building the core:
//!   [`fence_at_startup`]. It refuses to start without etcd's answer.
//! - For every step's records: [`Store::apply_fenced`]. Steps that consume
//!   no presignature never touch etcd; a consuming one fails with
//!   [`StoreError::CoordinationUnavailable`] while etcd is unreachable, and
//!   then nothing of the step is durable (the core's memory is ahead of its
//!   records, as after any failed persist).
//! - Periodically, best effort: [`Store::anchor_audit_head`], so that the
//!   audit anchor also covers steps that consumed nothing.
//!
//! # Crash cases
//!
//! - Crash (or lost database) before etcd's raise: nothing of the step is
//!   durable anywhere; the restart is an ordinary one.
//! - etcd raised, the commit did not happen (crash, database error, or
//!   etcd's answer lost so the step was rolled back): etcd is one epoch
//!   ahead of a database that did not consume anything. The next consuming
//!   step refuses with [`StoreError::FencingRequired`], and the next start
//!   finds the database behind and discards all its presignatures. That
//!   wastes a pool's worth of presignatures and is safe: a discarded
//!   presignature is never used, and the partial signature of the lost step
//!   was never released (it is sent only after its step is durable). The
//!   audit anchor published with that raise names a row the database never
//!   committed; `audit-verify` reports the tail as truncated or rewritten
//!   until the node has written past it, and the `restore_fencing` audit row
//!   names that anchor as superseded.
//! - Committed: etcd already held the epoch. Nothing to do after the commit.
//!
//! # The audit anchor
//!
//! The same etcd transaction that raises the epoch raises the node's audit
//! anchor to the step's last audit row (DESIGN §4, "Audit trail"), so the
//! anchor covers every consumption; [`Store::anchor_audit_head`] anchors the
//! head on its own. An anchor only moves forward, and only from a chain that
//! still reaches the current anchor: a node whose database lost or rewrote
//! its tail never launders that by anchoring the new tail. The one excuse is
//! a `restore_fencing` audit row naming the anchor as superseded, written by
//! start-up fencing of a restored database. (Whoever can rewrite the
//! database could forge such a row too: the chain is unkeyed. The anchor
//! catches truncation and rewriting by anyone who does not.)

use crate::audit::AuditAnchor;
use crate::coord::{CoordError, Coordinator, FenceState};
use crate::error::StoreError;
use crate::store::{anchor_standing, load_head, read_epoch, AnchorStanding, Applied, Fencing, Store};
use mpc_core::{Millis, NodeId, Record};
use std::future::Future;
use tracing::{error, info, warn};

/// How often a fenced write re-reads etcd after losing a compare-and-set
/// race. Only the node itself writes its keys, so a lost race means a
/// concurrent anchor publication of its own; the bound only stops a
/// misbehaving writer from keeping us spinning.
const MAX_RAISE_ATTEMPTS: u32 = 16;

/// Where a node's fencing epoch and audit anchor live outside its database:
/// etcd ([`Coordinator`]) in production. A trait so that the moment between
/// the raise and the commit can be observed in tests; nothing else needs
/// another implementation.
pub trait FencingAuthority: Sync {
    /// This node's epoch and anchor as they are now.
    fn fence_state(&self) -> impl Future<Output = Result<FenceState, CoordError>> + Send;

    /// Raises both at once, if they are still as `seen`; `Ok(false)` if not.
    /// Never lowers either. See [`Coordinator::raise`].
    fn raise(
        &self,
        seen: &FenceState,
        epoch: Option<u64>,
        anchor: Option<AuditAnchor>,
    ) -> impl Future<Output = Result<bool, CoordError>> + Send;
}

impl FencingAuthority for Coordinator {
    fn fence_state(&self) -> impl Future<Output = Result<FenceState, CoordError>> + Send {
        Coordinator::fence_state(self)
    }

    fn raise(
        &self,
        seen: &FenceState,
        epoch: Option<u64>,
        anchor: Option<AuditAnchor>,
    ) -> impl Future<Output = Result<bool, CoordError>> + Send {
        Coordinator::raise(self, seen, epoch, anchor)
    }
}

/// Outcome of [`Store::anchor_audit_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchoring {
    /// etcd now anchors the database's head.
    Published(AuditAnchor),
    /// etcd's anchor already covers the head (nothing was written since).
    Unchanged(AuditAnchor),
    /// The audit log is empty: nothing to anchor.
    Empty,
}

impl Store {
    /// Makes one step's records durable, atomically, with their audit rows,
    /// and keeps restore fencing sound: if the step consumes a presignature,
    /// the new epoch (and the audit anchor of the step's last row) is raised
    /// in etcd while the database transaction is open, and the transaction
    /// commits only after etcd confirmed it. See the module docs for the
    /// order, the crash cases and what the shell calls when.
    ///
    /// Errors (in every case nothing of the step is durable):
    /// - [`StoreError::CoordinationUnavailable`]: etcd did not answer or
    ///   refused; retry once it answers. Whether the raise itself landed is
    ///   unknown, and it is treated as if it had (see "Crash cases").
    /// - [`StoreError::FencingRequired`]: etcd is ahead of this database,
    ///   which therefore must not consume until start-up fencing ran.
    /// - [`StoreError::EpochMissing`]: etcd lost this node's epoch.
    /// - anything [`Store::apply`] refuses.
    ///
    /// The database's writer lock is held across the etcd requests, so
    /// other steps wait for at most a few etcd request timeouts.
    pub async fn apply_fenced(
        &self,
        now: Millis,
        records: &[Record],
        fence: &impl FencingAuthority,
    ) -> Result<Applied, StoreError> {
        if !records.iter().any(|r| matches!(r, Record::PresigConsumed { .. })) {
            return self.apply(now, records).await;
        }
        let mut tx = self.begin_write().await?;
        let before = match read_epoch(&mut tx).await {
            Ok(epoch) => epoch,
            Err(e) => return Err(rolled_back(tx, e).await),
        };
        let (applied, head) = match self.write_step(&mut tx, now, records).await {
            Ok(written) => written,
            Err(e) => return Err(rolled_back(tx, e).await),
        };
        let epoch = applied.epoch.expect("a step that consumes a presignature advances the epoch");
        let anchor = head.anchor().expect("a step with records wrote audit rows");
        match self.raise_before_commit(&mut tx, before, epoch, anchor, fence).await {
            Ok(anchored) => {
                // etcd holds the epoch: from here on, any backup that
                // holds this consumption is behind or level with etcd.
                tx.commit().await?;
                Ok(Applied { anchored, ..applied })
            }
            Err(e) => Err(rolled_back(tx, e).await),
        }
    }

    /// Raises etcd's epoch to `epoch` (and the anchor to `anchor` if the
    /// chain in `tx` still reaches the current one); returns the anchor if
    /// it moved.
    async fn raise_before_commit(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        before: u64,
        epoch: u64,
        anchor: AuditAnchor,
        fence: &impl FencingAuthority,
    ) -> Result<Option<AuditAnchor>, StoreError> {
        for _ in 0..MAX_RAISE_ATTEMPTS {
            let seen = fence.fence_state().await.map_err(StoreError::CoordinationUnavailable)?;
            match seen.epoch {
                None if before > 0 => return Err(StoreError::EpochMissing { database_epoch: before }),
                Some(published) if published > before => {
                    return Err(StoreError::FencingRequired { database_epoch: before, published_epoch: published })
                }
                _ => {}
            }
            let moves = match &seen.anchor {
                None => true,
                Some(current) => match anchor_standing(tx, current).await? {
                    AnchorStanding::Holds => anchor.seq > current.seq,
                    AnchorStanding::Superseded { restore_row } => {
                        superseded(self.node(), current, restore_row);
                        anchor.seq > current.seq
                    }
                    AnchorStanding::Broken(problem) => {
                        // The consumption still goes ahead (the epoch is what
                        // keeps presignatures safe), but the anchor stays
                        // where the tampering shows.
                        error!(node = %self.node(), "not moving the audit anchor: {problem}");
                        false
                    }
                },
            };
            let anchored = moves.then_some(anchor);
            match fence.raise(&seen, Some(epoch), anchored).await {
                Ok(true) => return Ok(anchored),
                Ok(false) => continue,
                Err(e) => return Err(StoreError::CoordinationUnavailable(e)),
            }
        }
        Err(StoreError::CoordinationUnavailable(CoordError::Contention {
            key: "fencing epoch and audit anchor".into(),
            attempts: MAX_RAISE_ATTEMPTS,
        }))
    }

    /// Anchors the audit chain's committed head in etcd (best effort; the
    /// shell calls it periodically, so that steps which consumed nothing
    /// are anchored too). Never lowers the anchor, and refuses with
    /// [`StoreError::Audit`] to move it on from a chain that no longer
    /// reaches the current anchor: the error names it, and is the alarm.
    pub async fn anchor_audit_head(&self, fence: &impl FencingAuthority) -> Result<Anchoring, StoreError> {
        for _ in 0..MAX_RAISE_ATTEMPTS {
            let seen = fence.fence_state().await.map_err(StoreError::CoordinationUnavailable)?;
            let mut conn = self.pool.acquire().await?;
            let Some(anchor) = load_head(&mut conn).await?.anchor() else { return Ok(Anchoring::Empty) };
            if let Some(current) = seen.anchor {
                match anchor_standing(&mut conn, &current).await? {
                    AnchorStanding::Broken(problem) => return Err(problem.into()),
                    _ if current.seq >= anchor.seq => return Ok(Anchoring::Unchanged(current)),
                    AnchorStanding::Holds => {}
                    AnchorStanding::Superseded { restore_row } => superseded(self.node(), &current, restore_row),
                }
            }
            drop(conn);
            match fence.raise(&seen, None, Some(anchor)).await {
                Ok(true) => return Ok(Anchoring::Published(anchor)),
                Ok(false) => continue,
                Err(e) => return Err(StoreError::CoordinationUnavailable(e)),
            }
        }
        Err(StoreError::CoordinationUnavailable(CoordError::Contention {
            key: "audit anchor".into(),
            attempts: MAX_RAISE_ATTEMPTS,
        }))
    }
}

fn superseded(node: NodeId, anchor: &AuditAnchor, restore_row: u64) {
    warn!(
        node = %node,
        "moving the audit anchor on from {anchor}, which this database never reached: \
         restore fencing (audit row {restore_row}) recorded it as lost with the restore"
    );
}

/// Rolls `tx` back now (rather than when its connection is next used), so
/// that nothing of the step is visible and the writer lock is free when the
/// error reaches the caller.
async fn rolled_back(tx: sqlx::Transaction<'static, sqlx::Any>, e: StoreError) -> StoreError {
    if let Err(rollback) = tx.rollback().await {
        // The transaction dies with its connection either way.
        warn!("rolling back a refused step: {rollback}");
    }
    e
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("restore fencing could not read the published epoch, so the node does not start: {0}")]
    Coordination(#[from] CoordError),
    #[error(
        "restore fencing: etcd holds no epoch for {node} (key {key}) although this database has consumed \
         presignatures (its epoch is {database_epoch}). Either etcd's data was lost or wiped, or this database \
         belongs to another cluster (check the cluster name and the etcd endpoints). Starting from epoch 0 \
         could let a database restored from an old backup reuse a presignature, so the node does not start. \
         Restore etcd from its backup; or, if etcd really was rebuilt empty, `etcdctl put {key} {}` makes the \
         next start discard every presignature this database holds (always safe: the pool refills)",
        database_epoch + 1
    )]
    MissingEpoch { node: NodeId, key: String, database_epoch: u64 },
    #[error("restore fencing: {0}")]
    Store(#[from] StoreError),
}

/// Start-up fencing: compares the database's epoch with the one published
/// in etcd, discards every usable presignature of a database that is behind
/// (restored from a backup, or a raise whose commit never happened),
/// publishes the (possibly raised) database epoch, and anchors the audit
/// head.
///
/// A node that cannot read etcd does not start: starting would risk reusing
/// a presignature. Neither does one whose database has consumed before
/// (epoch > 0) while etcd holds no epoch for it ([`FenceError::MissingEpoch`]);
/// a fresh database and no key is a first start.
pub async fn fence_at_startup(store: &Store, coord: &Coordinator, now: Millis) -> Result<Fencing, FenceError> {
    let node = store.node();
    let seen = coord.fence_state().await?;
    let database_epoch = store.epoch().await?;
    let published = match seen.epoch {
        Some(epoch) => epoch,
        None if database_epoch == 0 => 0,
        None => return Err(FenceError::MissingEpoch { node, key: coord.epoch_key(node), database_epoch }),
    };
    let outcome = store.fence(now, published, seen.anchor).await?;
    coord.advance_epoch(store.epoch().await?).await?;
    match store.anchor_audit_head(coord).await {
        Ok(anchoring) => info!(node = %node, ?anchoring, "audit head anchored at start-up"),
        // Tampering is for audit-verify and the operator; it does not put
        // presignatures at risk, so the node still starts.
        Err(StoreError::Audit(problem)) => error!(node = %node, "audit anchor: {problem}"),
        Err(e) => return Err(e.into()),
    }
    Ok(outcome)
}
