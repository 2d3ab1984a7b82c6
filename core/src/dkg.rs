//! Distributed key generation: aux info (Paillier keys, ring-Pedersen
//! parameters) from safe primes the shell generated ahead, then threshold
//! keygen. Aux info, once made, serves any later key for the same members,
//! so a retried DKG goes straight to keygen.

use crate::engine::{ComputeResult, KeyShare, ProtocolOutput, SafePrimes, SessionKind};
use crate::ids::{DkgId, NodeId, RequestId, SessionId};
use crate::io::{DkgRefusal, DkgStage, Observation, Reply};
use crate::key_confirmation::DkgStatement;
use crate::message::PeerMessage;
use crate::node::{DkgRun, KeyMaterial, Node, SessionInfo};
use crate::record::Record;
use crate::secret::Secret;
use crate::tx::GroupKey;
use cggmp24::key_share::AnyKeyShare;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;

impl Node {
    pub(crate) fn on_primes(&mut self, primes: Secret<SafePrimes>) {
        if self.primes.is_some() || self.aux.is_some() {
            return;
        }
        self.persist(Record::SafePrimes(primes.clone()));
        self.primes = Some(primes);
        if let Some(run) = &self.dkg {
            if run.waiting_for_primes {
                let dkg = run.dkg;
                self.start_aux(dkg);
            }
        }
    }

    pub(crate) fn command_start_dkg(&mut self, request: RequestId) {
        if let Some(key) = &self.key {
            let refusal = DkgRefusal::AlreadyKeyed { public_key_hex: key.group.hex() };
            return self.refuse_dkg(request, refusal);
        }
        if let Some(run) = &self.dkg {
            let refusal = DkgRefusal::AlreadyRunning { dkg: run.dkg };
            return self.refuse_dkg(request, refusal);
        }
        let abandoned = match self.retry_allowed() {
            Ok(proof) => proof,
            Err(refusal) => return self.refuse_dkg(request, refusal),
        };
        let dkg = DkgId { origin: self.me, seq: self.reserve_seq() };
        self.broadcast(PeerMessage::DkgStart { dkg, abandoned });
        self.join_dkg(dkg);
        self.step.replies.push((request, Reply::DkgStarted(Ok(dkg))));
    }

