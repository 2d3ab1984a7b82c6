//! Issue 11 item 7: the pool's maximum bounds ready plus generating at all
//! times, also when the lease moves or its holder restarts while sessions
//! it started are still running at their signers.

mod common;

use common::*;
use mpc_core::NodeId;
use mpc_sim::Cluster;

const BUDGET_MS: u64 = 900_000;

/// Ready and generating as the busiest node sees it, sampled after every
/// step until the pool is full and quiet again; returns the largest sum.
fn run_and_sample(cluster: &mut Cluster, max: usize) -> usize {
    let mut peak = 0;
    cluster.run_until(BUDGET_MS, |c| {
        let mut quiet = true;
        for id in c.ids().into_iter().filter(|id| c.is_up(*id)) {
            let s = c.node(id).status();
            peak = peak.max(s.pool_ready + s.pool_generating);
            quiet &= s.pool_generating == 0 && s.pool_ready >= max;
        }
        quiet
    });
    peak
}

/// A cluster whose pool's low water, target and maximum are all 4, with
/// as many sessions at once: any extra session shows.
fn tight_pool(seed: u64) -> (Cluster, usize) {
    let max = 4;
    let (cluster, _key) = keyed_cluster(seed, |c| {
        c.pool.low_water = max;
        c.pool.target = max;
        c.pool.max = max;
        c.pool.parallel_sessions = max;
    });
    (cluster, max)
}

#[test]
fn a_new_lease_holder_counts_its_predecessors_sessions() {
    let (mut cluster, max) = tight_pool(71);
    cluster.set_leader(Some(NodeId(1)));
    assert!(cluster.run_until(BUDGET_MS, |c| c.node(NodeId(2)).status().pool_generating >= max));
    // The lease moves while node 1's sessions are still running.
    cluster.set_leader(Some(NodeId(2)));
    let peak = run_and_sample(&mut cluster, max);
    assert!(peak <= max, "ready plus generating reached {peak}, above the maximum {max}");
    for id in cluster.ids() {
        assert!(cluster.node(id).status().pool_ready <= max, "{id}");
    }
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_restarted_lease_holder_waits_out_the_sessions_it_forgot() {
    let (mut cluster, max) = tight_pool(72);
    cluster.set_leader(Some(NodeId(1)));
    assert!(cluster.run_until(BUDGET_MS, |c| c.node(NodeId(3)).status().pool_generating >= max));
    cluster.crash(NodeId(1));
    cluster.restart(NodeId(1)).unwrap();
    cluster.set_leader(Some(NodeId(1)));
    let peak = run_and_sample(&mut cluster, max);
    assert!(peak <= max, "ready plus generating reached {peak}, above the maximum {max}");
    assert_invariants(&cluster, &[]);
}
