//! The presignature pool (DESIGN §3).
//!
//! Each presignature belongs to one signer set of exactly `t` members. A
//! member's own share goes `Generating -> Ready -> Consumed` (or
//! `Discarded`), and a Consumed or Discarded share never becomes Ready
//! again. The coordinator (the lease holder) keeps the cluster's ready count
//! between the low-water mark and the target, never above the maximum, with
//! several sessions at once. The coordinator only decides what to generate:
//! safety rests on each signer's own share state, never on there being one
//! leader.

use crate::engine::{PresigPublic, PresigShare, SessionKind};
use crate::ids::{NodeId, PresigId, SessionId};
use crate::io::Observation;
use crate::message::PeerMessage;
use crate::node::{Node, OwnPresig, PoolEntry};
use crate::record::Record;
use crate::secret::Secret;
use std::collections::BTreeSet;

impl Node {
    /// Presignatures usable for signing now, cluster-wide, as this node sees
    /// them: complete, unused, and every signer healthy. Refill counts these,
    /// so presignatures stranded on a suspect or convicted node are replaced.
    pub(crate) fn pool_ready(&self) -> usize {
        self.pool.values().filter(|e| self.usable(e)).count()
    }

    pub(crate) fn usable(&self, e: &PoolEntry) -> bool {
        e.complete() && !e.used && e.signers.iter().all(|s| self.healthy(*s))
    }

    /// Presigning sessions in flight anywhere, as this node knows them:
    /// every member hears each session's start from its initiator, so a
    /// new lease holder counts its predecessor's sessions too. A session
    /// not complete a presigning timeout after this node heard of it has
    /// failed somewhere and no longer counts. Only sessions whose start
    /// came from their initiator count: announcements alone could be a
    /// Byzantine signer's made-up ids, and counting them would stall refill.
    pub(crate) fn pool_generating(&self) -> usize {
        self.pool.values().filter(|e| self.in_flight(e)).count().max(self.initiated.len())
    }

    /// A session counted as generating (see [`Node::pool_generating`]).
    pub(crate) fn in_flight(&self, e: &PoolEntry) -> bool {
        let timeout = self.config.cluster.timeouts.presign_ms;
        e.confirmed && !e.used && !e.inconsistent && !e.complete() && self.now < e.first_seen.plus(timeout)
    }

    /// Complete and unspent, whatever the health of the signers: what the
    /// pool's maximum bounds.
    fn pool_unspent(&self) -> usize {
        self.pool.values().filter(|e| e.complete() && !e.used).count()
    }

    pub(crate) fn has_coordination_work(&self) -> bool {
        self.is_leader()
            && self.key.is_some()
            && (self.refilling || self.pool_ready() < self.config.cluster.pool.low_water)
    }

    /// Coordinator: start sessions while the pool is refilling.
    pub(crate) fn drive_pool(&mut self) {
        if !self.is_leader() || self.key.is_none() {
            return;
        }
        let cfg = self.config.cluster.pool.clone();
        let ready = self.pool_ready();
        if ready < cfg.low_water {
            self.refilling = true;
        }
        if !self.refilling || self.refill_not_before.is_some_and(|t| self.now < t) {
            return;
        }
        // Planted bug only: refill ends at the low-water mark.
        let fill_to = if self.bugs.stop_refill_at_low_water() { cfg.low_water } else { cfg.target };
        loop {
            let (ready, generating) = (self.pool_ready(), self.pool_generating());
            if ready + generating >= fill_to.min(cfg.max) || self.pool_unspent() + generating >= cfg.max {
                if ready >= fill_to {
                    self.refilling = false;
                }
                return;
            }
            if generating >= cfg.parallel_sessions {
                return;
            }
            let Some(signers) = self.pick_signer_set() else { return };
            self.initiate_presign(signers);
        }
    }

    /// Chooses `t` healthy members, rotating so work spreads over the cluster.
    fn pick_signer_set(&mut self) -> Option<Vec<NodeId>> {
        let t = self.config.cluster.threshold as usize;
        let healthy: Vec<NodeId> = self.members().into_iter().filter(|m| self.healthy(*m)).collect();
        if healthy.len() < t {
            return None;
        }
        let offset = (self.next_seq as usize) % healthy.len();
        let mut set: Vec<NodeId> = (0..t).map(|k| healthy[(offset + k) % healthy.len()]).collect();
        set.sort();
        Some(set)
    }

