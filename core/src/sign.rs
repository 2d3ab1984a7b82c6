//! Signing an approved transaction, one presignature per input.
//!
//! The coordinator of a transaction is the node it was proposed to; if that
//! node does not finish, the next members take over one after another
//! (safety never depends on a single coordinator). The coordinator sends
//! each signer a request carrying the approval certificate. A signer checks
//! the certificate, derives the message itself from its own copy of the
//! transaction (it never signs a hash it is handed: presignatures plus raw
//! hashes allow forgery, CVE-2025-66017), marks the presignature Consumed
//! for exactly that message in the same step that releases the partial
//! signature, and answers. The coordinator checks every partial signature
//! against the presignature's commitments, so a cheater is named, combines,
//! verifies, and runs the finished transaction through Bitcoin Core's
//! interpreter before reporting it signed.

use crate::ids::{Millis, NodeId, PresigId, TxId};
use crate::io::Observation;
use crate::lifecycle::TxEvent;
use crate::message::{PartialSig, PeerMessage, SigningRefusal};
use crate::node::{InputSigning, Node, OwnPresig, SigningJob};
use crate::record::{Record, TxState};
use crate::vote::{ApprovalCertificate, Certified};
use cggmp24::generic_ec::Scalar;
use cggmp24::key_share::AnyKeyShare;
use cggmp24::{DataToSign, PartialSignature};
use sha2::Sha256;

/// Who a signer is answering: a coordinator about to have it sign, or one
/// asking whether it could (a probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    ToSign,
    WhetherItCould,
}

/// A signer's checks passed: it signs `message` afresh, or repeats the
/// partial signature it released for the same question before.
pub(crate) enum Signable {
    Fresh { message: [u8; 32] },
    Repeat(PartialSig),
}

/// Past `max_signing_attempts`, retries of one input are at most this many
/// signing timeouts apart.
const STALLED_RETRY_FACTOR: u64 = 10;

/// The message scalar cggmp24 signs for a signing message (DESIGN §3).
fn data_to_sign(message: &[u8; 32]) -> DataToSign<crate::engine::Curve> {
    DataToSign::digest::<Sha256>(message)
}

/// How long an input waits before its next attempt after `attempt`
/// attempts: doubling from half a second, capped at a signing timeout (ten
/// past `max_signing_attempts`).
pub(crate) fn retry_backoff(timeouts: &crate::config::Timeouts, attempt: u32) -> u64 {
    let cap = if attempt >= timeouts.max_signing_attempts {
        STALLED_RETRY_FACTOR * timeouts.signing_ms
    } else {
        timeouts.signing_ms
    };
    (500u64 << attempt.min(16)).min(cap)
}

impl Node {
    /// Whether this node should coordinate signing of `tx` now. The lease
    /// holder coordinates when there is one (one coordinator, no contention
    /// for presignatures); without a lease, the node the transaction was
    /// proposed to does, so approved work still gets signed while
    /// coordination is down. Member `base + k` takes over after `k` takeover
    /// periods if the transaction is still unsigned.
    pub(crate) fn coordinates(&self, tx: TxId) -> bool {
        self.takeover_at(tx).is_some_and(|at| self.now >= at)
    }

    /// When this node starts coordinating signing of `tx` if it is still
    /// unsigned: at once for the first in line, `k` takeover periods after
    /// the approval for member `base + k`.
    pub(crate) fn takeover_at(&self, tx: TxId) -> Option<Millis> {
        let entry = self.txs.get(&tx)?;
        let base = self.leader.unwrap_or(entry.proposer);
        let n = self.config.cluster.n() as u64;
        let rank = (self.me.0 as u64 + n - base.0 as u64) % n;
        if rank == 0 {
            return Some(self.now);
        }
        // Counted from the approval, or from when the line last changed (a
        // new lease holder): a node next in a new line gives the new first
        // a full period before it joins in.
        let takeover = 2 * self.config.cluster.timeouts.signing_ms;
        let since = entry.approved_at.unwrap_or(self.now).max(self.line_changed_at);
        Some(since.plus(rank * takeover))
    }

