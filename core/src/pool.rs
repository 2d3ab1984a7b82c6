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
        if !self.refilling {
            return;
        }
        loop {
            let (ready, generating) = (self.pool_ready(), self.initiated.len());
            if ready + generating >= cfg.target.min(cfg.max) {
                if ready >= cfg.target {
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
        self.pool.insert(id, PoolEntry::new(signers.clone()));
        for s in signers.clone() {
            self.send(s, PeerMessage::PresignStart { id, signers: signers.clone() });
        }
    }

    /// Signer: join a presigning session, once per id.
    pub(crate) fn on_presign_start(&mut self, from: NodeId, id: PresigId, signers: Vec<NodeId>) {
        let reject = |node: &mut Node, reason: String| {
            node.observe(Observation::RejectedMessage { from, kind: "presign_start".into(), reason })
        };
        if from != id.origin {
            return reject(self, format!("{id} may only be started by its origin"));
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
            return reject(self, "this node is not in the signer set".into());
        };
        let Some(key) = &self.key else { return reject(self, "no key share yet".into()) };
        if self.own_presigs.contains_key(&id) {
            // Seen before (perhaps before a crash): never run an id twice.
            return;
        }
        let key_share = key.share.clone();
        self.persist(Record::PresigGenerating { id, signers: signers.clone() });
        self.own_presigs.insert(id, OwnPresig::Generating { signers: signers.clone() });
        self.pool.entry(id).or_insert_with(|| PoolEntry::new(signers.clone()));
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
        if self.pool.get(&id).is_some_and(|e| e.ready.contains(&from)) {
            return;
        }
        self.persist(Record::PresigAnnounced { id, signers: signers.clone(), from, public: public.clone() });
        self.note_ready(id, signers, from, public);
    }

    /// Updates the cluster view; also used when replaying records.
    pub(crate) fn note_ready(&mut self, id: PresigId, signers: Vec<NodeId>, from: NodeId, public: PresigPublic) {
        let entry = self.pool.entry(id).or_insert_with(|| PoolEntry::new(signers.clone()));
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

    /// Signer: the initiator gave up on `id`.
    /// Accepted from the initiator, the lease holder, any signer of the set
    /// (a signer that lost its share makes the presignature useless), and
    /// any member coordinating a signature with it. Abandoning can only waste
    /// a presignature, never make one be used twice.
    pub(crate) fn on_presig_abandon(&mut self, from: NodeId, id: PresigId) {
        self.discard_own_presig(id, format!("abandoned by {from}"));
    }

    /// Discards this node's share unless it was consumed. A discarded share
    /// is never used, so a late request for it is refused.
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
    pub(crate) fn new(signers: Vec<NodeId>) -> Self {
        PoolEntry { signers, public: None, ready: BTreeSet::new(), used: false, inconsistent: false }
    }
}
