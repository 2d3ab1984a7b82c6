//! The commands that make a cluster's files, with no node running:
//! `cluster init` (everything a cluster needs, see
//! `mpc_node::cluster_init`) and `primes generate` (safe primes ahead of
//! time, see `mpc_node::primes`).

use super::client::CliError;
use indicatif::{ProgressBar, ProgressStyle};
use mpc_node::cluster_init::{self, ClusterInit};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn cluster_init(spec: &ClusterInit) -> Result<(), CliError> {
    let written = cluster_init::init(spec).map_err(|e| CliError::Local(format!("{e:#}")))?;
    println!(
        "cluster {:?}: {} nodes in {} (certificates, vote and master keys owner-only, node configs, operator token)",
        spec.cluster_id,
        written.configs.len(),
        spec.out.display()
    );
    for (id, path) in &written.configs {
        println!("  {id}: mpc-node run --config {}", path.display());
    }
    println!("  mpc-cli --cluster {} cluster status", written.cli_config.display());
    Ok(())
}

/// Safe primes for one node, written owner-only to `out`.
pub fn primes_generate(out: &Path) -> Result<(), CliError> {
    if out.exists() {
        return Err(CliError::Local(format!("{} exists: refusing to overwrite secret primes", out.display())));
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
        bar.set_style(style);
    }
    bar.set_message("generating safe primes (about half a minute of one core)");
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let primes = mpc_node::primes::generate();
    bar.finish_and_clear();
    mpc_node::primes::write(out, &primes).map_err(|e| CliError::Local(format!("writing {}: {e}", out.display())))?;
    println!(
        "safe primes in {} ({:.0} s; owner-only; set node.safe_primes_file to it)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
