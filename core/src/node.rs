//! [`Node`]: one cluster member's protocol state. Inputs in, a [`Step`] out.
//!
//! The protocols live in their own modules (`dkg`, `txflow`, `pool`,
//! `sign`), each an `impl Node` block; this module holds the state, the
//! restart path and the dispatch.

use crate::config::{NodeConfig, Policy};
use crate::engine::{AuxInfo, ComputeJob, KeyShare, PresigPublic, PresigShare, SafePrimes};
use crate::ids::{DkgId, Millis, NodeId, PresigId, SessionId, TxId};
use crate::io::{Envelope, Input, Observation, Step};
use crate::key_confirmation::{AttemptStatements, PendingKey};
use crate::lifecycle::TxEvent;
use crate::message::PeerMessage;
use crate::record::{Record, RecoveredState, TxState};
use crate::secret::Secret;
use crate::tx::{GroupKey, ProposedTx};
use crate::vote::{Decision, SignedVote, Tally};
use ed25519_dalek::SigningKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use thiserror::Error;

/// Who this node is: its id and the Ed25519 key it signs votes with.
#[derive(Clone)]
pub struct Identity {
    pub id: NodeId,
    pub vote_key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.id)
    }
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("identity's vote key does not match the cluster config for {0}")]
    VoteKeyMismatch(NodeId),
    #[error("recovered state is inconsistent: {0}")]
    Recovery(String),
}

/// Protocol messages that arrived before their session started here are
/// held, within what an honest member can send early: a few messages per
/// session, and a byte budget per sender (aux info rounds are megabytes),
/// so one Byzantine member can only fill its own share. A held message
/// leaves when its session starts, or when it could no longer be useful
/// (the session would have timed out by then).
pub(crate) const MAX_EARLY_PER_SESSION_AND_SENDER: usize = 4;
pub(crate) const MAX_EARLY_BYTES_PER_SENDER: usize = 32 << 20;
pub(crate) const MAX_EARLY_MESSAGES_PER_SENDER: usize = 256;
/// Verified votes kept for transactions not yet proposed to this node.
pub(crate) const MAX_ORPHAN_TXS: usize = 1024;
/// How often a node with pending background work wants a tick.
pub(crate) const POLL_MS: u64 = 1_000;

/// What a node holds in memory, by kind. Final transactions and spent
/// presignatures leave memory (they stay in the store), so on a cluster
/// that has run for a long time every figure stays about what the work in
/// flight needs; `settled` keeps one small entry per final transaction,
/// so a late message for it is recognised and never revives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Transactions held whole: not final, or final within the gossip window.
    pub transactions: usize,
    /// Final transactions held as their id and outcome only.
    pub settled: usize,
    /// Presignatures in this node's cluster view.
    pub pool: usize,
    /// This node's own presignature shares, in any state.
    pub own_presigs: usize,
    pub closed_sessions: usize,
    /// Transactions with votes held until their proposal arrives.
    pub orphan_votes: usize,
    pub early_messages: usize,
    pub signing_jobs: usize,
}

/// The group key and this node's share of it.
pub(crate) struct KeyMaterial {
    pub dkg: DkgId,
    pub share: Arc<Secret<KeyShare>>,
    pub group: GroupKey,
}

/// A running cggmp24 session this node takes part in.
pub(crate) struct SessionInfo {
    /// Members in protocol-index order.
    pub members: Vec<NodeId>,
    pub deadline: Millis,
    /// Digests of messages already handed to the engine: a duplicate would
    /// make the protocol abort, so each is delivered once.
    pub delivered: BTreeSet<(NodeId, [u8; 32])>,
}

/// A protocol message held until its session starts here.
pub(crate) struct EarlyMessage {
    pub from: NodeId,
    pub broadcast: bool,
    pub payload: Vec<u8>,
    pub at: Millis,
}

/// A transaction as this node knows it.
pub(crate) struct TxEntry {
    pub proposed: ProposedTx,
    pub proposer: NodeId,
    pub state: TxState,
    pub tally: Tally,
    pub vote_deadline: Millis,
    pub my_vote: Option<Decision>,
    /// When this node saw the approval (it orders coordinator takeover).
    pub approved_at: Option<Millis>,
    /// When this node saw the transaction reach a final state. Its votes are
    /// still gossiped for a while after, so an equivocator's two votes meet.
    pub finalized_at: Option<Millis>,
    pub signed_raw: Option<Vec<u8>>,
    /// Equivocations found for this transaction, one per voter, kept to
    /// hand on (catch-up, a refused certificate).
    pub evidence: Vec<crate::vote::Equivocation>,
    /// Members' promises never to sign it (this node's own included).
    pub expiry: BTreeMap<NodeId, crate::vote::ExpiryNotice>,
}

/// This node's own share of a presignature.
pub(crate) enum OwnPresig {
    Generating { signers: Vec<NodeId> },
    Ready { signers: Vec<NodeId>, share: Secret<PresigShare> },
    Consumed { tx: TxId, input: u32, message: [u8; 32], sigma: [u8; 32] },
    Discarded,
}

