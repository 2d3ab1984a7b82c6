//! `mpc-node`: one cluster member (later issues add the networked node), and
//! `mpc-node demo`, a whole five-node cluster in one process on embedded
//! defaults: safe primes, DKG, a presignature pool, and a PSBT approved and
//! signed, with a report anyone can verify.

use mpc_node::{demo, report, storage};

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
    /// Run a local five-node cluster end to end and write a signed-transaction report.
    Demo {
        /// Directory for the report.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// Seed for the cores' randomness (default: from the OS).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Check a demo report's signed transaction from the report alone.
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
    /// With --etcd, --cluster and --node, also check it against the node's
    /// audit anchor in etcd (a truncated or rewritten tail).
    AuditVerify {
        /// postgres://… or sqlite://…
        #[arg(long)]
        db: String,
        /// etcd client URL where the node publishes its audit anchor.
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
        Cmd::Demo { out, seed } => demo::run(&out, seed),
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
        Cmd::AuditVerify { db, etcd, cluster, node } => {
            let anchor_at = match (etcd, cluster, node) {
                (Some(etcd), Some(cluster), Some(node)) => {
                    Some(storage::AnchorSource { etcd, cluster, node: mpc_core::NodeId(node) })
                }
                _ => None,
            };
            println!("{}", storage::audit_verify(&db, anchor_at)?);
            Ok(())
        }
    }
}
