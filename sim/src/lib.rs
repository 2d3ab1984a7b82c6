//! mpc-sim: drives `mpc_core::Node`s deterministically.
//!
//! [`cluster::Cluster`] wires n nodes through one ordered event queue on a
//! virtual clock, with an inline protocol engine per node and a durable
//! record store per node that survives crashes. Tests, the demo and the
//! benchmarks all use it; the turmoil simulator builds on the same pieces.

pub mod checker;
pub mod cluster;
pub mod fixtures;
pub mod scenario;
pub mod setup;
pub mod sweep;
pub mod wallet;

pub use cluster::{Cluster, Delivery};
