//! Messages between nodes. The transport authenticates the sender; every
//! handler still checks that the sender is entitled to say what it says.

use crate::engine::PresigPublic;
use crate::ids::{DkgId, NodeId, PresigId, SessionId, TxId};
use crate::key_confirmation::DkgStatement;
use crate::vote::{ApprovalCertificate, Equivocation, ExpiryNotice, SignedVote};
use serde::{Deserialize, Serialize};

/// Transaction ids one list of a [`PeerMessage::SyncRequest`] holds at
/// most: a receiver reads no more than that from either list.
pub const SYNC_LIST_LIMIT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Join key generation attempt `dkg` (aux info if needed, then keygen).
    /// `abandoned` holds the announcer's signed abandonments of earlier
    /// attempts: a member holding a pending share of one of them may join.
    DkgStart {
        dkg: DkgId,
        abandoned: Vec<DkgStatement>,
    },
    /// A member confirms the key an attempt gave it, or abandons the
    /// attempt (see `key_confirmation.rs`).
    DkgStatement(DkgStatement),
    /// A cggmp24 protocol message for one session.
    Protocol {
        session: SessionId,
        broadcast: bool,
        payload: Vec<u8>,
    },
    /// The pool coordinator asks `signers` to generate presignature `id`,
    /// under lease term `term` (see `Input::Leadership`).
    PresignStart {
        id: PresigId,
        signers: Vec<NodeId>,
        term: u64,
    },
    /// The sender holds its share of `id`, with these public commitments.
    PresigReady {
        id: PresigId,
        signers: Vec<NodeId>,
        public: PresigPublic,
    },
    /// The initiator gave up on `id`: signers discard their share.
    PresigAbandon {
        id: PresigId,
    },
    /// A transaction proposal: the PSBT exactly as submitted.
    Proposal {
        psbt: Vec<u8>,
    },
    Vote(SignedVote),
    /// Sign input `input` of `tx` with presignature `presig`.
    SigningRequest {
        tx: TxId,
        input: u32,
        presig: PresigId,
        certificate: ApprovalCertificate,
    },
    SigningResponse {
        tx: TxId,
        input: u32,
        presig: PresigId,
        result: Result<PartialSig, SigningRefusal>,
    },
    /// The finished transaction, for every node to verify and record.
    TxSigned {
        tx: TxId,
        raw_tx: Vec<u8>,
        presigs: Vec<PresigId>,
    },
    /// Catch-up: send me what you know of transactions other than
    /// `known_final` (proposal, signed votes, signed result), and how those
    /// in `open` ended if they did. The requester verifies all of it. Each
    /// list holds at most [`SYNC_LIST_LIMIT`] ids.
    SyncRequest {
        known_final: Vec<TxId>,
        open: Vec<TxId>,
    },
    /// Two different signed votes of one member for one transaction. Every
    /// node that finds an equivocation sends it to all, so each honest node
    /// stops counting the equivocator, including a coordinator whose
    /// certificate still relies on it.
    Evidence(Box<Equivocation>),
    /// The sender's promise never to help sign a transaction whose vote
    /// deadline passed without an outcome (see [`ExpiryNotice`]).
    Expiry(ExpiryNotice),
    /// Would you sign input `input` of `tx` with `presig` now? The signer
    /// runs every check of a [`PeerMessage::SigningRequest`] and consumes
    /// nothing. A coordinator that has not heard from a signer lately asks
    /// this first: a signer that is down, cut off or unable to sign then
    /// costs a round trip, not the presignature the others would consume.
    SigningProbe {
        tx: TxId,
        input: u32,
        presig: PresigId,
        certificate: ApprovalCertificate,
    },
    /// The answer to a [`PeerMessage::SigningProbe`]: what a request would
    /// get now, without the partial signature.
    SigningProbeAnswer {
        tx: TxId,
        input: u32,
        presig: PresigId,
        result: Result<(), SigningRefusal>,
    },
}

impl PeerMessage {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::DkgStart { .. } => "dkg_start",
            PeerMessage::DkgStatement(_) => "dkg_statement",
            PeerMessage::Protocol { .. } => "protocol",
            PeerMessage::PresignStart { .. } => "presign_start",
            PeerMessage::PresigReady { .. } => "presig_ready",
            PeerMessage::PresigAbandon { .. } => "presig_abandon",
            PeerMessage::Proposal { .. } => "proposal",
            PeerMessage::Vote(_) => "vote",
            PeerMessage::SigningRequest { .. } => "signing_request",
            PeerMessage::SigningResponse { .. } => "signing_response",
            PeerMessage::TxSigned { .. } => "tx_signed",
            PeerMessage::SyncRequest { .. } => "sync_request",
            PeerMessage::Evidence(_) => "evidence",
            PeerMessage::Expiry(_) => "expiry",
            PeerMessage::SigningProbe { .. } => "signing_probe",
            PeerMessage::SigningProbeAnswer { .. } => "signing_probe_answer",
        }
    }
}

/// A partial signature: the scalar `sigma_j`, big-endian.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialSig(pub [u8; 32]);

/// Why a signer did not release a partial signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningRefusal {
    UnknownTransaction,
    InvalidCertificate(String),
    /// The presignature is not Ready here (unknown, generating, discarded).
    PresignatureUnavailable,
    /// Already consumed for another message: answering would leak the key.
    PresignatureUsedElsewhere,
    NotASigner,
    BadInput(String),
    /// The signer cannot fence a consumption right now (etcd unreachable):
    /// retryable, and another signer set can sign meanwhile.
    CoordinationUnavailable,
    /// This signer promised never to sign the transaction: its vote
    /// deadline passed without an outcome (see [`ExpiryNotice`]).
    Expired,
    /// The transaction is final here (signed, rejected or failed): nothing
    /// more is signed for it. A signer that holds it signed sends the
    /// signed transaction along.
    Final,
}

impl SigningRefusal {
    /// A refusal that says nothing against the request: asking again later
    /// (or another signer set now) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SigningRefusal::CoordinationUnavailable)
    }

    /// A refusal after which the presignature can never sign this message:
    /// the refuser's share is gone or spent on another.
    pub fn burns_presignature(&self) -> bool {
        matches!(self, SigningRefusal::PresignatureUnavailable | SigningRefusal::PresignatureUsedElsewhere)
    }
}
