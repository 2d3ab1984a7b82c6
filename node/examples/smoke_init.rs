fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut spec = mpc_node::cluster_init::ClusterInit::local(args[1].clone().into(), 5, vec![args[2].clone()]);
    spec.safe_primes_file =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/fixtures/test-only-safe-primes-5.json"));
    spec.pool = mpc_core::PoolConfig { low_water: 2, target: 4, max: 6, parallel_sessions: 2 };
    spec.policy.allowed_destinations = vec!["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080".into()];
    let w = mpc_node::cluster_init::init(&spec)?;
    println!("{w:?}");
    Ok(())
}
