//! The transaction lifecycle (DESIGN §3), whole, in one table.
//!
//! ```text
//!            VoteCast            ApprovalCertified        SigningStarted
//! Received ──────────> Voting ──────────────────> Approved ─────────────> Signing
//!    │                   │  ╲ RejectionCertified              ╲             │
//!    │ DeadlinePassed    │   ╲──────────────────> Rejected      ╲ Signature │
//!    └───────────────────┴──> Expired                            ╲ Complete │
//!                               │ RejectionCertified              ╲         v
//!                               └──> Rejected                       ──> Signed
//!
//!          Broadcasted            ConfirmedOnChain
//! Signed ──────────────> Broadcast ──────────────> Confirmed
//!    │                      ^   │                      │
//!    │                      └───┼── ConfirmationLost ──┤ (a reorg)
//!    │ ConfirmedOnChain         │ Conflicted(reason)   │ Conflicted(reason)
//!    └──────────> Confirmed     └──> Failed(reason) <──┘ (also from Signed)
//! Expired: this node promised never to sign beyond what it already
//!          released (an expiry notice); enough promises prove it can never
//!          be signed and end it Failed("expired: ..."), safe to resubmit
//!          (see `crate::expiry`).
//! ExpiryJoined:      Approved | Signing -> Expired (see `TxEvent::ExpiryJoined`)
//! ApprovalWithdrawn: Approved | Signing -> Voting (before the deadline) | Expired
//! SignatureComplete: from any undecided or approved state (a valid signature
//!                    under the group key is proof the cluster approved)
//! Failed(reason):    from every non-final state
//! Past Signed every event comes from the chain (see `crate::chain`).
//! ```
//!
//! Every state change a node makes goes through [`next`], so a transition
//! the table does not list cannot happen silently: it is refused with an
//! [`IllegalTransition`], reported as [`crate::Observation::IllegalTransition`],
//! and the simulator's checker counts that as a violation.

use crate::record::TxState;
use thiserror::Error;

/// What moves a transaction from one state to the next.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TxEvent {
    /// This node cast its own (one and only) vote.
    VoteCast,
    /// `qa` valid approve votes from distinct, non-equivocating members:
    /// counted here, or carried by a valid approval certificate.
    ApprovalCertified,
    /// `qr` valid reject votes.
    RejectionCertified,
    /// The vote deadline passed without a certified outcome.
    DeadlinePassed,
    /// This node started coordinating the signature.
    SigningStarted,
    /// An approver was shown to have equivocated, and the approvals left
    /// fall short of `qa`.
    ApprovalWithdrawn { deadline_passed: bool },
    /// So many members promised never to sign it that signing cannot
    /// finish if they keep their word: this node stops trying and promises
    /// the same (naming any partial signatures it already released).
    ExpiryJoined,
    /// A fully signed transaction, checked against this node's own copy and
    /// Bitcoin Core's interpreter.
    SignatureComplete,
    /// Nothing can finish this transaction; the reason says why.
    Failed(String),
    /// The Bitcoin backend holds the signed transaction: its mempool
    /// accepted it, or a block has it below the confirmation depth.
    Broadcasted,
    /// The best chain holds it at the confirmation depth.
    ConfirmedOnChain,
    /// A reorg took a confirmed transaction out of the best chain, or
    /// below the depth.
    ConfirmationLost,
    /// An input of the signed transaction is spent by another transaction
    /// at the confirmation depth: it can never confirm.
    Conflicted(String),
}

/// A transition the lifecycle does not allow.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("illegal transaction transition: {event:?} in state {from:?}")]
pub struct IllegalTransition {
    pub from: TxState,
    pub event: TxEvent,
}

