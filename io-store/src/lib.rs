//! mpc-io-store: durable state for one node (DESIGN §4).
//!
//! - [`store`]: the database. Each `Step`'s records (`mpc_core::Record`) are
//!   applied as one transaction; `mpc_core::RecoveredState` is rebuilt from
//!   the same tables. PostgreSQL in production, SQLite as the embedded
//!   default, one code path through sqlx; migrations in `migrations/`.
//! - [`sealing`]: encryption at rest of key shares, aux info, primes and
//!   presignature shares, bound to their rows.
//! - [`audit`]: the append-only audit log's hash chain and its verifier.
//! - [`coord`]: etcd: the group public key, liveness, leader election and
//!   the restore-fencing epoch; [`fencing`] checks it against the database
//!   at start-up.

pub mod audit;
mod columns;
pub mod coord;
pub mod error;
pub mod fencing;
pub mod sealing;
pub mod store;

pub use audit::{AuditRow, ChainError, ChainHead};
pub use error::StoreError;
pub use fencing::{fence_at_startup, FenceError};
pub use mpc_core::{Record, RecoveredState};
pub use sealing::{MasterKey, RowId, SealError};
pub use store::{Applied, Backend, Fencing, Store};
