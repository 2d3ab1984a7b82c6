//! Expired transactions: each member's promise never to sign, and what a
//! set of promises proves (issue 11 item 9).
//!
//! A transaction whose vote deadline passed without a certified outcome is
//! `Expired` at the nodes that saw the deadline pass. Each promises, in a
//! signed [`ExpiryNotice`] sent to all, never to release a partial
//! signature for it. A member that already released some (it got a
//! request before its deadline) promises never to release any *other*: its
//! notice lists the (input, presignature) pairs it released.
//!
//! An input can only be signed by the `t` signers of one presignature `P`,
//! each releasing its partial signature for that input with `P`. A member
//! that promised, without listing that pair, never will; a member without
//! a notice (free) or that listed the pair may. [`expiry_proof`] asks, for
//! each input, how many members of the worst possible signer set are bound
//! not to sign it:
//!
//! * at least one: if every promise is kept, the input, and so the
//!   transaction, can never be signed ([`ExpiryProof::CannotSignIfKept`]).
//!   A member still signing gives up and promises too, so the cluster
//!   agrees on `Expired` instead of some nodes retrying forever.
//! * more than `f`: one of them is honest, so even `f` broken promises
//!   cannot sign it ([`ExpiryProof::Certified`]). The transaction ends
//!   `Failed("expired: ...")` everywhere, and an operator may resubmit.
//!
//! In between (e.g. two members released partial signatures with a
//! presignature whose third signer then promised) the transaction stays
//! `Expired` at every node: one Byzantine promiser could still finish it,
//! so nothing honest can certify it never will be. A resubmission that
//! spends the same outputs is still safe: at most one of the two can be
//! mined.

use crate::ids::{NodeId, PresigId, TxId};
use crate::io::Observation;
use crate::lifecycle::TxEvent;
use crate::message::PeerMessage;
use crate::node::{Node, OwnPresig};
use crate::record::TxState;
use crate::vote::ExpiryNotice;
use std::collections::{BTreeMap, BTreeSet};

/// What the promises held for one transaction prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExpiryProof {
    /// Some signer set could still sign every input.
    Open,
    /// With every promise kept, some input can never be signed.
    CannotSignIfKept,
    /// Even with `f` promises broken, some input can never be signed.
    Certified,
}

/// What `notices` (at most one per member, verified) prove about a
/// transaction with `inputs` inputs, in a cluster of `n` members with
/// threshold `t` that tolerates `f` Byzantine members.
///
/// For input `k` and a presignature `P` with signer set `S` (`t` members),
/// the members of `S` bound not to sign `k` with `P` are those with a
/// notice that does not list `(k, P)`. `S` is not known for every `P` (a
/// liar may name any), so the worst `S` is assumed: every free member and
/// every member that listed `(k, P)`. That leaves `t - free - listed(k, P)`
/// bound members, the fewest over all `P` being
/// `t - free - max_P listed(k, P)`.
pub fn expiry_proof<'a>(
    n: u16,
    t: u16,
    f: u16,
    inputs: usize,
    notices: impl IntoIterator<Item = &'a ExpiryNotice>,
) -> ExpiryProof {
    let mut promised = BTreeSet::new();
    let mut listed: BTreeMap<(u32, PresigId), BTreeSet<NodeId>> = BTreeMap::new();
    for notice in notices {
        promised.insert(notice.voter);
        for pair in &notice.released {
            if (pair.0 as usize) < inputs {
                listed.entry(*pair).or_default().insert(notice.voter);
            }
        }
    }
    let free = (n as usize).saturating_sub(promised.len());
    let mut most_listed = vec![0usize; inputs];
    for ((input, _), voters) in &listed {
        let m = &mut most_listed[*input as usize];
        *m = (*m).max(voters.len());
    }
    let bound = most_listed.iter().map(|l| (t as usize).saturating_sub(free + l)).max().unwrap_or(0);
    if bound > f as usize {
        ExpiryProof::Certified
    } else if bound >= 1 {
        ExpiryProof::CannotSignIfKept
    } else {
        ExpiryProof::Open
    }
}

