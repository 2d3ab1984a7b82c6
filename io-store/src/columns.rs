//! How record fields map to columns, and what the audit log says about each
//! record. Structured values (signed votes, evidence, commitments, sealed
//! secrets) are bincode inside their column; the columns anyone queries
//! (ids, states, decisions) are plain.

use crate::error::StoreError;
use mpc_core::record::{Record, TxState};
use mpc_core::{DkgId, NodeId, PresigId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

pub(crate) fn int(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange(format!("{what} = {value}")))
}

/// Id sequence numbers are stored bit for bit (the whole `u64` range,
/// test fixtures use `u64::MAX`): ids are only ever compared for equality.
pub(crate) fn id_seq(seq: u64) -> i64 {
    seq as i64
}

pub(crate) fn id_seq_back(stored: i64) -> u64 {
    stored as u64
}

pub(crate) fn uint(value: i64, row: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(row, format!("negative value {value}")))
}

pub(crate) fn node(value: i64, row: &str) -> Result<NodeId, StoreError> {
    u16::try_from(value).map(NodeId).map_err(|_| StoreError::corrupt(row, format!("node id {value} out of range")))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory values always serialise")
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], row: &str) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::corrupt(row, e))
}

/// Secrets are sealed as JSON: cggmp24's key shares and aux info need a
/// self-describing format (bincode cannot read them back). The plaintext
/// buffer is wiped once sealed or parsed.
pub(crate) fn encode_secret<T: Serialize>(value: &T) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(serde_json::to_vec(value).expect("in-memory values always serialise"))
}

pub(crate) fn decode_secret<T: DeserializeOwned>(bytes: &[u8], row: &str) -> Result<T, StoreError> {
    // Only the error's category and position: serde_json's own message can
    // quote the offending value, which here is secret.
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::corrupt(
            row,
            format!("sealed value does not parse ({:?} error at byte column {})", e.classify(), e.column()),
        )
    })
}

pub(crate) fn array32(bytes: &[u8], row: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::corrupt(row, format!("expected 32 bytes, found {}", bytes.len())))
}

/// Signer sets as text ("1,2,3"): readable in a SQL shell.
pub(crate) fn signers_text(signers: &[NodeId]) -> String {
    signers.iter().map(|s| s.0.to_string()).collect::<Vec<_>>().join(",")
}

pub(crate) fn signers_parse(text: &str, row: &str) -> Result<Vec<NodeId>, StoreError> {
    text.split(',')
        .map(|s| s.parse::<u16>().map(NodeId).map_err(|_| StoreError::corrupt(row, format!("signer set {text:?}"))))
        .collect()
}

/// A transaction state as two columns: its name and, for `Failed`, why.
pub(crate) fn state_columns(state: &TxState) -> (&'static str, Option<&str>) {
    match state {
        TxState::Received => ("received", None),
        TxState::Voting => ("voting", None),
        TxState::Approved => ("approved", None),
        TxState::Rejected => ("rejected", None),
        TxState::Expired => ("expired", None),
        TxState::Signing => ("signing", None),
        TxState::Signed => ("signed", None),
        TxState::Broadcast => ("broadcast", None),
        TxState::Confirmed => ("confirmed", None),
        TxState::Failed(reason) => ("failed", Some(reason)),
    }
}

pub(crate) fn state_parse(name: &str, failure: Option<String>, row: &str) -> Result<TxState, StoreError> {
    Ok(match name {
        "received" => TxState::Received,
        "voting" => TxState::Voting,
        "approved" => TxState::Approved,
        "rejected" => TxState::Rejected,
        "expired" => TxState::Expired,
        "signing" => TxState::Signing,
        "signed" => TxState::Signed,
        "broadcast" => TxState::Broadcast,
        "confirmed" => TxState::Confirmed,
        "failed" => TxState::Failed(failure.unwrap_or_default()),
        other => return Err(StoreError::corrupt(row, format!("unknown transaction state {other:?}"))),
    })
}

pub(crate) fn dkg_key(node: NodeId, dkg: DkgId) -> String {
    format!("{node}/{dkg}")
}

