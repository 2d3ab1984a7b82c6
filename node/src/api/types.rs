//! The API's JSON: request and response bodies, with their OpenAPI
//! schemas. These are the API's own types, not the core's serde forms, so
//! the wire format stays stable while the core's types change; `mpc-cli`
//! reads them back with the same definitions.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Every error: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: `unauthorized`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `unsupported_media_type`, `invalid_request`,
    /// `invalid_psbt`, `dkg_exists`, `dkg_running`, `dkg_unconfirmed`, `no_key`, `busy`,
    /// `unavailable`, `timeout`, `audit_failed`, `internal`.
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// With `invalid_psbt`: what is wrong, one of `bad_base64`,
    /// `malformed`, `truncated`, `too_large`, `no_inputs`, `no_outputs`,
    /// `too_many_inputs`, `too_many_outputs`, `missing_prevout`,
    /// `foreign_input`, `prevout_mismatch`, `duplicate_input`,
    /// `unsupported_sighash`, `dust_output`, `amount_overflow`, `no_fee`,
    /// `invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// With `dkg_exists`: the cluster's public key (compressed, hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_hex: Option<String>,
    /// With `dkg_running`: the key generation already running; with
    /// `dkg_unconfirmed`: the attempt whose key is not yet confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkg_id: Option<String>,
    /// With `dkg_unconfirmed`: the members whose confirmation is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<u16>>,
}

/// `POST /api/v1/dkg/initiate`, accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DkgInitiated {
    /// The key generation attempt started, e.g. `dkg-1-0`.
    pub dkg_id: String,
}

/// How far key generation has come at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DkgStageName {
    /// No key and no key generation running.
    NotStarted,
    /// Joined; this node's safe primes are still being generated.
    WaitingForPrimes,
    /// Aux info (Paillier keys and their proofs) running.
    AuxInfo,
    /// Threshold keygen running.
    Keygen,
    /// Keygen finished here; waiting for every member to confirm the same key.
    Confirming,
    /// The key exists: every member confirmed it.
    Done,
}

/// `GET /api/v1/dkg/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DkgStatus {
    pub node: u16,
    pub stage: DkgStageName,
    /// The attempt that made the key, once there is one.
    pub dkg_id: Option<String>,
    /// The group public key, compressed, hex.
    pub public_key_hex: Option<String>,
    /// The cluster's P2WPKH address on `network`.
    pub address: Option<String>,
    pub network: String,
    /// This node holds safe primes (or aux info, which needs none).
    pub primes_ready: bool,
}

/// The presignatures of one signer set, as the node sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignerSetStatus {
    pub signers: Vec<u16>,
    pub ready: u64,
    pub generating: u64,
    /// Assigned to a signature, consumed, abandoned or discarded.
    pub spent: u64,
}

/// Presignatures that became ready at this node recently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FillRateStatus {
    pub per_minute: f64,
    pub ready_in_window: u64,
    pub window_seconds: u64,
}

/// `GET /api/v1/presignatures/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PresignatureStatus {
    pub node: u16,
    /// Ready cluster-wide (complete, unused, every signer healthy), as
    /// this node sees them: what signing can draw on.
    pub ready: u64,
    /// Presigning sessions running that this node started as coordinator.
    pub generating: u64,
    /// This node's own shares consumed by signatures.
    pub consumed: u64,
    /// This node's own shares discarded without a signature.
    pub discarded: u64,
    /// This node's own shares ready.
    pub own_ready: u64,
    /// Refill starts below this.
    pub low_water: u64,
    /// Refill stops at this (ready plus generating).
    pub target: u64,
    /// Never more than this.
    pub max: u64,
    pub fill_rate: FillRateStatus,
    pub signer_sets: Vec<SignerSetStatus>,
}

/// `POST /api/v1/transactions` as JSON. The same endpoint takes the PSBT's
/// bytes as a body of type `application/octet-stream`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The PSBT (BIP-174), base64.
    pub psbt: String,
}

/// `POST /api/v1/transactions`, accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmitAccepted {
    /// The transaction's id in the cluster (the digest every vote signs),
    /// 64 hex digits. Submitting the same PSBT again gives the same id.
    pub tx_id: String,
}

/// A transaction's state, without a failure's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxStateName {
    Received,
    Voting,
    Approved,
    Rejected,
    Expired,
    Signing,
    Signed,
    Broadcast,
    Confirmed,
    Failed,
}

impl TxStateName {
    /// States nothing moves a transaction out of (Expired is not one: a
    /// certificate seen later still approves it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TxStateName::Rejected
                | TxStateName::Signed
                | TxStateName::Broadcast
                | TxStateName::Confirmed
                | TxStateName::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TxStateName::Received => "received",
            TxStateName::Voting => "voting",
            TxStateName::Approved => "approved",
            TxStateName::Rejected => "rejected",
            TxStateName::Expired => "expired",
            TxStateName::Signing => "signing",
            TxStateName::Signed => "signed",
            TxStateName::Broadcast => "broadcast",
            TxStateName::Confirmed => "confirmed",
            TxStateName::Failed => "failed",
        }
    }
}

