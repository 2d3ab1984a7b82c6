//! Fault schedules as proptest strategies, so that a failing schedule
//! shrinks to a minimal one: every fault, transaction and clock skew that
//! the failure does not need is removed or zeroed, and the survivor prints
//! in the readable form of [`SeedPlan`]'s `Display`.
//!
//! The strategy draws the same fields `SeedPlan::from_seed` expands, in the
//! same ranges, with every value shrinking toward "no fault": no loss, no
//! partition, no crash, no Byzantine node, honest clocks, one transaction.

use crate::host::Clock;
use crate::sweep::{SeedPlan, SeedShape, TxPlan, BYZANTINE_ACTS, CRASH_AFTER_KINDS, N};
use mpc_core::NodeId;
use proptest::prelude::*;

fn node() -> impl Strategy<Value = NodeId> + Clone {
    (1..=N).prop_map(NodeId)
}

/// A signed quantity that shrinks toward zero.
fn signed(max: i64) -> impl Strategy<Value = i64> {
    (0..=max, any::<bool>()).prop_map(|(m, negative)| if negative { -m } else { m })
}

pub fn plan_strategy(shape: SeedShape) -> impl Strategy<Value = SeedPlan> {
    let partition = (0u64..30_000, 5_000u64..65_000, prop::collection::btree_set(node(), 1..=2))
        .prop_map(|(start, length, side)| (start, start + length, side));
    let crash = (0u64..40_000, node(), 1_000u64..61_000);
    let crash_after = (node(), prop::sample::select(CRASH_AFTER_KINDS.to_vec()));
    let byzantine = (node(), prop::sample::select(BYZANTINE_ACTS.to_vec()));
    let tx = (0u64..20_000, node(), any::<bool>(), 1usize..=2).prop_map(|(at_ms, node, rejected, inputs)| TxPlan {
        at_ms,
        node,
        allowed: !rejected,
        inputs,
    });
    let max_txs = if shape == SeedShape::Fixture { 3 } else { 1 };
    let clocks = prop::collection::vec((signed(120_000), signed(5_000)), N as usize).prop_map(|c| {
        c.into_iter()
            .enumerate()
            .map(|(i, (offset_ms, drift_ppm))| (NodeId(i as u16 + 1), Clock { offset_ms, drift_ppm }))
            .collect()
    });
    (
        (any::<u64>(), prop::option::of(node()), 0u32..=50, 0u32..=100, 0u64..=200),
        prop::collection::vec(partition, 0..=2),
        prop::collection::vec(crash, 0..=2),
        prop::option::of(crash_after),
        prop::option::of(byzantine),
        prop::collection::btree_set(node(), 0..=2),
        // Clocks before the workload: proptest shrinks a tuple's parts in
        // order, and a vector's length only before its elements, so every
        // fault (skewed clocks included) must be gone before it tries
        // dropping transactions, or a drop that only passes because of a
        // skewed clock ends the shrinking with extra transactions.
        clocks,
        prop::collection::vec(tx, 1..=max_txs),
    )
        .prop_map(
            move |(
                (seed, leader, loss_permille, duplicate_permille, max_delay_ms),
                partitions,
                crashes,
                crash_after_persist,
                byzantine,
                strict,
                clocks,
                txs,
            )| {
                let mut plan = SeedPlan {
                    seed,
                    shape,
                    leader,
                    loss_permille,
                    duplicate_permille,
                    max_delay_ms,
                    partitions,
                    crashes,
                    crash_after_persist,
                    byzantine,
                    strict: strict.into_iter().collect(),
                    txs,
                    clocks,
                    keygen_partition: None,
                    keygen_crash: None,
                    chain_faults: Vec::new(),
                };
                plan.keep_byzantine_out_of_roles();
                plan
            },
        )
}

/// How many faults a plan schedules: what shrinking drives down.
pub fn fault_count(plan: &SeedPlan) -> usize {
    let skewed = plan.clocks.values().filter(|c| **c != Clock::default()).count();
    plan.partitions.len()
        + plan.crashes.len()
        + plan.chain_faults.len()
        + usize::from(plan.crash_after_persist.is_some())
        + usize::from(plan.byzantine.is_some())
        + usize::from(plan.loss_permille > 0)
        + usize::from(plan.duplicate_permille > 0)
        + skewed
}

