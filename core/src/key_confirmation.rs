//! Key confirmation: a key generation attempt gives this node a share, but
//! the cluster has a key only once every member has said, signed, that the
//! same attempt gave it the same group key. Until then the share is
//! pending; a full set of matching confirmations (a key certificate) is
//! transferable proof, so a member that missed some confirmations adopts
//! the key as soon as any member hands it the set.
//!
//! A failed attempt is retried with a new one. What keeps two honest
//! nodes from ever adopting different keys:
//! - a certificate needs every member's confirmation;
//! - a node that adopted a key joins no later attempt;
//! - a node whose keygen of a later attempt finished never adopts an
//!   earlier key (its pending share is replaced).
//!
//! So once one honest node adopted a key, no later attempt can finish
//! anywhere. A node holding a pending share joins a new attempt only when
//! some member signed that it abandoned the pending one. A member signs
//! that only when it holds no share of that attempt, and it never
//! confirms the attempt after. An honest abandonment therefore proves the
//! pending key can never be certified, and a retry costs nothing that
//! could have completed.

use crate::ids::{DkgId, Millis, NodeId};
use crate::io::{DkgRefusal, Observation, Reply};
use crate::message::PeerMessage;
use crate::node::{KeyMaterial, Node};
use crate::record::Record;
use crate::vote::VoteError;
use crate::ClusterConfig;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How often a node with a pending share repeats its confirmation, and how
/// often it answers one member's repeated confirmation with what it holds.
pub(crate) const CONFIRM_RESEND_MS: u64 = 2_000;

/// Abandonments one announcement of a new attempt carries at most: this
/// node's own, of the attempts it joined most recently (a member holding a
/// pending share needs the abandonment of the attempt it finished last),
/// plus one of this node's pending attempt. Bounds the message's size.
pub const MAX_ABANDONMENTS_ANNOUNCED: usize = 64;

/// What a member says about one key generation attempt.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DkgClaim {
    /// Keygen finished here with this group key (33 bytes, compressed).
    Confirmed { public_key: Vec<u8> },
    /// This member holds no share of the attempt and never will: it never
    /// confirms it.
    Abandoned,
}

/// A member's signed [`DkgClaim`] about attempt `dkg`. Ed25519 signatures
/// are deterministic: a statement signed again after a restart has the
/// same bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DkgStatement {
    pub dkg: DkgId,
    pub member: NodeId,
    pub claim: DkgClaim,
    #[serde(with = "crate::vote::sig_bytes")]
    pub signature: [u8; 64],
}

impl DkgStatement {
    fn signing_bytes(dkg: DkgId, member: NodeId, claim: &DkgClaim, cluster_id: &str) -> Vec<u8> {
        let mut b = b"mpc-custody/v1/dkg-statement".to_vec();
        b.extend_from_slice(&(cluster_id.len() as u32).to_be_bytes());
        b.extend_from_slice(cluster_id.as_bytes());
        b.extend_from_slice(&dkg.origin.0.to_be_bytes());
        b.extend_from_slice(&dkg.seq.to_be_bytes());
        b.extend_from_slice(&member.0.to_be_bytes());
        match claim {
            DkgClaim::Confirmed { public_key } => {
                b.push(1);
                b.extend_from_slice(&(public_key.len() as u32).to_be_bytes());
                b.extend_from_slice(public_key);
            }
            DkgClaim::Abandoned => b.push(0),
        }
        b
    }

    pub fn sign(dkg: DkgId, member: NodeId, claim: DkgClaim, key: &SigningKey, cluster_id: &str) -> DkgStatement {
        let signature = key.sign(&Self::signing_bytes(dkg, member, &claim, cluster_id)).to_bytes();
        DkgStatement { dkg, member, claim, signature }
    }

