//! The protocol engine: hosts cggmp24's round-based state machines and runs
//! their heavy rounds (aux info, keygen, presigning) outside [`crate::Node`].
//!
//! The node never calls into a state machine itself. It emits
//! [`ComputeJob`]s; the shell hands them to an engine and feeds each
//! [`ComputeResult`] back as an input. The shell decides where the engine
//! runs: inline in the simulator (deterministic, one thread) or on worker
//! threads in production, so a presigning round never stalls votes or
//! signing. Everything the engine does is a function of the jobs it receives
//! and the seeds inside them, so it replays exactly.
//!
//! cggmp24's state machines are not `Send` (round-based shares state through
//! `Rc`), so an engine is created on the thread that will run it, and only
//! jobs and results (plain data) cross threads.

use crate::ids::SessionId;
use crate::secret::Secret;
use cggmp24::generic_ec::{coords::AlwaysHasAffineX, NonZero, Point, Scalar};
use cggmp24::round_based::state_machine::{ProceedResult, StateMachine};
use cggmp24::round_based::{Incoming, MessageDestination, MessageType};
use cggmp24::signing::{Presignature, PresignatureCommitment, PresignaturePublicData};
use cggmp24::supported_curves::Secp256k1;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The curve of every key in this product.
pub type Curve = Secp256k1;
/// The cggmp24 security level. Production uses the library's 128-bit level.
#[cfg(not(feature = "reduced-security-test-only"))]
pub type Level = cggmp24::security_level::SecurityLevel128;
/// The cggmp24 security level: the TEST-ONLY [`ReducedTestOnlyLevel`],
/// because mpc-core was built with `reduced-security-test-only`.
#[cfg(feature = "reduced-security-test-only")]
pub type Level = ReducedTestOnlyLevel;

/// True when this build runs cggmp24 at the insecure [`ReducedTestOnlyLevel`]
/// (feature `reduced-security-test-only`). The node binary refuses to start
/// when it is set, so a production binary can never run at that level even if
/// a build unified the feature in.
pub const REDUCED_SECURITY_TEST_ONLY: bool = cfg!(feature = "reduced-security-test-only");

/// INSECURE, TEST ONLY: a smaller cggmp24 security level so simulations and
/// tests can run the real protocol code (aux info, presigning) about three
/// times faster (DESIGN §5, "Two crypto levels"). RSA primes of 1024 bits
/// (a 2047-bit Paillier modulus instead of 3071), epsilon 512, ell 256,
/// ell' 768; kappa as in `SecurityLevel128`. It gives no meaningful
/// security and exists only behind the `reduced-security-test-only` feature,
/// which no production build enables; the node binary refuses to run with it.
/// Measured to work; a 1535-bit modulus with epsilon 256 hung in presigning,
/// so do not go lower.
#[cfg(feature = "reduced-security-test-only")]
#[derive(Clone)]
pub struct ReducedTestOnlyLevel;
#[cfg(feature = "reduced-security-test-only")]
cggmp24::security_level::define_security_level!(ReducedTestOnlyLevel {
    kappa_bits: 256,
    rsa_prime_bitlen: 1024,
    rsa_pubkey_bitlen: 2047,
    epsilon: 512,
    ell: 256,
    ell_prime: 768,
    m: 128,
});
pub type KeyShare = cggmp24::KeyShare<Curve, Level>;
pub type IncompleteKeyShare = cggmp24::IncompleteKeyShare<Curve>;
pub type AuxInfo = cggmp24::key_share::AuxInfo<Level>;
pub type SafePrimes = cggmp24::PregeneratedPrimes<Level>;

/// This node's share of a presignature plus the public commitments every
/// signer holds, which let a coordinator check each partial signature.
#[derive(Clone, Serialize, Deserialize)]
pub struct PresigShare {
    pub presignature: Presignature<Curve>,
    pub public: PresigPublic,
}