/// The state `event` moves a transaction in state `from` to.
pub fn next(from: &TxState, event: &TxEvent) -> Result<TxState, IllegalTransition> {
    use TxEvent as E;
    use TxState as S;
    let to = match (from, event) {
        (S::Received, E::VoteCast) => S::Voting,
        // Votes that arrived before the proposal may already have decided
        // it: casting this node's own vote afterwards changes nothing.
        (s, E::VoteCast) => s.clone(),
        // Not from Expired: an expired node promised never to sign it.
        (S::Received | S::Voting, E::ApprovalCertified) => S::Approved,
        (S::Received | S::Voting | S::Expired, E::RejectionCertified) => S::Rejected,
        (S::Received | S::Voting, E::DeadlinePassed) => S::Expired,
        // A restarted coordinator starts over with the job it lost.
        (S::Approved | S::Signing, E::SigningStarted) => S::Signing,
        (S::Approved | S::Signing, E::ApprovalWithdrawn { deadline_passed: false }) => S::Voting,
        (S::Approved | S::Signing, E::ApprovalWithdrawn { deadline_passed: true }) => S::Expired,
        (S::Approved | S::Signing, E::ExpiryJoined) => S::Expired,
        (S::Received | S::Voting | S::Expired | S::Approved | S::Signing, E::SignatureComplete) => S::Signed,
        (s, E::Failed(reason)) if !s.is_final() => S::Failed(reason.clone()),
        (S::Signed | S::Broadcast, E::Broadcasted) => S::Broadcast,
        (S::Signed | S::Broadcast, E::ConfirmedOnChain) => S::Confirmed,
        (S::Confirmed, E::ConfirmationLost) => S::Broadcast,
        (S::Signed | S::Broadcast | S::Confirmed, E::Conflicted(reason)) => S::Failed(reason.clone()),
        _ => return Err(IllegalTransition { from: from.clone(), event: event.clone() }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states() -> Vec<TxState> {
        vec![
            TxState::Received,
            TxState::Voting,
            TxState::Approved,
            TxState::Rejected,
            TxState::Expired,
            TxState::Signing,
            TxState::Signed,
            TxState::Broadcast,
            TxState::Confirmed,
            TxState::Failed("earlier".into()),
        ]
    }

    #[test]
    fn failed_is_reachable_from_every_non_final_state_and_from_no_final_one() {
        for s in all_states() {
            let r = next(&s, &TxEvent::Failed("why".into()));
            if s.is_final() {
                assert!(r.is_err(), "{s:?} left a final state");
            } else {
                assert_eq!(r, Ok(TxState::Failed("why".into())), "{s:?}");
            }
        }
    }

    #[test]
    fn final_states_never_move() {
        let events = [
            TxEvent::ApprovalCertified,
            TxEvent::RejectionCertified,
            TxEvent::DeadlinePassed,
            TxEvent::SigningStarted,
            TxEvent::ApprovalWithdrawn { deadline_passed: true },
            TxEvent::ExpiryJoined,
            TxEvent::SignatureComplete,
        ];
        for s in all_states().into_iter().filter(TxState::is_final) {
            for e in &events {
                assert!(next(&s, e).is_err(), "{e:?} moved final {s:?}");
            }
        }
    }

    #[test]
    fn past_signed_only_chain_events_move_a_transaction_and_only_a_signed_one() {
        use TxState as S;
        let conflict = || TxEvent::Conflicted("conflict: input 0 spent by ab".into());
        assert_eq!(next(&S::Signed, &TxEvent::Broadcasted), Ok(S::Broadcast));
        assert_eq!(next(&S::Broadcast, &TxEvent::ConfirmedOnChain), Ok(S::Confirmed));
        assert_eq!(next(&S::Signed, &TxEvent::ConfirmedOnChain), Ok(S::Confirmed));
        assert_eq!(next(&S::Confirmed, &TxEvent::ConfirmationLost), Ok(S::Broadcast));
        for from in [S::Signed, S::Broadcast, S::Confirmed] {
            assert_eq!(next(&from, &conflict()), Ok(S::Failed("conflict: input 0 spent by ab".into())), "{from:?}");
            assert!(next(&from, &TxEvent::Failed("why".into())).is_err(), "{from:?}");
        }
        // Nothing unsigned is broadcast or confirmed; a rejected or failed
        // transaction stays where it is; a confirmation is lost only once had.
        for from in all_states().into_iter().filter(|s| !matches!(s, S::Signed | S::Broadcast | S::Confirmed)) {
            for e in [TxEvent::Broadcasted, TxEvent::ConfirmedOnChain, TxEvent::ConfirmationLost, conflict()] {
                assert!(next(&from, &e).is_err(), "{e:?} moved {from:?}");
            }
        }
        assert!(next(&S::Broadcast, &TxEvent::ConfirmationLost).is_err());
        assert!(next(&S::Confirmed, &TxEvent::Broadcasted).is_err());
    }

    #[test]
    fn the_regressions_the_table_refuses() {
        // A vote never takes an approved transaction back to Voting, an
        // outcome is never certified twice, and a rejected transaction is
        // never signed.
        assert_eq!(next(&TxState::Approved, &TxEvent::VoteCast), Ok(TxState::Approved));
        assert_eq!(next(&TxState::Rejected, &TxEvent::VoteCast), Ok(TxState::Rejected));
        assert!(next(&TxState::Signing, &TxEvent::ApprovalCertified).is_err());
        assert!(next(&TxState::Rejected, &TxEvent::SignatureComplete).is_err());
        assert!(next(&TxState::Expired, &TxEvent::SigningStarted).is_err());
        assert!(next(&TxState::Expired, &TxEvent::DeadlinePassed).is_err());
    }

    #[test]
    fn the_happy_path_and_the_late_certificate_after_expiry() {
        let mut s = TxState::Received;
        for e in [TxEvent::VoteCast, TxEvent::ApprovalCertified, TxEvent::SigningStarted, TxEvent::SignatureComplete] {
            s = next(&s, &e).unwrap();
        }
        assert_eq!(s, TxState::Signed);
        // An expired node promised never to sign: a late certificate does
        // not bring it back.
        assert!(next(&TxState::Expired, &TxEvent::ApprovalCertified).is_err());
        assert_eq!(next(&TxState::Signing, &TxEvent::ExpiryJoined), Ok(TxState::Expired));
        assert_eq!(
            next(&TxState::Signing, &TxEvent::ApprovalWithdrawn { deadline_passed: false }),
            Ok(TxState::Voting)
        );
    }
}
