//! Records the core asks the shell to make durable, and the state a restart
//! rebuilds from them. The records are the only durable state: a node
//! restarted from them resumes correctly (DESIGN §2).

use crate::engine::{AuxInfo, KeyShare, PresigPublic, PresigShare, SafePrimes};
use crate::ids::{DkgId, Millis, NodeId, PresigId, TxId};
use crate::key_confirmation::DkgStatement;
use crate::secret::Secret;
use crate::vote::{Equivocation, SignedVote};
use serde::{Deserialize, Serialize};

/// One durable fact. Records that hold secrets wrap them in [`Secret`], and
/// the store encrypts those at rest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Record {
    /// This node's safe primes for aux info generation (secret).
    SafePrimes(Secret<SafePrimes>),
    /// Sequence numbers below `next` are used; ids are never reissued.
    SequenceReserved {
        next: u64,
    },
    DkgJoined {
        dkg: DkgId,
    },
    AuxInfo {
        dkg: DkgId,
        aux: Secret<AuxInfo>,
    },
    /// This node's share from attempt `dkg`: pending until the key is
    /// adopted. A later attempt's share replaces an earlier pending one.
    KeyShare {
        dkg: DkgId,
        share: Secret<KeyShare>,
        public_key: Vec<u8>,
    },
    /// A member's signed confirmation or abandonment of an attempt (this
    /// node's own included), see `key_confirmation.rs`.
    DkgStatement(DkgStatement),
    /// Every member confirmed the key of `dkg`: the pending share is the
    /// cluster's key.
    KeyAdopted {
        dkg: DkgId,
    },
    TxAccepted {
        tx: TxId,
        psbt: Vec<u8>,
        proposer: NodeId,
        at: Millis,
    },
    /// This node's own vote, cast at `at` (the daily cap counts by it).
    OwnVote {
        vote: SignedVote,
        at: Millis,
    },
    /// A verified vote of another member.
    Vote(SignedVote),
    Evidence(Equivocation),
    TxState {
        tx: TxId,
        state: TxState,
    },
    PresigGenerating {
        id: PresigId,
        signers: Vec<NodeId>,
    },
    PresigReady {
        id: PresigId,
        signers: Vec<NodeId>,
        share: Secret<PresigShare>,
    },
    /// Another signer announced its share of `id` ready.
    PresigAnnounced {
        id: PresigId,
        signers: Vec<NodeId>,
        from: NodeId,
        public: PresigPublic,
    },
    /// Consumed for exactly this message: the partial signature can be
    /// repeated for it, and for nothing else.
    PresigConsumed {
        id: PresigId,
        tx: TxId,
        input: u32,
        message: [u8; 32],
        sigma: [u8; 32],
    },
    PresigDiscarded {
        id: PresigId,
        reason: String,
    },
    SignedTx {
        tx: TxId,
        raw_tx: Vec<u8>,
        /// The presignatures its signatures used, so that after a restart
        /// this node still knows them spent: a coordinator that forgot
        /// would offer them again, and their signers would refuse.
        presigs: Vec<PresigId>,
    },
    /// A signed transaction's life on chain beyond its state: the block
    /// that confirms it, or why it is stalled (see [`crate::chain`]).
    Chain {
        tx: TxId,
        status: crate::chain::ChainStatus,
    },
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Record::SafePrimes(_) => "safe_primes",
            Record::SequenceReserved { .. } => "sequence",
            Record::DkgJoined { .. } => "dkg_joined",
            Record::AuxInfo { .. } => "aux_info",
            Record::KeyShare { .. } => "key_share",
            Record::DkgStatement(_) => "dkg_statement",
            Record::KeyAdopted { .. } => "key_adopted",
            Record::TxAccepted { .. } => "tx_accepted",
            Record::OwnVote { .. } => "own_vote",
            Record::Vote(_) => "vote",
            Record::Evidence(_) => "evidence",
            Record::TxState { .. } => "tx_state",
            Record::PresigGenerating { .. } => "presig_generating",
            Record::PresigReady { .. } => "presig_ready",
            Record::PresigAnnounced { .. } => "presig_announced",
            Record::PresigConsumed { .. } => "presig_consumed",
            Record::PresigDiscarded { .. } => "presig_discarded",
            Record::SignedTx { .. } => "signed_tx",
            Record::Chain { .. } => "chain",
        }
    }
}

/// Transaction lifecycle (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TxState {
    Received,
    Voting,
    Approved,
    Rejected,
    /// No certified outcome before the deadline. A valid approval
    /// certificate seen later still moves it to Approved: certificates are
    /// transferable proof, a local deadline is not.
    Expired,
    Signing,
    Signed,
    Broadcast,
    Confirmed,
    Failed(String),
}

impl TxState {
    /// States from which a vote can still change the outcome.
    pub fn undecided(&self) -> bool {
        matches!(self, TxState::Received | TxState::Voting | TxState::Expired)
    }
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TxState::Rejected | TxState::Signed | TxState::Broadcast | TxState::Confirmed | TxState::Failed(_)
        )
    }
}

/// What a node restarts from: its records, in the order they were persisted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveredState {
    pub records: Vec<Record>,
}
