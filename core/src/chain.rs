//! The lifecycle past Signed (DESIGN §3): broadcast, mempool, confirmation,
//! and what can still go wrong on chain.
//!
//! The core never talks to Bitcoin. It asks the shell, through
//! [`crate::Step::chain`], to broadcast a signed transaction or to look it
//! up, and the shell hands back what its backend said as
//! [`crate::Input::Chain`]. Every decision is taken here, from those
//! reports and the core's clock:
//!
//! * `Signed -> Broadcast` once the backend holds the transaction (its
//!   mempool accepted it, or a block has it below the confirmation depth).
//! * `Broadcast -> Confirmed` once it is `confirmations` deep.
//! * `Confirmed -> Broadcast` when a reorg takes it out of the best chain
//!   (or below the depth); it is broadcast again if the mempool lost it.
//! * `Failed("conflict: ...")` when one of its inputs is spent by another
//!   transaction at the confirmation depth: it can never confirm (a
//!   shallower spend is reported and waited out, since a reorg may undo it).
//! * Not seen by the backend for `broadcast_timeout_ms`: broadcast again,
//!   backing off, and marked stalled with the reason (the backend's last
//!   answer), persisted, audited and shown to the operator. Broadcasting
//!   goes on: the transaction is valid and signed, and a backend that comes
//!   back takes it.
//!
//! A node without a backend ([`crate::NodeConfig::chain`] is `None`) keeps a
//! signed transaction at Signed, as before this module existed. Each node
//! watches the chain on its own backend and decides its own states; any of
//! them may broadcast, since a repeated broadcast is harmless.

use crate::ids::{Millis, TxId};
use crate::io::Observation;
use crate::lifecycle::TxEvent;
use crate::node::Node;
use crate::record::{Record, TxState};
use serde::{Deserialize, Serialize};

/// How this node follows its transactions on chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Blocks deep a transaction must be to count as Confirmed.
    pub confirmations: u64,
    /// How often each watched transaction is looked up.
    pub check_ms: u64,
    /// The wait before the first rebroadcast of a transaction the backend
    /// does not hold; it doubles with each attempt, up to
    /// `rebroadcast_max_ms`.
    pub rebroadcast_ms: u64,
    pub rebroadcast_max_ms: u64,
    /// Not in the backend's mempool or chain for this long: the
    /// transaction is marked stalled (the plan's ORCH-011).
    pub broadcast_timeout_ms: u64,
}

impl ChainConfig {
    /// The defaults for `network`: one confirmation on regtest (blocks are
    /// mined on demand there), six elsewhere.
    pub fn for_network(network: bitcoin::Network) -> ChainConfig {
        ChainConfig {
            confirmations: if network == bitcoin::Network::Regtest { 1 } else { 6 },
            check_ms: 10_000,
            rebroadcast_ms: 10_000,
            rebroadcast_max_ms: 300_000,
            broadcast_timeout_ms: 600_000,
        }
    }

    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.confirmations == 0 {
            return Some("confirmations must be at least 1".into());
        }
        for (name, ms) in [
            ("check_ms", self.check_ms),
            ("rebroadcast_ms", self.rebroadcast_ms),
            ("rebroadcast_max_ms", self.rebroadcast_max_ms),
            ("broadcast_timeout_ms", self.broadcast_timeout_ms),
        ] {
            if ms == 0 {
                return Some(format!("{name} must be greater than 0"));
            }
        }
        (self.rebroadcast_max_ms < self.rebroadcast_ms)
            .then(|| "rebroadcast_max_ms must be at least rebroadcast_ms".to_string())
    }

    /// The wait after the `attempt`-th broadcast (1-based).
    fn backoff(&self, attempt: u32) -> u64 {
        let doubled = self.rebroadcast_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        doubled.min(self.rebroadcast_max_ms)
    }
}

/// What the core asks of the shell's Bitcoin backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainRequest {
    /// Hand the signed transaction to the backend. Answered with
    /// [`ChainReport::Broadcast`]; "already in the mempool or chain" is
    /// success.
    Broadcast { tx: TxId, raw_tx: Vec<u8> },
    /// Say where the transaction stands ([`ChainSight`]). Answered with
    /// [`ChainReport::Checked`].
    Check { tx: TxId, raw_tx: Vec<u8> },
}

impl ChainRequest {
    pub fn tx(&self) -> TxId {
        match self {
            ChainRequest::Broadcast { tx, .. } | ChainRequest::Check { tx, .. } => *tx,
        }
    }
}