    /// A member announced a new attempt. A node with the key answers with
    /// its certificate (the announcer may have missed confirmations); a
    /// node holding a pending share joins only if the announcement proves
    /// that share's attempt abandoned (see `key_confirmation.rs`).
    pub(crate) fn on_dkg_start(&mut self, from: NodeId, dkg: DkgId, abandoned: Vec<DkgStatement>) {
        if from != dkg.origin {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "dkg_start".into(),
                reason: format!("{dkg} may only be announced by its origin"),
            });
            return;
        }
        if self.key.is_some() {
            return self.send_certificate(from);
        }
        if self.dkg.is_some() || self.dkg_joined.contains(&dkg) {
            return;
        }
        self.accept_abandonments(from, abandoned);
        if let Err(DkgRefusal::AwaitingConfirmation { dkg: pending, .. }) = self.retry_allowed() {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "dkg_start".into(),
                reason: format!(
                    "this node holds a share of {pending} not yet confirmed, and no member abandoned {pending}"
                ),
            });
            return;
        }
        self.join_dkg(dkg);
    }

    /// Joins an attempt once: its id is persisted first, so a restarted node
    /// never runs the same execution twice.
    fn join_dkg(&mut self, dkg: DkgId) {
        if !self.dkg_joined.insert(dkg) {
            return;
        }
        self.persist(Record::DkgJoined { dkg });
        let deadline = self.now.plus(self.config.cluster.timeouts.dkg_ms);
        self.dkg = Some(DkgRun { dkg, deadline, waiting_for_primes: false });
        if self.aux.is_some() {
            self.start_keygen(dkg);
        } else if self.primes.is_some() {
            self.start_aux(dkg);
        } else if let Some(run) = &mut self.dkg {
            run.waiting_for_primes = true;
        }
    }

    fn start_aux(&mut self, dkg: DkgId) {
        let Some(primes) = self.primes.clone() else { return };
        if let Some(run) = &mut self.dkg {
            run.waiting_for_primes = false;
        }
        let n = self.config.cluster.n();
        let kind =
            SessionKind::AuxInfo { i: self.me.keygen_index(), n, primes, multiexp_tables: self.config.multiexp_tables };
        self.start_session(SessionId::AuxInfo(dkg), self.members(), kind);
    }

    fn start_keygen(&mut self, dkg: DkgId) {
        let c = &self.config.cluster;
        let kind = SessionKind::Keygen { i: self.me.keygen_index(), n: c.n(), t: c.threshold };
        self.start_session(SessionId::Keygen(dkg), self.members(), kind);
    }

    /// Starts a cggmp24 session in the engine and delivers any messages that
    /// arrived for it before it started here.
    pub(crate) fn start_session(&mut self, session: SessionId, members: Vec<NodeId>, kind: SessionKind) {
        let deadline = self.now.plus(self.session_lifetime(&session));
        let execution_id = session.execution_id(self.cluster_id());
        let seed = self.seed();
        self.sessions.insert(session, SessionInfo { members, deadline, delivered: BTreeSet::new() });
        self.compute(crate::engine::ComputeJob::Start { session, execution_id, seed, kind });
        for early in self.buffered.remove(&session).unwrap_or_default() {
            self.on_protocol_message(early.from, session, early.broadcast, early.payload);
        }
    }

    /// How long a message may wait for its session: as long as the session
    /// itself may run.
    pub(crate) fn session_lifetime(&self, session: &SessionId) -> u64 {
        match session {
            SessionId::Presign(_) => self.config.cluster.timeouts.presign_ms,
            _ => self.config.cluster.timeouts.dkg_ms,
        }
    }

    /// Holds a message for a session not started here yet, within the
    /// bounds in `node.rs` (see `MAX_EARLY_*`); beyond them it is dropped.
    fn hold_early(&mut self, from: NodeId, session: SessionId, broadcast: bool, payload: Vec<u8>) {
        use crate::node::{
            MAX_EARLY_BYTES_PER_SENDER, MAX_EARLY_MESSAGES_PER_SENDER, MAX_EARLY_PER_SESSION_AND_SENDER,
        };
        let (mut messages, mut bytes) = (0, 0);
        for early in self.buffered.values().flatten().filter(|e| e.from == from) {
            messages += 1;
            bytes += early.payload.len();
        }
        let in_session = self.buffered.get(&session).map_or(0, |q| q.iter().filter(|e| e.from == from).count());
        if in_session >= MAX_EARLY_PER_SESSION_AND_SENDER
            || messages >= MAX_EARLY_MESSAGES_PER_SENDER
            || bytes + payload.len() > MAX_EARLY_BYTES_PER_SENDER
        {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "protocol".into(),
                reason: format!("too many messages held for sessions not started here ({session})"),
            });
            return;
        }
        let at = self.now;
        self.buffered.entry(session).or_default().push(crate::node::EarlyMessage { from, broadcast, payload, at });
    }

    /// Drops held messages whose session would have timed out by now.
    pub(crate) fn age_out_early_messages(&mut self) {
        let now = self.now;
        let lifetimes: Vec<(SessionId, u64)> = self.buffered.keys().map(|s| (*s, self.session_lifetime(s))).collect();
        for (session, lifetime) in lifetimes {
            if let Some(queue) = self.buffered.get_mut(&session) {
                queue.retain(|e| now < e.at.plus(lifetime));
                if queue.is_empty() {
                    self.buffered.remove(&session);
                }
            }
        }
    }

    pub(crate) fn on_protocol_message(&mut self, from: NodeId, session: SessionId, broadcast: bool, payload: Vec<u8>) {
        if self.session_closed(&session) {
            return;
        }
        let Some(info) = self.sessions.get_mut(&session) else {
            // Possibly early: hold it, within bounds.
            return self.hold_early(from, session, broadcast, payload);
        };
        let Some(index) = info.members.iter().position(|m| *m == from) else {
            self.observe(Observation::RejectedMessage {
                from,
                kind: "protocol".into(),
                reason: format!("not a party of {session}"),
            });
            return;
        };
        let digest: [u8; 32] = Sha256::new().chain_update([broadcast as u8]).chain_update(&payload).finalize().into();
        if !info.delivered.insert((from, digest)) {
            return;
        }
        self.compute(crate::engine::ComputeJob::Deliver { session, from: index as u16, broadcast, payload });
    }

    pub(crate) fn on_compute(&mut self, result: ComputeResult) {
        let ComputeResult { session, sends, finished } = result;
        let Some(info) = self.sessions.get_mut(&session) else { return };
        let members = info.members.clone();
        for send in sends {
            let msg = |payload| PeerMessage::Protocol { session, broadcast: send.to.is_none(), payload };
            match send.to {
                None => {
                    let me = self.me;
                    for m in members.iter().copied().filter(|m| *m != me) {
                        self.send(m, msg(send.payload.clone()));
                    }
                }
                Some(p) => {
                    if let Some(m) = members.get(p as usize).copied() {
                        self.send(m, msg(send.payload));
                    }
                }
            }
        }
        let Some(outcome) = finished else { return };
        self.sessions.remove(&session);
        self.closed_sessions.insert(session);
        match (session, outcome) {
            (SessionId::AuxInfo(dkg), Ok(ProtocolOutput::AuxInfo(aux))) => {
                self.persist(Record::AuxInfo { dkg, aux: aux.clone() });
                self.aux = Some((dkg, aux));
                if self.dkg.as_ref().map(|r| r.dkg) == Some(dkg) {
                    self.start_keygen(dkg);
                }
            }
            (SessionId::Keygen(dkg), Ok(ProtocolOutput::Keygen(incomplete))) => self.finish_keygen(dkg, incomplete),
            (SessionId::Presign(id), Ok(ProtocolOutput::Presign(share))) => self.on_presig_generated(id, share),
            (session, Ok(_)) => self.observe(Observation::ProtocolFailed {
                session: session.to_string(),
                reason: "unexpected output kind".into(),
                blamed: Vec::new(),
            }),
            (session, Err(failure)) => {
                let blamed: Vec<NodeId> =
                    failure.blamed.iter().filter_map(|i| members.get(*i as usize).copied()).collect();
                self.on_session_failed(session, failure.reason, blamed)
            }
        }
    }

    fn finish_keygen(&mut self, dkg: DkgId, incomplete: Secret<crate::engine::IncompleteKeyShare>) {
        let Some((_, aux)) = self.aux.clone() else {
            self.give_up_dkg(dkg, "keygen finished without aux info".into());
            return;
        };
        let share = match KeyShare::from_parts((incomplete.into_inner(), aux.into_inner())) {
            Ok(s) => s,
            Err(e) => return self.give_up_dkg(dkg, format!("key share does not validate: {e}")),
        };
        let compressed = share.shared_public_key().to_bytes(true);
        let Ok(bytes) = <[u8; 33]>::try_from(compressed.as_bytes()) else {
            return self.give_up_dkg(dkg, "public key is not 33 bytes".into());
        };
        let group = match GroupKey::from_compressed(bytes) {
            Ok(g) => g,
            Err(e) => return self.give_up_dkg(dkg, e.to_string()),
        };
        let share = Secret::new(share);
        self.persist(Record::KeyShare { dkg, share: share.clone(), public_key: bytes.to_vec() });
        let deadline = self.dkg.take().map_or(self.now, |r| r.deadline);
        self.hold_pending_key(KeyMaterial { dkg, share: Arc::new(share), group }, deadline);
    }

    /// Ends the running attempt `dkg` here, without a share. Every way an
    /// attempt fails leads here through `give_up_dkg`, which also signs
    /// that this node abandoned it.
    pub(crate) fn fail_dkg(&mut self, dkg: DkgId, reason: String) {
        self.observe(Observation::DkgFailed { dkg, reason });
        if self.dkg.as_ref().map(|r| r.dkg) == Some(dkg) {
            self.dkg = None;
        }
        self.abort_dkg_sessions(dkg);
    }

    pub(crate) fn abort_dkg_sessions(&mut self, dkg: DkgId) {
        for s in [SessionId::AuxInfo(dkg), SessionId::Keygen(dkg)] {
            if self.sessions.remove(&s).is_some() {
                self.closed_sessions.insert(s);
                self.compute(crate::engine::ComputeJob::Abort { session: s });
            }
        }
    }

    /// Where key generation stands here, for status.
    pub(crate) fn dkg_stage(&self) -> DkgStage {
        if self.key.is_some() {
            return DkgStage::Done;
        }
        let Some(run) = &self.dkg else {
            return if self.pending_key.is_some() { DkgStage::Confirming } else { DkgStage::NotStarted };
        };
        if run.waiting_for_primes {
            DkgStage::WaitingForPrimes
        } else if self.sessions.contains_key(&SessionId::Keygen(run.dkg)) {
            DkgStage::Keygen
        } else {
            DkgStage::AuxInfo
        }
    }

    pub(crate) fn check_dkg_deadline(&mut self) {
        if let Some(run) = &self.dkg {
            if self.now >= run.deadline {
                let dkg = run.dkg;
                self.give_up_dkg(dkg, "deadline passed".into());
            }
        }
    }

    fn on_session_failed(&mut self, session: SessionId, reason: String, blamed: Vec<NodeId>) {
        for member in &blamed {
            self.suspect(*member);
        }
        self.observe(Observation::ProtocolFailed { session: session.to_string(), reason: reason.clone(), blamed });
        match session {
            SessionId::AuxInfo(dkg) | SessionId::Keygen(dkg) => self.give_up_dkg(dkg, reason),
            SessionId::Presign(id) => self.discard_own_presig(id, reason),
        }
    }

    pub(crate) fn check_session_deadlines(&mut self) {
        let now = self.now;
        let expired: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| now >= s.deadline).map(|(id, _)| *id).collect();
        for session in expired {
            self.sessions.remove(&session);
            self.closed_sessions.insert(session);
            self.compute(crate::engine::ComputeJob::Abort { session });
            self.on_session_failed(session, "session deadline passed".into(), Vec::new());
        }
    }
}
