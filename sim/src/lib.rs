//! mpc-sim: drives `mpc_core::Node`s deterministically.
//!
//! [`cluster::Cluster`] runs n node hosts and a lease host on turmoil's
//! simulated network and clock ([`host`] is their software), with a
//! protocol engine per node and a durable record store per node that
//! survives crashes. Tests, the demo, the benchmarks and the seeded sweep
//! ([`sweep`]) all use it.

pub mod chain;
pub mod checker;
pub mod cluster;
pub mod dealer;
mod engine_thread;
pub mod fixtures;
pub mod host;
pub mod scenario;
pub mod setup;
pub mod shrink;
pub mod sweep;
pub mod wallet;

pub use cluster::Cluster;
pub use host::{Delivery, EPOCH_MS};