/// Every plan one simplification away from `plan`: one fault removed, one
/// clock made honest, one strict policy or extra transaction dropped, a
/// transaction made plain (allowlisted, one input).
fn one_step_simpler(plan: &SeedPlan) -> Vec<SeedPlan> {
    let mut out = Vec::new();
    let mut with = |change: &dyn Fn(&mut SeedPlan)| {
        let mut p = plan.clone();
        change(&mut p);
        out.push(p);
    };
    for i in 0..plan.partitions.len() {
        with(&|p| {
            p.partitions.remove(i);
        });
    }
    for i in 0..plan.crashes.len() {
        with(&|p| {
            p.crashes.remove(i);
        });
    }
    for i in 0..plan.chain_faults.len() {
        with(&|p| {
            p.chain_faults.remove(i);
        });
    }
    if plan.crash_after_persist.is_some() {
        with(&|p| p.crash_after_persist = None);
    }
    if plan.byzantine.is_some() {
        with(&|p| p.byzantine = None);
    }
    if plan.keygen_partition.is_some() {
        with(&|p| p.keygen_partition = None);
    }
    if plan.keygen_crash.is_some() {
        with(&|p| p.keygen_crash = None);
    }
    if plan.loss_permille > 0 {
        with(&|p| p.loss_permille = 0);
    }
    if plan.duplicate_permille > 0 {
        with(&|p| p.duplicate_permille = 0);
    }
    if plan.max_delay_ms > 0 {
        with(&|p| p.max_delay_ms = 0);
    }
    for (node, clock) in &plan.clocks {
        if *clock != Clock::default() {
            with(&|p| {
                p.clocks.insert(*node, Clock::default());
            });
        }
    }
    for i in 0..plan.strict.len() {
        with(&|p| {
            p.strict.remove(i);
        });
    }
    if plan.txs.len() > 1 {
        for i in 0..plan.txs.len() {
            with(&|p| {
                p.txs.remove(i);
            });
        }
    }
    for (i, tx) in plan.txs.iter().enumerate() {
        if !tx.allowed || tx.inputs > 1 {
            with(&|p| {
                p.txs[i].allowed = true;
                p.txs[i].inputs = 1;
            });
        }
    }
    out
}

/// Finishes what proptest's shrinking starts. Proptest shrinks a plan's
/// parts in a fixed order and never returns to a part it has passed, so a
/// fault whose removal passed only while a later fault was still there
/// (in CI, a crash kept after the faults around it were gone) is kept
/// although the survivor fails without it. This pass tries every
/// single simplification again, keeps each one under which `still_fails`,
/// and repeats until none is left: the result is 1-minimal, so every fault
/// it keeps is one the failure needs.
pub fn minimise(mut plan: SeedPlan, still_fails: impl Fn(&SeedPlan) -> bool) -> SeedPlan {
    'again: loop {
        for simpler in one_step_simpler(&plan) {
            if still_fails(&simpler) {
                plan = simpler;
                continue 'again;
            }
        }
        return plan;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::SeedPlan;

    /// A failure that needs exactly one of a plan's faults: minimise keeps
    /// that one and strips everything else, whatever order they come in.
    #[test]
    fn minimise_keeps_exactly_the_faults_the_failure_needs() {
        let mut plan = SeedPlan::from_seed(7);
        plan.crashes = vec![(1_000, NodeId(2), 5_000), (10_300, NodeId(5), 1_000)];
        plan.loss_permille = 30;
        let needs = |p: &SeedPlan| p.crashes.iter().any(|c| c.1 == NodeId(5)) && p.loss_permille > 0;
        let minimal = minimise(plan, needs);
        assert_eq!(minimal.crashes, vec![(10_300, NodeId(5), 1_000)], "{minimal}");
        assert_eq!(minimal.loss_permille, 30);
        assert_eq!(fault_count(&minimal), 2, "{minimal}");
        assert_eq!(minimal.txs.len(), 1);
    }
}
