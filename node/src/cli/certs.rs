//! `certs init` and `certs issue`: the cluster CA and the nodes' mutual-TLS
//! certificates (node id in the SAN, keys owner-only). A running node picks
//! renewed files up without a restart.

use super::client::CliError;
use mpc_core::NodeId;
use mpc_io_quic::certs;
use std::path::Path;

pub fn init(out: &Path, cluster: &str, nodes: u16, days: i64) -> Result<(), CliError> {
    let files = certs::init(out, cluster, nodes, days)
        .map_err(|e| CliError::Local(format!("creating certificates in {}: {e}", out.display())))?;
    println!("cluster CA and {nodes} node certificates in {} ({} files; keys 0600)", out.display(), files.len());
    Ok(())
}

pub fn issue(dir: &Path, node: u16, days: i64) -> Result<(), CliError> {
    certs::issue(dir, NodeId(node), days).map_err(|e| CliError::Local(format!("renewing node {node}: {e}")))?;
    println!("renewed node-{node}'s key and certificate in {}", dir.display());
    Ok(())
}
