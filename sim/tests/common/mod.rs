//! Shared setup for the cluster tests.
#![allow(dead_code)]

use mpc_core::tx::GroupKey;
use mpc_core::NodeId;
use mpc_sim::{scenario, setup, Cluster};
use std::collections::{BTreeMap, BTreeSet};

pub const N: u16 = 5;
pub const T: u16 = 3;

/// A five-node cluster from the TEST-ONLY aux info fixture, with a fresh key
/// from live keygen.
pub fn keyed_cluster(seed: u64, configure: impl FnOnce(&mut mpc_core::ClusterConfig)) -> (Cluster, GroupKey) {
    scenario::fixture_cluster("test-cluster", seed, N, T, configure).expect("fixture cluster (see sim/src/fixtures.rs)")
}

/// The fixture cluster: DKG done, 40 real presignatures ready, no refill
/// (milliseconds of cryptography per signature).
pub fn fixture_cluster(seed: u64) -> (Cluster, GroupKey) {
    fixture_cluster_with(seed, |_| {})
}

/// [`fixture_cluster`] with the cluster config adjusted first.
pub fn fixture_cluster_with(seed: u64, configure: impl FnOnce(&mut mpc_core::ClusterConfig)) -> (Cluster, GroupKey) {
    fixture_cluster_built(seed, configure, None, mpc_core::PlantedBugs::NONE)
}

/// [`fixture_cluster_with`] whose nodes follow the simulated chain with
/// `chain`, with `bugs` planted in every node.
pub fn fixture_cluster_on_chain(
    seed: u64,
    configure: impl FnOnce(&mut mpc_core::ClusterConfig),
    chain: mpc_core::ChainConfig,
    bugs: mpc_core::PlantedBugs,
) -> (Cluster, GroupKey) {
    fixture_cluster_built(seed, configure, Some(chain), bugs)
}

fn fixture_cluster_built(
    seed: u64,
    configure: impl FnOnce(&mut mpc_core::ClusterConfig),
    chain: Option<mpc_core::ChainConfig>,
    bugs: mpc_core::PlantedBugs,
) -> (Cluster, GroupKey) {
    let mut config = setup::cluster_config(mpc_sim::fixtures::FIXTURE_CLUSTER_ID, N, T);
    config.pool.low_water = 0;
    config.pool.target = 0;
    config.pool.max = 40;
    configure(&mut config);
    let records = mpc_sim::fixtures::load_cluster(N).expect("fixture cluster (see sim/src/fixtures.rs)");
    let mut nodes = setup::node_configs(&config);
    for (node, _) in nodes.values_mut() {
        node.chain = chain.clone();
    }
    let mut cluster = Cluster::with_bugs(seed, nodes, records, bugs).unwrap();
    cluster.run_for(2_000);
    let key = cluster.node(NodeId(1)).group_key().expect("fixture key").clone();
    (cluster, key)
}

pub fn destination() -> bitcoin::Address {
    use std::str::FromStr;
    bitcoin::Address::from_str(setup::TEST_DESTINATION).unwrap().require_network(bitcoin::Network::Regtest).unwrap()
}

pub fn assert_invariants(cluster: &Cluster, byzantine: &[u16]) {
    let byz: BTreeSet<NodeId> = byzantine.iter().map(|i| NodeId(*i)).collect();
    let violations = mpc_sim::checker::check(cluster, &byz);
    assert!(violations.is_empty(), "invariants violated: {violations:#?}");
}

pub fn observed_at(cluster: &Cluster, f: impl Fn(&mpc_core::Observation) -> bool) -> BTreeMap<NodeId, usize> {
    let mut out = BTreeMap::new();
    for (node, _) in cluster.observed(f) {
        *out.entry(node).or_default() += 1;
    }
    out
}
