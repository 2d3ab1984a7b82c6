//! `mpc-node`: one cluster member (`mpc-node run --config FILE`), and the
//! operator's tools that work on a node's files: `preflight`,
//! `verify-report`, `db-check`, `audit-verify`.
//!
//! Exit codes of `run`: 0 after a graceful shutdown (SIGTERM, SIGINT); 2
//! when the configuration or a file it names is wrong (the message names
//! the file, the field and the problem); 1 when the environment fails
//! (database or etcd unreachable). `preflight` exits 0 when the node can
//! start (warnings allowed), 1 when a check failed.

use mpc_io_store::coord::CoordConfig;
use mpc_node::{report, storage};

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "mpc-node", version, about = "mpc-custody cluster node")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run this node as a member of its cluster until SIGTERM or SIGINT.
    Run {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check, before starting this node, everything start-up needs: the
    /// configuration, vote key, certificates, master key, database, etcd,
    /// Bitcoin backend, ports and clock. Exit 1 when a check fails.
    Preflight {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a cluster report's signed transaction from the report alone.
    VerifyReport {
        /// The report written by `demo`.
        report: PathBuf,
    },
    /// Open a node's database as the node does at start-up and summarise it:
    /// master key, node binding, every sealed value, the audit chain.
    DbCheck {
        /// postgres://… or sqlite://…
        #[arg(long)]
        db: String,
        /// The node this database belongs to.
        #[arg(long)]
        node: u16,
        /// File holding the 64-hex-digit master key (default: the
        /// MPC_MASTER_KEY environment variable).
        #[arg(long)]
        master_key_file: Option<PathBuf>,
    },
    /// Verify a node database's hash-chained audit log; names the first bad row.
    /// With --etcd, --cluster and --node, or with --config, also check it
    /// against the node's audit anchor in etcd (a truncated or rewritten tail).
    AuditVerify {
        /// postgres://… or sqlite://…
        #[arg(long)]
        db: String,
        /// The node's configuration file: etcd's endpoints, TLS and
        /// credentials, the cluster and the node are taken from it.
        #[arg(long, conflicts_with = "etcd")]
        config: Option<PathBuf>,
        /// etcd client URL where the node publishes its audit anchor (plain,
        /// no login; use --config for TLS or credentials).
        #[arg(long, requires_all = ["cluster", "node"])]
        etcd: Option<String>,
        /// The cluster's name (etcd keys under /mpc/<cluster>/).
        #[arg(long, requires = "etcd")]
        cluster: Option<String>,
        /// The node whose database this is.
        #[arg(long, requires = "etcd")]
        node: Option<u16>,
    },
}

fn main() -> anyhow::Result<()> {
    // A build that unified mpc-core's TEST-ONLY reduced security level in
    // (e.g. through mpc-sim's `reduced-security` feature) must never run.
    if mpc_core::REDUCED_SECURITY_TEST_ONLY {
        eprintln!(
            "error: this mpc-node binary was built with mpc-core's TEST-ONLY feature \
             `reduced-security-test-only` (an insecure 2047-bit Paillier level); refusing to start. \
             Rebuild without `--features reduced-security`."
        );
        std::process::exit(2);
    }
    match Cli::parse().command {
        Cmd::Run { config } => {
            init_logging();
            let code = match mpc_node::config::Config::load(&config) {
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
                Ok(config) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                    Err(e) => {
                        eprintln!("error: cannot start the runtime: {e}");
                        1
                    }
                    Ok(rt) => match rt.block_on(mpc_node::run::run(config)) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("error: {e}");
                            e.exit_code()
                        }
                    },
                },
            };
            std::process::exit(code);
        }
        Cmd::Preflight { config, json } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let found = rt.block_on(mpc_node::preflight::preflight(&config));
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                println!("{found}");
            }
            std::process::exit(if found.passed { 0 } else { 1 });
        }
        Cmd::VerifyReport { report } => {
            let summary = report::verify_file(&report)?;
            println!("{summary}");
            Ok(())
        }
        Cmd::DbCheck { db, node, master_key_file } => {
            let key = storage::master_key(master_key_file.as_deref())?;
            print!("{}", storage::check(&db, mpc_core::NodeId(node), key)?);
            Ok(())
        }
        Cmd::AuditVerify { db, config, etcd, cluster, node } => {
            let anchor_at = match (config, etcd, cluster, node) {
                (Some(file), ..) => {
                    let config = mpc_node::config::Config::load(&file)?;
                    Some(mpc_node::run::coord_config(&config)?)
                }
                (None, Some(etcd), Some(cluster), Some(node)) => {
                    Some(CoordConfig::new(vec![etcd], cluster, mpc_core::NodeId(node)))
                }
                _ => None,
            };
            println!("{}", storage::audit_verify(&db, anchor_at)?);
            Ok(())
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default: info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
