//! SCAFFOLD, replaced by the metrics module from branch api-metrics before
//! anything lands: the interface the shell calls, doing nothing yet.

use mpc_core::{NodeId, Observation, Record, StatusReport};
use std::time::Duration;

pub struct Metrics;

impl Metrics {
    pub fn new(_node: NodeId) -> Metrics {
        Metrics
    }
    pub fn persisted(&self, _records: &[Record], _elapsed: Duration) {}
    pub fn observed(&self, _observations: &[Observation]) {}
    pub fn handled(&self, _input_kind: &'static str, _elapsed: Duration) {}
    pub fn status(&self, _report: &StatusReport) {}
    pub fn peers_connected(&self, _n: usize) {}
    pub fn render(&self) -> String {
        String::new()
    }
}