/// Serialisable form of cggmp24's `PresignaturePublicData`: `Gamma` and, per
/// signer (in signing-index order), the commitments `(Delta_j, S_j)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresigPublic {
    pub gamma: Vec<u8>,
    pub commitments: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PresigPublic {
    fn from_library(p: &PresignaturePublicData<Curve>) -> Self {
        PresigPublic {
            gamma: p.Gamma.to_bytes(true).to_vec(),
            commitments: p
                .commitments
                .iter()
                .map(|c| (c.tilde_Delta.to_bytes(true).to_vec(), c.tilde_S.to_bytes(true).to_vec()))
                .collect(),
        }
    }

    pub fn to_library(&self) -> Option<PresignaturePublicData<Curve>> {
        let gamma = NonZero::from_point(Point::<Curve>::from_bytes(&self.gamma).ok()?)?;
        let commitments = self
            .commitments
            .iter()
            .map(|(d, s)| {
                Some(PresignatureCommitment {
                    tilde_Delta: Point::from_bytes(d).ok()?,
                    tilde_S: Point::from_bytes(s).ok()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PresignaturePublicData { Gamma: gamma, commitments })
    }

    /// Checks signer `j`'s partial signature `sigma` for message scalar `m`
    /// against its commitments: `sigma * Gamma == m * Delta_j + r * S_j`,
    /// the same equation cggmp24's `combine` checks for all signers at once.
    /// Checking one by one names the signer that cheated.
    pub fn partial_is_valid(&self, j: usize, sigma: &Scalar<Curve>, m: &Scalar<Curve>) -> bool {
        let Some(public) = self.to_library() else { return false };
        let Some(c) = public.commitments.get(j) else { return false };
        let r = public.Gamma.x().to_scalar();
        *sigma * public.Gamma == *m * c.tilde_Delta + r * c.tilde_S
    }
}

/// What a finished session produced.
pub enum ProtocolOutput {
    AuxInfo(Secret<AuxInfo>),
    Keygen(Secret<IncompleteKeyShare>),
    Presign(Secret<PresigShare>),
}

impl std::fmt::Debug for ProtocolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolOutput::AuxInfo(_) => f.write_str("AuxInfo(<secret>)"),
            ProtocolOutput::Keygen(_) => f.write_str("Keygen(<secret>)"),
            ProtocolOutput::Presign(_) => f.write_str("Presign(<secret>)"),
        }
    }
}

/// Which protocol a session runs, with the secret inputs it needs.
pub enum SessionKind {
    AuxInfo {
        i: u16,
        n: u16,
        primes: Secret<SafePrimes>,
        /// See [`crate::NodeConfig::multiexp_tables`].
        multiexp_tables: bool,
    },
    Keygen {
        i: u16,
        n: u16,
        t: u16,
    },
    /// `i` is the signing index (position in `parties_at_keygen`).
    Presign {
        i: u16,
        parties_at_keygen: Vec<u16>,
        key_share: Arc<Secret<KeyShare>>,
    },
}

/// Work for an engine. Plain data: it may cross threads.
pub enum ComputeJob {
    Start {
        session: SessionId,
        execution_id: Vec<u8>,
        seed: [u8; 32],
        kind: SessionKind,
    },
    /// A protocol message from party `from` (protocol index) of the session.
    Deliver {
        session: SessionId,
        from: u16,
        broadcast: bool,
        payload: Vec<u8>,
    },
    Abort {
        session: SessionId,
    },
}

impl ComputeJob {
    pub fn session(&self) -> SessionId {
        match self {
            ComputeJob::Start { session, .. } | ComputeJob::Deliver { session, .. } | ComputeJob::Abort { session } => {
                *session
            }
        }
    }
}

impl std::fmt::Debug for ComputeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComputeJob::Start { session, .. } => write!(f, "Start({session})"),
            ComputeJob::Deliver { session, from, payload, .. } => {
                write!(f, "Deliver({session}, from {from}, {} bytes)", payload.len())
            }
            ComputeJob::Abort { session } => write!(f, "Abort({session})"),
        }
    }
}

/// A protocol message to send: to one party (protocol index) or to all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolSend {
    pub to: Option<u16>,
    pub payload: Vec<u8>,
}

/// What an engine reports after a job.
#[derive(Debug)]
pub struct ComputeResult {
    pub session: SessionId,
    pub sends: Vec<ProtocolSend>,
    pub finished: Option<Result<ProtocolOutput, ProtocolFailure>>,
}

/// Why a session ended without output, and whom it is pinned on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (blamed parties: {blamed:?})")]
pub struct ProtocolFailure {
    /// The error and its sources, for the operator.
    pub reason: String,
    /// Protocol indices of the parties at fault, where that is known: the
    /// sender of a message that does not decode or that the state machine
    /// refuses (the transport authenticated it, and every honest member
    /// sends what this code encodes), or the parties cggmp24 blames when it
    /// aborts on an invalid proof. Empty when nobody can be named.
    pub blamed: Vec<u16>,
}

impl ProtocolFailure {
    fn unattributed(reason: String) -> Self {
        ProtocolFailure { reason, blamed: Vec::new() }
    }

    /// A failure cggmp24 reported. Its abort reasons (and the `AbortBlame`s
    /// naming the faulty parties) sit in private types, so the parties are
    /// read off the error's `Debug` form, the only place the library shows
    /// them; the sources' messages make the reason.
    fn from_library<E: std::error::Error>(e: &E) -> Self {
        let reason = crate::error_text::with_sources(e);
        ProtocolFailure { reason, blamed: blamed_in_debug(&format!("{e:?}")) }
    }
}

