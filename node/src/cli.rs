//! `mpc-cli`: the operator's tool. `certs init` creates the cluster CA and
//! one certificate per node (node id in the SAN, keys owner-only); `certs
//! issue` renews one node's certificate under the same CA. A running node
//! picks renewed files up without a restart (issue 5's transport).

use anyhow::Context;
use clap::{Parser, Subcommand};
use mpc_core::NodeId;
use mpc_io_quic::certs;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "mpc-cli", version, about = "mpc-custody operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Cluster CA and node certificates for mutual TLS between nodes.
    Certs {
        #[command(subcommand)]
        command: Certs,
    },
}

#[derive(Subcommand)]
enum Certs {
    /// Create a cluster CA and a certificate for each of nodes 1..=N.
    Init {
        /// How many nodes.
        #[arg(long)]
        nodes: u16,
        /// Directory to write ca.pem, ca.key, node-<id>.pem, node-<id>.key.
        #[arg(long)]
        out: PathBuf,
        /// Cluster name, recorded in the CA's subject.
        #[arg(long, default_value = "mpc-custody")]
        cluster: String,
        /// Validity of node certificates in days (the CA gets ten times it).
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Renew one node's key and certificate under the directory's CA.
    Issue {
        /// The node to renew.
        #[arg(long)]
        node: u16,
        /// The directory made by `certs init`.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Top::Certs { command: Certs::Init { nodes, out, cluster, days } } => {
            let files = certs::init(&out, &cluster, nodes, days)
                .with_context(|| format!("creating certificates in {}", out.display()))?;
            println!(
                "cluster CA and {nodes} node certificates in {} ({} files; keys 0600)",
                out.display(),
                files.len()
            );
        }
        Top::Certs { command: Certs::Issue { node, dir, days } } => {
            certs::issue(&dir, NodeId(node), days).with_context(|| format!("renewing node {node}"))?;
            println!("renewed node-{node}'s key and certificate in {}", dir.display());
        }
    }
    Ok(())
}
