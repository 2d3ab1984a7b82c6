//! PSBT validation and policy: malformed, truncated, wrong-key, zero-fee,
//! dust and over-limit inputs all give a clear error, never a panic; valid
//! ones are judged by each node's policy.

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, Network};
use mpc_core::config::PolicyConfig;
use mpc_core::tx::{GroupKey, ProposedTx, TxError, MAX_INPUTS};
use mpc_core::vote::Decision;
use mpc_sim::setup::{test_policy, TEST_DESTINATION};
use mpc_sim::wallet::{funding_outpoint, Spend};
use proptest::prelude::*;
use std::str::FromStr;

fn key(seed: u8) -> GroupKey {
    let sk = SecretKey::from_slice(&[seed.max(1); 32]).unwrap();
    let pk = sk.public_key(&Secp256k1::new());
    GroupKey::from_compressed(pk.serialize()).unwrap()
}

fn dest() -> Address {
    Address::from_str(TEST_DESTINATION).unwrap().require_network(Network::Regtest).unwrap()
}

fn valid_spend() -> Spend {
    Spend::simple("v", &[100_000, 50_000], &dest(), 60_000, 1_000)
}

#[test]
fn a_valid_psbt_is_accepted_with_its_fee_and_digest() {
    let k = key(1);
    let bytes = valid_spend().psbt_bytes(&k);
    let tx = ProposedTx::from_psbt(&bytes, &k.script_pubkey()).unwrap();
    assert_eq!(tx.fee(), Amount::from_sat(1_000));
    assert_eq!(tx.prevouts.len(), 2);
    assert_ne!(tx.digest("a"), tx.digest("b"), "digest binds the cluster id");
    // The message handed to cggmp24 hashes once more to Bitcoin's sighash.
    use sha2::{Digest, Sha256};
    for input in 0..2 {
        let m = tx.signing_message(input).unwrap();
        let twice: [u8; 32] = Sha256::digest(m).into();
        assert_eq!(twice, tx.sighash(input).unwrap());
    }
}

#[test]
fn an_input_of_another_key_is_refused() {
    let k = key(1);
    let bytes = valid_spend().psbt_bytes(&key(2));
    assert_eq!(ProposedTx::from_psbt(&bytes, &k.script_pubkey()).unwrap_err(), TxError::ForeignInput(0));
}

#[test]
fn zero_fee_is_refused() {
    let k = key(1);
    let spend = Spend::simple("z", &[100_000], &dest(), 100_000, 0);
    let err = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey()).unwrap_err();
    assert!(matches!(err, TxError::NoFee { .. }), "{err}");
}

#[test]
fn dust_outputs_are_refused() {
    let k = key(1);
    let spend = Spend::simple("d", &[100_000], &dest(), 100, 1_000);
    let err = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey()).unwrap_err();
    assert!(matches!(err, TxError::Dust { index: 0, value: 100, .. }), "{err}");
}

#[test]
fn missing_prevout_is_refused() {
    let k = key(1);
    let mut psbt = valid_spend().psbt(&k);
    psbt.inputs[1].witness_utxo = None;
    let err = ProposedTx::from_psbt(&psbt.serialize(), &k.script_pubkey()).unwrap_err();
    assert_eq!(err, TxError::MissingPrevout(1));
}

#[test]
fn too_many_inputs_are_refused() {
    let k = key(1);
    let values = vec![10_000u64; MAX_INPUTS + 1];
    let spend = Spend::simple("many", &values, &dest(), 60_000, 1_000);
    let err = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey()).unwrap_err();
    assert_eq!(err, TxError::TooManyInputs(MAX_INPUTS + 1));
}

#[test]
fn overflowing_amounts_are_refused() {
    let k = key(1);
    let spend = Spend::simple("big", &[Amount::MAX_MONEY.to_sat(), Amount::MAX_MONEY.to_sat()], &dest(), 60_000, 1_000);
    let err = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey()).unwrap_err();
    assert_eq!(err, TxError::AmountOverflow);
}

#[test]
fn duplicate_inputs_are_refused() {
    let k = key(1);
    let mut spend = valid_spend();
    spend.inputs[1].0 = funding_outpoint("v", 0);
    let err = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey()).unwrap_err();
    assert_eq!(err, TxError::DuplicateInput(1));
}

