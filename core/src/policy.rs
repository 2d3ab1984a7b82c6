//! One node's judgement of a proposal against its own spending policy. The
//! verdict becomes the decision in its signed vote.

use crate::config::Policy;
use crate::tx::ProposedTx;
use crate::vote::Decision;
use bitcoin::ScriptBuf;

/// Judges a structurally valid proposal. `approved_today_sat` is what this
/// node has already approved in the current day of the shell's clock.
pub fn judge(policy: &Policy, tx: &ProposedTx, cluster_script: &ScriptBuf, approved_today_sat: u64) -> Decision {
    let payments = tx.payments(cluster_script);
    let mut amount: u64 = 0;
    for (index, out) in &payments {
        if !policy.allowed_scripts.contains(&out.script_pubkey) {
            return Decision::Reject(format!("output {index} pays a destination not on the allowlist"));
        }
        amount = amount.saturating_add(out.value.to_sat());
    }
    if amount > policy.max_amount_sat {
        return Decision::Reject(format!(
            "amount {amount} sat exceeds the per-transaction limit of {} sat",
            policy.max_amount_sat
        ));
    }
    let rate = tx.fee_rate_sat_vb();
    if rate > policy.max_fee_rate_sat_vb {
        return Decision::Reject(format!(
            "fee rate {rate} sat/vB exceeds the cap of {} sat/vB",
            policy.max_fee_rate_sat_vb
        ));
    }
    let day_total = approved_today_sat.saturating_add(amount);
    if day_total > policy.daily_cap_sat {
        return Decision::Reject(format!(
            "daily total would reach {day_total} sat, over the cap of {} sat",
            policy.daily_cap_sat
        ));
    }
    Decision::Approve
}

/// The amount a proposal pays away from the cluster (outputs other than change).
pub fn outgoing_amount(tx: &ProposedTx, cluster_script: &ScriptBuf) -> u64 {
    tx.payments(cluster_script).iter().fold(0u64, |acc, (_, o)| acc.saturating_add(o.value.to_sat()))
}
