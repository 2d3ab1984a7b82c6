//! Fault schedules drawn by proptest rather than expanded from a seed: any
//! failure shrinks to a minimal schedule, printed readably, and proptest
//! records it under `sim/tests/shrink.proptest-regressions` (committed) so
//! it is replayed first from then on. `PROPTEST_CASES` sets how many.

use mpc_sim::shrink::plan_strategy;
use mpc_sim::sweep::{run_seed, SeedShape};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_fault_schedules_keep_every_invariant(plan in plan_strategy(SeedShape::Fixture)) {
        let outcome = run_seed(&plan);
        prop_assert!(
            outcome.violations.is_empty(),
            "\n{plan}violations:\n  {}\nreplay this schedule from the regressions file with `cargo test -p mpc-sim --test shrink`",
            outcome.violations.join("\n  ")
        );
    }
}
