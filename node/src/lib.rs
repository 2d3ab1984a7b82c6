//! mpc-node's library half: the demo and its report, and the operator's
//! database commands, so tests can drive them.

pub mod config;
pub mod control;
pub mod demo;
pub mod report;
pub mod storage;
