//! Asking signers whether they could sign, before asking them to.
//!
//! Once one signer consumes its share, a presignature can only ever serve
//! that message: if another of its signers is down, cut off or refuses,
//! the shares already consumed are lost. So a coordinator that has not
//! heard from every signer of its pick within the last probe window (a
//! tenth of a signing timeout) first sends each a [`PeerMessage::SigningProbe`]:
//! the signer runs every check of a real request (certificate, its own copy
//! of the transaction, its share, fencing) and consumes nothing. Only when
//! every signer said yes do the requests go out. A silent signer then costs
//! a probe window and a refusing one a round trip; either is avoided for a
//! while, and the presignature stays in the pool for the next pick.
//!
//! A coordinator that heard from all of them lately and holds their votes
//! on the transaction (the usual case right after the votes that approved
//! it came in) skips the probe:
//! signing stays one round of partial signatures. What is left to waste is
//! a signer that fails between its answer and the request.

use crate::ids::{Millis, NodeId, PresigId, TxId};
use crate::message::{PeerMessage, SigningRefusal};
use crate::node::Node;
use crate::sign::{retry_backoff, Asked};
use crate::vote::ApprovalCertificate;
use std::collections::BTreeSet;

/// One input's probe in flight, at its coordinator.
pub(crate) struct Probe {
    pub presig: PresigId,
    /// Signers that said they could sign.
    pub ready: BTreeSet<NodeId>,
    /// Half a window in: the silent signers are asked once more (a lost
    /// probe or answer should not cost a healthy signer its standing).
    pub ask_again_at: Millis,
    pub asked_again: bool,
    /// The silent signers are suspected and another presignature is picked.
    pub deadline: Millis,
}

impl Probe {
    /// When the coordinator next has something to do for this probe.
    pub(crate) fn next_wake(&self) -> Millis {
        if self.asked_again {
            self.deadline
        } else {
            self.ask_again_at
        }
    }
}

impl Node {
    /// How long a probe waits for its answers, and how lately a signer
    /// must have been heard from for its probe to be skipped.
    fn probe_window_ms(&self) -> u64 {
        (self.config.cluster.timeouts.signing_ms / 10).max(1)
    }

    /// Whether every signer of `presig` other than this node was heard
    /// from within the probe window and its vote on `tx` reached this node.
    /// A member that went down just as it voted (its vote durable, never
    /// sent) was still heard lately; the missing vote gives it away.
    pub(crate) fn signers_heard_lately(&self, tx: TxId, presig: PresigId) -> bool {
        let since = self.now.minus(self.probe_window_ms());
        let Some(entry) = self.txs.get(&tx) else { return false };
        self.pool.get(&presig).is_some_and(|e| {
            e.signers.iter().all(|s| {
                *s == self.me
                    || (self.last_heard.get(s).is_some_and(|t| *t >= since) && entry.tally.vote_of(*s).is_some())
            })
        })
    }

    /// Coordinator: asks each signer of `presig` whether it could sign
    /// `input` of `tx` (this node too, through its loopback, so that its
    /// own share is judged by the same checks).
    pub(crate) fn start_probe(&mut self, tx: TxId, input: usize, presig: PresigId, certificate: &ApprovalCertificate) {
        let Some(signers) = self.pool.get(&presig).map(|e| e.signers.clone()) else { return };
        let window = self.probe_window_ms();
        let Some(slot) = self.signing.get_mut(&tx).and_then(|j| j.inputs.get_mut(input)) else { return };
        slot.probe = Some(Probe {
            presig,
            ready: BTreeSet::new(),
            ask_again_at: self.now.plus(window / 2),
            asked_again: false,
            deadline: self.now.plus(window),
        });
        slot.handed_proposal.clear();
        self.send_probes(&signers, tx, input, presig, certificate);
    }

    fn send_probes(
        &mut self,
        signers: &[NodeId],
        tx: TxId,
        input: usize,
        presig: PresigId,
        certificate: &ApprovalCertificate,
    ) {
        for s in signers {
            let msg = PeerMessage::SigningProbe { tx, input: input as u32, presig, certificate: certificate.clone() };
            self.send(*s, msg);
        }
    }

    /// Signer: answers whether it could sign, consuming nothing.
    pub(crate) fn on_signing_probe(
        &mut self,
        from: NodeId,
        tx: TxId,
        input: u32,
        presig: PresigId,
        certificate: ApprovalCertificate,
    ) {
        self.absorb_certificate(from, tx, &certificate);
        let result =
            self.check_signable(from, tx, input, presig, &certificate, Asked::WhetherItCould).map(|_signable| ());
        if let Err(refusal) = &result {
            self.follow_up_refusal(from, tx, refusal);
            let reason = format!("{refusal:?}, to a probe");
            self.observe(crate::io::Observation::SigningRefused { tx, presig, requester: from, reason });
        }
        self.send(from, PeerMessage::SigningProbeAnswer { tx, input, presig, result });
    }

