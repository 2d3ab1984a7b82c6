//! Bitcoin rules: what a proposed PSBT must look like, the digest votes sign,
//! the BIP-143 message each signer derives itself, and the final witness and
//! consensus check. Everything here is a pure function of its inputs, so every
//! node reaches the same verdict from the same bytes.

use crate::ids::TxId;
use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, CompressedPublicKey, Network, ScriptBuf, Transaction, TxOut, Witness};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use thiserror::Error;

/// Inputs per transaction the cluster accepts: each input costs a presignature.
pub const MAX_INPUTS: usize = 64;
/// Outputs per transaction the cluster accepts.
pub const MAX_OUTPUTS: usize = 256;
/// Largest PSBT accepted, in bytes.
pub const MAX_PSBT_BYTES: usize = 1 << 20;
/// Witness weight of one P2WPKH input once signed: item count, a DER
/// signature of at most 72 bytes plus sighash byte, and a 33-byte key.
const P2WPKH_WITNESS_WEIGHT: u64 = 1 + 1 + 73 + 1 + 33;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TxError {
    #[error("PSBT is larger than {MAX_PSBT_BYTES} bytes")]
    TooLarge,
    #[error("malformed PSBT: {0}")]
    Malformed(String),
    #[error("transaction has no inputs")]
    NoInputs,
    #[error("transaction has no outputs")]
    NoOutputs,
    #[error("transaction has {0} inputs, more than {MAX_INPUTS}")]
    TooManyInputs(usize),
    #[error("transaction has {0} outputs, more than {MAX_OUTPUTS}")]
    TooManyOutputs(usize),
    #[error("input {0} has no witness_utxo: its amount cannot be known")]
    MissingPrevout(usize),
    #[error("input {0} does not spend the cluster's P2WPKH address")]
    ForeignInput(usize),
    #[error("input {0}'s non_witness_utxo does not match its outpoint or witness_utxo")]
    PrevoutMismatch(usize),
    #[error("input {0} spends an outpoint already spent by another input")]
    DuplicateInput(usize),
    #[error("input {0} asks for sighash type {1}; only SIGHASH_ALL is signed")]
    UnsupportedSighash(usize, String),
    #[error("output {index} pays {value} sat, below the dust limit of {limit} sat")]
    Dust { index: usize, value: u64, limit: u64 },
    #[error("amounts overflow the money supply")]
    AmountOverflow,
    #[error("transaction pays no fee (inputs {inputs} sat, outputs {outputs} sat)")]
    NoFee { inputs: u64, outputs: u64 },
    #[error("input index {0} is out of range")]
    NoSuchInput(usize),
    #[error("sighash computation failed: {0}")]
    Sighash(String),
    #[error("signed transaction failed Bitcoin Core's script check on input {input}: {reason}")]
    ConsensusRejected { input: usize, reason: String },
}

/// The cluster's group public key and the address derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupKey {
    pub compressed: [u8; 33],
    key: CompressedPublicKey,
}

impl GroupKey {
    pub fn from_compressed(bytes: [u8; 33]) -> Result<Self, TxError> {
        let key = CompressedPublicKey::from_slice(&bytes).map_err(|e| TxError::Malformed(format!("group key: {e}")))?;
        Ok(GroupKey { compressed: bytes, key })
    }
    pub fn script_pubkey(&self) -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&self.key.wpubkey_hash())
    }
    pub fn address(&self, network: Network) -> bitcoin::Address {
        bitcoin::Address::p2wpkh(&self.key, network)
    }
    pub fn hex(&self) -> String {
        hex::encode(self.compressed)
    }
    pub fn secp_key(&self) -> bitcoin::secp256k1::PublicKey {
        self.key.0
    }
}

/// A proposal that passed structural validation: every input spends the
/// cluster address with a known amount, every output is above dust, and the
/// fee is positive. Policy (limits, allowlist) is judged separately, per node.
#[derive(Clone, Debug)]
pub struct ProposedTx {
    pub unsigned: Transaction,
    pub prevouts: Vec<TxOut>,
    /// The PSBT bytes as received, kept to reproduce the proposal exactly.
    pub psbt_bytes: Vec<u8>,
}

