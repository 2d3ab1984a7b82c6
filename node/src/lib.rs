//! mpc-node's library half: the demo and its report, and the operator's
//! database commands, so tests can drive them.

pub mod api;
pub mod cluster_init;
pub mod compute;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod primes;
pub mod report;
pub mod run;
pub mod shell;
pub mod storage;