/// The `faulty_party` indices in the `Debug` form of a cggmp24 error,
/// distinct, in order.
fn blamed_in_debug(debug: &str) -> Vec<u16> {
    const FIELD: &str = "faulty_party: ";
    let mut blamed: Vec<u16> = debug
        .match_indices(FIELD)
        .filter_map(|(at, _)| {
            let rest = &debug[at + FIELD.len()..];
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            rest[..digits].parse().ok()
        })
        .collect();
    blamed.sort_unstable();
    blamed.dedup();
    blamed
}

/// One running protocol, with its message type erased.
trait RunningSession {
    fn deliver(&mut self, from: u16, broadcast: bool, payload: &[u8]) -> Result<(), String>;
    fn drive(&mut self) -> (Vec<ProtocolSend>, Option<Result<ProtocolOutput, ProtocolFailure>>);
}

struct Running<SM, F> {
    machine: SM,
    next_msg_id: u64,
    convert: F,
}

impl<SM, M, O, Er, F> RunningSession for Running<SM, F>
where
    SM: StateMachine<Msg = M, Output = Result<O, Er>>,
    M: Serialize + DeserializeOwned,
    Er: std::error::Error,
    F: Fn(O) -> ProtocolOutput,
{
    fn deliver(&mut self, from: u16, broadcast: bool, payload: &[u8]) -> Result<(), String> {
        let msg: M = bincode::deserialize(payload).map_err(|e| format!("undecodable protocol message: {e}"))?;
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        let msg_type = if broadcast { MessageType::Broadcast } else { MessageType::P2P };
        self.machine
            .received_msg(Incoming { id, sender: from, msg_type, msg })
            .map_err(|_| "state machine refused the message".to_string())
    }

    fn drive(&mut self) -> (Vec<ProtocolSend>, Option<Result<ProtocolOutput, ProtocolFailure>>) {
        let mut sends = Vec::new();
        loop {
            match self.machine.proceed() {
                ProceedResult::SendMsg(out) => {
                    let to = match out.recipient {
                        MessageDestination::AllParties => None,
                        MessageDestination::OneParty(p) => Some(p),
                    };
                    match bincode::serialize(&out.msg) {
                        Ok(payload) => sends.push(ProtocolSend { to, payload }),
                        Err(e) => {
                            let failure = ProtocolFailure::unattributed(format!("cannot encode message: {e}"));
                            return (sends, Some(Err(failure)));
                        }
                    }
                }
                ProceedResult::NeedsOneMoreMessage => return (sends, None),
                ProceedResult::Yielded => continue,
                ProceedResult::Output(Ok(o)) => return (sends, Some(Ok((self.convert)(o)))),
                ProceedResult::Output(Err(e)) => return (sends, Some(Err(ProtocolFailure::from_library(&e)))),
                ProceedResult::Error(e) => return (sends, Some(Err(ProtocolFailure::unattributed(e.to_string())))),
            }
        }
    }
}

/// Hosts running sessions. Create one per thread that runs protocol work.
#[derive(Default)]
pub struct Engine {
    sessions: BTreeMap<SessionId, Box<dyn RunningSession>>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn running(&self) -> usize {
        self.sessions.len()
    }

    /// Runs one job to the point where the session needs more messages or ends.
    pub fn run(&mut self, job: ComputeJob) -> ComputeResult {
        let session = job.session();
        let empty = ComputeResult { session, sends: Vec::new(), finished: None };
        match job {
            ComputeJob::Abort { session } => {
                self.sessions.remove(&session);
                empty
            }
            ComputeJob::Start { session, execution_id, seed, kind } => {
                if self.sessions.contains_key(&session) {
                    return empty;
                }
                let running = start_session(execution_id, seed, kind);
                self.sessions.insert(session, running);
                self.drive(session)
            }
            ComputeJob::Deliver { session, from, broadcast, payload } => {
                let Some(running) = self.sessions.get_mut(&session) else {
                    // Aborted, finished or never started here: nothing to do.
                    return empty;
                };
                if let Err(e) = running.deliver(from, broadcast, &payload) {
                    self.sessions.remove(&session);
                    return ComputeResult {
                        session,
                        sends: Vec::new(),
                        finished: Some(Err(ProtocolFailure {
                            reason: format!("party {from}: {e}"),
                            blamed: vec![from],
                        })),
                    };
                }
                self.drive(session)
            }
        }
    }