/// What this node knows of a presignature across the cluster.
pub(crate) struct PoolEntry {
    pub signers: Vec<NodeId>,
    pub public: Option<PresigPublic>,
    pub ready: BTreeSet<NodeId>,
    /// Assigned to a signing input (or known consumed): never picked again.
    pub used: bool,
    /// Signers announced different commitments: unusable.
    pub inconsistent: bool,
    /// The signer list came from the initiator (or this node's own
    /// session), not from an announcement: announcements must match it.
    pub confirmed: bool,
    /// When this node first heard of it: a session not complete a
    /// presigning timeout later is no longer counted as generating.
    pub first_seen: Millis,
}

impl PoolEntry {
    pub fn complete(&self) -> bool {
        !self.inconsistent && self.public.is_some() && self.ready.len() == self.signers.len()
    }
}

/// Key generation this node is taking part in.
pub(crate) struct DkgRun {
    pub dkg: DkgId,
    pub deadline: Millis,
    pub waiting_for_primes: bool,
}

/// Signing of one input, as its coordinator tracks it.
pub(crate) struct InputSigning {
    pub attempts: u32,
    /// No new attempt before this time: retries back off, so refusals that
    /// come back at once cannot burn through attempts and presignatures.
    pub not_before: Millis,
    pub presig: Option<PresigId>,
    pub partials: BTreeMap<NodeId, [u8; 32]>,
    pub deadline: Millis,
    pub done: Option<[u8; 64]>,
    /// `Observation::SigningStalled` was emitted for this input.
    pub stall_reported: bool,
    /// The request went again to the signers not yet answered, half a
    /// signing timeout in (see `sign.rs`, `ask_silent_signers_again`).
    pub asked_again: bool,
    /// Signers that refused for want of the proposal and were sent it,
    /// this attempt (see `sign.rs`, `hand_over_proposal`).
    pub handed_proposal: BTreeSet<NodeId>,
    /// The presignature picked next, while its signers are asked whether
    /// they can sign (see `signing_probe.rs`); `presig` is `None` meanwhile.
    pub probe: Option<crate::signing_probe::Probe>,
}

pub(crate) struct SigningJob {
    pub inputs: Vec<InputSigning>,
}