/// The backend's answer to a [`ChainRequest`]. An `Err` is the reason the
/// backend could not answer (unreachable, refused), in words for the
/// operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainReport {
    Broadcast { tx: TxId, outcome: Result<(), String> },
    Checked { tx: TxId, sight: Result<ChainSight, String> },
}

/// Where a transaction stands on the backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainSight {
    /// In the mempool, in no block.
    InMempool,
    /// In the best chain, `confirmations` deep (1: in the tip).
    InBlock { block: String, height: u64, confirmations: u64 },
    /// Neither in the mempool nor in the best chain, and its inputs unspent.
    Absent,
    /// Not held, and input `input` is spent by another transaction
    /// (`spender`, when the backend could say which), `confirmations`
    /// deep (0: in the mempool).
    Conflict { input: u32, spender: Option<String>, confirmations: u64 },
}

/// A confirmed transaction's block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub hash: String,
    pub height: u64,
}

/// What this node last made durable of a transaction's life on chain
/// ([`Record::Chain`]), beyond its state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    /// The block holding it, while Confirmed.
    pub block: Option<BlockRef>,
    /// Why it is stalled: not seen on chain by the broadcast deadline.
    pub stalled: Option<String>,
}

/// One signed transaction this node follows on chain.
#[derive(Clone, Debug)]
pub(crate) struct ChainWatch {
    /// The backend held it (mempool or block) at the last report.
    seen: bool,
    /// Since when it has not been seen (signing, or the report that lost it).
    unseen_since: Millis,
    broadcasts: u32,
    next_broadcast: Millis,
    next_check: Millis,
    /// The backend's last failure to broadcast or look it up.
    problem: Option<String>,
    /// When it reached the confirmation depth (while Confirmed).
    confirmed_at: Option<Millis>,
    /// As last persisted.
    pub(crate) status: ChainStatus,
}

impl ChainWatch {
    fn new(now: Millis, seen: bool, status: ChainStatus) -> ChainWatch {
        ChainWatch {
            seen,
            unseen_since: now,
            broadcasts: 0,
            next_broadcast: now,
            next_check: now,
            problem: None,
            confirmed_at: status.block.as_ref().map(|_| now),
            status,
        }
    }

    fn next_due(&self) -> Millis {
        if self.seen {
            self.next_check
        } else {
            self.next_check.min(self.next_broadcast)
        }
    }
}

impl Node {
    fn chain_config(&self) -> Option<&ChainConfig> {
        self.config.chain.as_ref()
    }

    /// Starts following `tx` on chain, if this node has a backend: called
    /// when it becomes Signed here, and on restart for those not yet
    /// settled on chain (`status` as last persisted).
    pub(crate) fn watch_chain(&mut self, tx: TxId, status: ChainStatus) {
        if self.chain_config().is_none() {
            return;
        }
        let seen = matches!(self.txs.get(&tx).map(|t| &t.state), Some(TxState::Broadcast | TxState::Confirmed));
        self.chain_watch.insert(tx, ChainWatch::new(self.now, seen, status));
        self.next_chain_due = self.now;
    }

    /// Whether `tx` must stay held whole for the chain: a watched
    /// transaction leaves memory only once confirmed for `retain_final_ms`.
    /// Returns when to look again.
    pub(crate) fn held_for_chain(&self, tx: TxId) -> Option<Millis> {
        let watch = self.chain_watch.get(&tx)?;
        let retain = self.config.cluster.timeouts.retain_final_ms;
        match watch.confirmed_at {
            Some(at) if self.now >= at.plus(retain) => None,
            Some(at) => Some(at.plus(retain)),
            None => Some(self.now.plus(retain)),
        }
    }

    /// Drops the watch of a transaction that left memory.
    pub(crate) fn unwatch_chain(&mut self, tx: TxId) {
        self.chain_watch.remove(&tx);
    }

    /// When the next broadcast or lookup is due.
    pub(crate) fn chain_wake(&self) -> Option<Millis> {
        (!self.chain_watch.is_empty()).then_some(self.next_chain_due)
    }

