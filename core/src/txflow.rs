//! Transactions from submission to a certified outcome: proposal, each
//! node's policy vote, the tally and its certificates, and deadlines.

use crate::ids::{NodeId, RequestId, TxId};
use crate::io::{Command, Observation, Reply, SignerSetPool, StatusReport, SubmitRefusal};
use crate::lifecycle::TxEvent;
use crate::message::{PeerMessage, SYNC_LIST_LIMIT};
use crate::node::{Node, OwnPresig, TxEntry};
use crate::record::{Record, TxState};
use crate::tx::ProposedTx;
use crate::vote::{Certified, SignedVote, TallyEvent, VoteBody, VoteError};

impl Node {
    pub(crate) fn on_command(&mut self, request: RequestId, command: Command) {
        match command {
            Command::StartDkg => self.command_start_dkg(request),
            Command::SubmitPsbt { psbt } => {
                let result = self.submit(psbt);
                self.step.replies.push((request, Reply::Submitted(result)));
            }
            Command::Status => {
                let report = self.status();
                self.step.replies.push((request, Reply::Status(Box::new(report))));
            }
        }
    }

    pub fn status(&self) -> StatusReport {
        let own = |f: fn(&OwnPresig) -> bool| self.own_presigs.values().filter(|p| f(p)).count();
        let mut sets: std::collections::BTreeMap<&[NodeId], SignerSetPool> = Default::default();
        for entry in self.pool.values() {
            let set = sets.entry(&entry.signers).or_insert_with(|| SignerSetPool {
                signers: entry.signers.clone(),
                ready: 0,
                generating: 0,
                spent: 0,
            });
            if self.usable(entry) {
                set.ready += 1;
            } else if self.in_flight(entry) {
                set.generating += 1;
            } else if entry.used || entry.inconsistent || !entry.complete() {
                // Spent, or a session that never finished in time (or was
                // only ever announced): it will not become ready.
                set.spent += 1;
            } else {
                // Complete and unused but a signer is suspect: counted as
                // ready by nobody, spent by nobody.
            }
        }
        let pool = &self.config.cluster.pool;
        StatusReport {
            node: self.me,
            leader: self.leader,
            dkg: self.key.as_ref().map(|k| k.dkg),
            public_key_hex: self.key.as_ref().map(|k| k.group.hex()),
            address: self.key.as_ref().map(|k| k.group.address(self.config.cluster.network).to_string()),
            pool_ready: self.pool_ready(),
            // Sessions this node knows of, whoever started them.
            pool_generating: self.pool_generating(),
            own_ready: own(|p| matches!(p, OwnPresig::Ready { .. })),
            own_consumed: own(|p| matches!(p, OwnPresig::Consumed { .. })) + self.pruned_own.0,
            own_discarded: own(|p| matches!(p, OwnPresig::Discarded)) + self.pruned_own.1,
            // Held whole and settled alike, in id order.
            transactions: {
                let held = self.txs.iter().map(|(id, t)| (*id, t.state.clone()));
                let settled = self.settled.iter().map(|(id, s)| (*id, s.clone()));
                let all: std::collections::BTreeMap<TxId, TxState> = held.chain(settled).collect();
                all.into_iter().collect()
            },
            dkg_stage: self.dkg_stage(),
            primes_ready: self.primes.is_some() || self.aux.is_some(),
            pool_sets: sets.into_values().collect(),
            pool_low_water: pool.low_water,
            pool_target: pool.target,
            pool_max: pool.max,
            coordination_reachable: self.coordination_reachable,
        }
    }

    /// A client's PSBT: validated, made durable, proposed to all, voted on.
    fn submit(&mut self, psbt: Vec<u8>) -> Result<TxId, SubmitRefusal> {
        let script = match &self.key {
            Some(k) => k.group.script_pubkey(),
            None => return Err(SubmitRefusal::NoKey),
        };
        let proposed = ProposedTx::from_psbt(&psbt, &script).map_err(|e| SubmitRefusal::Invalid(e.to_string()))?;
        let tx = proposed.digest(self.cluster_id());
        if !self.knows_tx(&tx) {
            self.accept(tx, proposed, self.me);
            self.broadcast(PeerMessage::Proposal { psbt });
        }
        Ok(tx)
    }

