//! mpc-node's library half: the demo and its report, the operator's
//! database commands, the HTTP API and the metrics, so tests can drive them.

pub mod api;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod report;
pub mod storage;
