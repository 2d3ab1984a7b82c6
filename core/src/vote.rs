//! Ed25519-signed votes, the per-transaction tally, equivocation detection
//! and approval certificates.
//!
//! A vote signs the exact transaction digest ([`TxId`]) together with the
//! cluster id and the decision, so it cannot be replayed into another cluster
//! or reinterpreted. A member that signs two different votes for one
//! transaction is Byzantine: both votes are kept as evidence and none of its
//! votes for that transaction count from then on.

use crate::config::ClusterConfig;
use crate::ids::{NodeId, PresigId, TxId};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Decision {
    Approve,
    /// Reject, with the policy rule that failed.
    Reject(String),
}

impl Decision {
    pub fn is_approve(&self) -> bool {
        matches!(self, Decision::Approve)
    }
}

/// What a vote says, before it is signed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VoteBody {
    pub tx: TxId,
    pub voter: NodeId,
    pub decision: Decision,
}

impl VoteBody {
    /// The exact bytes signed: domain tag, cluster id, digest, voter, decision.
    pub fn signing_bytes(&self, cluster_id: &str) -> Vec<u8> {
        let mut b = b"mpc-custody/v1/vote".to_vec();
        b.extend_from_slice(&(cluster_id.len() as u32).to_be_bytes());
        b.extend_from_slice(cluster_id.as_bytes());
        b.extend_from_slice(&self.tx.0);
        b.extend_from_slice(&self.voter.0.to_be_bytes());
        match &self.decision {
            Decision::Approve => b.push(1),
            Decision::Reject(reason) => {
                b.push(0);
                b.extend_from_slice(&(reason.len() as u32).to_be_bytes());
                b.extend_from_slice(reason.as_bytes());
            }
        }
        b
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SignedVote {
    pub body: VoteBody,
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VoteError {
    #[error("vote from {0}, which is not a member of this cluster")]
    NotAMember(NodeId),
    #[error("vote claiming to be from {0} carries a signature that does not verify")]
    BadSignature(NodeId),
    #[error("expiry notice from {0} lists {1} released partial signatures, more than any honest member releases")]
    TooManyReleases(NodeId, usize),
}

impl SignedVote {
    pub fn sign(body: VoteBody, key: &SigningKey, cluster_id: &str) -> SignedVote {
        let signature = key.sign(&body.signing_bytes(cluster_id)).to_bytes();
        SignedVote { body, signature }
    }

    /// Checks membership and the signature against the member's vote key.
    pub fn verify(&self, cluster: &ClusterConfig) -> Result<(), VoteError> {
        let voter = self.body.voter;
        let member = cluster.members.get(&voter).ok_or(VoteError::NotAMember(voter))?;
        let key = VerifyingKey::from_bytes(&member.vote_key).map_err(|_| VoteError::BadSignature(voter))?;
        key.verify(&self.body.signing_bytes(&cluster.cluster_id), &Signature::from_bytes(&self.signature))
            .map_err(|_| VoteError::BadSignature(voter))
    }
}

/// A member's signed promise never to release a partial signature for
/// `tx` beyond the partial signatures it already released (`released`,
/// usually none): made when its vote deadline passed with no certified
/// outcome, or when the promises of others show the transaction cannot be
/// signed anyway. See [`crate::expiry`] for what a set of promises proves:
/// enough of them certify that the transaction is never signed, and an
/// operator may safely resubmit. Ed25519 signatures are deterministic: a
/// node re-signs its own promise after a restart and gets the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExpiryNotice {
    pub tx: TxId,
    pub voter: NodeId,
    /// The partial signatures `voter` had released for `tx` when it
    /// promised, as (input, presignature), sorted: a request for one of
    /// those may still be answered elsewhere, so the promise covers the
    /// rest. Empty for a node that released nothing.
    pub released: Vec<(u32, PresigId)>,
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// The most releases one notice may list: a member consumes at most a few
/// presignatures per input before it is avoided, and a transaction has at
/// most a few hundred inputs. A longer list is refused, so one notice
/// costs bounded memory.
pub const MAX_RELEASED_PER_NOTICE: usize = 1024;

impl ExpiryNotice {
    fn signing_bytes(tx: TxId, voter: NodeId, released: &[(u32, PresigId)], cluster_id: &str) -> Vec<u8> {
        let mut b = b"mpc-custody/v1/expiry".to_vec();
        b.extend_from_slice(&(cluster_id.len() as u32).to_be_bytes());
        b.extend_from_slice(cluster_id.as_bytes());
        b.extend_from_slice(&tx.0);
        b.extend_from_slice(&voter.0.to_be_bytes());
        b.extend_from_slice(&(released.len() as u32).to_be_bytes());
        for (input, presig) in released {
            b.extend_from_slice(&input.to_be_bytes());
            b.extend_from_slice(&presig.origin.0.to_be_bytes());
            b.extend_from_slice(&presig.seq.to_be_bytes());
        }
        b
    }

    pub fn sign(
        tx: TxId,
        voter: NodeId,
        mut released: Vec<(u32, PresigId)>,
        key: &SigningKey,
        cluster_id: &str,
    ) -> ExpiryNotice {
        released.sort();
        released.dedup();
        let signature = key.sign(&Self::signing_bytes(tx, voter, &released, cluster_id)).to_bytes();
        ExpiryNotice { tx, voter, released, signature }
    }

    /// Checks membership, the size of the release list and the signature
    /// against the member's vote key.
    pub fn verify(&self, cluster: &ClusterConfig) -> Result<(), VoteError> {
        let member = cluster.members.get(&self.voter).ok_or(VoteError::NotAMember(self.voter))?;
        if self.released.len() > MAX_RELEASED_PER_NOTICE {
            return Err(VoteError::TooManyReleases(self.voter, self.released.len()));
        }
        let key = VerifyingKey::from_bytes(&member.vote_key).map_err(|_| VoteError::BadSignature(self.voter))?;
        let bytes = Self::signing_bytes(self.tx, self.voter, &self.released, &cluster.cluster_id);
        key.verify(&bytes, &Signature::from_bytes(&self.signature)).map_err(|_| VoteError::BadSignature(self.voter))
    }
}

/// Two different valid votes of one member for one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equivocation {
    pub voter: NodeId,
    pub tx: TxId,
    pub first: SignedVote,
    pub second: SignedVote,
}

/// `qa` distinct valid approve votes for one transaction: what a signer
/// checks before it releases a partial signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalCertificate {
    pub tx: TxId,
    pub votes: Vec<SignedVote>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CertificateError {
    #[error("certificate is for another transaction")]
    WrongTransaction,
    #[error("certificate has {have} distinct valid approvals, {need} needed")]
    TooFewApprovals { have: usize, need: usize },
    #[error("certificate vote invalid: {0}")]
    BadVote(VoteError),
}

impl ApprovalCertificate {
    /// Verifies every vote, ignores duplicates and votes from members known to
    /// have equivocated on this transaction, and requires `qa` approvals.
    pub fn verify(
        &self,
        tx: TxId,
        cluster: &ClusterConfig,
        equivocators: &BTreeSet<NodeId>,
    ) -> Result<(), CertificateError> {
        let mut approvers = BTreeSet::new();
        for v in &self.votes {
            if v.body.tx != tx || self.tx != tx {
                return Err(CertificateError::WrongTransaction);
            }
            v.verify(cluster).map_err(CertificateError::BadVote)?;
            if v.body.decision.is_approve() && !equivocators.contains(&v.body.voter) {
                approvers.insert(v.body.voter);
            }
        }
        let need = cluster.approve_quorum as usize;
        if approvers.len() < need {
            return Err(CertificateError::TooFewApprovals { have: approvers.len(), need });
        }
        Ok(())
    }
}

/// Outcome the votes certify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certified {
    Approved(ApprovalCertificate),
    Rejected(Vec<SignedVote>),
}

/// What adding a vote to the tally changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TallyEvent {
    /// A vote not seen before; it should be persisted.
    Recorded,
    /// The exact vote was already known.
    Duplicate,
    /// The voter signed a second, different vote: evidence.
    Equivocation(Box<Equivocation>),
    /// The voter already equivocated; the vote is ignored.
    IgnoredEquivocator,
}