    pub(crate) fn on_proposal(&mut self, from: NodeId, psbt: Vec<u8>) {
        let Some(script) = self.key.as_ref().map(|k| k.group.script_pubkey()) else {
            self.observe(Observation::ProposalRejected { from, reason: "no key yet".into() });
            return;
        };
        match ProposedTx::from_psbt(&psbt, &script) {
            Ok(proposed) => {
                let tx = proposed.digest(self.cluster_id());
                // A settled transaction is never accepted again: its outcome
                // stands, and the store already holds it.
                if !self.knows_tx(&tx) {
                    self.accept(tx, proposed, from);
                }
            }
            Err(e) => self.observe(Observation::ProposalRejected { from, reason: e.to_string() }),
        }
    }

    /// Records a new transaction durably, then votes on it.
    fn accept(&mut self, tx: TxId, proposed: ProposedTx, proposer: NodeId) {
        self.persist(Record::TxAccepted { tx, psbt: proposed.psbt_bytes.clone(), proposer, at: self.now });
        let deadline = self.now.plus(self.config.cluster.timeouts.vote_ms);
        let mut entry = TxEntry::new(proposed, proposer, deadline);
        entry.tally.count_equivocators = self.bugs.count_equivocators();
        self.txs.insert(tx, entry);
        self.index_tx(tx);
        // Votes that arrived first take the same path as any other: recorded,
        // checked for equivocation, relayed if they came from their voter.
        for (from, vote) in self.orphan_votes.remove(&tx).unwrap_or_default() {
            self.on_vote(from, vote);
        }
        self.cast_vote(tx);
    }

    /// Judges the transaction by this node's policy and votes, once: the
    /// vote is persisted in the same step that sends it, and a restarted node
    /// finds it and never votes differently.
    pub(crate) fn cast_vote(&mut self, tx: TxId) {
        let Some(script) = self.key.as_ref().map(|k| k.group.script_pubkey()) else { return };
        let day = self.now.day();
        let approved_today = self.approved_by_day.get(&day).copied().unwrap_or(0);
        let Some(entry) = self.txs.get(&tx) else { return };
        if entry.my_vote.is_some() {
            return;
        }
        let decision = crate::policy::judge(&self.policy, &entry.proposed, &script, approved_today);
        if decision.is_approve() {
            let amount = crate::policy::outgoing_amount(&entry.proposed, &script);
            *self.approved_by_day.entry(day).or_default() += amount;
        }
        let body = VoteBody { tx, voter: self.me, decision: decision.clone() };
        let vote = SignedVote::sign(body, &self.vote_key, self.cluster_id());
        self.persist(Record::OwnVote { vote: vote.clone(), at: self.now });
        if let Some(entry) = self.txs.get_mut(&tx) {
            entry.my_vote = Some(decision.clone());
            entry.tally.add(vote.clone());
        }
        self.observe(Observation::VoteCast { tx, decision });
        self.transition(tx, TxEvent::VoteCast);
        self.broadcast(PeerMessage::Vote(vote));
        self.check_outcome(tx);
    }

    pub(crate) fn on_vote(&mut self, from: NodeId, vote: SignedVote) {
        let tx = vote.body.tx;
        if self.settled.contains_key(&tx) {
            // Final and out of memory: its outcome no longer depends on votes.
            return;
        }
        // Catch-up resends every vote of recent transactions: one held
        // already, byte for byte, was verified when it first came.
        if self.txs.get(&tx).and_then(|t| t.tally.vote_of(vote.body.voter)) == Some(&vote) {
            return;
        }
        match vote.verify(&self.config.cluster) {
            Ok(()) => {}
            Err(VoteError::NotAMember(voter)) => {
                self.observe(Observation::ForeignVote { voter, from });
                return;
            }
            Err(VoteError::BadSignature(claimed_voter)) => {
                self.observe(Observation::ForgedVote { claimed_voter, from });
                return;
            }
            Err(other) => {
                self.observe(Observation::RejectedMessage { from, kind: "vote".into(), reason: other.to_string() });
                return;
            }
        }
        let Some(entry) = self.txs.get_mut(&tx) else {
            // The proposal may still be on its way.
            if self.orphan_votes.len() < crate::node::MAX_ORPHAN_TXS || self.orphan_votes.contains_key(&tx) {
                let votes = self.orphan_votes.entry(tx).or_default();
                if votes.len() < 2 * self.config.cluster.members.len() && !votes.iter().any(|(_, v)| *v == vote) {
                    votes.push((from, vote));
                }
            }
            return;
        };
        let direct = from == vote.body.voter;
        match entry.tally.add(vote.clone()) {
            TallyEvent::Recorded => {
                self.persist(Record::Vote(vote.clone()));
                if direct {
                    self.relay_vote(vote);
                }
                self.check_outcome(tx);
            }
            TallyEvent::Duplicate | TallyEvent::IgnoredEquivocator => {}
            TallyEvent::Equivocation(evidence) => {
                let voter = evidence.voter;
                self.persist(Record::Evidence((*evidence).clone()));
                self.observe(Observation::Equivocation { voter, tx });
                if let Some(entry) = self.txs.get_mut(&tx) {
                    entry.evidence.push((*evidence).clone());
                }
                // Once per voter and transaction (later votes of a known
                // equivocator are ignored): everyone learns of it.
                self.broadcast(PeerMessage::Evidence(evidence));
                self.withdraw_unsupported_approval(tx);
            }
        }
    }

