//! TEST-ONLY, INSECURE: presignatures dealt from a public seed instead of
//! made by cggmp24's presigning protocol, so a benchmark can push thousands
//! of transactions through the real core without paying ~3 s of CPU per
//! presignature.
//!
//! A dealt presignature has exactly the shape the protocol's output has
//! (`Gamma`, each signer's `tilde_k` and `tilde_chi`, the commitments
//! `(tilde_Delta_j, tilde_S_j)` every signer holds), so the core's pool,
//! signing, partial-signature checks and the combined signature's
//! verification run unchanged on it. What is lost is all of its secrecy:
//! the nonce `kappa` is a hash of the execution id, so anyone who knows the
//! execution id knows the nonce and, from one partial signature
//! `sigma_i = tilde_k_i * m + r * tilde_chi_i`, recovers
//! `tilde_chi_i = lambda_i * x_i / kappa`, hence the key share `x_i`. Three
//! partial signatures give away the whole key. Nothing outside benchmarks
//! and tests may ever run a [`DealingEngine`].
//!
//! How it is dealt, for a session with execution id `eid` and signers
//! `parties_at_keygen` (keygen indices, in signing order `j = 0..t`):
//!
//! - `kappa = H(tag, "kappa", eid, counter)`, the first nonzero one;
//!   `Gamma = kappa * G` (the nonce point `R` of the final signature).
//! - `tilde_k_j = H(tag, "tilde_k", eid, j)` for `j < t - 1`, and the last
//!   one `kappa^-1 - sum(others)`: additive shares of `kappa^-1`.
//! - `tilde_chi_j = lambda_j * x_j * kappa^-1`, with `lambda_j` the Lagrange
//!   coefficient at zero of signer `j` over the signers' evaluation points.
//!   Only signer `j` knows `x_j`, but everyone knows
//!   `tilde_S_j = tilde_chi_j * Gamma = lambda_j * X_j` and
//!   `tilde_Delta_j = tilde_k_j * Gamma`.
//!
//! Summed over the signers, `sigma = (m + r * x) / kappa` with `r = Gamma.x`:
//! a valid ECDSA signature under the group key. Every signer computes its own
//! share and the same public data independently, with no messages.

use cggmp24::generic_ec::{NonZero, Point, Scalar, SecretScalar};
use cggmp24::signing::Presignature;
use mpc_core::engine::{
    ComputeJob, ComputeResult, Curve, KeyShare, PresigPublic, PresigShare, ProtocolOutput, SessionKind,
};
use mpc_core::{Engine, Secret};
use sha2::{Digest, Sha256};

/// Domain tag of every hash a dealt presignature is derived from.
const TAG: &[u8] = b"mpc-sim/TEST-ONLY-INSECURE/dealt-presignature/v1";

/// Why a presignature could not be dealt: the arguments do not describe a
/// signer set of this key share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DealError {
    #[error("signer set has {got} members, the key needs {threshold}")]
    WrongSignerCount { got: usize, threshold: usize },
    #[error("signing index {i} is outside the signer set of {t}")]
    IndexOutOfRange { i: u16, t: usize },
    #[error("keygen index {0} is not a member of this key")]
    UnknownParty(u16),
    #[error("signing index {i} names keygen index {named}, but this share is keygen index {mine}")]
    NotMyShare { i: u16, named: u16, mine: u16 },
    #[error("two signers share an evaluation point")]
    RepeatedSigner,
}

/// A scalar from a domain-separated hash of `label`, the execution id and a
/// counter (length-prefixed, so no two argument lists hash alike).
fn hashed_scalar(label: &[u8], execution_id: &[u8], counter: u64) -> Scalar<Curve> {
    let digest = Sha256::new()
        .chain_update(TAG)
        .chain_update((label.len() as u64).to_be_bytes())
        .chain_update(label)
        .chain_update((execution_id.len() as u64).to_be_bytes())
        .chain_update(execution_id)
        .chain_update(counter.to_be_bytes())
        .finalize();
    Scalar::from_be_bytes_mod_order(digest)
}

/// The session's nonce: nonzero, the same at every signer, different per
/// execution id. INSECURE: anyone who knows the execution id knows it.
fn kappa(execution_id: &[u8]) -> NonZero<Scalar<Curve>> {
    (0u64..)
        .find_map(|counter| NonZero::from_scalar(hashed_scalar(b"kappa", execution_id, counter)))
        .expect("a nonzero hash turns up (each try is zero with probability 2^-256)")
}