impl std::fmt::Display for TxStateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state a transaction entered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateChangeView {
    pub state: TxStateName,
    pub failure_reason: Option<String>,
    /// The node's clock (ms since the Unix epoch) when it was recorded.
    pub at_ms: u64,
    /// The audit-log row that recorded it.
    pub audit_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionName {
    Approve,
    Reject,
}

/// One signed vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    pub voter: u16,
    pub decision: DecisionName,
    /// With a rejection: the policy rule that failed.
    pub reject_reason: Option<String>,
    /// The Ed25519 signature over the vote, 128 hex digits; verify it with
    /// the voter's vote key from the cluster configuration.
    pub signature_hex: String,
    /// This node's own vote.
    pub own: bool,
    /// When this node cast it (own votes only), ms since the Unix epoch.
    pub cast_at_ms: Option<u64>,
}

/// Two different signed votes of one voter: its votes no longer count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EquivocationView {
    pub voter: u16,
    pub first: VoteView,
    pub second: VoteView,
}

/// A presignature of this node consumed for one input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsumedPresignatureView {
    pub presignature_id: String,
    pub input: u32,
    /// The message signed: SHA-256 of the input's BIP-143 preimage, hex.
    pub message_hex: String,
    /// The fencing epoch the consumption advanced the database to.
    pub epoch: u64,
}

/// `GET /api/v1/transactions/{id}`: everything this node's database holds
/// about one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    pub tx_id: String,
    pub state: TxStateName,
    pub failure_reason: Option<String>,
    /// The node that received the submission.
    pub proposer: u16,
    /// When it was accepted, ms since the Unix epoch of the proposer's clock.
    pub accepted_at_ms: u64,
    /// The PSBT as accepted, base64.
    pub psbt_base64: String,
    /// Every state it entered, oldest first.
    pub history: Vec<StateChangeView>,
    pub votes: Vec<VoteView>,
    pub equivocations: Vec<EquivocationView>,
    pub presignatures_consumed: Vec<ConsumedPresignatureView>,
    /// The fully signed transaction, consensus-encoded, hex.
    pub signed_tx_hex: Option<String>,
    /// Its Bitcoin txid.
    pub txid: Option<String>,
    /// The submitted PSBT finalized with the signatures (BIP-174, a
    /// `final_scriptwitness` on every input), base64: what a wallet takes
    /// back to extract and broadcast. Null until signed.
    pub signed_psbt_base64: Option<String>,
    /// How deep the block that confirms it is, by this node's bitcoind's
    /// latest tip; null unless Confirmed (or without a `[bitcoin]` backend).
    pub confirmations: Option<u64>,
    /// The block that confirms it, while Confirmed.
    pub block_hash: Option<String>,
    pub block_height: Option<u64>,
    /// Why the broadcast is stalled: bitcoind has not held it (mempool or
    /// chain) for the broadcast timeout. It is still rebroadcast.
    pub broadcast_stalled: Option<String>,
}

/// One line of `GET /api/v1/transactions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransactionSummaryView {
    pub tx_id: String,
    pub state: TxStateName,
    pub failure_reason: Option<String>,
    pub proposer: u16,
    pub accepted_at_ms: u64,
    pub approve_votes: u64,
    pub reject_votes: u64,
    pub txid: Option<String>,
}

/// `GET /api/v1/transactions`: one page, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    /// Transactions matching the filter, in all pages.
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub transactions: Vec<TransactionSummaryView>,
}

/// The query of `GET /api/v1/transactions`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only transactions in this state (received, voting, approved,
    /// rejected, expired, signing, signed, broadcast, confirmed, failed).
    pub state: Option<String>,
    /// Transactions to skip (default 0).
    pub offset: Option<u64>,
    /// Page size, 1..=500 (default 50).
    pub limit: Option<u64>,
}

/// The query of `GET /api/v1/health`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// `ready` (default): 503 unless the node can sign. `live`: 503 only
    /// when the core is not running.
    pub probe: Option<String>,
}

/// One dependency's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckView {
    pub ok: bool,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrimesStateName {
    Ready,
    Generating,
    Missing,
}

/// `GET /api/v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    pub node: u16,
    /// The process answers and its core is running.
    pub live: bool,
    /// Live, and able to sign: database, etcd, enough peers, a key, a
    /// presignature ready.
    pub ready: bool,
    /// Why it is not ready, in words an operator can act on.
    pub reasons: Vec<String>,
    pub database: CheckView,
    pub etcd: CheckView,
    pub leader: Option<u16>,
    pub peers_connected: u64,
    pub peers_total: u64,
    pub key_present: bool,
    pub primes: PrimesStateName,
    /// With `primes: generating`: for how long.
    pub primes_generating_seconds: Option<u64>,
    pub pool_ready: u64,
    pub pool_low_water: u64,
    /// The Bitcoin backend (broadcast, confirmations); absent when none is
    /// configured.
    pub bitcoin: Option<CheckView>,
    /// What does not work while the node can still sign (a Bitcoin backend
    /// that does not answer): it does not fail the probe.
    pub degraded: Vec<String>,
    /// Byzantine acts this node caught since it started, by the member to
    /// blame (the counts of the `mpc_*_total{member}` counters). Empty in a
    /// healthy cluster; anything here names a member to investigate.
    pub misbehaviour: Vec<MisbehaviourView>,
}

/// One kind of Byzantine act by one member, as this node counted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MisbehaviourView {
    pub member: u16,
    /// `equivocation`, `forged_vote`, `forged_certificate`, `foreign_vote`,
    /// `bad_partial_signature`, `rejected_message` or `protocol_blame`.
    pub kind: String,
    pub count: u64,
}
