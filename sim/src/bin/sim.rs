//! `mpc-sim`: run one seed (`--seed N`) or sweep a range (`--seeds A..B`)
//! of five-node clusters on turmoil under faults, checking the invariants.
//! `--shape fixture|live-presign` picks how the cluster starts (default
//! fixture); `--threads K` runs K seeds at once (default: the cores);
//! `--fault-free` runs each seed's workload with its faults removed.

use anyhow::{bail, Context};
use mpc_sim::sweep::{default_threads, run_batch, run_seed_traced, SeedPlan, SeedShape};
use std::collections::BTreeMap;
use std::time::Instant;

struct Args {
    first: u64,
    end: u64,
    shape: SeedShape,
    threads: usize,
    fault_free: bool,
}

fn parse() -> anyhow::Result<Args> {
    let usage = "usage: mpc-sim (--seed N | --seeds A..B) [--shape fixture|live-presign] [--threads K] [--fault-free]";
    let mut args = Args { first: 0, end: 0, shape: SeedShape::Fixture, threads: default_threads(), fault_free: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--fault-free" {
            args.fault_free = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--seed" => {
                args.first = value.parse().context("seed must be a number")?;
                args.end = args.first + 1;
            }
            "--seeds" => {
                let (a, b) = value.split_once("..").context("range must look like A..B")?;
                (args.first, args.end) = (a.parse()?, b.parse()?);
            }
            "--shape" => args.shape = SeedShape::parse(&value).with_context(|| format!("unknown shape; {usage}"))?,
            "--threads" => args.threads = value.parse().context("threads must be a number")?,
            _ => bail!("{usage}"),
        }
    }
    if args.end <= args.first {
        bail!("{usage}");
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let single = args.end == args.first + 1;
    let trace = single && std::env::var_os("MPC_SIM_TRACE").is_some();
    if mpc_core::REDUCED_SECURITY_TEST_ONLY {
        eprintln!("TEST-ONLY reduced security level (ReducedTestOnlyLevel, 2047-bit Paillier)");
    }
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(args.end - args.first);
    if single {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else {
        bar.set_style(indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} seeds {msg}")?);
    }
    let plans: Vec<SeedPlan> = (args.first..args.end)
        .map(|seed| SeedPlan::shaped(seed, args.shape))
        .map(|plan| if args.fault_free { plan.without_faults() } else { plan })
        .collect();
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let (mut signed, mut rejected) = (0, 0);
    let (mut made, mut wasted) = (0usize, 0usize);
    // Presignatures spent (served a signature, or wasted) and wasted, for
    // seeds without any fault and for the rest (issue 11 item 12's two
    // targets: at most 1% and 5% of those spent).
    let mut spent_by_class: [(usize, usize); 2] = [(0, 0); 2];
    let mut waste_causes: BTreeMap<String, usize> = BTreeMap::new();
    run_batch(
        &plans,
        args.threads,
        |plan| run_seed_traced(plan, trace),
        |plan, outcome| {
            for line in &outcome.log {
                println!("{line}");
            }
            for (k, v) in &outcome.coverage {
                *coverage.entry(*k).or_default() += v;
            }
            signed += outcome.signed;
            rejected += outcome.rejected;
            made += outcome.presigs_made;
            wasted += outcome.presigs_wasted;
            for (cause, n) in &outcome.waste_causes {
                *waste_causes.entry(cause.clone()).or_default() += n;
            }
            let class = &mut spent_by_class[usize::from(mpc_sim::shrink::fault_count(plan) > 0)];
            class.0 += outcome.presigs_served + outcome.presigs_wasted;
            class.1 += outcome.presigs_wasted;
            if single || !outcome.violations.is_empty() {
                bar.suspend(|| {
                    println!("seed {} ({}): trace {}", plan.seed, plan.shape.name(), outcome.trace_hash);
                    println!("commit: {}", env!("MPC_GIT_COMMIT"));
                    println!("plan:\n{plan}");
                    for v in &outcome.violations {
                        println!("VIOLATION: {v}");
                    }
                    println!("replay: {}", plan.replay_command());
                });
            }
            if !outcome.violations.is_empty() {
                failures.push(plan.seed);
            }
            bar.inc(1);
            bar.set_message(format!("{} failed", failures.len()));
        },
    );
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    println!("\n{:<40} {:>8}", "seeds", args.end - args.first);
    println!("{:<40} {:>8}", "shape", args.shape.name());
    println!("{:<40} {:>8}", "failed", failures.len());
    println!("{:<40} {:>8}", "transactions signed", signed);
    println!("{:<40} {:>8}", "transactions rejected", rejected);
    for (k, v) in &coverage {
        println!("{k:<40} {v:>8}");
    }
    // Discarded without serving a signature, over made: once per
    // presignature, not per share (DESIGN §3).
    println!("{:<40} {:>8}", "presignatures made", made);
    println!("{:<40} {:>8}", "presignatures wasted", wasted);
    println!("{:<40} {:>7.1}%", "wasted fraction", 100.0 * wasted as f64 / made.max(1) as f64);
    for ((spent, wasted), class) in spent_by_class.iter().zip(["fault-free seeds", "seeds with faults"]) {
        let share = 100.0 * *wasted as f64 / (*spent).max(1) as f64;
        println!("{:<40} {:>7.1}% ({wasted} of {spent})", format!("wasted of spent, {class}"), share);
    }
    let mut causes: Vec<(&String, &usize)> = waste_causes.iter().collect();
    causes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (cause, n) in causes {
        println!("  wasted, {cause:<60} {n:>6}");
    }
    println!("{:<40} {:>8.1}", "seeds per minute", (args.end - args.first) as f64 / secs * 60.0);
    if !failures.is_empty() {
        bail!("failing seeds: {failures:?}");
    }
    Ok(())
}