    /// Checks membership and the signature against the member's vote key.
    pub fn verify(&self, cluster: &ClusterConfig) -> Result<(), VoteError> {
        let member = cluster.members.get(&self.member).ok_or(VoteError::NotAMember(self.member))?;
        let key = VerifyingKey::from_bytes(&member.vote_key).map_err(|_| VoteError::BadSignature(self.member))?;
        let bytes = Self::signing_bytes(self.dkg, self.member, &self.claim, &cluster.cluster_id);
        key.verify(&bytes, &Signature::from_bytes(&self.signature)).map_err(|_| VoteError::BadSignature(self.member))
    }

    pub fn is_abandon(&self) -> bool {
        self.claim == DkgClaim::Abandoned
    }

    /// The group key it confirms, if it confirms one.
    pub fn confirmed_key(&self) -> Option<&[u8]> {
        match &self.claim {
            DkgClaim::Confirmed { public_key } => Some(public_key),
            DkgClaim::Abandoned => None,
        }
    }
}

/// A share whose key not every member has confirmed yet.
pub(crate) struct PendingKey {
    pub material: KeyMaterial,
    /// The attempt's deadline: past it, the missing confirmations are
    /// reported once (the share stays pending).
    pub deadline: Millis,
    pub reported: bool,
}

/// The statements one attempt has drawn, one of each claim per member.
#[derive(Default)]
pub(crate) struct AttemptStatements {
    pub confirmed: BTreeMap<NodeId, DkgStatement>,
    pub abandoned: BTreeMap<NodeId, DkgStatement>,
}

impl Node {
    /// Keygen finished here: the share is pending and this node confirms
    /// its key to every member. A later attempt's share replaces an earlier
    /// pending one for good (see the module comment).
    pub(crate) fn hold_pending_key(&mut self, material: KeyMaterial, deadline: Millis) {
        let dkg = material.dkg;
        let claim = DkgClaim::Confirmed { public_key: material.group.compressed.to_vec() };
        let own = DkgStatement::sign(dkg, self.me, claim, &self.vote_key, self.cluster_id());
        self.persist(Record::DkgStatement(own.clone()));
        self.pending_key = Some(PendingKey { material, deadline, reported: false });
        self.keep_statements_of_focus();
        self.note_statement(own.clone());
        self.broadcast(PeerMessage::DkgStatement(own));
        self.next_confirm_resend = self.now.plus(CONFIRM_RESEND_MS);
        self.try_adopt();
    }

    /// The attempts whose statements are worth holding: the one running,
    /// the pending one and the adopted one. Own statements are always kept
    /// (they answer members that ask later).
    fn in_focus(&self, dkg: DkgId) -> bool {
        self.dkg.as_ref().is_some_and(|r| r.dkg == dkg)
            || self.pending_key.as_ref().is_some_and(|p| p.material.dkg == dkg)
            || self.key.as_ref().is_some_and(|k| k.dkg == dkg)
    }

    fn keep_statements_of_focus(&mut self) {
        let focus: Vec<DkgId> = self.dkg_statements.keys().copied().filter(|d| self.in_focus(*d)).collect();
        let me = self.me;
        self.dkg_statements.retain(|dkg, s| {
            if focus.contains(dkg) {
                return true;
            }
            s.confirmed.retain(|m, _| *m == me);
            s.abandoned.retain(|m, _| *m == me);
            !(s.confirmed.is_empty() && s.abandoned.is_empty())
        });
    }

    /// Holds a verified statement in memory; true if it is new here.
    fn note_statement(&mut self, s: DkgStatement) -> bool {
        let held = self.dkg_statements.entry(s.dkg).or_default();
        let slot = if s.is_abandon() { &mut held.abandoned } else { &mut held.confirmed };
        if slot.contains_key(&s.member) {
            return false;
        }
        slot.insert(s.member, s);
        true
    }

    /// Recovery: statements come back in the order they were persisted.
    pub(crate) fn replay_statement(&mut self, s: DkgStatement) {
        self.note_statement(s);
    }

