//! `mpc-node`: one cluster member (later issues add the networked node), and
//! `mpc-node demo`, a whole five-node cluster in one process on embedded
//! defaults: safe primes, DKG, a presignature pool, and a PSBT approved and
//! signed, with a report anyone can verify.

use mpc_node::{demo, report};

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Demo { out, seed } => demo::run(&out, seed),
        Cmd::VerifyReport { report } => {
            let summary = report::verify_file(&report)?;
            println!("{summary}");
            Ok(())
        }
    }
}