/// The votes one node has seen for one transaction. Only verified votes
/// reach it.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    votes: BTreeMap<NodeId, SignedVote>,
    equivocators: BTreeSet<NodeId>,
    /// Planted bug only: keep counting a member's first vote after it
    /// equivocated.
    pub(crate) count_equivocators: bool,
}

impl Tally {
    pub fn add(&mut self, vote: SignedVote) -> TallyEvent {
        let voter = vote.body.voter;
        if self.equivocators.contains(&voter) {
            return TallyEvent::IgnoredEquivocator;
        }
        match self.votes.get(&voter) {
            None => {
                self.votes.insert(voter, vote);
                TallyEvent::Recorded
            }
            Some(existing) if *existing == vote => TallyEvent::Duplicate,
            Some(existing) => {
                let first = existing.clone();
                if !self.count_equivocators {
                    self.votes.remove(&voter);
                }
                self.equivocators.insert(voter);
                TallyEvent::Equivocation(Box::new(Equivocation { voter, tx: vote.body.tx, first, second: vote }))
            }
        }
    }

    /// Marks a voter as an equivocator (used when evidence is recovered).
    pub fn mark_equivocator(&mut self, voter: NodeId) {
        if !self.count_equivocators {
            self.votes.remove(&voter);
        }
        self.equivocators.insert(voter);
    }

