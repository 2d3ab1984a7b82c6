//! `mpc-sim`: run one seed (`--seed N`) or sweep a range (`--seeds A..B`)
//! of five-node fixture clusters under faults, checking the invariants.

use anyhow::{bail, Context};
use mpc_sim::sweep::{run_seed_traced, SeedPlan};
use std::collections::BTreeMap;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (first, end) = match args.as_slice() {
        [flag, n] if flag == "--seed" => {
            let n: u64 = n.parse().context("seed must be a number")?;
            (n, n + 1)
        }
        [flag, range] if flag == "--seeds" => {
            let (a, b) = range.split_once("..").context("range must look like A..B")?;
            (a.parse()?, b.parse()?)
        }
        _ => bail!("usage: mpc-sim --seed N | --seeds A..B"),
    };
    let single = end == first + 1;
    if mpc_core::REDUCED_SECURITY_TEST_ONLY {
        eprintln!("TEST-ONLY reduced security level (ReducedTestOnlyLevel, 2047-bit Paillier)");
    }
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(end - first);
    if !single {
        bar.set_style(indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} seeds {msg}")?);
    }
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let (mut signed, mut rejected) = (0, 0);
    for seed in first..end {
        let plan = SeedPlan::from_seed(seed);
        let trace = single && std::env::var_os("MPC_SIM_TRACE").is_some();
        let outcome = run_seed_traced(&plan, trace);
        for line in &outcome.log {
            println!("{line}");
        }
        for (k, v) in &outcome.coverage {
            *coverage.entry(k).or_default() += v;
        }
        signed += outcome.signed;
        rejected += outcome.rejected;
        if single || !outcome.violations.is_empty() {
            bar.suspend(|| {
                println!("seed {seed}: trace {}", outcome.trace_hash);
                println!("plan: {plan:#?}");
                for v in &outcome.violations {
                    println!("VIOLATION: {v}");
                }
                println!("replay: {}", plan.replay_command());
            });
        }
        if !outcome.violations.is_empty() {
            failures.push(seed);
        }
        bar.inc(1);
        bar.set_message(format!("{} failed", failures.len()));
    }
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    println!("\n{:<34} {:>8}", "seeds", end - first);
    println!("{:<34} {:>8}", "failed", failures.len());
    println!("{:<34} {:>8}", "transactions signed", signed);
    println!("{:<34} {:>8}", "transactions rejected", rejected);
    for (k, v) in &coverage {
        println!("{k:<34} {v:>8}");
    }
    println!("{:<34} {:>8.1}", "seeds per minute", (end - first) as f64 / secs * 60.0);
    if !failures.is_empty() {
        bail!("failing seeds: {failures:?}");
    }
    Ok(())
}