    /// Coordinator: start, time out and retry signing of approved transactions.
    pub(crate) fn drive_signing(&mut self) {
        if self.key.is_none() {
            return;
        }
        let candidates: Vec<TxId> = self
            .active
            .iter()
            .filter(|id| self.txs.get(id).is_some_and(|t| matches!(t.state, TxState::Approved | TxState::Signing)))
            .copied()
            .collect();
        for tx in candidates {
            // The approval time is not durable: after a restart the clock
            // of takeover starts when this incarnation first sees the
            // transaction approved, so a node of any rank still takes over.
            let now = self.now;
            if let Some(entry) = self.txs.get_mut(&tx) {
                entry.approved_at.get_or_insert(now);
            }
            if !self.signing.contains_key(&tx) {
                if !self.coordinates(tx) {
                    continue;
                }
                let inputs = self.txs[&tx].proposed.unsigned.input.len();
                let job = SigningJob {
                    inputs: (0..inputs)
                        .map(|_| InputSigning {
                            attempts: 0,
                            not_before: self.now,
                            presig: None,
                            partials: Default::default(),
                            deadline: self.now,
                            done: None,
                            stall_reported: false,
                            asked_again: false,
                            handed_proposal: Default::default(),
                            probe: None,
                        })
                        .collect(),
                };
                self.signing.insert(tx, job);
                self.transition(tx, TxEvent::SigningStarted);
            }
            self.time_out_inputs(tx);
            // A node no longer first in line (the lease moved) lets what it
            // sent finish, but assigns nothing new.
            if self.coordinates(tx) {
                self.assign_presignatures(tx);
            }
        }
    }