    /// Asks for the lookups and broadcasts that are due, and marks stalled
    /// what the backend has not held for the broadcast timeout.
    pub(crate) fn drive_chain(&mut self) {
        let Some(config) = self.chain_config().cloned() else { return };
        if self.chain_watch.is_empty() || self.now < self.next_chain_due {
            return;
        }
        let now = self.now;
        let mut requests = Vec::new();
        let mut stalled = Vec::new();
        let mut next_due: Option<Millis> = None;
        for (tx, watch) in self.chain_watch.iter_mut() {
            let Some(raw_tx) = self.txs.get(tx).and_then(|t| t.signed_raw.clone()) else { continue };
            if now >= watch.next_check {
                watch.next_check = now.plus(config.check_ms);
                requests.push(ChainRequest::Check { tx: *tx, raw_tx: raw_tx.clone() });
            }
            if !watch.seen && now >= watch.next_broadcast {
                watch.broadcasts += 1;
                watch.next_broadcast = now.plus(config.backoff(watch.broadcasts));
                requests.push(ChainRequest::Broadcast { tx: *tx, raw_tx });
            }
            let overdue = now >= watch.unseen_since.plus(config.broadcast_timeout_ms);
            if !watch.seen && overdue && watch.status.stalled.is_none() {
                let waited = (now.0 - watch.unseen_since.0) / 1000;
                let last = watch.problem.as_deref().unwrap_or("the backend accepted it but does not hold it");
                let reason = format!(
                    "not in the backend's mempool or chain {waited} s after it was signed or last seen, \
                     {} broadcasts; last answer: {last}; it is broadcast again every {} s at most: \
                     check the Bitcoin backend and the fee",
                    watch.broadcasts,
                    config.rebroadcast_max_ms / 1000
                );
                watch.status.stalled = Some(reason.clone());
                stalled.push((*tx, reason, watch.status.clone()));
            }
            let due = watch.next_due();
            next_due = Some(next_due.map_or(due, |d| d.min(due)));
        }
        self.next_chain_due = next_due.unwrap_or(now.plus(config.check_ms));
        self.step.chain.extend(requests);
        for (tx, reason, status) in stalled {
            self.persist(Record::Chain { tx, status });
            self.observe(Observation::BroadcastStalled { tx, reason });
        }
    }

    /// What the backend said.
    pub(crate) fn on_chain(&mut self, report: ChainReport) {
        let Some(config) = self.chain_config().cloned() else { return };
        match report {
            ChainReport::Broadcast { tx, outcome: Ok(()) } => {
                // Accepted into the mempool (or already there, or mined):
                // the next lookup says which.
                self.seen_on_chain(tx);
                if self.txs.get(&tx).is_some_and(|t| t.state == TxState::Signed) {
                    self.transition(tx, TxEvent::Broadcasted);
                }
            }
            ChainReport::Broadcast { tx, outcome: Err(reason) } => self.chain_problem(tx, reason),
            ChainReport::Checked { tx, sight: Err(reason) } => self.chain_problem(tx, reason),
            ChainReport::Checked { tx, sight: Ok(sight) } => self.on_sight(tx, sight, &config),
        }
    }

    fn on_sight(&mut self, tx: TxId, sight: ChainSight, config: &ChainConfig) {
        let Some(state) = self.txs.get(&tx).map(|t| t.state.clone()) else { return };
        if !self.chain_watch.contains_key(&tx) {
            return;
        }
        let sight = match sight {
            ChainSight::InMempool if self.bugs.confirm_in_mempool() => {
                ChainSight::InBlock { block: "mempool".into(), height: 0, confirmations: config.confirmations }
            }
            sight => sight,
        };
        match sight {
            ChainSight::InBlock { block, height, confirmations } if confirmations >= config.confirmations => {
                self.seen_on_chain(tx);
                let block = BlockRef { hash: block, height };
                let watch = self.chain_watch.get_mut(&tx).expect("checked above");
                if watch.status.block.as_ref() != Some(&block) {
                    watch.status.block = Some(block);
                    let status = watch.status.clone();
                    self.persist(Record::Chain { tx, status });
                }
                let now = self.now;
                self.chain_watch.get_mut(&tx).expect("checked above").confirmed_at.get_or_insert(now);
                if state != TxState::Confirmed {
                    self.transition(tx, TxEvent::ConfirmedOnChain);
                }
            }
            ChainSight::InBlock { .. } | ChainSight::InMempool => {
                self.seen_on_chain(tx);
                self.lost_confirmation(tx, &state);
                if state == TxState::Signed {
                    self.transition(tx, TxEvent::Broadcasted);
                }
            }
            ChainSight::Absent => {
                self.unseen_on_chain(tx);
                self.lost_confirmation(tx, &state);
            }
            // As deep as a confirmation must be: as final as Confirmed
            // would have been.
            ChainSight::Conflict { input, spender, confirmations } if confirmations >= config.confirmations => {
                let by = spender.unwrap_or_else(|| "another transaction".into());
                self.chain_watch.remove(&tx);
                self.transition(tx, TxEvent::Conflicted(format!("conflict: input {input} spent by {by}")));
            }
            // A shallower spend may still be reorged or replaced away.
            ChainSight::Conflict { input, spender, confirmations } => {
                let by = spender.unwrap_or_else(|| "another transaction".into());
                self.unseen_on_chain(tx);
                self.lost_confirmation(tx, &state);
                let place = match confirmations {
                    0 => "in the mempool".to_string(),
                    k => format!("{k} of {} blocks deep", config.confirmations),
                };
                self.chain_problem(tx, format!("input {input} is spent by {by} {place}"));
            }
        }
    }

