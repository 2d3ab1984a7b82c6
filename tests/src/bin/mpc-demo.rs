//! `mpc-demo`: the README main command's helpers (DEMO ONLY): a PSBT paying
//! from the cluster address, funded by made-up outputs, and later the report.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a PSBT spending two made-up outputs of the cluster address.
    Psbt {
        #[arg(long)]
        public_key: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Psbt { public_key, out } => {
            let bytes: [u8; 33] = hex::decode(public_key)?.try_into().map_err(|_| anyhow::anyhow!("33 bytes"))?;
            let key = mpc_core::tx::GroupKey::from_compressed(bytes)?;
            let to: bitcoin::Address =
                mpc_sim::setup::TEST_DESTINATION.parse::<bitcoin::Address<_>>()?.assume_checked();
            let spend = mpc_sim::wallet::Spend::simple("demo", &[150_000, 75_000], &to, 180_000, 2_500);
            std::fs::write(out, spend.psbt_bytes(&key))?;
        }
    }
    Ok(())
}
