//! What leaves memory, and when. Everything here stays in the store; the
//! node only stops holding it, so a cluster that has run for years needs
//! about the memory its work in flight needs.
//!
//! * A final transaction is held whole for `retain_final_ms` after it
//!   became final (a signed one followed on chain: after it was
//!   confirmed) (peers catching up are served from it, and its votes
//!   meet for a gossip window), then only its id and outcome stay, in
//!   `settled`: a late proposal, vote or signing request for it is
//!   recognised and never revives it.
//! * A spent presignature (used, consumed, discarded, inconsistent, or a
//!   session that never finished) leaves a presigning timeout after this
//!   node found it spent: a coordinator's retry of a request it answered
//!   comes well within that. Its initiator's floor rises to its sequence
//!   number; an id at or below the floor that this node does not hold is
//!   stale and refused. That is safe because an initiator numbers its
//!   sessions in the order it starts them: a session numbered below one
//!   first seen a presigning timeout ago started before it, so its
//!   initiator gave up on it by then.
//! * Closed sessions of pruned presignatures go with them (the floor
//!   answers for them); approved amounts are kept for today and
//!   yesterday, all the daily cap needs.

use crate::ids::{PresigId, SessionId, TxId};
use crate::node::{Node, OwnPresig};
use crate::record::TxState;

/// How often spent presignatures are swept: the sweep scans the pool,
/// which pruning keeps to the maximum plus what was spent lately.
const PRUNE_EVERY_MS: u64 = 10_000;

impl Node {
    /// Run after every input: final transactions whose time is up leave at
    /// once (a queue ordered by time, so nothing is scanned); spent
    /// presignatures every `PRUNE_EVERY_MS`.
    pub(crate) fn prune(&mut self) {
        if self.bugs.never_prune() {
            return;
        }
        while let Some(&(at, tx)) = self.settling.first() {
            if at > self.now {
                break;
            }
            self.settling.pop_first();
            self.settle(tx);
        }
        if self.now >= self.next_prune {
            self.next_prune = self.now.plus(PRUNE_EVERY_MS);
            self.prune_presignatures();
            let today = self.now.day();
            self.approved_by_day.retain(|day, _| day + 1 >= today);
        }
    }

    /// Replaces a final transaction's entry by its outcome alone.
    /// A transaction followed on chain stays until it has been confirmed
    /// for `retain_final_ms` (see [`Node::held_for_chain`]).
    pub(crate) fn settle(&mut self, tx: TxId) {
        if let Some(until) = self.held_for_chain(tx) {
            self.settling.insert((until, tx));
            return;
        }
        self.unwatch_chain(tx);
        let Some(entry) = self.txs.remove(&tx) else { return };
        debug_assert!(entry.state.is_final(), "only final transactions settle");
        self.active.remove(&tx);
        self.signing.remove(&tx);
        self.orphan_votes.remove(&tx);
        self.settled.insert(tx, entry.state);
    }

    /// Keeps the index of transactions with work ahead in step with `tx`'s
    /// state (see `Node::active`).
    pub(crate) fn index_tx(&mut self, tx: TxId) {
        let working = self.txs.get(&tx).is_some_and(|t| {
            matches!(t.state, TxState::Received | TxState::Voting | TxState::Approved | TxState::Signing)
        });
        if working {
            self.active.insert(tx);
        } else {
            self.active.remove(&tx);
        }
    }

    /// Whether `tx` is known here at all, held whole or settled.
    pub(crate) fn knows_tx(&self, tx: &TxId) -> bool {
        self.txs.contains_key(tx) || self.settled.contains_key(tx)
    }

    /// An id this node no longer holds and will never take part in again
    /// (see the module docs).
    pub(crate) fn stale_presig(&self, id: &PresigId) -> bool {
        self.presig_floor.get(&id.origin).is_some_and(|floor| id.seq <= *floor)
            && !self.pool.contains_key(id)
            && !self.own_presigs.contains_key(id)
    }

    /// A session that ended here: messages for it are dropped.
    pub(crate) fn session_closed(&self, session: &SessionId) -> bool {
        self.closed_sessions.contains(session) || matches!(session, SessionId::Presign(id) if self.stale_presig(id))
    }

    fn prune_presignatures(&mut self) {
        let now = self.now;
        let keep = self.config.cluster.timeouts.presign_ms;
        let ids: std::collections::BTreeSet<PresigId> =
            self.pool.keys().chain(self.own_presigs.keys()).copied().collect();
        let mut leaving = Vec::new();
        for id in ids {
            if self.presig_spent(&id) {
                let since = *self.spent_since.entry(id).or_insert(now);
                if now >= since.plus(keep) {
                    leaving.push(id);
                }
            } else {
                self.spent_since.remove(&id);
            }
        }
        for id in leaving {
            self.pool.remove(&id);
            match self.own_presigs.remove(&id) {
                Some(OwnPresig::Consumed { .. }) => self.pruned_own.0 += 1,
                Some(OwnPresig::Discarded) => self.pruned_own.1 += 1,
                _ => {}
            }
            self.spent_since.remove(&id);
            self.requesters.remove(&id);
            self.closed_sessions.remove(&SessionId::Presign(id));
            let floor = self.presig_floor.entry(id.origin).or_insert(id.seq);
            *floor = (*floor).max(id.seq);
        }
    }

    /// Spent everywhere this node looks: nothing of it can be used again,
    /// and no transaction still open here depends on this node's record of
    /// a partial signature it released.
    fn presig_spent(&self, id: &PresigId) -> bool {
        let own_spent = match self.own_presigs.get(id) {
            None | Some(OwnPresig::Discarded) => true,
            Some(OwnPresig::Generating { .. } | OwnPresig::Ready { .. }) => false,
            // Kept while its transaction is held whole: whether this node
            // released a partial for it decides whether it may promise
            // never to sign it.
            Some(OwnPresig::Consumed { tx, .. }) => !self.txs.contains_key(tx),
        };
        let timeout = self.config.cluster.timeouts.presign_ms;
        let pool_spent = self
            .pool
            .get(id)
            .is_none_or(|e| e.used || e.inconsistent || (!e.complete() && self.now >= e.first_seen.plus(timeout)));
        own_spent
            && pool_spent
            && !self.initiated.contains_key(id)
            && !self.sessions.contains_key(&SessionId::Presign(*id))
    }
}
