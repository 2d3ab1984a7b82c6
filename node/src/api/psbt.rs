//! Reading a submitted PSBT from a request body, and naming what is wrong
//! with one the node refuses.
//!
//! The core is the authority on whether a PSBT is acceptable
//! (`mpc_core::tx::ProposedTx::from_psbt`); the API only reads the bytes
//! out of the body, turns away what does not even parse (so garbage never
//! takes a slot in the core's command queue), and, when the core refuses a
//! PSBT, recomputes the same pure check to name the problem with a stable
//! code instead of the core's sentence.

use super::error::ApiError;
use super::types::SubmitRequest;
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use bitcoin::psbt::{self, Psbt};
use bitcoin::ScriptBuf;
use mpc_core::tx::{ProposedTx, TxError};

/// How the PSBT came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Binary,
}

/// The body's kind from its `Content-Type`.
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "{what}: send the PSBT as application/json {{\"psbt\": \"<base64>\"}} or as its bytes with \
                 Content-Type: application/octet-stream"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("no Content-Type"));
    };
    let value = value.to_str().map_err(|_| unsupported("unreadable Content-Type"))?;
    let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/octet-stream" | "application/psbt" => Ok(BodyKind::Binary),
        _ => Err(unsupported(&format!("Content-Type {mime:?}"))),
    }
}

/// The PSBT's bytes from a body of `kind`.
pub fn psbt_bytes(kind: BodyKind, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    match kind {
        BodyKind::Binary => Ok(body.to_vec()),
        BodyKind::Json => {
            let request: SubmitRequest = serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid_request(format!("malformed JSON body: {e}")))?;
            let text: String = request.psbt.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| ApiError::invalid_psbt("bad_base64", format!("the psbt field is not valid base64: {e}")))
        }
    }
}

/// Refuses bytes that are not a PSBT at all, naming a cut-off one
/// `truncated` and anything else `malformed`.
pub fn parse_check(bytes: &[u8]) -> Result<(), ApiError> {
    match Psbt::deserialize(bytes) {
        Ok(_) => Ok(()),
        Err(e) if is_truncation(&e) => Err(ApiError::invalid_psbt(
            "truncated",
            format!("the PSBT ends early ({} bytes): it was cut off", bytes.len()),
        )),
        Err(e) => Err(ApiError::invalid_psbt("malformed", format!("malformed PSBT: {e}"))),
    }
}

/// A PSBT decoder error that means the input ran out: the stream decoder
/// hit its end. (`psbt::Error::Io` with the same kind is not one: the
/// library reports a field value too short for its type that way, inside
/// a PSBT that is whole, which is malformed.)
fn is_truncation(e: &psbt::Error) -> bool {
    match e {
        psbt::Error::ConsensusEncoding(bitcoin::consensus::encode::Error::Io(io)) => {
            io.kind() == bitcoin::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// The stable name of a structural problem the core refuses.
pub fn problem_of(e: &TxError) -> &'static str {
    match e {
        TxError::TooLarge => "too_large",
        TxError::Malformed(_) => "malformed",
        TxError::NoInputs => "no_inputs",
        TxError::NoOutputs => "no_outputs",
        TxError::TooManyInputs(_) => "too_many_inputs",
        TxError::TooManyOutputs(_) => "too_many_outputs",
        TxError::MissingPrevout(_) => "missing_prevout",
        TxError::ForeignInput(_) => "foreign_input",
        TxError::PrevoutMismatch(_) => "prevout_mismatch",
        TxError::DuplicateInput(_) => "duplicate_input",
        TxError::UnsupportedSighash(..) => "unsupported_sighash",
        TxError::Dust { .. } => "dust_output",
        TxError::AmountOverflow => "amount_overflow",
        TxError::NoFee { .. } => "no_fee",
        TxError::NoSuchInput(_) | TxError::Sighash(_) | TxError::ConsensusRejected { .. } => "invalid",
    }
}

/// The error for a PSBT the core refused with `message`: the problem named
/// by the same check against the cluster's script when it is known.
pub fn refused(bytes: &[u8], cluster_script: Option<&ScriptBuf>, message: String) -> ApiError {
    let problem = cluster_script
        .and_then(|script| ProposedTx::from_psbt(bytes, script).err())
        .map_or("invalid", |e| problem_of(&e));
    ApiError::invalid_psbt(problem, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_choose_the_reading() {
        let mut h = HeaderMap::new();
        assert_eq!(body_kind(&h).unwrap_err().code(), "unsupported_media_type");
        h.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert_eq!(body_kind(&h).unwrap(), BodyKind::Json);
        h.insert(header::CONTENT_TYPE, "Application/Octet-Stream".parse().unwrap());
        assert_eq!(body_kind(&h).unwrap(), BodyKind::Binary);
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(body_kind(&h).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn json_bodies_are_checked_before_base64() {
        let e = psbt_bytes(BodyKind::Json, b"{\"psbt\": ").unwrap_err();
        assert_eq!(e.code(), "invalid_request");
        let e = psbt_bytes(BodyKind::Json, b"{\"psbt\": \"not base64!\"}").unwrap_err();
        assert_eq!((e.code(), e.detail.problem.as_deref()), ("invalid_psbt", Some("bad_base64")));
        let e = psbt_bytes(BodyKind::Json, b"{\"psbt\": \"cHNidP8=\", \"extra\": 1}").unwrap_err();
        assert_eq!(e.code(), "invalid_request", "unknown fields are refused");
        assert_eq!(psbt_bytes(BodyKind::Json, b"{\"psbt\": \"cHNi\\ndP8=\"}").unwrap(), b"psbt\xff");
    }

    #[test]
    fn a_cut_off_psbt_is_truncated_and_garbage_is_malformed() {
        let e = parse_check(b"psbt\xff").unwrap_err();
        assert_eq!(e.detail.problem.as_deref(), Some("truncated"));
        let e = parse_check(b"").unwrap_err();
        assert_eq!(e.detail.problem.as_deref(), Some("truncated"));
        let e = parse_check(b"this is not a psbt at all").unwrap_err();
        assert_eq!(e.detail.problem.as_deref(), Some("malformed"));
        let e = parse_check(&short_field_psbt()).unwrap_err();
        assert_eq!(e.detail.problem.as_deref(), Some("malformed"), "a short field is not a cut-off PSBT: {e}");
    }

    /// A whole PSBT (every map closed) whose one input's BIP-32 derivation
    /// value is 2 bytes, shorter than a key source's fingerprint.
    fn short_field_psbt() -> Vec<u8> {
        use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
        let tx = bitcoin::Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn::default()],
            output: vec![bitcoin::TxOut { value: bitcoin::Amount::from_sat(1_000), script_pubkey: ScriptBuf::new() }],
        };
        let unsigned = bitcoin::consensus::serialize(&tx);
        let key = PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[7; 32]).unwrap()).serialize();
        let mut b = b"psbt\xff".to_vec();
        b.extend([1, 0, unsigned.len() as u8]); // global: the unsigned transaction
        b.extend(&unsigned);
        b.push(0);
        b.extend([34, 6]); // input: BIP-32 derivation of `key`
        b.extend(key);
        b.extend([2, 0, 0]); // ...whose value is 2 bytes
        b.push(0);
        b.push(0); // the output's empty map
        assert!(Psbt::deserialize(&b[..b.len() - 1]).is_err());
        b
    }
}
