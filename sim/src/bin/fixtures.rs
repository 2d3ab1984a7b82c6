//! Generates the TEST-ONLY fixtures: safe primes for each of n nodes, then
//! aux info from them by running the real protocol through the one-process
//! cluster. Takes a few minutes.

use mpc_core::engine::SafePrimes;
use mpc_core::{Input, NodeId, Observation, Record, Secret};
use mpc_sim::{fixtures, setup, Cluster};
use std::collections::BTreeMap;

/// Presignatures in the fixture cluster's pool.
const FIXTURE_POOL: usize = 40;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("cluster") {
        return make_cluster(args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5));
    }
    let n: u16 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let t: u16 = 3.min(n);
    let primes: BTreeMap<NodeId, SafePrimes> = if fixtures::primes_path(n).exists() {
        fixtures::load_primes(n)?
    } else {
        eprintln!("generating safe primes for {n} nodes...");
        let handles: Vec<_> = (1..=n)
            .map(|i| std::thread::spawn(move || (NodeId(i), SafePrimes::generate(&mut rand_core::OsRng))))
            .collect();
        let primes = handles.into_iter().map(|h| h.join().expect("prime thread")).collect();
        std::fs::create_dir_all(fixtures::dir())?;
        std::fs::write(fixtures::primes_path(n), serde_json::to_string(&primes)?)?;
        primes
    };
    eprintln!("running aux info generation...");
    let config = setup::cluster_config("fixture-cluster", n, t);
    let mut cluster = Cluster::new(1, setup::node_configs(&config), BTreeMap::new())?;
    for (id, p) in &primes {
        cluster.input(*id, Input::SafePrimes(Secret::new(p.clone())));
    }
    cluster.command(NodeId(1), mpc_core::Command::StartDkg);
    let done = cluster
        .run_until(3_600_000, |c| c.observed(|o| matches!(o, Observation::DkgCompleted { .. })).len() == n as usize);
    anyhow::ensure!(done, "DKG did not complete");
    let mut aux = BTreeMap::new();
    for id in cluster.ids() {
        let found = cluster.hosts()[&id].store.iter().find_map(|r| match r {
            Record::AuxInfo { aux, .. } => Some(aux.expose().clone()),
            _ => None,
        });
        aux.insert(id, found.ok_or_else(|| anyhow::anyhow!("{id} has no aux info"))?);
    }
    std::fs::write(fixtures::aux_path(n), serde_json::to_string(&aux)?)?;
    eprintln!("wrote {}", fixtures::aux_path(n).display());
    Ok(())
}

/// A keyed cluster with a full pool, from the aux info fixture.
fn make_cluster(n: u16) -> anyhow::Result<()> {
    let t = 3.min(n);
    eprintln!("keygen and {FIXTURE_POOL} presignatures for {n} nodes...");
    let (mut cluster, _key) = mpc_sim::scenario::fixture_cluster(fixtures::FIXTURE_CLUSTER_ID, 1, n, t, |c| {
        c.pool.low_water = FIXTURE_POOL;
        c.pool.target = FIXTURE_POOL;
        c.pool.max = FIXTURE_POOL;
        c.pool.parallel_sessions = 4;
    })?;
    mpc_sim::scenario::fill_pool(&mut cluster, NodeId(1), FIXTURE_POOL)?;
    // Let the last announcements land everywhere.
    cluster.set_leader(None);
    cluster.run_for(1_000);
    let records: BTreeMap<NodeId, Vec<Record>> = cluster.hosts().iter().map(|(id, h)| (*id, h.store.clone())).collect();
    std::fs::write(fixtures::cluster_path(n), serde_json::to_string(&records)?)?;
    eprintln!("wrote {}", fixtures::cluster_path(n).display());
    Ok(())
}