    /// Coordinator: a signer's answer to a probe. All yes: the requests go
    /// out. A signer that lacked the proposal is handed it and asked again;
    /// any other refusal ends the probe (see [`Node::end_probe`]).
    pub(crate) fn on_probe_answer(
        &mut self,
        from: NodeId,
        tx: TxId,
        input: u32,
        presig: PresigId,
        result: Result<(), SigningRefusal>,
    ) {
        let input = input as usize;
        let Some(signers) = self.pool.get(&presig).map(|e| e.signers.clone()) else { return };
        if !signers.contains(&from) {
            return;
        }
        let Some(slot) = self.signing.get_mut(&tx).and_then(|j| j.inputs.get_mut(input)) else { return };
        let Some(probe) = slot.probe.as_mut().filter(|p| p.presig == presig && slot.presig.is_none()) else {
            return;
        };
        match result {
            Ok(()) => {
                probe.ready.insert(from);
                if probe.ready.len() < signers.len() {
                    return;
                }
                slot.probe = None;
                // The lease may have moved while the probe ran: a node no
                // longer in line starts nothing new.
                match self.approval_certificate(tx) {
                    Some(certificate) if self.coordinates(tx) => {
                        self.request_signatures(tx, input, presig, &certificate)
                    }
                    _ => {}
                }
            }
            Err(SigningRefusal::UnknownTransaction) if self.hand_over_proposal(tx, input, from) => {}
            Err(refusal) => self.end_probe(tx, input, from, &refusal),
        }
    }

    /// A signer refused a probe. Nothing was consumed, so the presignature
    /// goes back to the pool, unless the refuser's share is gone (then it
    /// can never sign anything). The refuser is avoided for a while (with
    /// a strike if its refusal would have cost the presignature, as for a
    /// real request), and the input backs off as after a failed attempt:
    /// a refusal about the transaction itself (final, expired, a
    /// certificate the signer does not accept) would meet the next set too.
    fn end_probe(&mut self, tx: TxId, input: usize, from: NodeId, refusal: &SigningRefusal) {
        let Some(slot) = self.signing.get_mut(&tx).and_then(|j| j.inputs.get_mut(input)) else { return };
        let Some(probe) = slot.probe.take() else { return };
        slot.attempts += 1;
        let attempts = slot.attempts;
        let not_before = self.now.plus(retry_backoff(&self.config.cluster.timeouts, attempts));
        self.signing.get_mut(&tx).expect("checked above").inputs[input].not_before = not_before;
        if refusal.burns_presignature() {
            if let Some(e) = self.pool.get_mut(&probe.presig) {
                e.used = true;
            }
            self.suspect(from);
        } else {
            self.suspect_briefly(from);
        }
    }

    /// Coordinator: asks the silent signers again half a window in; at the
    /// window's end suspects them and drops the probe, so the next pass
    /// picks a presignature without them (no presignature was spent).
    pub(crate) fn time_out_probes(&mut self, tx: TxId) {
        let now = self.now;
        let Some(job) = self.signing.get(&tx) else { return };
        let due: Vec<(usize, PresigId, bool)> = job
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(k, i)| i.probe.as_ref().map(|p| (k, p)))
            .filter(|(_, p)| now >= p.next_wake())
            .map(|(k, p)| (k, p.presig, now >= p.deadline))
            .collect();
        for (input, presig, late) in due {
            let signers = self.pool.get(&presig).map(|e| e.signers.clone()).unwrap_or_default();
            let slot = &mut self.signing.get_mut(&tx).expect("job exists").inputs[input];
            let probe = slot.probe.as_mut().expect("listed above");
            let silent: Vec<NodeId> = signers.iter().copied().filter(|s| !probe.ready.contains(s)).collect();
            if late {
                slot.probe = None;
                self.observe(crate::io::Observation::SigningProbeUnanswered {
                    tx,
                    input: input as u32,
                    presig,
                    silent: silent.clone(),
                });
                for s in silent {
                    self.suspect(s);
                }
                continue;
            }
            probe.asked_again = true;
            let Some(certificate) = self.approval_certificate(tx) else { continue };
            self.send_probes(&silent, tx, input, presig, &certificate);
        }
    }
}