    fn drive(&mut self, session: SessionId) -> ComputeResult {
        let Some(running) = self.sessions.get_mut(&session) else {
            return ComputeResult { session, sends: Vec::new(), finished: None };
        };
        let (sends, finished) = running.drive();
        if finished.is_some() {
            self.sessions.remove(&session);
        }
        ComputeResult { session, sends, finished }
    }
}

fn start_session(execution_id: Vec<u8>, seed: [u8; 32], kind: SessionKind) -> Box<dyn RunningSession> {
    use cggmp24::round_based::state_machine::wrap_protocol;
    match kind {
        SessionKind::AuxInfo { i, n, primes, multiexp_tables } => {
            let machine = wrap_protocol(move |party| async move {
                let mut rng = ChaCha20Rng::from_seed(seed);
                let eid = cggmp24::ExecutionId::new(&execution_id);
                cggmp24::aux_info_gen::<Level>(eid, i, n, primes.into_inner())
                    .precompute_multiexp_tables(multiexp_tables)
                    .start(&mut rng, party)
                    .await
            });
            Box::new(Running { machine, next_msg_id: 0, convert: |a| ProtocolOutput::AuxInfo(Secret::new(a)) })
        }
        SessionKind::Keygen { i, n, t } => {
            let machine = wrap_protocol(move |party| async move {
                let mut rng = ChaCha20Rng::from_seed(seed);
                let eid = cggmp24::ExecutionId::new(&execution_id);
                cggmp24::keygen::<Curve>(eid, i, n)
                    .set_threshold(t)
                    .set_security_level::<Level>()
                    .start(&mut rng, party)
                    .await
            });
            Box::new(Running { machine, next_msg_id: 0, convert: |k| ProtocolOutput::Keygen(Secret::new(k)) })
        }
        SessionKind::Presign { i, parties_at_keygen, key_share } => {
            let machine = wrap_protocol(move |party| async move {
                let mut rng = ChaCha20Rng::from_seed(seed);
                let eid = cggmp24::ExecutionId::new(&execution_id);
                cggmp24::signing(eid, i, &parties_at_keygen, key_share.expose())
                    .generate_presignature(&mut rng, party)
                    .await
            });
            Box::new(Running {
                machine,
                next_msg_id: 0,
                convert: |(presignature, public): (Presignature<Curve>, PresignaturePublicData<Curve>)| {
                    ProtocolOutput::Presign(Secret::new(PresigShare {
                        presignature,
                        public: PresigPublic::from_library(&public),
                    }))
                },
            })
        }
    }
}

#[cfg(test)]
mod blame_tests {
    use super::blamed_in_debug;

    #[test]
    fn faulty_parties_are_read_off_the_debug_form() {
        // The shape cggmp24 0.7.0-alpha.3 prints for an abort with blame.
        let debug = "SigningError(Aborted(EncProofOfK([(AbortBlame { faulty_party: 2, data_message: 7, \
                     proof_message: 7 }, InvalidProof), (AbortBlame { faulty_party: 0, data_message: 1, \
                     proof_message: 1 }, InvalidProof), (AbortBlame { faulty_party: 2, data_message: 9, \
                     proof_message: 9 }, InvalidProof)])))";
        assert_eq!(blamed_in_debug(debug), vec![0, 2]);
        assert_eq!(blamed_in_debug("SigningError(Aborted(MismatchedDelta))"), Vec::<u16>::new());
        assert_eq!(blamed_in_debug("faulty_party: x, faulty_party: 65536"), Vec::<u16>::new());
    }
}

#[cfg(test)]
mod level_tests {
    use super::*;
    use cggmp24::security_level::SecurityLevel;

    /// A default build runs cggmp24's 128-bit level: 1536-bit primes, a
    /// 3071-bit Paillier modulus.
    #[cfg(not(feature = "reduced-security-test-only"))]
    #[test]
    fn production_builds_use_security_level_128() {
        const { assert!(!REDUCED_SECURITY_TEST_ONLY) };
        assert_eq!(std::any::type_name::<Level>(), std::any::type_name::<cggmp24::security_level::SecurityLevel128>());
        assert_eq!((Level::RSA_PRIME_BITLEN, Level::RSA_PUBKEY_BITLEN), (1536, 3071));
    }

    #[cfg(feature = "reduced-security-test-only")]
    #[test]
    fn reduced_builds_use_the_test_only_level() {
        const { assert!(REDUCED_SECURITY_TEST_ONLY) };
        assert_eq!((Level::RSA_PRIME_BITLEN, Level::RSA_PUBKEY_BITLEN), (1024, 2047));
        assert_eq!((Level::EPSILON, Level::ELL, Level::ELL_PRIME), (512, 256, 768));
    }
}