    fn initiate_presign(&mut self, signers: Vec<NodeId>) {
        let id = PresigId { origin: self.me, seq: self.reserve_seq() };
        let deadline = self.now.plus(self.config.cluster.timeouts.presign_ms);
        self.initiated.insert(id, deadline);
        self.pool.insert(id, PoolEntry::confirmed(signers.clone(), self.now));
        // Every member learns the signer list from the initiator, so an
        // announcement naming other signers is refused rather than spoiling
        // the presignature in the views of those not signing it.
        for m in self.members() {
            self.send(m, PeerMessage::PresignStart { id, signers: signers.clone(), term: self.lease_term });
        }
    }

    /// Signer: join a presigning session, once per id.
    pub(crate) fn on_presign_start(&mut self, from: NodeId, id: PresigId, signers: Vec<NodeId>, term: u64) {
        let reject = |node: &mut Node, reason: String| {
            node.observe(Observation::RejectedMessage { from, kind: "presign_start".into(), reason })
        };
        if from != id.origin {
            return reject(self, format!("{id} may only be started by its origin"));
        }
        if self.stale_presig(&id) {
            return reject(self, format!("{id} is older than presignatures already spent and forgotten here"));
        }
        // Fenced by the lease: a start from a superseded term (a holder cut
        // off from etcd whose messages arrive after the heal) would add
        // sessions next to the successor's and pass the pool's maximum. A
        // start under a newer term than this node knows is accepted: its
        // own view of the lease may lag, and a claimed term is never
        // adopted from a peer.
        if term < self.lease_term {
            return reject(
                self,
                format!("{id} was started under lease term {term}, superseded by {}", self.lease_term),
            );
        }
        if let Some(holder) = self.leader.filter(|h| term == self.lease_term && *h != from) {
            return reject(self, format!("lease term {term} is held by {holder}, not {from}"));
        }
        let t = self.config.cluster.threshold as usize;
        let distinct: BTreeSet<NodeId> = signers.iter().copied().collect();
        let sorted = signers.windows(2).all(|w| w[0] < w[1]);
        if signers.len() != t || distinct.len() != t || !sorted {
            return reject(self, format!("signer set must be {t} distinct members in order"));
        }
        if signers.iter().any(|s| !self.config.cluster.members.contains_key(s)) {
            return reject(self, "signer set names a non-member".into());
        }
        let Some(position) = signers.iter().position(|s| *s == self.me) else {
            // Not a signer: just learn who the signers are.
            let entry = self.pool.entry(id).or_insert_with(|| PoolEntry::confirmed(signers.clone(), self.now));
            if !entry.confirmed {
                // Announcements came first; any that named other signers
                // were not the real ones.
                if entry.signers != signers {
                    *entry = PoolEntry::confirmed(signers, self.now);
                } else {
                    entry.confirmed = true;
                }
            }
            return;
        };
        if self.key.is_none() && self.pending_key.is_some() {
            let held = self.held_presign_starts.iter().filter(|h| h.0 == from).count();
            if held < self.config.cluster.pool.parallel_sessions {
                self.held_presign_starts.push((from, id, signers, term));
                return;
            }
        }
        let Some(key) = &self.key else { return reject(self, "no key share yet".into()) };
        if self.own_presigs.contains_key(&id) {
            // Seen before (perhaps before a crash): never run an id twice.
            return;
        }
        // What one coordinator can legitimately ask of a signer: at most
        // `parallel_sessions` sessions at once, and the pool's maximum
        // unspent plus those (as for announcements: the signer may not have
        // heard yet that some were used). Each session costs seconds of
        // CPU, so a member that claims a newer term than this node knows
        // cannot make it run more than that.
        let cfg = &self.config.cluster.pool;
        let (mut generating, mut unspent) = (0, 0);
        for own in self.own_presigs.iter().filter(|(p, _)| p.origin == from).map(|(_, o)| o) {
            match own {
                OwnPresig::Generating { .. } => generating += 1,
                OwnPresig::Ready { .. } => unspent += 1,
                _ => {}
            }
        }
        if generating >= cfg.parallel_sessions || generating + unspent >= cfg.max + cfg.parallel_sessions {
            let (parallel, max) = (cfg.parallel_sessions, cfg.max + cfg.parallel_sessions);
            return reject(
                self,
                format!("{from} already has {generating} sessions running and {unspent} unspent here (at most {parallel} and {max})"),
            );
        }
        let key_share = key.share.clone();
        self.persist(Record::PresigGenerating { id, signers: signers.clone() });
        self.own_presigs.insert(id, OwnPresig::Generating { signers: signers.clone() });
        let entry = self.pool.entry(id).or_insert_with(|| PoolEntry::confirmed(signers.clone(), self.now));
        if entry.signers != signers {
            *entry = PoolEntry::confirmed(signers.clone(), self.now);
        }
        entry.confirmed = true;
        let parties_at_keygen = signers.iter().map(|s| s.keygen_index()).collect();
        let kind = SessionKind::Presign { i: position as u16, parties_at_keygen, key_share };
        self.start_session(SessionId::Presign(id), signers, kind);
    }

