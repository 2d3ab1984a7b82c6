//! mpc-io-store: durable state for one node. Applies each `Step`'s records
//! (`mpc_core::Record`) as one database transaction and rebuilds
//! `mpc_core::RecoveredState` from the same tables (PostgreSQL via sqlx,
//! SQLite as the embedded default), plus etcd coordination.
//!
//! Landed so far: [`sealing`], the encryption at rest of secret columns,
//! and [`audit`], the hash chain of the append-only audit log.

pub mod audit;
pub mod sealing;

pub use audit::{AuditRow, ChainError, ChainHead};
pub use mpc_core::{Record, RecoveredState};
pub use sealing::{MasterKey, RowId, SealError};