    pub(crate) fn on_dkg_statement(&mut self, from: NodeId, s: DkgStatement) {
        // Only statements about an attempt this node joined are read, so a
        // member inventing attempts costs nothing held.
        if !self.dkg_joined.contains(&s.dkg) {
            return;
        }
        if let Err(e) = s.verify(&self.config.cluster) {
            self.observe(Observation::RejectedMessage { from, kind: "dkg_statement".into(), reason: e.to_string() });
            return;
        }
        if let Some(public_key) = s.confirmed_key() {
            if public_key.len() != 33 {
                self.observe(Observation::RejectedMessage {
                    from,
                    kind: "dkg_statement".into(),
                    reason: format!("{} confirms a key of {} bytes", s.member, public_key.len()),
                });
                return;
            }
        }
        if from == s.member && s.member != self.me {
            self.answer_statement(from, &s);
        }
        if !self.in_focus(s.dkg) || s.member == self.me {
            return;
        }
        let (dkg, member, abandon) = (s.dkg, s.member, s.is_abandon());
        let mismatch = match (s.confirmed_key(), &self.pending_key) {
            (Some(theirs), Some(p)) if p.material.dkg == dkg => theirs != p.material.group.compressed.as_slice(),
            _ => false,
        };
        if !self.note_statement(s.clone()) {
            return;
        }
        self.persist(Record::DkgStatement(s));
        if mismatch {
            self.observe(Observation::DkgFailed {
                dkg,
                reason: format!("{member} confirms a different group key: keygen outputs disagree"),
            });
        }
        if abandon {
            self.on_member_abandoned(dkg, member);
        }
        self.try_adopt();
    }

    /// A member abandoned `dkg`: it will never confirm it. A keygen still
    /// running here cannot finish, so it is given up at once (and this
    /// node abandons it too); a pending share stays (a certificate still
    /// wins) but a new attempt may now be joined.
    fn on_member_abandoned(&mut self, dkg: DkgId, member: NodeId) {
        if self.dkg.as_ref().is_some_and(|r| r.dkg == dkg) {
            self.give_up_dkg(dkg, format!("{member} abandoned it"));
        } else if self.pending_key.as_ref().is_some_and(|p| p.material.dkg == dkg) {
            self.observe(Observation::DkgFailed {
                dkg,
                reason: format!("{member} abandoned it: the key can never be confirmed; start a new attempt"),
            });
        }
    }

    /// A member repeats its confirmation: it is still missing something.
    /// Answered at most once per resend interval per member.
    fn answer_statement(&mut self, to: NodeId, s: &DkgStatement) {
        if self.answered.get(&to).is_some_and(|t| self.now < t.plus(CONFIRM_RESEND_MS)) {
            return;
        }
        let answer: Vec<DkgStatement> = if self.key.as_ref().is_some_and(|k| k.dkg == s.dkg) {
            self.certificate(s.dkg)
        } else {
            self.own_abandon(s.dkg).into_iter().collect()
        };
        if answer.is_empty() {
            return;
        }
        self.answered.insert(to, self.now);
        for statement in answer {
            self.send(to, PeerMessage::DkgStatement(statement));
        }
    }

    /// Every member's confirmation of `dkg`, if this node holds them all.
    fn certificate(&self, dkg: DkgId) -> Vec<DkgStatement> {
        let Some(held) = self.dkg_statements.get(&dkg) else { return Vec::new() };
        if held.confirmed.len() < self.config.cluster.n() as usize {
            return Vec::new();
        }
        held.confirmed.values().cloned().collect()
    }

    fn own_abandon(&self, dkg: DkgId) -> Option<DkgStatement> {
        self.dkg_statements.get(&dkg).and_then(|s| s.abandoned.get(&self.me)).cloned()
    }

