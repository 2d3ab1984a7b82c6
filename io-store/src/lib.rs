//! mpc-io-store: durable state for one node (DESIGN §4).
//!
//! - [`store`]: the database. Each `Step`'s records (`mpc_core::Record`) are
//!   applied as one transaction; `mpc_core::RecoveredState` is rebuilt from
//!   the same tables. PostgreSQL in production, SQLite as the embedded
//!   default, one code path through sqlx; migrations in `migrations/`.
//! - [`sealing`]: encryption at rest of key shares, aux info, primes and
//!   presignature shares, bound to their rows.
//! - [`audit`]: the append-only audit log's hash chain and its verifier.
//! - [`coord`]: etcd: the group public key, liveness, leader election, the
//!   restore-fencing epoch and the audit anchor.
//! - [`fencing`]: restore fencing: [`Store::apply_fenced`] (every step a
//!   node makes durable), [`fence_at_startup`], and the audit anchor.
//! - [`read`]: durable reads of transactions for the HTTP API.
//! - [`operator_audit`]: operator requests in the audit trail.
//! - [`backoff`]: jittered exponential pauses between retries.

pub mod audit;
pub mod backoff;
mod columns;
pub mod coord;
pub mod error;
pub mod fencing;
pub mod operator_audit;
pub mod read;
pub mod sealing;
pub mod store;

pub use audit::{AuditAnchor, AuditRow, ChainError, ChainHead};
pub use coord::FenceState;
pub use error::StoreError;
pub use fencing::{fence_at_startup, Anchoring, FenceError, FencingAuthority};
pub use mpc_core::{Record, RecoveredState};
pub use read::{ConsumedPresignature, StateChange, StoredTransaction, StoredVote, TransactionSummary, TxStateKind};
pub use sealing::{MasterKey, RowId, SealError};
pub use store::{Applied, Backend, Fencing, PostgresTls, SslMode, Store};