/// The Lagrange coefficient at zero of point `j` among `points`:
/// `prod_{m != j} x_m / (x_m - x_j)`. `None` if two points coincide.
fn lagrange_at_zero(j: usize, points: &[Scalar<Curve>]) -> Option<Scalar<Curve>> {
    let x_j = points[j];
    let mut num = Scalar::<Curve>::one();
    let mut den = Scalar::<Curve>::one();
    for (m, x_m) in points.iter().enumerate().filter(|(m, _)| *m != j) {
        debug_assert_ne!(m, j);
        num *= x_m;
        den *= *x_m - x_j;
    }
    Some(num * den.invert()?)
}

/// The signing-order Lagrange coefficients of `parties_at_keygen`, the way
/// cggmp24 0.7.0-alpha.3 maps a t-of-n key to t additive shares: over the
/// VSS evaluation points `I` of the signers (all ones for an n-of-n key,
/// which has no VSS setup).
fn lagrange_coefficients(key_share: &KeyShare, parties_at_keygen: &[u16]) -> Result<Vec<Scalar<Curve>>, DealError> {
    let Some(setup) = &key_share.core.vss_setup else {
        return Ok(vec![Scalar::one(); parties_at_keygen.len()]);
    };
    let points = parties_at_keygen
        .iter()
        .map(|p| setup.I.get(usize::from(*p)).map(|x| *x.as_ref()).ok_or(DealError::UnknownParty(*p)))
        .collect::<Result<Vec<Scalar<Curve>>, _>>()?;
    (0..points.len()).map(|j| lagrange_at_zero(j, &points).ok_or(DealError::RepeatedSigner)).collect()
}

/// TEST-ONLY, INSECURE (see the module docs: whoever knows the execution id
/// reads every signer's key share off one partial signature).
///
/// Signer `i`'s share (`i` its signing index, a position in
/// `parties_at_keygen`) of the presignature of the session with
/// `execution_id`, and the public data every signer of that session derives
/// identically. `key_share` must be the share of keygen index
/// `parties_at_keygen[i]`.
pub fn dealt_presign(
    execution_id: &[u8],
    i: u16,
    parties_at_keygen: &[u16],
    key_share: &KeyShare,
) -> Result<PresigShare, DealError> {
    let t = parties_at_keygen.len();
    let n = key_share.core.public_shares.len();
    let threshold = key_share.core.vss_setup.as_ref().map_or(n, |s| usize::from(s.min_signers));
    if t != threshold {
        return Err(DealError::WrongSignerCount { got: t, threshold });
    }
    let Some(named) = parties_at_keygen.get(usize::from(i)).copied() else {
        return Err(DealError::IndexOutOfRange { i, t });
    };
    if named != key_share.core.i {
        return Err(DealError::NotMyShare { i, named, mine: key_share.core.i });
    }
    let public_shares = parties_at_keygen
        .iter()
        .map(|p| key_share.core.public_shares.get(usize::from(*p)).copied().ok_or(DealError::UnknownParty(*p)))
        .collect::<Result<Vec<NonZero<Point<Curve>>>, _>>()?;
    let lambda = lagrange_coefficients(key_share, parties_at_keygen)?;

    let kappa = kappa(execution_id);
    let kappa_inv: Scalar<Curve> = *kappa.invert().as_ref();
    let gamma: NonZero<Point<Curve>> = Point::generator() * kappa;

    // Additive shares of kappa^-1: hashed for all but the last signer.
    let mut tilde_k: Vec<Scalar<Curve>> =
        (0..t - 1).map(|j| hashed_scalar(b"tilde_k", execution_id, j as u64)).collect();
    let others: Scalar<Curve> = tilde_k.iter().sum();
    tilde_k.push(kappa_inv - others);

    let commitments = tilde_k
        .iter()
        .zip(lambda.iter().zip(&public_shares))
        .map(|(k_j, (lambda_j, x_j))| {
            let tilde_delta = *gamma * k_j;
            let tilde_s = *x_j * lambda_j;
            (tilde_delta.to_bytes(true).to_vec(), tilde_s.to_bytes(true).to_vec())
        })
        .collect();
    let public = PresigPublic { gamma: gamma.to_bytes(true).to_vec(), commitments };

    let x_i: &Scalar<Curve> = key_share.core.x.as_ref();
    let mut tilde_chi_i = lambda[usize::from(i)] * x_i * kappa_inv;
    let mut tilde_k_i = tilde_k[usize::from(i)];
    let presignature = Presignature {
        Gamma: gamma,
        tilde_k: SecretScalar::new(&mut tilde_k_i),
        tilde_chi: SecretScalar::new(&mut tilde_chi_i),
    };
    Ok(PresigShare { presignature, public })
}