    fn time_out_inputs(&mut self, tx: TxId) {
        let now = self.now;
        self.time_out_probes(tx);
        self.ask_silent_signers_again(tx);
        let Some(job) = self.signing.get(&tx) else { return };
        let late: Vec<(usize, PresigId)> = job
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| i.done.is_none() && now >= i.deadline)
            .filter_map(|(k, i)| i.presig.map(|p| (k, p)))
            .collect();
        for (input, presig) in late {
            let silent: Vec<NodeId> = {
                let partials = &self.signing[&tx].inputs[input].partials;
                self.pool[&presig].signers.iter().copied().filter(|s| !partials.contains_key(s)).collect()
            };
            for s in silent {
                self.suspect(s);
            }
            self.retry_input(tx, input, "signing timed out".into());
        }
    }

    /// Half a signing timeout after a request went out, asks the signers
    /// that have not answered once more. A lost request or answer would
    /// otherwise cost the whole presignature at the deadline (the signers
    /// that answered consumed their shares); asking again is free, since a
    /// signer gives the same answer to the same question.
    fn ask_silent_signers_again(&mut self, tx: TxId) {
        let half = self.config.cluster.timeouts.signing_ms / 2;
        let now = self.now;
        let Some(job) = self.signing.get(&tx) else { return };
        let due: Vec<(usize, PresigId)> = job
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| i.done.is_none() && !i.asked_again && now >= i.deadline.minus(half))
            .filter_map(|(k, i)| i.presig.map(|p| (k, p)))
            .collect();
        if due.is_empty() {
            return;
        }
        // Marked first: without a certificate there is nobody to ask, and
        // an unmarked input would keep asking for a wake-up now.
        for (input, _) in &due {
            self.signing.get_mut(&tx).expect("job exists").inputs[*input].asked_again = true;
        }
        let Some(certificate) = self.approval_certificate(tx) else { return };
        for (input, presig) in due {
            let slot = &self.signing[&tx].inputs[input];
            let answered: Vec<NodeId> = slot.partials.keys().copied().collect();
            let silent: Vec<NodeId> = self
                .pool
                .get(&presig)
                .map(|e| e.signers.iter().copied().filter(|s| !answered.contains(s)).collect())
                .unwrap_or_default();
            self.ask_to_sign(&silent, tx, input, presig, &certificate);
        }
    }

    /// The approval certificate this node holds for `tx`, if it holds one.
    pub(crate) fn approval_certificate(&self, tx: TxId) -> Option<ApprovalCertificate> {
        let (qa, qr) = (self.config.cluster.approve_quorum, self.config.cluster.reject_quorum);
        match self.txs.get(&tx)?.tally.certified(tx, qa, qr)? {
            Certified::Approved(certificate) => Some(certificate),
            Certified::Rejected(_) => None,
        }
    }

    /// Sends each of `signers` the request to sign `input` of `tx` with `presig`.
    fn ask_to_sign(
        &mut self,
        signers: &[NodeId],
        tx: TxId,
        input: usize,
        presig: PresigId,
        certificate: &ApprovalCertificate,
    ) {
        for s in signers {
            let msg = PeerMessage::SigningRequest { tx, input: input as u32, presig, certificate: certificate.clone() };
            self.send(*s, msg);
        }
    }

    /// A signer missed the proposal: once per signer and attempt, this
    /// node sends it the proposal and asks again, rather than giving up a
    /// presignature the other signers may already have consumed. Returns
    /// whether it did.
    pub(crate) fn hand_over_proposal(&mut self, tx: TxId, input: usize, signer: NodeId) -> bool {
        let Some(slot) = self.signing.get_mut(&tx).and_then(|j| j.inputs.get_mut(input)) else { return false };
        let (presig, probing) = match (slot.presig, &slot.probe) {
            (Some(p), _) => (p, false),
            (None, Some(probe)) => (probe.presig, true),
            (None, None) => return false,
        };
        if !slot.handed_proposal.insert(signer) {
            return false;
        }
        let Some(certificate) = self.approval_certificate(tx) else { return false };
        let psbt = self.txs[&tx].proposed.psbt_bytes.clone();
        self.send(signer, PeerMessage::Proposal { psbt });
        if probing {
            self.send(signer, PeerMessage::SigningProbe { tx, input: input as u32, presig, certificate });
        } else {
            self.ask_to_sign(&[signer], tx, input, presig, &certificate);
        }
        true
    }

    /// Drops the input's presignature (never reused) so the next pass
    /// assigns another.
    fn retry_input(&mut self, tx: TxId, input: usize, reason: String) {
        let Some(job) = self.signing.get_mut(&tx) else { return };
        let slot = &mut job.inputs[input];
        let Some(presig) = slot.presig.take() else { return };
        slot.partials.clear();
        let attempt = slot.attempts;
        let not_before = self.now.plus(retry_backoff(&self.config.cluster.timeouts, attempt));
        self.signing.get_mut(&tx).expect("checked above").inputs[input].not_before = not_before;
        if let Some(e) = self.pool.get_mut(&presig) {
            e.used = true;
        }
        // The signers discard their shares (this node asked them for it, so
        // they accept the abandon from it) and tell everyone in turn.
        let signers = self.pool.get(&presig).map(|e| e.signers.clone()).unwrap_or_default();
        for s in signers {
            self.send(s, PeerMessage::PresigAbandon { id: presig });
        }
        self.observe(Observation::SigningRetried { tx, input: input as u32, presig, attempt, reason });
    }

    fn assign_presignatures(&mut self, tx: TxId) {
        let max_attempts = self.config.cluster.timeouts.max_signing_attempts;
        let Some(certificate) = self.approval_certificate(tx) else { return };
        let inputs = self.signing.get(&tx).map_or(0, |j| j.inputs.len());
        for input in 0..inputs {
            let slot = &self.signing[&tx].inputs[input];
            if slot.done.is_some() || slot.presig.is_some() || slot.probe.is_some() || self.now < slot.not_before {
                continue;
            }
            // An approved transaction is retried for as long as its
            // approval stands: the approval is the cluster's decision, and
            // one coordinator's bad luck is not. Past `max_attempts` the
            // input is reported stalled (an operator sees it) and retried
            // less often (see `retry_input`).
            if slot.attempts == max_attempts && !slot.stall_reported {
                self.signing.get_mut(&tx).expect("job exists").inputs[input].stall_reported = true;
                self.observe(Observation::SigningStalled { tx, input: input as u32, attempts: max_attempts });
            }
            let Some(presig) = self.pick_presignature(tx, input) else { return };
            if self.signers_heard_lately(tx, presig) {
                self.request_signatures(tx, input, presig, &certificate);
            } else {
                self.start_probe(tx, input, presig, &certificate);
            }
        }
    }

    /// Sends the signing requests for `input` of `tx` with `presig`: from
    /// here on the signers consume their shares, so the presignature is
    /// spent whatever happens.
    pub(crate) fn request_signatures(
        &mut self,
        tx: TxId,
        input: usize,
        presig: PresigId,
        certificate: &ApprovalCertificate,
    ) {
        let signers = {
            let entry = self.pool.get_mut(&presig).expect("picked from the pool");
            entry.used = true;
            entry.signers.clone()
        };
        let deadline = self.now.plus(self.config.cluster.timeouts.signing_ms);
        let slot = &mut self.signing.get_mut(&tx).expect("job exists").inputs[input];
        slot.presig = Some(presig);
        slot.probe = None;
        slot.attempts += 1;
        slot.deadline = deadline;
        slot.asked_again = false;
        slot.handed_proposal.clear();
        self.ask_to_sign(&signers, tx, input, presig, certificate);
    }

    /// A ready presignature whose signers are all healthy: the one whose
    /// hash with the transaction and input is smallest (rendezvous
    /// hashing). Two coordinators working on the same input at the same
    /// time then almost always pick the same presignature, whose signers
    /// answer the same message twice at no cost, and a difference of one
    /// presignature between their views moves few choices, where an offset
    /// into the candidate list would shift them all onto each other's next
    /// input (a collision is safe, only wasteful: signers refuse a second
    /// message).
    fn pick_presignature(&self, tx: TxId, input: usize) -> Option<PresigId> {
        use sha2::Digest;
        let rank = |id: &PresigId| -> [u8; 32] {
            Sha256::new()
                .chain_update(b"mpc-custody/presignature-choice/v1")
                .chain_update(tx.0)
                .chain_update((input as u64).to_be_bytes())
                .chain_update(id.origin.0.to_be_bytes())
                .chain_update(id.seq.to_be_bytes())
                .finalize()
                .into()
        };
        // Signers this node heard from within a signing timeout first: a
        // member that crashed or was cut off has been silent, and asking
        // it would cost the presignature (the others consume theirs).
        let since = self.now.0.saturating_sub(self.config.cluster.timeouts.signing_ms);
        let fresh = |e: &crate::node::PoolEntry| {
            e.signers.iter().all(|s| *s == self.me || self.last_heard.get(s).is_some_and(|t| t.0 >= since))
        };
        // Not one another input is already asking its signers about.
        let probed: std::collections::BTreeSet<PresigId> = self
            .signing
            .values()
            .flat_map(|j| j.inputs.iter().filter_map(|i| i.probe.as_ref().map(|p| p.presig)))
            .collect();
        self.pool
            .iter()
            .filter(|(id, e)| self.usable(e) && !probed.contains(id))
            .min_by_key(|(id, e)| (!fresh(e), rank(id)))
            .map(|(id, _)| *id)
    }

    /// Signer: answer a signing request, or refuse and say why.
    pub(crate) fn on_signing_request(
        &mut self,
        from: NodeId,
        tx: TxId,
        input: u32,
        presig: PresigId,
        certificate: ApprovalCertificate,
    ) {
        self.absorb_certificate(from, tx, &certificate);
        let result = self.sign_input(from, tx, input, presig, &certificate);
        if let Err(refusal) = &result {
            self.follow_up_refusal(from, tx, refusal);
            self.observe(Observation::SigningRefused { tx, presig, requester: from, reason: format!("{refusal:?}") });
        }
        self.send(from, PeerMessage::SigningResponse { tx, input, presig, result });
    }

    /// The certificate's votes are votes like any other: absorbing them
    /// first means an equivocation the certificate reveals (an approval
    /// from a member this node saw reject) is caught before signing, and
    /// the certificate is then judged without that member.
    pub(crate) fn absorb_certificate(&mut self, from: NodeId, tx: TxId, certificate: &ApprovalCertificate) {
        for vote in certificate.votes.iter().filter(|v| v.body.tx == tx) {
            if self.txs.contains_key(&tx) {
                self.on_vote(from, vote.clone());
            }
        }
        if certificate.tx != tx || certificate.votes.iter().any(|v| v.body.tx != tx) {
            self.observe(Observation::ForgedCertificate { tx, from });
        }
    }

    /// What a signer sends along with a refusal, so the coordinator can do
    /// better next time: the proposal it lacks, the signed transaction it
    /// missed, or the evidence against an approver.
    pub(crate) fn follow_up_refusal(&mut self, from: NodeId, tx: TxId, refusal: &SigningRefusal) {
        match refusal {
            // Missed the proposal: catch up from the node that has it.
            SigningRefusal::UnknownTransaction => {
                let request = self.sync_request();
                self.send(from, request);
            }
            // The coordinator missed how it ended; a signed transaction
            // proves itself.
            SigningRefusal::Final => {
                if let Some(raw_tx) = self.txs.get(&tx).and_then(|t| t.signed_raw.clone()) {
                    self.send(from, PeerMessage::TxSigned { tx, raw_tx, presigs: Vec::new() });
                }
            }
            // Perhaps the coordinator does not know an approver equivocated:
            // show it the evidence, so it stops relying on that vote.
            SigningRefusal::InvalidCertificate(_) => {
                let evidence = self.txs.get(&tx).map(|t| t.evidence.clone()).unwrap_or_default();
                for e in evidence {
                    self.send(from, PeerMessage::Evidence(Box::new(e)));
                }
            }
            _ => {}
        }
    }

    fn sign_input(
        &mut self,
        from: NodeId,
        tx: TxId,
        input: u32,
        presig: PresigId,
        certificate: &ApprovalCertificate,
    ) -> Result<PartialSig, SigningRefusal> {
        let message = match self.check_signable(from, tx, input, presig, certificate, Asked::ToSign)? {
            Signable::Repeat(partial) => return Ok(partial),
            Signable::Fresh { message } => message,
        };
        let Some(OwnPresig::Ready { share, .. }) = self.own_presigs.get(&presig) else {
            unreachable!("check_signable found the share ready")
        };
        let partial = share.expose().presignature.clone().issue_partial_signature(data_to_sign(&message));
        let sigma: [u8; 32] =
            partial.sigma.to_be_bytes().as_bytes().try_into().expect("a secp256k1 scalar is 32 bytes");
        // Durable before the partial signature leaves: the record is in
        // this step's `persist`, the response in its `send`.
        let consumed = Record::PresigConsumed { id: presig, tx, input, message, sigma };
        if self.bugs.persist_consumption_late() {
            self.late_records.push(consumed);
        } else {
            self.persist(consumed);
        }
        self.own_presigs.insert(presig, OwnPresig::Consumed { tx, input, message, sigma });
        if let Some(e) = self.pool.get_mut(&presig) {
            e.used = true;
        }
        self.observe(Observation::PartialSignatureReleased { tx, input, presig, message });
        Ok(PartialSig(sigma))
    }

    /// Every check a signer makes before it releases a partial signature,
    /// and nothing consumed: what a request is answered from, and a probe
    /// (`Asked::WhetherItCould`) too, so that a probe's yes means the
    /// request will be signed unless something changes in between.
    pub(crate) fn check_signable(
        &mut self,
        from: NodeId,
        tx: TxId,
        input: u32,
        presig: PresigId,
        certificate: &ApprovalCertificate,
        asked: Asked,
    ) -> Result<Signable, SigningRefusal> {
        if self.settled.contains_key(&tx) {
            return Err(SigningRefusal::Final);
        }
        let entry = self.txs.get(&tx).ok_or(SigningRefusal::UnknownTransaction)?;
        // Signed or rejected here: no presignature is spent on it any more
        // (a share already consumed for it still gives the same answer).
        // Failed answers below: it may be this node's promise never to sign.
        let final_here = entry.state.is_final() && !matches!(entry.state, TxState::Failed(_));
        if !self.bugs.skip_certificate_check() {
            certificate
                .verify(tx, &self.config.cluster, entry.tally.equivocators())
                .map_err(|e| SigningRefusal::InvalidCertificate(e.to_string()))?;
        }
        if asked == Asked::ToSign {
            // A coordinator with a valid certificate may later abandon what
            // it asked for; one without never may. A probe asks for nothing
            // that would need abandoning.
            self.note_requester(presig, from);
        }
        let entry = &self.txs[&tx];
        if entry.state == TxState::Expired || matches!(entry.state, TxState::Failed(_)) {
            // This node promised never to sign it (or gave it up for good).
            return Err(SigningRefusal::Expired);
        }
        // The message comes from this node's own copy, never from the request.
        let message =
            entry.proposed.signing_message(input as usize).map_err(|e| SigningRefusal::BadInput(e.to_string()))?;
        if matches!(entry.state, TxState::Received | TxState::Voting) {
            // A valid certificate is proof of approval.
            self.transition(tx, TxEvent::ApprovalCertified);
        }
        match self.own_presigs.get(&presig) {
            Some(OwnPresig::Ready { signers, .. }) => {
                if !signers.contains(&self.me) {
                    return Err(SigningRefusal::NotASigner);
                }
                if final_here {
                    return Err(SigningRefusal::Final);
                }
                if !self.coordination_reachable {
                    // The consumption could not be fenced in etcd before it
                    // commits (DESIGN §4): consume nothing; the coordinator
                    // retries with another signer set.
                    return Err(SigningRefusal::CoordinationUnavailable);
                }
                Ok(Signable::Fresh { message })
            }
            Some(OwnPresig::Consumed { tx: t2, input: i2, message: m2, sigma }) => {
                if (*t2, *i2, *m2) == (tx, input, message) {
                    // The same question gets the same answer.
                    Ok(Signable::Repeat(PartialSig(*sigma)))
                } else {
                    Err(SigningRefusal::PresignatureUsedElsewhere)
                }
            }
            _ => Err(SigningRefusal::PresignatureUnavailable),
        }
    }

    /// Coordinator: check, collect and combine partial signatures.
    pub(crate) fn on_signing_response(
        &mut self,
        from: NodeId,
        tx: TxId,
        input: u32,
        presig: PresigId,
        result: Result<PartialSig, SigningRefusal>,
    ) {
        let input = input as usize;
        let current = self
            .signing
            .get(&tx)
            .and_then(|j| j.inputs.get(input))
            .is_some_and(|slot| slot.presig == Some(presig) && slot.done.is_none());
        if !current {
            // Late (the input moved on or finished): still check it, so a
            // cheater is named however the timing fell.
            if let Ok(PartialSig(sigma)) = result {
                if self.partial_is_invalid(from, tx, input, presig, sigma) {
                    self.observe(Observation::BadPartialSignature { signer: from, tx, input: input as u32, presig });
                    self.convict(from);
                }
            }
            return;
        }
        let Some(entry) = self.pool.get(&presig) else { return };
        let Some(j) = entry.signers.iter().position(|s| *s == from) else { return };
        let signers = entry.signers.clone();
        let Some(public) = entry.public.clone() else { return };
        let sigma = match result {
            Ok(PartialSig(sigma)) => sigma,
            Err(SigningRefusal::UnknownTransaction) if self.hand_over_proposal(tx, input, from) => return,
            Err(refusal) => {
                if refusal.is_retryable() {
                    // Not a fault, but the signer cannot sign for a while:
                    // pick sets without it until then.
                    self.suspect_briefly(from);
                } else if refusal.burns_presignature() {
                    // The refusal costs the presignature. Honest signers
                    // refuse so only when coordinators collide; a member
                    // that keeps doing it is avoided for longer each time.
                    self.suspect(from);
                }
                return self.retry_input(tx, input, format!("{from} refused: {refusal:?}"));
            }
        };
        let Ok(message) = self.txs[&tx].proposed.signing_message(input) else { return };
        let data = data_to_sign(&message);
        let valid = Scalar::from_be_bytes(sigma).is_ok_and(|s| public.partial_is_valid(j, &s, &data.to_scalar()));
        if !valid {
            self.observe(Observation::BadPartialSignature { signer: from, tx, input: input as u32, presig });
            self.convict(from);
            return self.retry_input(tx, input, format!("{from} sent an invalid partial signature"));
        }
        self.forgive(from);
        let slot = &mut self.signing.get_mut(&tx).expect("checked above").inputs[input];
        slot.partials.insert(from, sigma);
        if slot.partials.len() < signers.len() {
            return;
        }
        let partials: Vec<PartialSignature<crate::engine::Curve>> = signers
            .iter()
            .map(|s| PartialSignature { sigma: Scalar::from_be_bytes(slot.partials[s]).expect("checked on receipt") })
            .collect();
        let group_point = *self.key.as_ref().expect("coordinating implies a key").share.expose().shared_public_key();
        let signature = public
            .to_library()
            .and_then(|p| PartialSignature::combine(&partials, &p, data))
            .filter(|sig| sig.verify(&group_point, &data).is_ok());
        let Some(signature) = signature else {
            return self.retry_input(tx, input, "combined signature does not verify".into());
        };
        let mut compact = [0u8; 64];
        signature.write_to_slice(&mut compact);
        slot.done = Some(compact);
        self.finish_if_complete(tx);
    }

    /// Whether `sigma`, claimed by `from` for `presig` on input `input` of
    /// `tx`, fails the check against the presignature's commitments. False
    /// when it cannot be judged (unknown presignature or transaction).
    fn partial_is_invalid(&self, from: NodeId, tx: TxId, input: usize, presig: PresigId, sigma: [u8; 32]) -> bool {
        let Some(entry) = self.pool.get(&presig) else { return false };
        let (Some(j), Some(public)) = (entry.signers.iter().position(|s| *s == from), entry.public.as_ref()) else {
            return false;
        };
        let Some(Ok(message)) = self.txs.get(&tx).map(|t| t.proposed.signing_message(input)) else { return false };
        let m = data_to_sign(&message).to_scalar();
        !Scalar::from_be_bytes(sigma).is_ok_and(|s| public.partial_is_valid(j, &s, &m))
    }

    fn finish_if_complete(&mut self, tx: TxId) {
        let Some(job) = self.signing.get(&tx) else { return };
        let Some(sigs) = job.inputs.iter().map(|i| i.done).collect::<Option<Vec<[u8; 64]>>>() else { return };
        let presigs: Vec<PresigId> = job.inputs.iter().filter_map(|i| i.presig).collect();
        self.signing.remove(&tx);
        let key = self.key.as_ref().expect("coordinating implies a key").group.clone();
        match self.txs[&tx].proposed.finalize(&key, &sigs) {
            Ok(signed) => {
                let raw_tx = bitcoin::consensus::encode::serialize(&signed);
                self.record_signed(tx, raw_tx.clone(), &presigs, signed.compute_txid().to_string());
                self.broadcast(PeerMessage::TxSigned { tx, raw_tx, presigs });
            }
            Err(e) => self.transition(tx, TxEvent::Failed(e.to_string())),
        }
    }

    /// Marks `presigs` spent in this node's view of the pool (live, or
    /// replaying a signed transaction's record).
    pub(crate) fn mark_used(&mut self, presigs: &[PresigId]) {
        for p in presigs {
            if let Some(e) = self.pool.get_mut(p) {
                e.used = true;
            }
        }
    }

    fn record_signed(&mut self, tx: TxId, raw_tx: Vec<u8>, presigs: &[PresigId], txid: String) {
        self.mark_used(presigs);
        self.persist(Record::SignedTx { tx, raw_tx: raw_tx.clone(), presigs: presigs.to_vec() });
        if let Some(entry) = self.txs.get_mut(&tx) {
            entry.signed_raw = Some(raw_tx);
        }
        self.transition(tx, TxEvent::SignatureComplete);
        self.signing.remove(&tx);
        self.observe(Observation::TxSigned { tx, txid });
    }

    /// Anyone: a coordinator reports the finished transaction; every node
    /// checks it against its own copy and Bitcoin Core's rules before
    /// recording it.
    pub(crate) fn on_tx_signed(&mut self, from: NodeId, tx: TxId, raw_tx: Vec<u8>, presigs: Vec<PresigId>) {
        let Some(entry) = self.txs.get(&tx) else { return };
        // Signed here already (and perhaps broadcast, confirmed, or beaten
        // by a conflicting spend since).
        if entry.signed_raw.is_some() {
            return;
        }
        let check = bitcoin::consensus::encode::deserialize::<bitcoin::Transaction>(&raw_tx)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                if signed.compute_txid() != entry.proposed.unsigned.compute_txid() {
                    return Err("not the transaction that was voted on".to_string());
                }
                crate::tx::verify_consensus(&signed, &entry.proposed.prevouts).map_err(|e| e.to_string())?;
                Ok(signed.compute_txid().to_string())
            });
        match check {
            Ok(txid) => self.record_signed(tx, raw_tx, &presigs, txid),
            Err(reason) => self.observe(Observation::RejectedMessage { from, kind: "tx_signed".into(), reason }),
        }
    }
}
