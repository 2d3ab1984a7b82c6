//! `certs init` and `certs issue`: the cluster CA and the nodes' mutual-TLS
//! certificates (node id in the SAN, keys owner-only). A running node picks
//! renewed files up without a restart.

use super::client::CliError;
use mpc_core::NodeId;
use mpc_io_quic::certs;
use std::path::Path;

pub fn init(out: &Path, ca_dir: Option<&Path>, cluster: &str, nodes: u16, days: i64) -> Result<(), CliError> {
    let ca_dir = ca_dir.map(Path::to_path_buf).unwrap_or_else(|| certs::default_ca_dir(out));
    let files = certs::init(out, &ca_dir, cluster, nodes, days)
        .map_err(|e| CliError::Local(format!("creating certificates in {}: {e}", out.display())))?;
    println!("{nodes} node certificates in {} ({} files in all; keys 0600)", out.display(), files.len());
    println!(
        "cluster CA key in {} (0700): nodes never need it; keep it offline, it is used only by `certs issue`",
        ca_dir.display()
    );
    Ok(())
}

pub fn issue(dir: &Path, ca_dir: Option<&Path>, node: u16, days: i64) -> Result<(), CliError> {
    let ca_dir = ca_dir.map(Path::to_path_buf).unwrap_or_else(|| certs::default_ca_dir(dir));
    certs::issue(dir, &ca_dir, NodeId(node), days)
        .map_err(|e| CliError::Local(format!("renewing node {node}: {e}")))?;
    println!("renewed node-{node}'s key and certificate in {}", dir.display());
    Ok(())
}