    /// Signer: the engine finished this node's share.
    pub(crate) fn on_presig_generated(&mut self, id: PresigId, share: Secret<PresigShare>) {
        let Some(OwnPresig::Generating { signers }) = self.own_presigs.get(&id) else {
            return;
        };
        let signers = signers.clone();
        let public = share.expose().public.clone();
        self.persist(Record::PresigReady { id, signers: signers.clone(), share: share.clone() });
        self.own_presigs.insert(id, OwnPresig::Ready { signers: signers.clone(), share });
        self.observe(Observation::PresigReady { id });
        self.note_ready(id, signers.clone(), self.me, public.clone());
        self.broadcast(PeerMessage::PresigReady { id, signers, public });
    }

    /// Anyone: a signer announced its share of `id` ready.
    pub(crate) fn on_presig_announced(
        &mut self,
        from: NodeId,
        id: PresigId,
        signers: Vec<NodeId>,
        public: PresigPublic,
    ) {
        if !signers.contains(&from) {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "presig_ready".into(),
                reason: format!("not a signer of {id}"),
            });
            return;
        }
        let reject = |node: &mut Node, reason: String| {
            node.observe(Observation::RejectedMessage { from, kind: "presig_ready".into(), reason })
        };
        match self.pool.get(&id) {
            Some(e) if e.ready.contains(&from) => return,
            Some(e) if e.confirmed && e.signers != signers => {
                return reject(self, format!("{id} has other signers than its initiator named"));
            }
            // Every signer announced it consistently: only one of them can
            // contradict that.
            Some(e) if e.complete() && !e.signers.contains(&from) => {
                return reject(self, format!("not a signer of {id}"));
            }
            Some(_) => {}
            None if self.stale_presig(&id) => {
                return reject(self, format!("{id} is older than presignatures already spent and forgotten here"));
            }
            None => {
                // Unknown to this node (the initiator's start is still on
                // its way, or was lost): accepted while the announcer has
                // no more unspent presignatures pending than an honest
                // signer can (the pool's maximum plus the sessions in
                // flight), so a flood of made-up ids is bounded.
                let cfg = &self.config.cluster.pool;
                let allowance = cfg.max + cfg.parallel_sessions;
                let pending = self.pool.values().filter(|e| !e.used && e.ready.contains(&from)).count();
                if pending >= allowance {
                    return reject(self, format!("more than {allowance} unspent presignatures announced"));
                }
            }
        }
        self.persist(Record::PresigAnnounced { id, signers: signers.clone(), from, public: public.clone() });
        self.note_ready(id, signers, from, public);
    }

    /// Updates the cluster view; also used when replaying records.
    pub(crate) fn note_ready(&mut self, id: PresigId, signers: Vec<NodeId>, from: NodeId, public: PresigPublic) {
        let entry = self.pool.entry(id).or_insert_with(|| PoolEntry::new(signers.clone(), self.now));
        if entry.signers != signers {
            entry.inconsistent = true;
        }
        match &entry.public {
            None => entry.public = Some(public),
            Some(p) if *p != public => entry.inconsistent = true,
            Some(_) => {}
        }
        entry.ready.insert(from);
        if entry.complete() || entry.inconsistent {
            self.initiated.remove(&id);
        }
    }

    /// Anyone: `from` gave up on `id`. Accepted only from those who can
    /// know it is dead: its initiator while it is being generated, one of
    /// its signers (a signer that
    /// lost its share makes the presignature useless), or a coordinator that
    /// asked this node to sign with it. Anyone else could otherwise wipe
    /// the pool with one message per presignature. Abandoning can only
    /// waste a presignature, never make one be used twice.
    pub(crate) fn on_presig_abandon(&mut self, from: NodeId, id: PresigId) {
        if self.stale_presig(&id) {
            // Spent and forgotten here: nothing left to abandon.
            return;
        }
        let signers = match self.own_presigs.get(&id) {
            Some(OwnPresig::Generating { signers } | OwnPresig::Ready { signers, .. }) => Some(signers),
            _ => self.pool.get(&id).map(|e| &e.signers),
        };
        // The initiator may give up on a session still running, not on a
        // finished presignature (it has no reason to, and could otherwise
        // wipe every presignature it ever started).
        let finished = matches!(self.own_presigs.get(&id), Some(OwnPresig::Ready { .. }))
            || self.pool.get(&id).is_some_and(|e| e.complete());
        let entitled = (from == id.origin && !finished)
            || signers.is_some_and(|s| s.contains(&from))
            || self.requesters.get(&id).is_some_and(|r| r.contains(&from));
        if !entitled {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "presig_abandon".into(),
                reason: format!("neither the initiator, a signer, nor a coordinator of {id}"),
            });
            return;
        }
        self.discard_own_presig(id, format!("abandoned by {from}"));
    }

    /// Remembers that `from` asked to sign with this node's share of `id`
    /// (it may abandon it later). Only for shares this node holds, at most
    /// one entry per member: bounded by the pool.
    pub(crate) fn note_requester(&mut self, id: PresigId, from: NodeId) {
        if self.own_presigs.contains_key(&id) && self.config.cluster.members.contains_key(&from) {
            self.requesters.entry(id).or_default().insert(from);
        }
    }

    /// Discards this node's share unless it was consumed, and tells every
    /// member, so nobody picks the presignature again (a non-signer
    /// would otherwise keep counting it as ready). A discarded share is
    /// never used, so a late request for it is refused.
    pub(crate) fn discard_own_presig(&mut self, id: PresigId, reason: String) {
        if let Some(e) = self.pool.get_mut(&id) {
            e.used = true;
        }
        self.initiated.remove(&id);
        match self.own_presigs.get(&id) {
            Some(OwnPresig::Generating { .. }) | Some(OwnPresig::Ready { .. }) => {}
            _ => return,
        }
        let session = SessionId::Presign(id);
        if self.sessions.remove(&session).is_some() {
            self.compute(crate::engine::ComputeJob::Abort { session });
        }
        self.closed_sessions.insert(session);
        self.own_presigs.insert(id, OwnPresig::Discarded);
        self.persist(Record::PresigDiscarded { id, reason: reason.clone() });
        self.observe(Observation::PresigDiscarded { id, reason });
        self.broadcast(PeerMessage::PresigAbandon { id });
    }

    /// Coordinator: sessions it started that did not finish in time.
    pub(crate) fn check_initiated_deadlines(&mut self) {
        let now = self.now;
        let late: Vec<PresigId> = self.initiated.iter().filter(|(_, d)| now >= **d).map(|(id, _)| *id).collect();
        for id in late {
            self.initiated.remove(&id);
            let signers = self.pool.get(&id).map(|e| e.signers.clone()).unwrap_or_default();
            if let Some(e) = self.pool.get_mut(&id) {
                e.used = true;
            }
            let missing: Vec<NodeId> = self
                .pool
                .get(&id)
                .map(|e| signers.iter().copied().filter(|s| !e.ready.contains(s)).collect())
                .unwrap_or_default();
            for s in missing {
                self.suspect(s);
            }
            for s in signers {
                self.send(s, PeerMessage::PresigAbandon { id });
            }
        }
    }
}

impl PoolEntry {
    /// Known from an announcement only.
    pub(crate) fn new(signers: Vec<NodeId>, now: crate::ids::Millis) -> Self {
        PoolEntry {
            signers,
            public: None,
            ready: BTreeSet::new(),
            used: false,
            inconsistent: false,
            confirmed: false,
            first_seen: now,
        }
    }

    /// Signer list from the initiator or this node's own session.
    pub(crate) fn confirmed(signers: Vec<NodeId>, now: crate::ids::Millis) -> Self {
        PoolEntry { confirmed: true, ..PoolEntry::new(signers, now) }
    }
}