    /// The backend holds `tx`: no rebroadcast, and a stall mark is lifted.
    fn seen_on_chain(&mut self, tx: TxId) {
        let Some(watch) = self.chain_watch.get_mut(&tx) else { return };
        watch.seen = true;
        watch.problem = None;
        if watch.status.stalled.take().is_some() {
            let status = watch.status.clone();
            self.persist(Record::Chain { tx, status });
        }
    }

    /// The backend does not hold `tx` (any more): broadcast it again now,
    /// and count the broadcast timeout from here.
    fn unseen_on_chain(&mut self, tx: TxId) {
        let now = self.now;
        let Some(watch) = self.chain_watch.get_mut(&tx) else { return };
        if watch.seen {
            watch.seen = false;
            watch.unseen_since = now;
            watch.broadcasts = 0;
            watch.next_broadcast = now;
            self.next_chain_due = self.next_chain_due.min(now);
        }
    }

    /// A confirmed transaction the chain no longer holds deep enough goes
    /// back to Broadcast (a reorg).
    fn lost_confirmation(&mut self, tx: TxId, state: &TxState) {
        if *state != TxState::Confirmed {
            return;
        }
        if let Some(watch) = self.chain_watch.get_mut(&tx) {
            watch.confirmed_at = None;
            watch.status.block = None;
            let status = watch.status.clone();
            self.persist(Record::Chain { tx, status });
        }
        self.transition(tx, TxEvent::ConfirmationLost);
    }

    /// The backend failed to broadcast or look up `tx`: kept as the stall
    /// reason, reported once per new reason.
    fn chain_problem(&mut self, tx: TxId, reason: String) {
        let Some(watch) = self.chain_watch.get_mut(&tx) else { return };
        if watch.problem.as_ref() != Some(&reason) {
            watch.problem = Some(reason.clone());
            self.observe(Observation::ChainProblem { tx, reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebroadcasts_back_off_by_doubling_up_to_the_maximum() {
        let c = ChainConfig {
            rebroadcast_ms: 1_000,
            rebroadcast_max_ms: 5_000,
            ..ChainConfig::for_network(bitcoin::Network::Regtest)
        };
        let waits: Vec<u64> = (1..=5).map(|a| c.backoff(a)).collect();
        assert_eq!(waits, vec![1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(c.backoff(u32::MAX), 5_000);
    }

    #[test]
    fn regtest_confirms_at_one_block_and_other_networks_at_six() {
        assert_eq!(ChainConfig::for_network(bitcoin::Network::Regtest).confirmations, 1);
        assert_eq!(ChainConfig::for_network(bitcoin::Network::Bitcoin).confirmations, 6);
        assert_eq!(ChainConfig::for_network(bitcoin::Network::Testnet).confirmations, 6);
    }

    #[test]
    fn bad_settings_are_named() {
        let good = ChainConfig::for_network(bitcoin::Network::Regtest);
        assert_eq!(good.problem(), None);
        assert!(ChainConfig { confirmations: 0, ..good.clone() }.problem().unwrap().contains("confirmations"));
        assert!(ChainConfig { check_ms: 0, ..good.clone() }.problem().unwrap().contains("check_ms"));
        let inverted = ChainConfig { rebroadcast_ms: 10, rebroadcast_max_ms: 5, ..good };
        assert!(inverted.problem().unwrap().contains("rebroadcast_max_ms"));
    }
}
