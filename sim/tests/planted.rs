//! The checker bites: each bug planted in every node (behind mpc-core's
//! TEST-ONLY `planted-bugs` feature) is caught by some seed of the CI batch.
//! Run with `cargo test -p mpc-sim --features planted-bugs --test planted`
//! (scripts/test.sh does).
#![cfg(feature = "planted-bugs")]

use mpc_core::{NodeId, PlantedBugs};
use mpc_sim::shrink::{fault_count, minimise, plan_strategy};
use mpc_sim::sweep::{run_seed_with_bugs, SeedPlan, SeedShape, TxPlan};
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};

/// The first seed in the CI batch (0..1000) whose run reports a violation
/// saying `expected`, with it, where the same seed without the bug passes:
/// a violation some unrelated weakness produces (a liveness failure the
/// seed shows anyway) never counts as catching the bug.
fn first_catch(bugs: PlantedBugs, expected: &[&str]) -> Option<(u64, String)> {
    (0..1000).find_map(|seed| {
        let plan = SeedPlan::from_seed(seed);
        let outcome = run_seed_with_bugs(&plan, false, bugs);
        let violation = outcome.violations.iter().find(|v| expected.iter().any(|e| v.contains(e)))?.clone();
        let clean = run_seed_with_bugs(&plan, false, PlantedBugs::NONE);
        assert!(clean.violations.is_empty(), "seed {seed} fails without the bug: {:?}", clean.violations);
        Some((seed, violation))
    })
}

#[test]
fn consumption_persisted_after_the_partial_is_caught() {
    let (seed, violation) = first_catch(PlantedBugs::persisting_consumption_late(), &["without a durable consumption"])
        .expect("caught in the batch");
    println!("seed {seed}: {violation}");
}

#[test]
fn recovery_forgetting_consumed_presignatures_is_caught() {
    let (seed, violation) =
        first_catch(PlantedBugs::forgetting_consumed_on_recovery(), &["recovery", "used its share"])
            .expect("caught in the batch");
    println!("seed {seed}: {violation}");
}

#[test]
fn vote_counting_that_ignores_equivocation_is_caught() {
    // Caught when a node approves counting a member it knew lied: the
    // checker's own words for this bug, not any failure the seed shows.
    let (seed, violation) =
        first_catch(PlantedBugs::counting_equivocators(), &["knew equivocated"]).expect("caught in the batch");
    println!("seed {seed}: {violation}");
}

#[test]
fn signer_skipping_the_certificate_check_is_caught() {
    let (seed, violation) =
        first_catch(PlantedBugs::skipping_certificate_check(), &["approvals"]).expect("caught in the batch");
    println!("seed {seed}: {violation}");
}

/// The pool's band is checked, not only its low water: a coordinator that
/// stops refilling at low water leaves the pool short of its target, which
/// only the seeds that generate presignatures can show: the CI batch's
/// live-presign seeds.
#[test]
fn refill_stopping_at_low_water_is_caught() {
    let bugs = PlantedBugs::stopping_refill_at_low_water();
    let caught = (0..3).find(|seed| {
        let plan = SeedPlan::shaped(*seed, SeedShape::LivePresign);
        let outcome = run_seed_with_bugs(&plan, false, bugs);
        if !outcome.violations.iter().any(|v| v.contains("liveness: the pool")) {
            return false;
        }
        let clean = run_seed_with_bugs(&plan, false, PlantedBugs::NONE);
        assert!(clean.violations.is_empty(), "live seed {seed} fails without the bug: {:?}", clean.violations);
        true
    });
    assert!(caught.is_some(), "no live-presign seed of the CI batch (0..3) caught the bug");
}

#[test]
fn without_planted_bugs_the_same_seeds_pass() {
    for seed in 0..20 {
        let outcome = run_seed_with_bugs(&SeedPlan::from_seed(seed), false, PlantedBugs::NONE);
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
    }
}

/// The run's violations, joined, when `plan` under the late-consumption
/// bug shows it ("without a durable consumption"): the failure both
/// shrinking tests drive a plan down to.
fn late_consumption_shows(plan: &SeedPlan) -> Option<String> {
    let outcome = run_seed_with_bugs(plan, false, PlantedBugs::persisting_consumption_late());
    let shows = outcome.violations.iter().any(|v| v.contains("without a durable consumption"));
    shows.then(|| outcome.violations.join("; "))
}

/// Shrinking: proptest finds a schedule under which the late-consumption
/// bug shows, then removes everything the failure does not need. That bug
/// needs no fault at all, only a signature, so the minimal schedule has no
/// fault left and one approved transaction. Proptest's own shrinking can
/// stop at a local minimum (CI once kept a crash whose removal had passed
/// while other faults were still in the plan), so [`minimise`] finishes it; the
/// runner's seed is fixed so that a run replays exactly.
#[test]
fn a_failing_schedule_shrinks_to_a_minimal_one() {
    let config = Config {
        cases: 16,
        failure_persistence: None,
        max_shrink_iters: 400,
        rng_seed: RngSeed::Fixed(0x5eed_0011),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&plan_strategy(SeedShape::Fixture), |plan| match late_consumption_shows(&plan) {
        Some(violations) => Err(proptest::test_runner::TestCaseError::fail(violations)),
        None => Ok(()),
    });
    let Err(TestError::Fail(reason, shrunk)) = result else { panic!("the planted bug was never caught: {result:?}") };
    println!("proptest's shrinking kept {} fault(s) ({reason}):\n{shrunk}", fault_count(&shrunk));
    let minimal = minimise(shrunk, |plan| late_consumption_shows(plan).is_some());
    println!("minimal failing schedule:\n{minimal}");
    assert!(late_consumption_shows(&minimal).is_some(), "the minimal schedule still shows the bug");
    assert_eq!(fault_count(&minimal), 0, "faults the failure does not need were kept:\n{minimal}");
    assert_eq!(minimal.txs.len(), 1);
    assert!(minimal.txs[0].allowed && minimal.txs[0].inputs == 1 && minimal.strict.is_empty(), "{minimal}");
}

/// The schedule proptest's shrinking left in a CI run (the crash survived
/// because its removal had passed while other faults were still there):
/// it fails without the crash too, and [`minimise`] removes it.
#[test]
fn minimise_removes_the_crash_proptest_kept() {
    let mut plan = SeedPlan::shaped(29_069_799_228_263, SeedShape::Fixture).without_faults();
    plan.leader = None;
    plan.max_delay_ms = 0;
    plan.strict.clear();
    plan.txs = vec![TxPlan { at_ms: 0, node: NodeId(1), allowed: true, inputs: 1 }];
    plan.crashes = vec![(10_300, NodeId(5), 1_000)];
    assert!(late_consumption_shows(&plan).is_some(), "{plan}");
    let minimal = minimise(plan, |plan| late_consumption_shows(plan).is_some());
    assert_eq!(fault_count(&minimal), 0, "{minimal}");
}