    /// Anyone: evidence that a member signed two different votes. Both
    /// votes take the ordinary vote path, so the tally finds the
    /// equivocation itself (or already knew it); evidence that does not
    /// verify is refused and changes nothing.
    pub(crate) fn on_evidence(&mut self, from: NodeId, evidence: crate::vote::Equivocation) {
        let cluster = &self.config.cluster;
        let consistent = evidence.first.body.voter == evidence.voter
            && evidence.second.body.voter == evidence.voter
            && evidence.first.body.tx == evidence.tx
            && evidence.second.body.tx == evidence.tx
            && evidence.first != evidence.second;
        let verified = evidence.first.verify(cluster).is_ok() && evidence.second.verify(cluster).is_ok();
        if !consistent || !verified {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "evidence".into(),
                reason: "not two different validly signed votes of one member for one transaction".into(),
            });
            return;
        }
        self.on_vote(from, evidence.first);
        self.on_vote(from, evidence.second);
    }

    /// An approval not yet signed stands only while its votes do: once an
    /// approver is shown to have equivocated its votes stop counting, and if
    /// the rest fall short of `qa` the transaction is undecided again
    /// (Voting before the deadline, Expired after) and its signing stops.
    /// Signers that know of the equivocation would refuse the certificate
    /// anyway; withdrawing keeps this node consistent with them.
    fn withdraw_unsupported_approval(&mut self, tx: TxId) {
        let (qa, qr) = (self.config.cluster.approve_quorum, self.config.cluster.reject_quorum);
        let Some(entry) = self.txs.get(&tx) else { return };
        if !matches!(entry.state, TxState::Approved | TxState::Signing) {
            return;
        }
        if matches!(entry.tally.certified(tx, qa, qr), Some(Certified::Approved(_))) {
            return;
        }
        let deadline_passed = self.now >= entry.vote_deadline;
        self.signing.remove(&tx);
        self.transition(tx, TxEvent::ApprovalWithdrawn { deadline_passed });
    }

    /// Forwards a vote received from its own voter to the other members, once.
    /// A member that shows different votes to different peers is caught
    /// this way: some honest node ends up holding both signed votes.
    fn relay_vote(&mut self, vote: SignedVote) {
        let voter = vote.body.voter;
        let others: Vec<NodeId> = self.members().into_iter().filter(|m| *m != self.me && *m != voter).collect();
        for to in others {
            self.send(to, PeerMessage::Vote(vote.clone()));
        }
    }

    /// Moves an undecided transaction to the outcome its votes certify.
    pub(crate) fn check_outcome(&mut self, tx: TxId) {
        let (qa, qr) = (self.config.cluster.approve_quorum, self.config.cluster.reject_quorum);
        let Some(entry) = self.txs.get(&tx) else { return };
        if !entry.state.undecided() {
            return;
        }
        let expired = entry.state == TxState::Expired;
        match entry.tally.certified(tx, qa, qr) {
            // Expired here: this node promised never to sign it.
            Some(Certified::Approved(_)) if expired => {}
            Some(Certified::Approved(_)) => {
                self.transition(tx, TxEvent::ApprovalCertified);
                self.drive_signing();
            }
            Some(Certified::Rejected(_)) => self.transition(tx, TxEvent::RejectionCertified),
            None => {}
        }
    }

    pub(crate) fn check_vote_deadlines(&mut self) {
        let now = self.now;
        let expired: Vec<TxId> = self
            .active
            .iter()
            .filter(|id| {
                self.txs
                    .get(id)
                    .is_some_and(|t| matches!(t.state, TxState::Received | TxState::Voting) && now >= t.vote_deadline)
            })
            .copied()
            .collect();
        for tx in expired {
            self.transition(tx, TxEvent::DeadlinePassed);
            self.promise_never_to_sign(tx);
        }
    }
}

