//! Seeds per minute for each seed shape, one thread, against a baseline
//! measured in the same run: fault-free fixture seeds (one transaction, no
//! loss, no partition, no crash, no Byzantine node, honest clocks).
//!
//! `cargo bench -p mpc-sim --bench seeds_per_minute` (with
//! `--features reduced-security` for the test-only reduced crypto level).
//! `MPC_BENCH_SEEDS=fixture:N,live-presign:N,live-keygen:N` sets the counts.

use mpc_sim::sweep::{run_seed, SeedPlan, SeedShape};
use std::collections::BTreeMap;
use std::time::Instant;

fn quiet(seed: u64) -> SeedPlan {
    let mut plan = SeedPlan::from_seed(seed);
    plan.loss_permille = 0;
    plan.duplicate_permille = 0;
    plan.max_delay_ms = 0;
    plan.partitions.clear();
    plan.crashes.clear();
    plan.crash_after_persist = None;
    plan.byzantine = None;
    plan.strict.clear();
    plan.clocks.clear();
    plan.txs.truncate(1);
    plan.txs[0].allowed = true;
    plan
}

/// Runs the plans one after another; returns seeds per minute.
fn rate(plans: &[SeedPlan]) -> f64 {
    let started = Instant::now();
    for plan in plans {
        let outcome = run_seed(plan);
        assert!(outcome.violations.is_empty(), "seed {} failed: {:?}", plan.seed, outcome.violations);
    }
    plans.len() as f64 / started.elapsed().as_secs_f64() * 60.0
}

fn main() {
    let mut counts: BTreeMap<SeedShape, u64> =
        [(SeedShape::Fixture, 100), (SeedShape::LivePresign, 2), (SeedShape::LiveKeygen, 2)].into();
    if let Ok(spec) = std::env::var("MPC_BENCH_SEEDS") {
        for part in spec.split(',') {
            let (name, n) = part.split_once(':').expect("shape:count");
            counts.insert(SeedShape::parse(name).expect("known shape"), n.parse().expect("count"));
        }
    }
    let level =
        if mpc_core::REDUCED_SECURITY_TEST_ONLY { "reduced (TEST ONLY)" } else { "production (SecurityLevel128)" };
    println!("crypto level: {level}; one thread");
    let baseline = rate(&(0..counts[&SeedShape::Fixture]).map(quiet).collect::<Vec<_>>());
    println!("{:<28} {:>12} {:>14} {:>10}", "shape", "seeds", "seeds/minute", "ratio");
    println!(
        "{:<28} {:>12} {:>14.1} {:>10.2}",
        "fault-free fixture (base)",
        counts[&SeedShape::Fixture],
        baseline,
        1.0
    );
    for (shape, n) in counts {
        let plans: Vec<SeedPlan> = (0..n).map(|seed| SeedPlan::shaped(seed, shape)).collect();
        let r = rate(&plans);
        println!("{:<28} {:>12} {:>14.1} {:>10.2}", shape.name(), n, r, r / baseline);
    }
}