    /// Adopts the pending key once every member confirmed that very key.
    fn try_adopt(&mut self) {
        let Some(pending) = &self.pending_key else { return };
        let dkg = pending.material.dkg;
        let ours = pending.material.group.compressed;
        let Some(held) = self.dkg_statements.get(&dkg) else { return };
        let all = self
            .config
            .cluster
            .members
            .keys()
            .all(|m| held.confirmed.get(m).and_then(|s| s.confirmed_key()).is_some_and(|k| k == ours.as_slice()));
        if !all {
            return;
        }
        let Some(pending) = self.pending_key.take() else { return };
        self.persist(Record::KeyAdopted { dkg });
        let group = pending.material.group.clone();
        let address = group.address(self.config.cluster.network).to_string();
        self.observe(Observation::DkgCompleted { dkg, public_key_hex: group.hex(), address });
        self.key = Some(pending.material);
        if self.dkg.as_ref().is_some_and(|r| r.dkg != dkg) {
            // A later attempt this node had joined can never finish now.
            if let Some(run) = self.dkg.take() {
                self.abort_dkg_sessions(run.dkg);
            }
        }
        self.keep_statements_of_focus();
        for (from, id, signers, term) in std::mem::take(&mut self.held_presign_starts) {
            self.on_presign_start(from, id, signers, term);
        }
    }

    /// Recovery: the pending share of `dkg` was adopted before the restart.
    pub(crate) fn replay_adopted(&mut self, dkg: DkgId) {
        if self.pending_key.as_ref().is_some_and(|p| p.material.dkg == dkg) {
            self.key = self.pending_key.take().map(|p| p.material);
        }
    }

    /// This node gives up attempt `dkg` without a share: it signs that it
    /// never will confirm it, persisted before it is sent, and tells every
    /// member (holders of a pending share may then join a retry).
    pub(crate) fn give_up_dkg(&mut self, dkg: DkgId, reason: String) {
        self.fail_dkg(dkg, reason);
        if self.pending_key.as_ref().is_some_and(|p| p.material.dkg == dkg) || self.own_abandon(dkg).is_some() {
            return;
        }
        let own = DkgStatement::sign(dkg, self.me, DkgClaim::Abandoned, &self.vote_key, self.cluster_id());
        self.persist(Record::DkgStatement(own.clone()));
        self.note_statement(own.clone());
        self.broadcast(PeerMessage::DkgStatement(own));
    }

    /// Recovery: an attempt joined but neither finished nor abandoned here
    /// lost its session in the restart; it is abandoned now.
    pub(crate) fn abandon_lost_attempts(&mut self) {
        let lost: Vec<DkgId> = self
            .dkg_joined
            .iter()
            .copied()
            .filter(|d| {
                self.pending_key.as_ref().is_none_or(|p| p.material.dkg != *d)
                    && self.key.as_ref().is_none_or(|k| k.dkg != *d)
                    && !self.has_own_statement(*d)
            })
            .collect();
        for dkg in lost {
            self.give_up_dkg(dkg, "session lost in a restart".into());
        }
        if self.pending_key.is_some() {
            self.next_confirm_resend = self.now;
        }
    }

    fn has_own_statement(&self, dkg: DkgId) -> bool {
        self.dkg_statements
            .get(&dkg)
            .is_some_and(|s| s.confirmed.contains_key(&self.me) || s.abandoned.contains_key(&self.me))
    }