/// TEST-ONLY, INSECURE: an engine that deals presignatures (see
/// [`dealt_presign`]) instead of running cggmp24's presigning protocol, and
/// runs every other job (aux info, keygen, their messages, aborts) on a real
/// [`Engine`]. Signing itself is untouched: the core signs with whatever
/// presignature its engine reported.
#[derive(Default)]
pub struct DealingEngine {
    real: Engine,
    dealt: u64,
}

impl DealingEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Presignature shares dealt so far.
    pub fn dealt(&self) -> u64 {
        self.dealt
    }

    /// Sessions running on the real engine.
    pub fn running(&self) -> usize {
        self.real.running()
    }

    /// Runs one job. A presigning session finishes in its start job, with
    /// no messages (a dealing error, which only a core bug could cause,
    /// finishes it as a failure); everything else goes to the real engine.
    pub fn run(&mut self, job: ComputeJob) -> ComputeResult {
        match job {
            ComputeJob::Start {
                session,
                execution_id,
                kind: SessionKind::Presign { i, parties_at_keygen, key_share },
                ..
            } => {
                let finished = match dealt_presign(&execution_id, i, &parties_at_keygen, key_share.expose()) {
                    Ok(share) => {
                        self.dealt += 1;
                        Ok(ProtocolOutput::Presign(Secret::new(share)))
                    }
                    Err(e) => Err(mpc_core::engine::ProtocolFailure {
                        reason: format!("TEST-ONLY dealer: {e}"),
                        blamed: Vec::new(),
                    }),
                };
                ComputeResult { session, sends: Vec::new(), finished: Some(finished) }
            }
            other => self.real.run(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cggmp24::signing::PartialSignature;
    use cggmp24::DataToSign;
    use mpc_core::{NodeId, PresigId, Record, SessionId};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// Each fixture node's key share, by keygen index.
    fn key_shares() -> BTreeMap<u16, KeyShare> {
        crate::fixtures::load_cluster(5)
            .expect("fixture cluster (see sim/src/fixtures.rs)")
            .into_iter()
            .map(|(id, records)| {
                let share = records
                    .into_iter()
                    .find_map(|r| match r {
                        Record::KeyShare { share, .. } => Some(share.into_inner()),
                        _ => None,
                    })
                    .expect("every fixture node holds a key share");
                (id.keygen_index(), share)
            })
            .collect()
    }

    fn eid(seq: u64) -> Vec<u8> {
        SessionId::Presign(PresigId { origin: NodeId(1), seq }).execution_id(crate::fixtures::FIXTURE_CLUSTER_ID)
    }

    /// Every signer's share of one session's presignature.
    fn deal_all(execution_id: &[u8], signers: &[u16], shares: &BTreeMap<u16, KeyShare>) -> Vec<PresigShare> {
        signers
            .iter()
            .enumerate()
            .map(|(i, p)| dealt_presign(execution_id, i as u16, signers, &shares[p]).expect("a valid signer set"))
            .collect()
    }

    fn group_key(shares: &BTreeMap<u16, KeyShare>) -> Point<Curve> {
        *shares[&0].core.shared_public_key
    }

    const SIGNERS: [u16; 3] = [0, 2, 4];

    #[test]
    fn dealt_partials_pass_their_checks_and_combine_to_a_valid_signature() {
        let shares = key_shares();
        let dealt = deal_all(&eid(1), &SIGNERS, &shares);
        assert!(dealt.windows(2).all(|w| w[0].public == w[1].public), "signers derived different public data");
        let data = DataToSign::<Curve>::digest::<Sha256>(b"a withdrawal");
        let partials: Vec<PartialSignature<Curve>> =
            dealt.iter().map(|d| d.presignature.clone().issue_partial_signature(data)).collect();
        let public = &dealt[0].public;
        for (j, p) in partials.iter().enumerate() {
            assert!(public.partial_is_valid(j, &p.sigma, &data.to_scalar()), "signer {j}'s partial is refused");
        }
        let library = public.to_library().expect("dealt public data decodes");
        let signature = PartialSignature::combine(&partials, &library, data).expect("partials combine");
        signature.verify(&group_key(&shares), &data).expect("the combined signature verifies under the group key");
    }

    #[test]
    fn every_signer_set_of_the_key_signs() {
        let shares = key_shares();
        let data = DataToSign::<Curve>::digest::<Sha256>(b"another withdrawal");
        for signers in [[0, 1, 2], [1, 3, 4], [2, 3, 4]] {
            let dealt = deal_all(&eid(7), &signers, &shares);
            let partials: Vec<_> = dealt.iter().map(|d| d.presignature.clone().issue_partial_signature(data)).collect();
            let library = dealt[0].public.to_library().unwrap();
            let signature = PartialSignature::combine(&partials, &library, data).expect("partials combine");
            assert!(signature.verify(&group_key(&shares), &data).is_ok(), "signer set {signers:?} failed");
        }
    }

    #[test]
    fn a_tampered_tilde_chi_fails_its_check_and_the_combination() {
        let shares = key_shares();
        let mut dealt = deal_all(&eid(2), &SIGNERS, &shares);
        let mut wrong = *dealt[1].presignature.tilde_chi.as_ref() + Scalar::one();
        dealt[1].presignature.tilde_chi = SecretScalar::new(&mut wrong);
        let data = DataToSign::<Curve>::digest::<Sha256>(b"a withdrawal");
        let partials: Vec<_> = dealt.iter().map(|d| d.presignature.clone().issue_partial_signature(data)).collect();
        let public = &dealt[0].public;
        let valid: Vec<bool> =
            partials.iter().enumerate().map(|(j, p)| public.partial_is_valid(j, &p.sigma, &data.to_scalar())).collect();
        assert_eq!(valid, [true, false, true], "the check must name the tampered signer, and only it");
        assert!(PartialSignature::combine(&partials, &public.to_library().unwrap(), data).is_none());
    }

    #[test]
    fn a_share_of_another_session_fails_its_check() {
        let shares = key_shares();
        let mut dealt = deal_all(&eid(3), &SIGNERS, &shares);
        dealt[2] = dealt_presign(&eid(4), 2, &SIGNERS, &shares[&4]).unwrap();
        let data = DataToSign::<Curve>::digest::<Sha256>(b"a withdrawal");
        let partials: Vec<_> = dealt.iter().map(|d| d.presignature.clone().issue_partial_signature(data)).collect();
        let public = &dealt[0].public;
        assert!(!public.partial_is_valid(2, &partials[2].sigma, &data.to_scalar()));
        assert!(PartialSignature::combine(&partials, &public.to_library().unwrap(), data).is_none());
    }

    #[test]
    fn two_sessions_get_different_nonces() {
        let shares = key_shares();
        let a = dealt_presign(&eid(5), 0, &SIGNERS, &shares[&0]).unwrap();
        let b = dealt_presign(&eid(6), 0, &SIGNERS, &shares[&0]).unwrap();
        assert_ne!(a.public.gamma, b.public.gamma);
        assert_ne!(a.public.commitments, b.public.commitments);
    }

    #[test]
    fn arguments_that_name_no_signer_of_this_share_are_refused() {
        let shares = key_shares();
        assert_eq!(
            dealt_presign(&eid(1), 1, &SIGNERS, &shares[&0]).err(),
            Some(DealError::NotMyShare { i: 1, named: 2, mine: 0 })
        );
        assert_eq!(
            dealt_presign(&eid(1), 0, &[0, 2], &shares[&0]).err(),
            Some(DealError::WrongSignerCount { got: 2, threshold: 3 })
        );
        assert_eq!(
            dealt_presign(&eid(1), 3, &SIGNERS, &shares[&0]).err(),
            Some(DealError::IndexOutOfRange { i: 3, t: 3 })
        );
        assert_eq!(dealt_presign(&eid(1), 0, &[0, 0, 2], &shares[&0]).err(), Some(DealError::RepeatedSigner));
    }

    #[test]
    fn the_engine_finishes_a_presigning_start_at_once_and_hands_the_rest_on() {
        let shares = key_shares();
        let mut engine = DealingEngine::new();
        let session = SessionId::Presign(PresigId { origin: NodeId(1), seq: 9 });
        let job = ComputeJob::Start {
            session,
            execution_id: eid(9),
            seed: [0; 32],
            kind: SessionKind::Presign {
                i: 1,
                parties_at_keygen: SIGNERS.to_vec(),
                key_share: Arc::new(Secret::new(shares[&2].clone())),
            },
        };
        let result = engine.run(job);
        assert_eq!(result.session, session);
        assert!(result.sends.is_empty());
        let Some(Ok(ProtocolOutput::Presign(share))) = result.finished else { panic!("no presignature dealt") };
        assert_eq!(share.expose().public, dealt_presign(&eid(9), 1, &SIGNERS, &shares[&2]).unwrap().public);
        assert_eq!(engine.dealt(), 1);
        let aborted = engine.run(ComputeJob::Abort { session });
        assert!(aborted.sends.is_empty() && aborted.finished.is_none());
        let stray = engine.run(ComputeJob::Deliver { session, from: 0, broadcast: true, payload: vec![1] });
        assert!(stray.finished.is_none(), "a message for no running session is ignored by the real engine");
    }
}
