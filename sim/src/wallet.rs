//! Builds PSBTs that spend the cluster's address, for tests and the demo.
//! The funding outputs are made up (their txids are hashes of a label):
//! what matters for signing is the prevout's script and amount, which the
//! report carries so anyone can verify the signed transaction.

use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::{
    absolute, transaction, Address, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use mpc_core::tx::GroupKey;

/// A made-up unspent output of the cluster address.
pub fn funding_outpoint(label: &str, vout: u32) -> OutPoint {
    let txid = Txid::from_byte_array(bitcoin::hashes::sha256d::Hash::hash(label.as_bytes()).to_byte_array());
    OutPoint { txid, vout }
}

pub struct Spend {
    /// (outpoint, amount) of each cluster output spent.
    pub inputs: Vec<(OutPoint, Amount)>,
    /// Payments: (script, amount).
    pub outputs: Vec<(ScriptBuf, Amount)>,
    /// Change back to the cluster address, if any.
    pub change: Option<Amount>,
}

impl Spend {
    /// One payment of `amount` to `to` from inputs of `input_values`,
    /// leaving `fee` and returning the rest as change.
    pub fn simple(label: &str, input_values: &[u64], to: &Address, amount: u64, fee: u64) -> Spend {
        let total: u64 = input_values.iter().sum();
        let inputs = input_values
            .iter()
            .enumerate()
            .map(|(i, v)| (funding_outpoint(label, i as u32), Amount::from_sat(*v)))
            .collect();
        let change = total.saturating_sub(amount + fee);
        Spend {
            inputs,
            outputs: vec![(to.script_pubkey(), Amount::from_sat(amount))],
            change: (change > 0).then(|| Amount::from_sat(change)),
        }
    }

    pub fn psbt(&self, key: &GroupKey) -> Psbt {
        let cluster = key.script_pubkey();
        let mut output: Vec<TxOut> =
            self.outputs.iter().map(|(s, v)| TxOut { value: *v, script_pubkey: s.clone() }).collect();
        if let Some(c) = self.change {
            output.push(TxOut { value: c, script_pubkey: cluster.clone() });
        }
        let unsigned = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: self
                .inputs
                .iter()
                .map(|(op, _)| TxIn {
                    previous_output: *op,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        };
        let mut psbt = Psbt::from_unsigned_tx(unsigned).expect("unsigned transaction has empty scripts");
        for (pin, (_, value)) in psbt.inputs.iter_mut().zip(&self.inputs) {
            pin.witness_utxo = Some(TxOut { value: *value, script_pubkey: cluster.clone() });
        }
        psbt
    }

    pub fn psbt_bytes(&self, key: &GroupKey) -> Vec<u8> {
        self.psbt(key).serialize()
    }
}