impl ProposedTx {
    /// Parses and validates a PSBT. Never panics on any input.
    pub fn from_psbt(bytes: &[u8], cluster_script: &ScriptBuf) -> Result<Self, TxError> {
        if bytes.len() > MAX_PSBT_BYTES {
            return Err(TxError::TooLarge);
        }
        let psbt = Psbt::deserialize(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
        crate::psbt_layout::check_version_0(bytes, psbt.inputs.len(), psbt.outputs.len())
            .map_err(TxError::Malformed)?;
        let unsigned = psbt.unsigned_tx.clone();
        if unsigned.input.is_empty() {
            return Err(TxError::NoInputs);
        }
        if unsigned.output.is_empty() {
            return Err(TxError::NoOutputs);
        }
        if unsigned.input.len() > MAX_INPUTS {
            return Err(TxError::TooManyInputs(unsigned.input.len()));
        }
        if unsigned.output.len() > MAX_OUTPUTS {
            return Err(TxError::TooManyOutputs(unsigned.output.len()));
        }
        let mut seen = BTreeSet::new();
        let mut prevouts = Vec::with_capacity(unsigned.input.len());
        for (i, (txin, pin)) in unsigned.input.iter().zip(&psbt.inputs).enumerate() {
            if !seen.insert(txin.previous_output) {
                return Err(TxError::DuplicateInput(i));
            }
            let utxo = pin.witness_utxo.clone().ok_or(TxError::MissingPrevout(i))?;
            if &utxo.script_pubkey != cluster_script {
                return Err(TxError::ForeignInput(i));
            }
            if let Some(prev_tx) = &pin.non_witness_utxo {
                let matches = prev_tx.compute_txid() == txin.previous_output.txid
                    && prev_tx.output.get(txin.previous_output.vout as usize) == Some(&utxo);
                if !matches {
                    return Err(TxError::PrevoutMismatch(i));
                }
            }
            if let Some(ty) = pin.sighash_type {
                if ty.ecdsa_hash_ty().ok() != Some(EcdsaSighashType::All) {
                    return Err(TxError::UnsupportedSighash(i, ty.to_string()));
                }
            }
            prevouts.push(utxo);
        }
        for (index, out) in unsigned.output.iter().enumerate() {
            let limit = out.script_pubkey.minimal_non_dust();
            if out.value < limit {
                return Err(TxError::Dust { index, value: out.value.to_sat(), limit: limit.to_sat() });
            }
        }
        let proposed = ProposedTx { unsigned, prevouts, psbt_bytes: bytes.to_vec() };
        let (inputs, outputs) = (proposed.input_total()?, proposed.output_total()?);
        if inputs <= outputs {
            return Err(TxError::NoFee { inputs: inputs.to_sat(), outputs: outputs.to_sat() });
        }
        Ok(proposed)
    }

    pub fn input_total(&self) -> Result<Amount, TxError> {
        checked_sum(self.prevouts.iter().map(|o| o.value))
    }

    pub fn output_total(&self) -> Result<Amount, TxError> {
        checked_sum(self.unsigned.output.iter().map(|o| o.value))
    }

    pub fn fee(&self) -> Amount {
        // from_psbt established inputs > outputs and both fit in the supply.
        let ins = self.input_total().unwrap_or(Amount::ZERO);
        let outs = self.output_total().unwrap_or(Amount::ZERO);
        ins.checked_sub(outs).unwrap_or(Amount::ZERO)
    }

    /// Virtual size once every input carries its P2WPKH witness.
    pub fn signed_vsize(&self) -> u64 {
        let base = self.unsigned.weight().to_wu();
        // Segwit marker and flag, plus one witness per input.
        let weight = base + 2 + P2WPKH_WITNESS_WEIGHT * self.unsigned.input.len() as u64;
        weight.div_ceil(4)
    }

    /// Fee rate in sat/vB, rounded up so a cap is never exceeded by rounding.
    pub fn fee_rate_sat_vb(&self) -> u64 {
        self.fee().to_sat().div_ceil(self.signed_vsize().max(1))
    }

    /// Total paid to outputs other than the cluster's own address (change).
    pub fn payments(&self, cluster_script: &ScriptBuf) -> Vec<(usize, &TxOut)> {
        self.unsigned.output.iter().enumerate().filter(|(_, o)| &o.script_pubkey != cluster_script).collect()
    }

    /// The digest every vote signs: the unsigned transaction and every
    /// prevout's amount and script, bound to the cluster. Amounts are part of
    /// the digest because the BIP-143 message commits to them.
    pub fn digest(&self, cluster_id: &str) -> TxId {
        let mut h = Sha256::new();
        h.update(b"mpc-custody/v1/tx-digest");
        h.update((cluster_id.len() as u32).to_be_bytes());
        h.update(cluster_id.as_bytes());
        h.update(serialize(&self.unsigned));
        h.update((self.prevouts.len() as u32).to_be_bytes());
        for p in &self.prevouts {
            h.update(serialize(p));
        }
        TxId(h.finalize().into())
    }

    /// The BIP-143 preimage of one input under SIGHASH_ALL, computed from
    /// this node's own copy of the transaction.
    pub fn bip143_preimage(&self, input: usize) -> Result<Vec<u8>, TxError> {
        let prevout = self.prevouts.get(input).ok_or(TxError::NoSuchInput(input))?;
        let script_code = prevout.script_pubkey.p2wpkh_script_code().ok_or(TxError::ForeignInput(input))?;
        let mut preimage = Vec::with_capacity(200);
        SighashCache::new(&self.unsigned)
            .segwit_v0_encode_signing_data_to(&mut preimage, input, &script_code, prevout.value, EcdsaSighashType::All)
            .map_err(|e| TxError::Sighash(e.to_string()))?;
        Ok(preimage)
    }

    /// The message handed to cggmp24 for one input (DESIGN §3): SHA256 of the
    /// BIP-143 preimage. The library hashes it once more with SHA256, which
    /// makes exactly Bitcoin's double-SHA256 sighash.
    pub fn signing_message(&self, input: usize) -> Result<[u8; 32], TxError> {
        Ok(Sha256::digest(self.bip143_preimage(input)?).into())
    }

    /// Bitcoin's sighash for one input, as the library computes it; used to
    /// check that [`Self::signing_message`] hashes to it.
    pub fn sighash(&self, input: usize) -> Result<[u8; 32], TxError> {
        let prevout = self.prevouts.get(input).ok_or(TxError::NoSuchInput(input))?;
        let h = SighashCache::new(&self.unsigned)
            .p2wpkh_signature_hash(input, &prevout.script_pubkey, prevout.value, EcdsaSighashType::All)
            .map_err(|e| TxError::Sighash(e.to_string()))?;
        Ok(h.to_byte_array())
    }

    /// Builds the signed transaction from one compact (r||s) signature per
    /// input and checks it with Bitcoin Core's interpreter before returning.
    pub fn finalize(&self, key: &GroupKey, compact_sigs: &[[u8; 64]]) -> Result<Transaction, TxError> {
        if compact_sigs.len() != self.unsigned.input.len() {
            return Err(TxError::NoSuchInput(compact_sigs.len()));
        }
        let mut tx = self.unsigned.clone();
        for (i, compact) in compact_sigs.iter().enumerate() {
            let mut sig = bitcoin::secp256k1::ecdsa::Signature::from_compact(compact)
                .map_err(|e| TxError::Malformed(format!("signature {i}: {e}")))?;
            // Low-S is a standardness rule; cggmp24 already normalises, this
            // makes it independent of that.
            sig.normalize_s();
            let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
            tx.input[i].witness = Witness::p2wpkh(&sig, &key.secp_key());
        }
        verify_consensus(&tx, &self.prevouts)?;
        Ok(tx)
    }
}

/// The submitted PSBT, finalized with `signed`'s witnesses (BIP-174's
/// finalizer role): each input gets `final_scriptwitness` and loses what
/// only signers need (partial signatures, sighash type, scripts, key
/// derivations); its UTXO and any unknown or proprietary fields stay, as
/// do the global and output maps. A wallet can extract and broadcast the
/// result, or check it with Bitcoin Core's `finalizepsbt` / `analyzepsbt`.
/// `signed` must be the PSBT's transaction with witnesses added.
pub fn signed_psbt(psbt_bytes: &[u8], signed: &Transaction) -> Result<Vec<u8>, TxError> {
    let mut psbt = Psbt::deserialize(psbt_bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
    if psbt.unsigned_tx.compute_txid() != signed.compute_txid() || psbt.inputs.len() != signed.input.len() {
        return Err(TxError::Malformed("the signed transaction is not this PSBT's".into()));
    }
    for (input, signed_input) in psbt.inputs.iter_mut().zip(&signed.input) {
        if signed_input.witness.is_empty() {
            return Err(TxError::Malformed("the signed transaction lacks a witness".into()));
        }
        input.final_script_witness = Some(signed_input.witness.clone());
        input.final_script_sig = (!signed_input.script_sig.is_empty()).then(|| signed_input.script_sig.clone());
        input.partial_sigs.clear();
        input.sighash_type = None;
        input.redeem_script = None;
        input.witness_script = None;
        input.bip32_derivation.clear();
        input.tap_key_sig = None;
        input.tap_script_sigs.clear();
        input.tap_scripts.clear();
        input.tap_key_origins.clear();
        input.tap_internal_key = None;
        input.tap_merkle_root = None;
        input.ripemd160_preimages.clear();
        input.sha256_preimages.clear();
        input.hash160_preimages.clear();
        input.hash256_preimages.clear();
    }
    Ok(psbt.serialize())
}

/// Runs every input of a signed transaction through Bitcoin Core's script
/// interpreter (libbitcoinconsensus) with all standard verification flags.
pub fn verify_consensus(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), TxError> {
    let raw = serialize(tx);
    for (i, prevout) in prevouts.iter().enumerate() {
        prevout
            .script_pubkey
            .verify(i, prevout.value, &raw)
            .map_err(|e| TxError::ConsensusRejected { input: i, reason: format!("{e:?}") })?;
    }
    if prevouts.len() != tx.input.len() {
        return Err(TxError::NoSuchInput(prevouts.len()));
    }
    Ok(())
}

fn checked_sum(values: impl Iterator<Item = Amount>) -> Result<Amount, TxError> {
    let mut total = Amount::ZERO;
    for v in values {
        total = total.checked_add(v).ok_or(TxError::AmountOverflow)?;
        if total > Amount::MAX_MONEY {
            return Err(TxError::AmountOverflow);
        }
    }
    Ok(total)
}