pub(crate) fn presig_key(node: NodeId, id: PresigId) -> String {
    format!("{node}/{id}")
}

/// The audit log's body for a record: everything an outsider needs to
/// follow the chain of custody (signed votes with their signatures,
/// presignature ids, released partial signatures, the signed transaction),
/// and nothing secret: shares, aux info and primes appear only as "sealed".
pub(crate) fn audit_body(record: &Record) -> Vec<u8> {
    let body = match record {
        Record::SafePrimes(_) => json!({ "primes": "sealed" }),
        Record::SequenceReserved { next } => json!({ "next": next }),
        Record::DkgJoined { dkg } => json!({ "dkg": dkg.to_string() }),
        Record::AuxInfo { dkg, .. } => json!({ "dkg": dkg.to_string(), "aux_info": "sealed" }),
        Record::KeyShare { dkg, public_key, .. } => {
            json!({ "dkg": dkg.to_string(), "public_key": hex::encode(public_key), "share": "sealed" })
        }
        Record::DkgStatement(statement) => json!({
            "dkg": statement.dkg.to_string(),
            "member": statement.member.0,
            "claim": if statement.is_abandon() { "abandoned" } else { "confirmed" },
            "public_key": statement.confirmed_key().map(hex::encode),
            "signature": hex::encode(statement.signature),
        }),
        Record::KeyAdopted { dkg } => json!({ "dkg": dkg.to_string(), "adopted": true }),
        Record::TxAccepted { tx, psbt, proposer, at } => {
            json!({ "tx": tx.to_hex(), "proposer": proposer.0, "at_ms": at.0, "psbt_hex": hex::encode(psbt) })
        }
        Record::OwnVote { vote, at } => json!({ "vote": vote_json(vote), "own": true, "at_ms": at.0 }),
        Record::Vote(vote) => json!({ "vote": vote_json(vote) }),
        Record::Evidence(e) => json!({
            "tx": e.tx.to_hex(), "voter": e.voter.0,
            "first": vote_json(&e.first), "second": vote_json(&e.second),
        }),
        Record::TxState { tx, state } => {
            let (name, failure) = state_columns(state);
            json!({ "tx": tx.to_hex(), "state": name, "failure": failure })
        }
        Record::PresigGenerating { id, signers } => {
            json!({ "presig": id.to_string(), "signers": signers_text(signers) })
        }
        Record::PresigReady { id, signers, .. } => {
            json!({ "presig": id.to_string(), "signers": signers_text(signers), "share": "sealed" })
        }
        Record::PresigAnnounced { id, from, .. } => json!({ "presig": id.to_string(), "from": from.0 }),
        Record::PresigConsumed { id, tx, input, message, sigma } => json!({
            "presig": id.to_string(), "tx": tx.to_hex(), "input": input,
            "message": hex::encode(message), "partial_signature": hex::encode(sigma),
        }),
        Record::PresigDiscarded { id, reason } => json!({ "presig": id.to_string(), "reason": reason }),
        Record::SignedTx { tx, raw_tx, presigs } => {
            let txid = bitcoin::consensus::deserialize::<bitcoin::Transaction>(raw_tx)
                .map(|t| t.compute_txid().to_string())
                .unwrap_or_default();
            let presigs: Vec<String> = presigs.iter().map(|p| p.to_string()).collect();
            json!({ "tx": tx.to_hex(), "txid": txid, "raw_tx_hex": hex::encode(raw_tx), "presignatures": presigs })
        }
        Record::Chain { tx, status } => json!({
            "tx": tx.to_hex(),
            "block_hash": status.block.as_ref().map(|b| b.hash.clone()),
            "block_height": status.block.as_ref().map(|b| b.height),
            "stalled": status.stalled,
        }),
    };
    body.to_string().into_bytes()
}

fn vote_json(vote: &mpc_core::vote::SignedVote) -> serde_json::Value {
    json!({
        "tx": vote.body.tx.to_hex(),
        "voter": vote.body.voter.0,
        "decision": vote.body.decision,
        "signature": hex::encode(vote.signature),
    })
}