    /// While the share is pending: repeat this node's confirmation to every
    /// member (members that adopted answer with the certificate, members
    /// that abandoned with their abandonment), and report once when the
    /// attempt's deadline passed without every confirmation.
    pub(crate) fn drive_confirmation(&mut self) {
        let Some(pending) = &self.pending_key else { return };
        let dkg = pending.material.dkg;
        if !pending.reported && self.now >= pending.deadline {
            let held = self.dkg_statements.get(&dkg);
            let missing: Vec<String> = self
                .config
                .cluster
                .members
                .keys()
                .filter(|m| held.is_none_or(|h| !h.confirmed.contains_key(m)))
                .map(|m| m.to_string())
                .collect();
            self.observe(Observation::DkgFailed {
                dkg,
                reason: format!(
                    "not confirmed by every member by the deadline (missing {}); the share stays pending",
                    missing.join(", ")
                ),
            });
            if let Some(p) = &mut self.pending_key {
                p.reported = true;
            }
        }
        if self.now < self.next_confirm_resend {
            return;
        }
        self.next_confirm_resend = self.now.plus(CONFIRM_RESEND_MS);
        let Some(own) = self.dkg_statements.get(&dkg).and_then(|s| s.confirmed.get(&self.me)).cloned() else {
            return;
        };
        self.broadcast(PeerMessage::DkgStatement(own));
    }

    /// When confirmation work next needs this node.
    pub(crate) fn confirmation_wake(&self) -> Option<Millis> {
        let pending = self.pending_key.as_ref()?;
        let report = (!pending.reported).then_some(pending.deadline);
        Some(report.map_or(self.next_confirm_resend, |r| r.min(self.next_confirm_resend)))
    }

    /// Whether this node may join (or start) a new attempt, and the
    /// abandonments that justify it to members holding a pending share.
    /// A pending share without an abandonment of its attempt blocks: the
    /// pending key may still be confirmed.
    pub(crate) fn retry_allowed(&self) -> Result<Vec<DkgStatement>, DkgRefusal> {
        let mut proof: Vec<DkgStatement> =
            self.dkg_statements.values().flat_map(|s| s.abandoned.get(&self.me)).cloned().collect();
        // Newest last (ids of one origin grow), and the oldest go first.
        proof.sort_by_key(|s| (s.dkg.seq, s.dkg.origin));
        let surplus = proof.len().saturating_sub(MAX_ABANDONMENTS_ANNOUNCED);
        proof.drain(..surplus);
        if let Some(p) = &self.pending_key {
            let dkg = p.material.dkg;
            let Some(abandon) = self.dkg_statements.get(&dkg).and_then(|s| s.abandoned.values().next()) else {
                let held = self.dkg_statements.get(&dkg);
                let missing = self
                    .config
                    .cluster
                    .members
                    .keys()
                    .copied()
                    .filter(|m| held.is_none_or(|h| !h.confirmed.contains_key(m)))
                    .collect();
                return Err(DkgRefusal::AwaitingConfirmation { dkg, missing });
            };
            proof.push(abandon.clone());
        }
        Ok(proof)
    }

    /// A new attempt's announcement carried abandonments: the ones about
    /// this node's pending attempt are checked and held.
    pub(crate) fn accept_abandonments(&mut self, from: NodeId, abandoned: Vec<DkgStatement>) {
        let Some(pending) = self.pending_key.as_ref().map(|p| p.material.dkg) else { return };
        let members = self.config.cluster.n() as usize;
        for s in abandoned.into_iter().filter(|s| s.dkg == pending && s.is_abandon()).take(members) {
            self.on_dkg_statement(from, s);
        }
    }

    pub(crate) fn refuse_dkg(&mut self, request: crate::ids::RequestId, refusal: DkgRefusal) {
        self.step.replies.push((request, Reply::DkgStarted(Err(refusal))));
    }

    /// Sends the certificate of the adopted key to a member that announced
    /// a new attempt: it may be a member that missed confirmations.
    pub(crate) fn send_certificate(&mut self, to: NodeId) {
        let Some(dkg) = self.key.as_ref().map(|k| k.dkg) else { return };
        if self.answered.get(&to).is_some_and(|t| self.now < t.plus(CONFIRM_RESEND_MS)) {
            return;
        }
        let certificate = self.certificate(dkg);
        if certificate.is_empty() {
            return;
        }
        self.answered.insert(to, self.now);
        for s in certificate {
            self.send(to, PeerMessage::DkgStatement(s));
        }
    }
}