pub struct Node {
    pub(crate) me: NodeId,
    pub(crate) config: NodeConfig,
    pub(crate) policy: Policy,
    pub(crate) vote_key: SigningKey,
    pub(crate) rng: ChaCha20Rng,
    /// A one-way digest of the construction seed (see [`Node::seed_fingerprint`]).
    seed_fingerprint: [u8; 32],
    pub(crate) now: Millis,
    pub(crate) leader: Option<NodeId>,
    /// The highest lease term this node has been told of: a presigning
    /// session started under an older term comes from a holder that has
    /// been superseded, and is refused.
    pub(crate) lease_term: u64,
    /// The last holder of the lease this node was told of (kept while
    /// nobody holds it), to tell a takeover from a renewal.
    pub(crate) last_holder: Option<NodeId>,
    /// When the lease last changed hands: the order of signing takeover
    /// (which starts at the lease holder) changed then.
    pub(crate) line_changed_at: Millis,
    /// See [`Input::Coordination`]: while false, nothing is consumed.
    pub(crate) coordination_reachable: bool,
    pub(crate) next_seq: u64,
    pub(crate) primes: Option<Secret<SafePrimes>>,
    pub(crate) dkg_joined: BTreeSet<DkgId>,
    pub(crate) dkg: Option<DkgRun>,
    pub(crate) aux: Option<(DkgId, Secret<AuxInfo>)>,
    /// The cluster's key: adopted once every member confirmed it.
    pub(crate) key: Option<KeyMaterial>,
    /// This node's share from the latest finished keygen, until adopted.
    pub(crate) pending_key: Option<PendingKey>,
    /// Presigning starts that came while this node held its new share but
    /// had not yet seen every member confirm it: the lease holder may adopt
    /// the key a moment earlier (its last confirmation overtook ours on
    /// another link). Run once the key is adopted; at most
    /// `pool.parallel_sessions` per initiator, in memory only (a restart
    /// forgets them, and their sessions time out at the initiator).
    pub(crate) held_presign_starts: Vec<(NodeId, PresigId, Vec<NodeId>, u64)>,
    /// Confirmations and abandonments held, per attempt (see
    /// `key_confirmation.rs` for which are kept).
    pub(crate) dkg_statements: BTreeMap<DkgId, AttemptStatements>,
    pub(crate) next_confirm_resend: Millis,
    /// When each member was last answered a repeated confirmation.
    pub(crate) answered: BTreeMap<NodeId, Millis>,
    pub(crate) sessions: BTreeMap<SessionId, SessionInfo>,
    pub(crate) closed_sessions: BTreeSet<SessionId>,
    pub(crate) buffered: BTreeMap<SessionId, Vec<EarlyMessage>>,
    pub(crate) txs: BTreeMap<TxId, TxEntry>,
    /// Transactions with work ahead (Received, Voting, Approved, Signing):
    /// what deadlines and signing scan, so their cost follows the work in
    /// flight rather than the history.
    pub(crate) active: BTreeSet<TxId>,
    /// Final transactions held whole, by when they leave `txs`.
    pub(crate) settling: BTreeSet<(Millis, TxId)>,
    /// Signed transactions followed on chain (see [`crate::chain`]).
    pub(crate) chain_watch: BTreeMap<TxId, crate::chain::ChainWatch>,
    /// When the next chain lookup or broadcast is due.
    pub(crate) next_chain_due: Millis,
    /// Chain statuses read back on restart, until recovery finishes.
    recovered_chain: BTreeMap<TxId, crate::chain::ChainStatus>,
    /// Final transactions whose entries left `txs` (see [`Retained`]).
    pub(crate) settled: BTreeMap<TxId, TxState>,
    /// Verified votes (with who delivered them) for transactions not yet
    /// proposed to this node; they take the normal vote path once it is.
    pub(crate) orphan_votes: BTreeMap<TxId, Vec<(NodeId, SignedVote)>>,
    pub(crate) approved_by_day: BTreeMap<u64, u64>,
    pub(crate) own_presigs: BTreeMap<PresigId, OwnPresig>,
    pub(crate) pool: BTreeMap<PresigId, PoolEntry>,
    /// Per initiator, the highest sequence number of a presignature that
    /// left memory: an id at or below it that this node does not hold is
    /// stale (see `prune.rs`), so a late message never revives it.
    pub(crate) presig_floor: BTreeMap<NodeId, u64>,
    /// When this node first found each presignature spent (see `prune.rs`).
    pub(crate) spent_since: BTreeMap<PresigId, Millis>,
    /// Own shares that left memory, Consumed and Discarded: status still
    /// counts them.
    pub(crate) pruned_own: (usize, usize),
    /// When memory is next swept of spent presignatures.
    pub(crate) next_prune: Millis,
    /// Presigning sessions this node initiated as coordinator, by deadline.
    pub(crate) initiated: BTreeMap<PresigId, Millis>,
    pub(crate) refilling: bool,
    /// A restarted node starts no presigning session before this time: the
    /// sessions in flight when it went down (which it may no longer know of)
    /// have finished or timed out by then, so ready plus generating never
    /// passes the pool's maximum.
    pub(crate) refill_not_before: Option<Millis>,
    pub(crate) restarted: bool,
    pub(crate) signing: BTreeMap<TxId, SigningJob>,
    pub(crate) suspects: BTreeMap<NodeId, Millis>,
    /// How often each member has been suspected: suspicion lasts longer
    /// each time, so a node that keeps failing stops costing timeouts.
    pub(crate) strikes: BTreeMap<NodeId, u32>,
    /// Members proven to cheat (an invalid partial signature): never picked
    /// as a signer again by this node.
    pub(crate) convicted: BTreeSet<NodeId>,
    /// When each member's last message arrived (the transport
    /// authenticated it): signing prefers presignatures whose signers
    /// were heard from lately.
    pub(crate) last_heard: BTreeMap<NodeId, Millis>,
    /// Members that asked this node to sign with one of its presignature
    /// shares: a coordinator that assigned a presignature may abandon it.
    pub(crate) requesters: BTreeMap<PresigId, BTreeSet<NodeId>>,
    pub(crate) loopback: VecDeque<PeerMessage>,
    /// When this node next asks a peer for missed transactions, and which.
    pub(crate) next_sync: Millis,
    pub(crate) sync_rotation: u64,
    /// Work found during recovery, emitted with the first step.
    pub(crate) startup: Option<Step>,
    pub(crate) step: Step,
    /// Always `PlantedBugs::NONE` outside the simulator's bug-planting tests.
    pub(crate) bugs: crate::planted::PlantedBugs,
    /// Consumption records held back by the `persist_consumption_late` bug.
    pub(crate) late_records: Vec<Record>,
}

/// The seed of one incarnation's random stream.
fn incarnation_seed(seed: &[u8; 32], incarnation: u64) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new()
        .chain_update(b"mpc-custody/incarnation-seed/v1")
        .chain_update(seed)
        .chain_update(incarnation.to_be_bytes())
        .finalize()
        .into()
}

impl Node {
    /// Builds a node from its configuration, identity, a seed for all its
    /// randomness, and the records it persisted before (empty on first start).
    pub fn new(
        config: NodeConfig,
        identity: Identity,
        seed: [u8; 32],
        recovered: RecoveredState,
    ) -> Result<Node, NodeError> {
        Self::with_bugs(config, identity, seed, recovered, crate::planted::PlantedBugs::NONE)
    }

