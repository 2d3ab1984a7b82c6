//! mpc-node's library half: the demo and its report, so tests can drive them.

pub mod demo;
pub mod report;