fn judge(policy: PolicyConfig, spend: &Spend, approved_today: u64) -> Decision {
    let k = key(1);
    let tx = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey()).unwrap();
    mpc_core::policy::judge(&policy.parse(Network::Regtest).unwrap(), &tx, &k.script_pubkey(), approved_today)
}

#[test]
fn policy_approves_within_limits_and_rejects_each_breach() {
    let spend = valid_spend();
    assert_eq!(judge(test_policy(), &spend, 0), Decision::Approve);
    let low_max = PolicyConfig { max_amount_sat: 59_999, ..test_policy() };
    assert!(matches!(judge(low_max, &spend, 0), Decision::Reject(r) if r.contains("per-transaction")));
    let no_allow = PolicyConfig { allowed_destinations: vec![], ..test_policy() };
    assert!(matches!(judge(no_allow, &spend, 0), Decision::Reject(r) if r.contains("allowlist")));
    let fee_cap = PolicyConfig { max_fee_rate_sat_vb: 1, ..test_policy() };
    assert!(matches!(judge(fee_cap, &spend, 0), Decision::Reject(r) if r.contains("fee rate")));
    let daily = PolicyConfig { daily_cap_sat: 100_000, ..test_policy() };
    assert_eq!(judge(daily.clone(), &spend, 40_000), Decision::Approve);
    assert!(matches!(judge(daily, &spend, 40_001), Decision::Reject(r) if r.contains("daily")));
}

#[test]
fn change_to_the_cluster_is_not_counted_as_a_payment() {
    let spend = Spend::simple("c", &[5_000_000], &dest(), 10_000, 1_000);
    let small_cap = PolicyConfig { max_amount_sat: 10_000, ..test_policy() };
    assert_eq!(judge(small_cap, &spend, 0), Decision::Approve);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn arbitrary_bytes_give_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ProposedTx::from_psbt(&bytes, &key(1).script_pubkey());
    }

    /// Every truncation of a valid PSBT is refused as malformed.
    #[test]
    fn truncated_psbts_are_refused(cut in 0usize..1000) {
        let k = key(1);
        let bytes = valid_spend().psbt_bytes(&k);
        let cut = cut % bytes.len();
        let err = ProposedTx::from_psbt(&bytes[..cut], &k.script_pubkey()).unwrap_err();
        prop_assert!(matches!(err, TxError::Malformed(_)), "{err}");
    }

    /// Flipping any byte of a valid PSBT gives either a clear error or a
    /// (different) valid proposal, never a panic.
    #[test]
    fn corrupted_psbts_never_panic(pos in 0usize..1000, xor in 1u8..=255) {
        let k = key(1);
        let mut bytes = valid_spend().psbt_bytes(&k);
        let pos = pos % bytes.len();
        bytes[pos] ^= xor;
        if let Ok(tx) = ProposedTx::from_psbt(&bytes, &k.script_pubkey()) {
            prop_assert!(tx.fee() > Amount::ZERO);
            prop_assert!(tx.prevouts.iter().all(|p| p.script_pubkey == k.script_pubkey()));
        }
    }

    /// Random spends: accepted exactly when structurally sound, and the fee
    /// is what the inputs leave.
    #[test]
    fn random_spends_are_accepted_exactly_when_sound(
        inputs in proptest::collection::vec(1u64..5_000_000, 1..5),
        amount in 0u64..6_000_000,
        fee in 0u64..20_000,
    ) {
        let k = key(1);
        let spend = Spend::simple("r", &inputs, &dest(), amount, fee);
        let total: u64 = inputs.iter().sum();
        let result = ProposedTx::from_psbt(&spend.psbt_bytes(&k), &k.script_pubkey());
        let dust = dest().script_pubkey().minimal_non_dust().to_sat();
        let change = total.saturating_sub(amount + fee);
        let change_dust = change > 0 && change < k.script_pubkey().minimal_non_dust().to_sat();
        let sound = amount >= dust && !change_dust && total > amount && total - amount > change;
        prop_assert_eq!(result.is_ok(), sound, "result {:?}", result.as_ref().err());
        if let Ok(tx) = result {
            prop_assert_eq!(tx.fee().to_sat(), total - amount - change);
        }
    }
}