impl Node {
    /// The partial signatures this node released for `tx`, as (input,
    /// presignature), sorted. Consumptions are durable before release and
    /// recovered on restart, so the list is the same after a crash.
    fn released_for(&self, tx: TxId) -> Vec<(u32, PresigId)> {
        self.own_presigs
            .iter()
            .filter_map(|(id, p)| match p {
                OwnPresig::Consumed { tx: t, input, .. } if *t == tx => Some((*input, *id)),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// An expired transaction: this node promises never to release another
    /// partial signature for it, and tells everyone. The promise is the
    /// Expired state, persisted in this same step before the notice
    /// leaves; the notice lists what it released before (see the module
    /// doc), so it can keep its word whatever it did.
    pub(crate) fn promise_never_to_sign(&mut self, tx: TxId) {
        if self.txs.get(&tx).is_none_or(|t| t.state != TxState::Expired) {
            return;
        }
        let released = self.released_for(tx);
        let notice = ExpiryNotice::sign(tx, self.me, released, &self.vote_key, self.cluster_id());
        self.broadcast(PeerMessage::Expiry(notice.clone()));
        self.note_expiry(notice);
    }

    /// Anyone: a member's promise never to sign `tx`.
    pub(crate) fn on_expiry_notice(&mut self, from: NodeId, notice: ExpiryNotice) {
        if let Err(e) = notice.verify(&self.config.cluster) {
            let reason = format!("expiry notice: {e}");
            return self.observe(Observation::RejectedMessage { from, kind: "expiry".into(), reason });
        }
        if self.txs.get(&notice.tx).is_some_and(|t| !t.expiry.contains_key(&notice.voter)) {
            self.note_expiry(notice);
        }
    }

    /// Counts a promise and acts on what the promises now prove: a node
    /// still approved or signing gives up and promises too once, with every
    /// promise kept, the transaction cannot be signed; once even `f` broken
    /// promises could not sign it, it fails for good, safe to resubmit.
    fn note_expiry(&mut self, notice: ExpiryNotice) {
        let tx = notice.tx;
        let Some(entry) = self.txs.get_mut(&tx) else { return };
        entry.expiry.insert(notice.voter, notice);
        let state = entry.state.clone();
        let promised = entry.expiry.len();
        let cluster = &self.config.cluster;
        let inputs = entry.proposed.unsigned.input.len();
        let proof =
            expiry_proof(cluster.n(), cluster.threshold, cluster.byzantine_tolerance, inputs, entry.expiry.values());
        let promised_here = entry.expiry.contains_key(&self.me);
        if proof >= ExpiryProof::CannotSignIfKept
            && matches!(state, TxState::Approved | TxState::Signing)
            && !promised_here
        {
            self.signing.remove(&tx);
            self.transition(tx, TxEvent::ExpiryJoined);
            return self.promise_never_to_sign(tx);
        }
        if proof == ExpiryProof::Certified && !state.is_final() {
            self.signing.remove(&tx);
            let reason = format!("expired: {promised} members promised never to sign it; safe to resubmit");
            self.transition(tx, TxEvent::Failed(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presig(seq: u64) -> PresigId {
        PresigId { origin: NodeId(1), seq }
    }

    /// A notice with a dummy signature: `expiry_proof` takes verified ones.
    fn notice(voter: u16, released: &[(u32, PresigId)]) -> ExpiryNotice {
        ExpiryNotice { tx: TxId([7; 32]), voter: NodeId(voter), released: released.to_vec(), signature: [0; 64] }
    }

    /// n = 5, t = 3, f = 1, the shape the simulator and the demo run.
    fn proof(inputs: usize, notices: &[ExpiryNotice]) -> ExpiryProof {
        expiry_proof(5, 3, 1, inputs, notices)
    }

    #[test]
    fn plain_promises_certify_at_n_minus_t_plus_f_plus_one() {
        let plain: Vec<ExpiryNotice> = (1..=5).map(|v| notice(v, &[])).collect();
        assert_eq!(proof(1, &plain[..0]), ExpiryProof::Open);
        assert_eq!(proof(1, &plain[..2]), ExpiryProof::Open, "three free members can still sign");
        assert_eq!(proof(1, &plain[..3]), ExpiryProof::CannotSignIfKept, "two free members cannot");
        assert_eq!(proof(1, &plain[..4]), ExpiryProof::Certified, "one liar among four leaves two signers");
        assert_eq!(proof(1, &plain), ExpiryProof::Certified);
    }

    #[test]
    fn released_partials_with_one_presignature_whose_third_signer_promised_stay_uncertified() {
        // Members 1 and 2 released input 0 with P; 3, 4 and 5 promised.
        // Kept promises block P (its third signer promised), but that
        // signer may be the liar: nothing honest can certify the expiry.
        let p = presig(1);
        let notices = [notice(1, &[(0, p)]), notice(2, &[(0, p)]), notice(3, &[]), notice(4, &[]), notice(5, &[])];
        assert_eq!(proof(1, &notices), ExpiryProof::CannotSignIfKept);
        // Before 1 and 2 promise, it is already clear to them that nothing
        // can finish if the promises are kept: that is when they give up.
        assert_eq!(proof(1, &notices[2..]), ExpiryProof::CannotSignIfKept);
    }

    #[test]
    fn released_partials_with_different_presignatures_certify() {
        // 1 released input 0 with P, 2 with Q: P's other signers and Q's
        // are bound, and one liar cannot unbind two of them.
        let notices = [
            notice(1, &[(0, presig(1))]),
            notice(2, &[(0, presig(2))]),
            notice(3, &[]),
            notice(4, &[]),
            notice(5, &[]),
        ];
        assert_eq!(proof(1, &notices), ExpiryProof::Certified);
    }

    #[test]
    fn one_blocked_input_is_enough_and_releases_of_other_inputs_do_not_count_for_it() {
        // 1, 2 and 3 released input 0 with P (so input 0 could finish),
        // but input 1 has three binding promises.
        let p = presig(1);
        let notices = [notice(1, &[(0, p)]), notice(2, &[(0, p)]), notice(3, &[(0, p)]), notice(4, &[])];
        assert_eq!(proof(1, &notices), ExpiryProof::Open, "input 0 alone can still be signed");
        assert_eq!(proof(2, &notices), ExpiryProof::Certified, "input 1 has four bound members of five");
    }

    #[test]
    fn a_liar_cannot_inflate_its_weight_with_repeats_or_inputs_past_the_end() {
        let p = presig(1);
        let liar = notice(3, &[(0, p), (0, p), (9, presig(2))]);
        let notices = [notice(1, &[(0, p)]), liar, notice(4, &[]), notice(5, &[])];
        // Listed (0, P): members 1 and 3; free: 2. Bound: 3 - 1 - 2 = 0.
        assert_eq!(proof(1, &notices), ExpiryProof::Open);
    }

    /// Every assignment of notices in a 5-member, t = 3, f = 1 cluster,
    /// with two named presignatures on one input and every possible signer
    /// set for each: `Certified` never holds while some signer set, with at
    /// most one liar, could still sign; `CannotSignIfKept` never holds while
    /// honest members alone could.
    #[test]
    fn the_proof_is_sound_against_every_signer_set_and_every_single_liar() {
        let (n, t, f) = (5u16, 3usize, 1usize);
        let members: Vec<u16> = (1..=n).collect();
        let sets: Vec<Vec<u16>> = subsets(&members, t);
        let (pa, pb, fresh) = (presig(1), presig(2), presig(3));
        // 0 free, 1 plain promise, 2 listed A, 3 listed B, 4 listed both.
        let mut checked = 0;
        for code in 0..5u32.pow(n as u32) {
            let kinds: Vec<u32> = (0..n).map(|i| code / 5u32.pow(i as u32) % 5).collect();
            let notices: Vec<ExpiryNotice> = members
                .iter()
                .zip(&kinds)
                .filter(|(_, k)| **k != 0)
                .map(|(m, k)| match k {
                    1 => notice(*m, &[]),
                    2 => notice(*m, &[(0, pa)]),
                    3 => notice(*m, &[(0, pb)]),
                    _ => notice(*m, &[(0, pa), (0, pb)]),
                })
                .collect();
            let got = expiry_proof(n, t as u16, f as u16, 1, &notices);
            let may_sign = |m: u16, p: PresigId| {
                let k = kinds[(m - 1) as usize];
                k == 0 || (p == pa && (k == 2 || k == 4)) || (p == pb && (k == 3 || k == 4))
            };
            for sa in &sets {
                for sb in &sets {
                    for liars in std::iter::once(vec![]).chain(members.iter().map(|m| vec![*m])) {
                        let can_finish =
                            |p: PresigId, s: &Vec<u16>| s.iter().all(|m| liars.contains(m) || may_sign(*m, p));
                        let signable =
                            can_finish(pa, sa) || can_finish(pb, sb) || sets.iter().any(|s| can_finish(fresh, s));
                        if signable {
                            assert_ne!(
                                got,
                                ExpiryProof::Certified,
                                "kinds {kinds:?}, A {sa:?}, B {sb:?}, liars {liars:?}"
                            );
                            if liars.is_empty() {
                                assert_eq!(got, ExpiryProof::Open, "kinds {kinds:?}, A {sa:?}, B {sb:?}");
                            }
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    fn subsets(items: &[u16], k: usize) -> Vec<Vec<u16>> {
        if k == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for (i, first) in items.iter().enumerate() {
            for mut rest in subsets(&items[i + 1..], k - 1) {
                rest.insert(0, *first);
                out.push(rest);
            }
        }
        out
    }
}
