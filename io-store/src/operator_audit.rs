//! Operator requests in the audit trail (DESIGN §7: "each mutating request
//! is audited with the operator's name").
//!
//! The core's records already put what a request changed into the chain
//! (a `tx_accepted` row, a `dkg_joined` row); this row says who asked for
//! it, what they asked and what the node answered, including refusals, so
//! an auditor can tie every change to an operator and see every attempt.
//! It is one row of the same hash chain, written under the writer lock
//! like a step, so it can be neither reordered nor removed unnoticed.
//!
//! The body is JSON `{"operator", "action", "outcome"}`: names and
//! outcomes only. Callers must never put a token, a key or a share in it.

use crate::error::StoreError;
use crate::store::{insert_audit, load_head, Store};
use mpc_core::Millis;

/// The audit row kind of an operator request.
pub const OPERATOR_REQUEST: &str = "operator_request";

impl Store {
    /// Appends one `operator_request` row to the audit chain, in its own
    /// transaction: `operator` (the configured operator name), `action`
    /// (e.g. `transaction_submit`) and `outcome` (what the node answered).
    pub async fn audit_operator_request(
        &self,
        now: Millis,
        operator: &str,
        action: &str,
        outcome: &str,
    ) -> Result<(), StoreError> {
        let body = serde_json::json!({ "operator": operator, "action": action, "outcome": outcome });
        let mut tx = self.begin_write().await?;
        let mut head = load_head(&mut tx).await?;
        let row = head.append(now.0, OPERATOR_REQUEST, body.to_string().into_bytes());
        insert_audit(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(())
    }
}