/// Transactions one catch-up answer covers at most.
const SYNC_BATCH: usize = 64;

impl Node {
    /// A catch-up request (see [`PeerMessage::SyncRequest`]).
    pub(crate) fn sync_request(&self) -> PeerMessage {
        PeerMessage::SyncRequest { known_final: self.known_final(), open: self.open_txs() }
    }

    /// Final transactions held whole whose gossip window has passed, the
    /// most recently final first: a peer that still offers them (it saw
    /// them final later) need not send them again. Older ones are never
    /// offered (see `on_sync_request`), so the list need not name them.
    fn known_final(&self) -> Vec<TxId> {
        let window = self.config.cluster.timeouts.gossip_window_ms;
        let mut known: Vec<(crate::ids::Millis, TxId)> = self
            .txs
            .iter()
            .filter(|(_, t)| t.state.is_final())
            .filter_map(|(id, t)| t.finalized_at.map(|at| (at, *id)))
            .filter(|(at, _)| self.now >= at.plus(window))
            .collect();
        known.sort_by(|a, b| b.cmp(a));
        known.into_iter().take(SYNC_LIST_LIMIT).map(|(_, id)| id).collect()
    }

    /// Transactions not final here: a peer that holds one final answers
    /// with how it ended, however long ago that was.
    fn open_txs(&self) -> Vec<TxId> {
        self.txs.iter().filter(|(_, t)| !t.state.is_final()).map(|(id, _)| *id).take(SYNC_LIST_LIMIT).collect()
    }

    /// Periodic anti-entropy: ask one peer, in rotation, for what we lack.
    pub(crate) fn drive_sync(&mut self) {
        if self.now < self.next_sync {
            return;
        }
        self.next_sync = self.now.plus(self.config.cluster.timeouts.sync_ms);
        let peers: Vec<NodeId> = self.members().into_iter().filter(|m| *m != self.me).collect();
        if peers.is_empty() || self.key.is_none() {
            return;
        }
        let to = peers[(self.sync_rotation % peers.len() as u64) as usize];
        self.sync_rotation += 1;
        let request = self.sync_request();
        self.send(to, request);
    }

    /// Answers a catch-up request with the proposals, signed votes and signed
    /// results the peer lacks. Everything sent is verifiable by the peer.
    /// Offered: transactions not final here, final ones within their gossip
    /// window, and any the peer lists as open (it missed how they ended);
    /// minus those the peer lists as final.
    pub(crate) fn on_sync_request(&mut self, from: NodeId, known_final: Vec<TxId>, open: Vec<TxId>) {
        use std::collections::BTreeSet;
        let known: BTreeSet<TxId> = known_final.into_iter().take(SYNC_LIST_LIMIT).collect();
        let open: BTreeSet<TxId> = open.into_iter().take(SYNC_LIST_LIMIT).collect();
        let window = self.config.cluster.timeouts.gossip_window_ms;
        let now = self.now;
        let offered = |id: &TxId, t: &TxEntry| {
            !known.contains(id)
                && (!t.state.is_final() || t.finalized_at.is_none_or(|at| now < at.plus(window)) || open.contains(id))
        };
        let mut messages = Vec::new();
        for (id, entry) in self.txs.iter().filter(|(id, t)| offered(id, t)).take(SYNC_BATCH) {
            messages.push(PeerMessage::Proposal { psbt: entry.proposed.psbt_bytes.clone() });
            for voter in self.config.cluster.members.keys() {
                if let Some(v) = entry.tally.vote_of(*voter) {
                    messages.push(PeerMessage::Vote(v.clone()));
                }
            }
            for evidence in &entry.evidence {
                messages.push(PeerMessage::Evidence(Box::new(evidence.clone())));
            }
            for notice in entry.expiry.values() {
                messages.push(PeerMessage::Expiry(notice.clone()));
            }
            if let Some(raw_tx) = &entry.signed_raw {
                messages.push(PeerMessage::TxSigned { tx: *id, raw_tx: raw_tx.clone(), presigs: Vec::new() });
            }
        }
        for msg in messages {
            self.send(from, msg);
        }
    }
}
