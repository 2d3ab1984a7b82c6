//! mpc-io-store: durable state for one node. Applies each `Step`'s records
//! (`mpc_core::Record`) as one database transaction and rebuilds
//! `mpc_core::RecoveredState` from the same tables (PostgreSQL via sqlx,
//! SQLite as the embedded default), plus etcd coordination. Filled by the
//! storage issue; it depends on the core's record types only.

pub use mpc_core::{Record, RecoveredState};