    /// [`Node::new`] with planted bugs. Only the simulator's checker tests
    /// pass anything but `PlantedBugs::NONE`, which is all a build without
    /// the `planted-bugs` feature can construct.
    pub fn with_bugs(
        config: NodeConfig,
        identity: Identity,
        seed: [u8; 32],
        recovered: RecoveredState,
        bugs: crate::planted::PlantedBugs,
    ) -> Result<Node, NodeError> {
        let policy = config.validate(identity.id)?;
        let expected = config.cluster.members[&identity.id].vote_key;
        if identity.vote_key.verifying_key().to_bytes() != expected {
            return Err(NodeError::VoteKeyMismatch(identity.id));
        }
        let mut node = Node {
            me: identity.id,
            config,
            policy,
            vote_key: identity.vote_key,
            rng: ChaCha20Rng::from_seed(seed),
            seed_fingerprint: {
                use sha2::Digest;
                sha2::Sha256::new()
                    .chain_update(b"mpc-custody/seed-fingerprint/v1")
                    .chain_update(seed)
                    .finalize()
                    .into()
            },
            now: Millis(0),
            leader: None,
            lease_term: 0,
            last_holder: None,
            line_changed_at: Millis(0),
            coordination_reachable: true,
            next_seq: 0,
            primes: None,
            dkg_joined: BTreeSet::new(),
            dkg: None,
            aux: None,
            key: None,
            pending_key: None,
            held_presign_starts: Vec::new(),
            dkg_statements: BTreeMap::new(),
            next_confirm_resend: Millis(0),
            answered: BTreeMap::new(),
            sessions: BTreeMap::new(),
            closed_sessions: BTreeSet::new(),
            buffered: BTreeMap::new(),
            txs: BTreeMap::new(),
            active: BTreeSet::new(),
            settling: BTreeSet::new(),
            chain_watch: BTreeMap::new(),
            next_chain_due: Millis(0),
            recovered_chain: BTreeMap::new(),
            settled: BTreeMap::new(),
            orphan_votes: BTreeMap::new(),
            approved_by_day: BTreeMap::new(),
            own_presigs: BTreeMap::new(),
            pool: BTreeMap::new(),
            presig_floor: BTreeMap::new(),
            spent_since: BTreeMap::new(),
            pruned_own: (0, 0),
            next_prune: Millis(0),
            initiated: BTreeMap::new(),
            refilling: false,
            refill_not_before: None,
            restarted: false,
            signing: BTreeMap::new(),
            suspects: BTreeMap::new(),
            strikes: BTreeMap::new(),
            convicted: BTreeSet::new(),
            last_heard: BTreeMap::new(),
            requesters: BTreeMap::new(),
            loopback: VecDeque::new(),
            next_sync: Millis(0),
            sync_rotation: 0,
            startup: None,
            step: Step::default(),
            bugs,
            late_records: Vec::new(),
        };
        node.restarted = !recovered.records.is_empty();
        for record in recovered.records {
            node.replay(record)?;
        }
        // Every start is a new incarnation: a sequence number, reserved
        // durably in the startup step (so before anything drawn from the
        // stream can leave the node), is mixed into the seed. A seed handed
        // in twice (a shell's bug, a cloned machine's entropy) then still
        // yields a fresh stream, never a replay of the nonces a previous
        // incarnation already sent messages from. If the startup step's
        // persist fails, the number is drawn again next time, but nothing
        // of this incarnation left the node (persist comes first).
        let incarnation = node.reserve_seq();
        node.rng = ChaCha20Rng::from_seed(incarnation_seed(&seed, incarnation));
        node.finish_recovery();
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    /// A domain-separated SHA-256 of the seed this node was built with:
    /// lets a test check that two starts drew different seeds without the
    /// seed itself ever leaving the core. Not for logs either.
    pub fn seed_fingerprint(&self) -> [u8; 32] {
        self.seed_fingerprint
    }

    /// The latest time this node's shell has handed it (its own clock, as
    /// the core sees it; never goes backwards).
    pub fn clock(&self) -> Millis {
        self.now
    }

    /// Protocol messages (count, bytes) held for sessions that have not
    /// started here yet: bounded per sender (see `MAX_EARLY_*`).
    pub fn early_messages_held(&self) -> (usize, usize) {
        let held = self.buffered.values().flatten();
        held.fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.payload.len()))
    }

    /// Presignatures this node tracks cluster-wide (its pool view, spent
    /// ones included).
    pub fn pool_entries(&self) -> usize {
        self.pool.len()
    }

    /// What this node holds in memory, by kind (see [`Retained`]).
    pub fn retained(&self) -> Retained {
        Retained {
            transactions: self.txs.len(),
            settled: self.settled.len(),
            pool: self.pool.len(),
            own_presigs: self.own_presigs.len(),
            closed_sessions: self.closed_sessions.len(),
            orphan_votes: self.orphan_votes.len(),
            early_messages: self.early_messages_held().0,
            signing_jobs: self.signing.len(),
        }
    }

    pub fn group_key(&self) -> Option<&GroupKey> {
        self.key.as_ref().map(|k| &k.group)
    }

    /// The single entry point. `now` is the shell's clock; it never goes
    /// backwards for one node.
    pub fn handle(&mut self, now: Millis, input: Input) -> Step {
        self.now = self.now.max(now);
        if self.refill_not_before.is_none() {
            let grace = if self.restarted { self.config.cluster.timeouts.presign_ms } else { 0 };
            self.refill_not_before = Some(self.now.plus(grace));
        }
        self.step = self.startup.take().unwrap_or_default();
        // Planted bug only: consumption recorded a step after it was used.
        self.step.persist.append(&mut self.late_records);
        match input {
            Input::Peer { from, msg } => self.on_peer(from, msg),
            Input::Tick => {}
            Input::Command { request, command } => self.on_command(request, command),
            Input::Leadership { leader, term } => self.on_leadership(leader, term),
            Input::Compute(result) => self.on_compute(result),
            Input::SafePrimes(primes) => self.on_primes(primes),
            Input::TransportRefused { peer, reason } => self.observe(Observation::TransportRefused { peer, reason }),
            Input::Coordination { reachable } => self.coordination_reachable = reachable,
            Input::Chain(report) => self.on_chain(report),
            Input::ShutDown => return self.shut_down(),
        }
        while let Some(msg) = self.loopback.pop_front() {
            self.on_peer(self.me, msg);
        }
        self.on_time();
        while let Some(msg) = self.loopback.pop_front() {
            self.on_peer(self.me, msg);
        }
        let mut step = std::mem::take(&mut self.step);
        step.wake_at = self.next_wake();
        step
    }

    fn on_peer(&mut self, from: NodeId, msg: PeerMessage) {
        if !self.config.cluster.members.contains_key(&from) {
            self.observe(Observation::RejectedMessage {
                from,
                kind: msg.kind().into(),
                reason: "sender is not a member".into(),
            });
            return;
        }
        if from != self.me {
            self.last_heard.insert(from, self.now);
        }
        match msg {
            PeerMessage::DkgStart { dkg, abandoned } => self.on_dkg_start(from, dkg, abandoned),
            PeerMessage::DkgStatement(statement) => self.on_dkg_statement(from, statement),
            PeerMessage::Protocol { session, broadcast, payload } => {
                self.on_protocol_message(from, session, broadcast, payload)
            }
            PeerMessage::PresignStart { id, signers, term } => self.on_presign_start(from, id, signers, term),
            PeerMessage::PresigReady { id, signers, public } => self.on_presig_announced(from, id, signers, public),
            PeerMessage::PresigAbandon { id } => self.on_presig_abandon(from, id),
            PeerMessage::Proposal { psbt } => self.on_proposal(from, psbt),
            PeerMessage::Vote(vote) => self.on_vote(from, vote),
            PeerMessage::SigningRequest { tx, input, presig, certificate } => {
                self.on_signing_request(from, tx, input, presig, certificate)
            }
            PeerMessage::SigningResponse { tx, input, presig, result } => {
                self.on_signing_response(from, tx, input, presig, result)
            }
            PeerMessage::TxSigned { tx, raw_tx, presigs } => self.on_tx_signed(from, tx, raw_tx, presigs),
            PeerMessage::SyncRequest { known_final, open } => self.on_sync_request(from, known_final, open),
            PeerMessage::Evidence(evidence) => self.on_evidence(from, *evidence),
            PeerMessage::Expiry(notice) => self.on_expiry_notice(from, notice),
            PeerMessage::SigningProbe { tx, input, presig, certificate } => {
                self.on_signing_probe(from, tx, input, presig, certificate)
            }
            PeerMessage::SigningProbeAnswer { tx, input, presig, result } => {
                self.on_probe_answer(from, tx, input, presig, result)
            }
        }
    }

    fn on_leadership(&mut self, leader: Option<NodeId>, term: u64) {
        if leader != self.leader {
            self.line_changed_at = self.now;
        }
        self.lease_term = self.lease_term.max(term);
        if leader == Some(self.me) && self.leader != leader && self.last_holder.is_some_and(|h| h != self.me) {
            // Taking over from another holder: sessions it started that
            // this node never heard of (their start lost to a crash or a
            // cut) may still finish; they have finished or timed out a
            // presigning timeout from now, so only then does this node
            // start sessions of its own.
            let grace = self.now.plus(self.config.cluster.timeouts.presign_ms);
            self.refill_not_before = Some(self.refill_not_before.map_or(grace, |t| t.max(grace)));
        }
        if leader.is_some() {
            self.last_holder = leader;
        }
        self.leader = leader;
        if leader != Some(self.me) {
            // Sessions this node started as coordinator keep running at the
            // signers; it just stops starting new ones.
            self.refilling = false;
        }
    }

    /// Deadlines and background work, run after every input.
    fn on_time(&mut self) {
        self.expire_suspects();
        self.age_out_early_messages();
        self.check_dkg_deadline();
        self.drive_confirmation();
        self.check_session_deadlines();
        self.check_vote_deadlines();
        self.check_initiated_deadlines();
        self.drive_signing();
        self.drive_pool();
        self.drive_sync();
        self.drive_chain();
        self.prune();
    }

    fn next_wake(&self) -> Option<Millis> {
        let mut wake: Option<Millis> = None;
        let mut at = |t: Millis| wake = Some(wake.map_or(t, |w: Millis| w.min(t)));
        if let Some(d) = &self.dkg {
            at(d.deadline);
        }
        if let Some(t) = self.confirmation_wake() {
            at(t);
        }
        self.sessions.values().for_each(|s| at(s.deadline));
        // One pass over the transactions with work ahead: a vote deadline,
        // or approved work nobody here coordinates yet (wake when this
        // node's turn to take it over comes).
        for id in &self.active {
            let Some(t) = self.txs.get(id) else { continue };
            match t.state {
                TxState::Received | TxState::Voting => at(t.vote_deadline),
                TxState::Approved | TxState::Signing if self.key.is_some() && !self.signing.contains_key(id) => {
                    if let Some(when) = self.takeover_at(*id) {
                        at(when);
                    }
                }
                _ => {}
            }
        }
        for job in self.signing.values() {
            for input in job.inputs.iter().filter(|i| i.done.is_none()) {
                at(match (&input.presig, &input.probe) {
                    (Some(_), _) if !input.asked_again => {
                        input.deadline.minus(self.config.cluster.timeouts.signing_ms / 2)
                    }
                    (Some(_), _) => input.deadline,
                    (None, Some(probe)) => probe.next_wake(),
                    (None, None) => input.not_before.max(self.now.plus(POLL_MS)),
                });
            }
        }
        self.initiated.values().for_each(|d| at(*d));
        // Wake when a held message expires (always after now: expired
        // ones were dropped during this input).
        for (session, queue) in &self.buffered {
            let lifetime = self.session_lifetime(session);
            queue.iter().for_each(|e| at(e.at.plus(lifetime)));
        }
        self.suspects.values().for_each(|d| at(*d));
        if self.has_coordination_work() {
            at(self.now.plus(POLL_MS));
        }
        at(self.next_sync);
        if let Some(t) = self.chain_wake() {
            at(t);
        }
        // Memory sweeps: the next final transaction to leave, and spent
        // presignatures waiting out their time.
        if let Some((leaves, _)) = self.settling.first() {
            at(*leaves);
        }
        if !self.spent_since.is_empty() {
            at(self.next_prune);
        }
        wake
    }

    // ---- small helpers shared by the protocol modules ----

    pub(crate) fn persist(&mut self, record: Record) {
        self.step.persist.push(record);
    }

    pub(crate) fn observe(&mut self, o: Observation) {
        self.step.observations.push(o);
    }

    pub(crate) fn compute(&mut self, job: ComputeJob) {
        self.step.compute.push(job);
    }

    /// Sends to one member; a message to this node itself is handled within
    /// the same step, after the current input.
    pub(crate) fn send(&mut self, to: NodeId, msg: PeerMessage) {
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            self.step.send.push(Envelope { to, msg });
        }
    }

    /// Sends to every other member.
    pub(crate) fn broadcast(&mut self, msg: PeerMessage) {
        let others: Vec<NodeId> = self.config.cluster.members.keys().copied().filter(|m| *m != self.me).collect();
        for to in others {
            self.step.send.push(Envelope { to, msg: msg.clone() });
        }
    }

    pub(crate) fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// Reserves a sequence number durably: the record precedes any message
    /// that carries an id made from it.
    pub(crate) fn reserve_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.persist(Record::SequenceReserved { next: self.next_seq });
        seq
    }

    pub(crate) fn cluster_id(&self) -> &str {
        &self.config.cluster.cluster_id
    }

    pub(crate) fn members(&self) -> Vec<NodeId> {
        self.config.cluster.members.keys().copied().collect()
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader == Some(self.me)
    }

    /// Moves `tx` by `event`, as the lifecycle table says (see
    /// [`crate::lifecycle`]): the new state is persisted and observed; an
    /// event the table does not allow in the current state changes nothing
    /// and is reported as an illegal transition.
    pub(crate) fn transition(&mut self, tx: TxId, event: TxEvent) {
        let Some(entry) = self.txs.get_mut(&tx) else { return };
        let to = match crate::lifecycle::next(&entry.state, &event) {
            Ok(to) => to,
            Err(illegal) => {
                self.observe(Observation::IllegalTransition { tx, from: illegal.from, event: illegal.event });
                return;
            }
        };
        if entry.state == to {
            return;
        }
        let from = std::mem::replace(&mut entry.state, to.clone());
        if to == TxState::Approved && entry.approved_at.is_none() {
            entry.approved_at = Some(self.now);
        }
        if to.is_final() && entry.finalized_at.is_none() {
            entry.finalized_at = Some(self.now);
            let leaves = self.now.plus(self.config.cluster.timeouts.retain_final_ms);
            self.settling.insert((leaves, tx));
        }
        self.index_tx(tx);
        self.persist(Record::TxState { tx, state: to.clone() });
        if to == TxState::Signed {
            self.watch_chain(tx, crate::chain::ChainStatus::default());
        }
        self.observe(Observation::TxStateChanged { tx, from, to });
    }

    fn expire_suspects(&mut self) {
        let now = self.now;
        self.suspects.retain(|_, until| *until > now);
    }

    /// Avoids `node` when picking signers for a while: `suspect_ms`, doubled
    /// for each earlier strike (up to 64 times).
    pub(crate) fn suspect(&mut self, node: NodeId) {
        if node != self.me {
            let strikes = self.strikes.entry(node).or_default();
            let until = self.now.plus(self.config.cluster.timeouts.suspect_ms << (*strikes).min(6));
            *strikes += 1;
            let strikes = *strikes;
            self.suspects.insert(node, until);
            self.observe(Observation::MemberSuspected { member: node, strikes });
        }
    }

    /// A valid partial signature takes one strike off its signer: an
    /// honest member that was unlucky (a collision, a slow link) is not
    /// avoided for ever longer; a member that keeps failing still is.
    pub(crate) fn forgive(&mut self, node: NodeId) {
        if let Some(strikes) = self.strikes.get_mut(&node) {
            *strikes = strikes.saturating_sub(1);
            if *strikes == 0 {
                self.strikes.remove(&node);
            }
        }
    }

    /// Avoids `node` for one `suspect_ms`, without a strike: it said it
    /// cannot sign for a while (a retryable refusal), which is no fault.
    pub(crate) fn suspect_briefly(&mut self, node: NodeId) {
        if node != self.me {
            let until = self.now.plus(self.config.cluster.timeouts.suspect_ms);
            let entry = self.suspects.entry(node).or_insert(until);
            *entry = (*entry).max(until);
        }
    }

    /// A member proven to cheat is avoided for good.
    pub(crate) fn convict(&mut self, node: NodeId) {
        if node != self.me {
            self.convicted.insert(node);
        }
    }

    pub(crate) fn healthy(&self, node: NodeId) -> bool {
        !self.suspects.contains_key(&node) && !self.convicted.contains(&node)
    }

    // ---- restart ----

    fn replay(&mut self, record: Record) -> Result<(), NodeError> {
        match record {
            Record::SafePrimes(p) => self.primes = Some(p),
            Record::SequenceReserved { next } => self.next_seq = self.next_seq.max(next),
            Record::DkgJoined { dkg } => {
                self.dkg_joined.insert(dkg);
            }
            Record::AuxInfo { dkg, aux } => self.aux = Some((dkg, aux)),
            Record::KeyShare { dkg, share, public_key } => {
                let bytes: [u8; 33] = public_key
                    .try_into()
                    .map_err(|_| NodeError::Recovery("group public key is not 33 bytes".into()))?;
                let group = GroupKey::from_compressed(bytes).map_err(|e| NodeError::Recovery(e.to_string()))?;
                let material = KeyMaterial { dkg, share: Arc::new(share), group };
                // Past its deadline or not, a restarted node does not
                // report the missing confirmations again.
                self.pending_key = Some(PendingKey { material, deadline: Millis(0), reported: true });
            }
            Record::DkgStatement(statement) => self.replay_statement(statement),
            Record::KeyAdopted { dkg } => self.replay_adopted(dkg),
            Record::TxAccepted { tx, psbt, proposer, at } => {
                let script = self
                    .key
                    .as_ref()
                    .ok_or_else(|| NodeError::Recovery("transaction recorded before any key".into()))?
                    .group
                    .script_pubkey();
                let proposed = ProposedTx::from_psbt(&psbt, &script)
                    .map_err(|e| NodeError::Recovery(format!("stored proposal {}: {e}", tx.short())))?;
                let deadline = at.plus(self.config.cluster.timeouts.vote_ms);
                let mut entry = TxEntry::new(proposed, proposer, deadline);
                entry.tally.count_equivocators = self.bugs.count_equivocators();
                self.txs.insert(tx, entry);
                self.index_tx(tx);
            }
            Record::OwnVote { vote, at } => {
                let tx = vote.body.tx;
                if vote.body.decision.is_approve() {
                    if let (Some(entry), Some(key)) = (self.txs.get(&tx), self.key.as_ref()) {
                        let amount = crate::policy::outgoing_amount(&entry.proposed, &key.group.script_pubkey());
                        *self.approved_by_day.entry(at.day()).or_default() += amount;
                    }
                }
                if let Some(entry) = self.txs.get_mut(&tx) {
                    entry.my_vote = Some(vote.body.decision.clone());
                    entry.tally.add(vote);
                }
            }
            Record::Vote(vote) => {
                let tx = vote.body.tx;
                match self.txs.get_mut(&tx) {
                    Some(entry) => {
                        entry.tally.add(vote);
                    }
                    None => self.orphan_votes.entry(tx).or_default().push((vote.body.voter, vote)),
                }
            }
            Record::Evidence(e) => {
                if let Some(entry) = self.txs.get_mut(&e.tx) {
                    entry.tally.mark_equivocator(e.voter);
                    entry.evidence.push(e);
                }
            }
            Record::TxState { tx, state } => {
                if let Some(entry) = self.txs.get_mut(&tx) {
                    entry.state = state;
                    self.index_tx(tx);
                }
            }
            Record::PresigGenerating { id, signers } => {
                self.own_presigs.entry(id).or_insert(OwnPresig::Generating { signers });
            }
            Record::PresigReady { id, signers, share } => {
                // Never resurrect: only a Generating share may become Ready.
                if matches!(self.own_presigs.get(&id), None | Some(OwnPresig::Generating { .. })) {
                    let public = share.expose().public.clone();
                    self.own_presigs.insert(id, OwnPresig::Ready { signers: signers.clone(), share });
                    self.note_ready(id, signers, self.me, public);
                }
            }
            Record::PresigAnnounced { id, signers, from, public } => self.note_ready(id, signers, from, public),
            Record::PresigConsumed { .. } if self.bugs.forget_consumed_on_recovery() => {}
            Record::PresigConsumed { id, tx, input, message, sigma } => {
                self.own_presigs.insert(id, OwnPresig::Consumed { tx, input, message, sigma });
                if let Some(e) = self.pool.get_mut(&id) {
                    e.used = true;
                }
            }
            Record::PresigDiscarded { id, .. } => {
                if !matches!(self.own_presigs.get(&id), Some(OwnPresig::Consumed { .. })) {
                    self.own_presigs.insert(id, OwnPresig::Discarded);
                }
                if let Some(e) = self.pool.get_mut(&id) {
                    e.used = true;
                }
            }
            Record::SignedTx { tx, raw_tx, presigs } => {
                self.mark_used(&presigs);
                if let Some(entry) = self.txs.get_mut(&tx) {
                    entry.signed_raw = Some(raw_tx);
                }
            }
            Record::Chain { tx, status } => {
                self.recovered_chain.insert(tx, status);
            }
        }
        Ok(())
    }

    /// After replay: sessions that were running at the crash are gone, so
    /// their shares are discarded (never half-used); transactions this node
    /// accepted but had not yet voted on get their vote now.
    fn finish_recovery(&mut self) {
        // Final before the crash. Those accepted more than `retain_final_ms`
        // ago leave memory now (the store keeps them; only the id and
        // outcome stay). Recent ones are held until then, as a running node
        // holds them: the crash may have come between persisting an
        // outcome and sending it, and a signed transaction nobody else saw
        // can only be proven by the raw transaction this node holds, which
        // it announces now.
        let timeouts = &self.config.cluster.timeouts;
        let (retain, vote_ms) = (timeouts.retain_final_ms, timeouts.vote_ms);
        let finals: Vec<(TxId, Millis)> = self
            .txs
            .iter()
            .filter(|(_, t)| t.state.is_final())
            .map(|(id, t)| (*id, t.vote_deadline.minus(vote_ms).plus(retain)))
            .collect();
        // Signed ones are followed on chain again from what was persisted;
        // those not yet confirmed are held until they are (see `settle`).
        let recovered_chain = std::mem::take(&mut self.recovered_chain);
        for (tx, _) in &finals {
            let state = &self.txs[tx].state;
            if matches!(state, TxState::Signed | TxState::Broadcast | TxState::Confirmed) {
                let status = recovered_chain.get(tx).cloned().unwrap_or_default();
                self.watch_chain(*tx, status);
            }
        }
        for (tx, leaves) in finals {
            if leaves <= self.now && self.held_for_chain(tx).is_none() {
                self.settle(tx);
                continue;
            }
            self.settling.insert((leaves, tx));
            let entry = self.txs.get_mut(&tx).expect("listed above");
            entry.finalized_at = Some(self.now);
            if let Some(raw_tx) = entry.signed_raw.clone() {
                self.broadcast(PeerMessage::TxSigned { tx, raw_tx, presigs: Vec::new() });
            }
        }
        self.abandon_own_sessions("session lost in a restart");
        self.abandon_lost_attempts();
        let unvoted: Vec<TxId> = self.txs.iter().filter(|(_, t)| t.my_vote.is_none()).map(|(id, _)| *id).collect();
        // A vote persisted just before a crash may never have been sent.
        let resend: Vec<SignedVote> = self
            .txs
            .values()
            .filter(|t| t.state.undecided())
            .filter_map(|t| t.tally.vote_of(self.me).cloned())
            .collect();
        // Ask everyone for what was missed while down.
        let request = self.sync_request();
        self.broadcast(request);
        for vote in resend {
            self.broadcast(PeerMessage::Vote(vote));
        }
        for tx in unvoted {
            self.cast_vote(tx);
        }
        // A promise persisted (as the Expired state) just before a crash
        // may never have been sent; signing it again gives the same bytes.
        let expired: Vec<TxId> =
            self.txs.iter().filter(|(_, t)| t.state == TxState::Expired).map(|(id, _)| *id).collect();
        for tx in expired {
            self.promise_never_to_sign(tx);
        }
        self.startup = Some(std::mem::take(&mut self.step));
    }

    /// Discards this node's shares still being generated, telling the other
    /// signers and the initiator at once rather than letting them wait out
    /// the session deadline. A share is never half-used: it is discarded
    /// before the session's state is lost.
    fn abandon_own_sessions(&mut self, reason: &str) {
        let generating: Vec<PresigId> = self
            .own_presigs
            .iter()
            .filter_map(|(id, p)| matches!(p, OwnPresig::Generating { .. }).then_some(*id))
            .collect();
        // Discarding tells every member (see `discard_own_presig`).
        for id in generating {
            self.discard_own_presig(id, reason.to_string());
        }
    }

    /// The last step before the process exits (DESIGN §7, shutdown): this
    /// node's presigning sessions and the sessions it initiated or assigned
    /// to signing are abandoned at their peers, so nobody waits for a
    /// deadline. The shares already Ready stay Ready: they are durable and
    /// serve after the restart.
    fn shut_down(&mut self) -> Step {
        self.abandon_own_sessions("node shut down");
        let mut abandon: BTreeSet<PresigId> = self.initiated.keys().copied().collect();
        abandon.extend(
            self.signing.values().flat_map(|j| j.inputs.iter().filter(|i| i.done.is_none())).filter_map(|i| i.presig),
        );
        for id in abandon {
            if let Some(entry) = self.pool.get_mut(&id) {
                entry.used = true;
                let signers = entry.signers.clone();
                for s in signers {
                    self.send(s, PeerMessage::PresigAbandon { id });
                }
            }
        }
        self.initiated.clear();
        self.signing.clear();
        while let Some(msg) = self.loopback.pop_front() {
            self.on_peer(self.me, msg);
        }
        let mut step = std::mem::take(&mut self.step);
        step.wake_at = None;
        step
    }
}

impl TxEntry {
    pub(crate) fn new(proposed: ProposedTx, proposer: NodeId, vote_deadline: Millis) -> Self {
        TxEntry {
            proposed,
            proposer,
            state: TxState::Received,
            tally: Tally::default(),
            vote_deadline,
            my_vote: None,
            approved_at: None,
            finalized_at: None,
            signed_raw: None,
            evidence: Vec::new(),
            expiry: BTreeMap::new(),
        }
    }
}
