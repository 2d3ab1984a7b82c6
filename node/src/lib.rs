//! mpc-node's library half: the node process (`run`, `shell`, `compute`,
//! `primes`), its configuration, control plane, HTTP API and metrics, the
//! operator's tools (`cluster_init`, `storage`) and the report verifier, so
//! tests can drive them. It links no simulator: `tests/dependencies.rs`
//! checks that nothing of `mpc-sim`, turmoil or proptest reaches it.

pub mod api;
pub mod backend_watch;
pub mod bitcoin_rpc;
pub mod chain_backend;
pub mod cluster_init;
pub mod compute;
pub mod config;
pub mod control;
pub mod leadership;
pub mod metrics;
pub mod preflight;
pub mod primes;
pub mod report;
pub mod run;
pub mod shell;
pub mod storage;