    pub fn equivocators(&self) -> &BTreeSet<NodeId> {
        &self.equivocators
    }

    pub fn vote_of(&self, voter: NodeId) -> Option<&SignedVote> {
        self.votes.get(&voter)
    }

    pub fn approvals(&self) -> usize {
        self.votes.values().filter(|v| v.body.decision.is_approve()).count()
    }

    pub fn rejections(&self) -> usize {
        self.votes.values().filter(|v| !v.body.decision.is_approve()).count()
    }

    /// The outcome the counted votes certify, if any. Approval is checked
    /// first, but the quorum rules make both at once impossible.
    pub fn certified(&self, tx: TxId, qa: u16, qr: u16) -> Option<Certified> {
        if self.approvals() >= qa as usize {
            let votes =
                self.votes.values().filter(|v| v.body.decision.is_approve()).take(qa as usize).cloned().collect();
            return Some(Certified::Approved(ApprovalCertificate { tx, votes }));
        }
        if self.rejections() >= qr as usize {
            let votes = self.votes.values().filter(|v| !v.body.decision.is_approve()).cloned().collect();
            return Some(Certified::Rejected(votes));
        }
        None
    }
}

pub(crate) mod sig_bytes {
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: Vec<u8> = serde_bytes_vec(d)?;
        v.try_into().map_err(|_| serde::de::Error::custom("expected 64 signature bytes"))
    }
    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MemberInfo, PoolConfig, Timeouts};
    use proptest::prelude::*;

    fn key(i: u16) -> SigningKey {
        SigningKey::from_bytes(&[i as u8; 32])
    }

    fn cluster() -> ClusterConfig {
        ClusterConfig {
            cluster_id: "c".into(),
            members: (1..=5).map(|i| (NodeId(i), MemberInfo { vote_key: key(i).verifying_key().to_bytes() })).collect(),
            threshold: 3,
            approve_quorum: 3,
            reject_quorum: 4,
            byzantine_tolerance: 1,
            network: bitcoin::Network::Regtest,
            pool: PoolConfig::default(),
            timeouts: Timeouts::default(),
        }
    }

    fn vote(i: u16, tx: TxId, approve: bool) -> SignedVote {
        let decision = if approve { Decision::Approve } else { Decision::Reject("no".into()) };
        SignedVote::sign(VoteBody { tx, voter: NodeId(i), decision }, &key(i), "c")
    }

    #[test]
    fn a_valid_vote_verifies_and_a_tampered_one_does_not() {
        let c = cluster();
        let v = vote(2, TxId([7; 32]), true);
        assert_eq!(v.verify(&c), Ok(()));
        let mut flipped = v.clone();
        flipped.body.decision = Decision::Reject("flipped".into());
        assert_eq!(flipped.verify(&c), Err(VoteError::BadSignature(NodeId(2))));
        let mut retargeted = v.clone();
        retargeted.body.tx = TxId([8; 32]);
        assert_eq!(retargeted.verify(&c), Err(VoteError::BadSignature(NodeId(2))));
        let mut impersonated = v;
        impersonated.body.voter = NodeId(3);
        assert_eq!(impersonated.verify(&c), Err(VoteError::BadSignature(NodeId(3))));
    }

    #[test]
    fn a_vote_from_another_cluster_or_non_member_is_refused() {
        let c = cluster();
        let body = VoteBody { tx: TxId([1; 32]), voter: NodeId(1), decision: Decision::Approve };
        let other_cluster = SignedVote::sign(body, &key(1), "other");
        assert_eq!(other_cluster.verify(&c), Err(VoteError::BadSignature(NodeId(1))));
        let stranger = vote(9, TxId([1; 32]), true);
        assert_eq!(stranger.verify(&c), Err(VoteError::NotAMember(NodeId(9))));
    }

    #[test]
    fn equivocation_is_detected_kept_as_evidence_and_discounted() {
        let tx = TxId([3; 32]);
        let mut tally = Tally::default();
        assert_eq!(tally.add(vote(1, tx, true)), TallyEvent::Recorded);
        assert_eq!(tally.add(vote(1, tx, true)), TallyEvent::Duplicate);
        match tally.add(vote(1, tx, false)) {
            TallyEvent::Equivocation(e) => {
                assert_eq!(e.voter, NodeId(1));
                assert!(e.first.body.decision.is_approve());
                assert!(!e.second.body.decision.is_approve());
            }
            other => panic!("expected equivocation, got {other:?}"),
        }
        assert_eq!(tally.add(vote(1, tx, true)), TallyEvent::IgnoredEquivocator);
        assert_eq!(tally.approvals(), 0);
        tally.add(vote(2, tx, true));
        tally.add(vote(3, tx, true));
        assert_eq!(tally.certified(tx, 3, 4), None, "the equivocator's approval must not count");
        tally.add(vote(4, tx, true));
        let Some(Certified::Approved(cert)) = tally.certified(tx, 3, 4) else { panic!("approval expected") };
        assert_eq!(cert.verify(tx, &cluster(), &BTreeSet::new()), Ok(()));
        let equivocators: BTreeSet<NodeId> = [NodeId(2)].into();
        assert!(cert.verify(tx, &cluster(), &equivocators).is_err(), "a signer that knows 2 equivocated refuses");
    }

    #[test]
    fn certificate_with_duplicate_voters_is_refused() {
        let tx = TxId([4; 32]);
        let v = vote(1, tx, true);
        let cert = ApprovalCertificate { tx, votes: vec![v.clone(), v.clone(), v] };
        assert_eq!(
            cert.verify(tx, &cluster(), &BTreeSet::new()),
            Err(CertificateError::TooFewApprovals { have: 1, need: 3 })
        );
    }

    proptest! {
        /// Two honest observers that receive any subsets of the votes, in any
        /// order, including both votes of one equivocating member, never
        /// certify conflicting outcomes (qa = 3, qr = 4, n = 5, f = 1).
        #[test]
        fn observers_never_certify_conflicting_outcomes(
            honest in proptest::collection::vec(any::<bool>(), 4),
            byzantine in 1u16..=5,
            seen_a in proptest::collection::vec(any::<bool>(), 6),
            seen_b in proptest::collection::vec(any::<bool>(), 6),
            order in any::<u64>(),
        ) {
            let tx = TxId([9; 32]);
            let mut all = Vec::new();
            let mut h = honest.iter();
            for i in 1..=5u16 {
                if i == byzantine {
                    all.push(vote(i, tx, true));
                    all.push(vote(i, tx, false));
                } else {
                    all.push(vote(i, tx, *h.next().unwrap()));
                }
            }
            let outcome = |seen: &[bool], rot: usize| {
                let mut votes: Vec<_> = all.iter().zip(seen).filter(|(_, s)| **s).map(|(v, _)| v.clone()).collect();
                let len = votes.len().max(1);
                votes.rotate_left(rot % len);
                let mut t = Tally::default();
                for v in votes { t.add(v); }
                t.certified(tx, 3, 4)
            };
            let a = outcome(&seen_a, order as usize);
            let b = outcome(&seen_b, (order >> 32) as usize);
            let conflict = matches!((&a, &b), (Some(Certified::Approved(_)), Some(Certified::Rejected(_)))
                | (Some(Certified::Rejected(_)), Some(Certified::Approved(_))));
            prop_assert!(!conflict, "a={:?} b={:?}", a.is_some(), b.is_some());
        }
    }
}
