//! Issue 12 item 3: the lifecycle past Signed, decided in the core from what
//! each node's Bitcoin backend reports, against the simulated chain: the
//! broadcast and its confirmation depth, a reorg taking a confirmation
//! back, a double spend, a backend outage that stalls the broadcast and
//! then recovers, a restart in between; and the checker's rule that no
//! confirmation is reported that the chain does not hold.

mod common;

use common::*;
use mpc_core::tx::GroupKey;
use mpc_core::{ChainConfig, ChainStatus, NodeId, Observation, PlantedBugs, Record, TxId, TxState};
use mpc_sim::chain::ChainEvent;
use mpc_sim::wallet::Spend;
use mpc_sim::{checker, scenario, Cluster};

/// Two blocks deep, looked up every second, rebroadcast after 2 s doubling
/// to 8 s, stalled after 30 s unseen.
fn chain_config() -> ChainConfig {
    ChainConfig {
        confirmations: 2,
        check_ms: 1_000,
        rebroadcast_ms: 2_000,
        rebroadcast_max_ms: 8_000,
        broadcast_timeout_ms: 30_000,
    }
}

/// The fixture cluster on the simulated chain; final transactions are held
/// a minute (a gossip window) so retention shows within the test.
fn on_chain(seed: u64, bugs: PlantedBugs) -> (Cluster, GroupKey) {
    let minute = |c: &mut mpc_core::ClusterConfig| {
        c.timeouts.gossip_window_ms = 60_000;
        c.timeouts.retain_final_ms = 60_000;
    };
    let (mut cluster, key) = fixture_cluster_on_chain(seed, minute, chain_config(), bugs);
    cluster.set_leader(Some(NodeId(1)));
    (cluster, key)
}

/// Submits a spend and runs until every node holds it signed or further.
fn signed(cluster: &mut Cluster, key: &GroupKey, label: &str) -> (TxId, bitcoin::Txid) {
    let spend = Spend::simple(label, &[80_000, 40_000], &destination(), 100_000, 2_000);
    let tx = scenario::submit(cluster, NodeId(1), spend.psbt_bytes(key)).unwrap();
    assert!(scenario::wait_final(cluster, tx, 600_000), "not signed");
    let txid = scenario::signed_tx(cluster, tx).unwrap().compute_txid();
    (tx, txid)
}

fn all_in(cluster: &Cluster, tx: TxId, state: &TxState) -> bool {
    cluster.ids().into_iter().all(|id| scenario::state_at(cluster, id, tx).as_ref() == Some(state))
}

fn wait_all(cluster: &mut Cluster, tx: TxId, state: TxState, budget_ms: u64) {
    let reached = cluster.run_until(budget_ms, |c| all_in(c, tx, &state));
    let states: Vec<_> = cluster.ids().into_iter().map(|id| scenario::state_at(cluster, id, tx)).collect();
    assert!(reached, "not all {state:?}: {states:?}");
}

fn mine(cluster: &mut Cluster, blocks: usize) {
    let now = cluster.now().0;
    for _ in 0..blocks {
        cluster.chain_mut().apply(now, ChainEvent::Mine);
    }
}

fn chain_records(cluster: &Cluster, node: NodeId, tx: TxId) -> Vec<ChainStatus> {
    cluster.hosts()[&node]
        .store
        .iter()
        .filter_map(|r| match r {
            Record::Chain { tx: t, status } if *t == tx => Some(status.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_signed_transaction_is_broadcast_confirmed_at_depth_and_a_reorg_takes_it_back_until_it_confirms_again() {
    let (mut cluster, key) = on_chain(301, PlantedBugs::NONE);
    let (tx, txid) = signed(&mut cluster, &key, "confirm");
    wait_all(&mut cluster, tx, TxState::Broadcast, 10_000);
    assert!(cluster.chain().in_mempool(&txid), "broadcast into the mempool");

    // One block is not deep enough; two are.
    mine(&mut cluster, 1);
    cluster.run_for(3_000);
    assert!(all_in(&cluster, tx, &TxState::Broadcast), "confirmed one block deep with two required");
    mine(&mut cluster, 1);
    wait_all(&mut cluster, tx, TxState::Confirmed, 5_000);
    let confirmed_in = chain_records(&cluster, NodeId(3), tx);
    assert!(
        matches!(confirmed_in.last(), Some(ChainStatus { block: Some(b), .. }) if b.height == 1),
        "{confirmed_in:?}"
    );

    // A reorg drops both blocks and the mempool loses it: every node goes
    // back to Broadcast, broadcasts it again, and it confirms in the new
    // chain.
    let now = cluster.now().0;
    cluster.chain_mut().apply(now, ChainEvent::Reorg { depth: 2, drop_txs: true });
    wait_all(&mut cluster, tx, TxState::Broadcast, 5_000);
    cluster.run_until(10_000, |c| c.chain().in_mempool(&txid));
    assert!(cluster.chain().in_mempool(&txid), "not broadcast again after the reorg");
    mine(&mut cluster, 2);
    wait_all(&mut cluster, tx, TxState::Confirmed, 5_000);
    let reconfirmed = chain_records(&cluster, NodeId(3), tx);
    let heights: Vec<Option<u64>> = reconfirmed.iter().map(|s| s.block.as_ref().map(|b| b.height)).collect();
    assert_eq!(heights, vec![Some(1), None, Some(4)], "confirmed, lost, confirmed in the new chain");
    assert_eq!(cluster.chain().confirmations(&txid), 2);
    assert_invariants(&cluster, &[]);
}

/// A signed, broadcast transaction whose first input another wallet then
/// spends in a mined block (one deep), after the nodes looked again.
fn double_spent_in_a_block(seed: u64, label: &str) -> (Cluster, TxId, bitcoin::Txid) {
    let (mut cluster, key) = on_chain(seed, PlantedBugs::NONE);
    let (tx, txid) = signed(&mut cluster, &key, label);
    wait_all(&mut cluster, tx, TxState::Broadcast, 10_000);
    let now = cluster.now().0;
    cluster.chain_mut().apply(now, ChainEvent::DoubleSpendFirstInMempool);
    cluster.run_for(3_000);
    (cluster, tx, txid)
}

#[test]
fn a_double_spent_input_fails_the_transaction_naming_the_spender_once_the_spend_is_as_deep_as_a_confirmation() {
    let (mut cluster, tx, txid) = double_spent_in_a_block(302, "double-spend");
    let spender = cluster.chain().double_spent[&txid];
    // One block deep, with two required: reported, not final.
    assert!(all_in(&cluster, tx, &TxState::Broadcast));
    let shallow = format!("input 0 is spent by {spender} 1 of 2 blocks deep");
    let told = observed_at(&cluster, |o| matches!(o, Observation::ChainProblem { reason, .. } if *reason == shallow));
    assert_eq!(told.len(), 5, "{shallow:?} at every node: {told:?}");
    mine(&mut cluster, 1);
    let expected = TxState::Failed(format!("conflict: input 0 spent by {spender}"));
    wait_all(&mut cluster, tx, expected, 5_000);
    // Nothing is broadcast or looked up for it any more.
    let before = cluster.observations.len();
    cluster.run_for(20_000);
    let after: Vec<_> = cluster.observations[before..]
        .iter()
        .filter(|(_, _, o)| matches!(o, Observation::ChainProblem { tx: t, .. } | Observation::TxStateChanged { tx: t, .. } if *t == tx))
        .collect();
    assert!(after.is_empty(), "{after:?}");
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_conflicting_spend_reorged_away_before_it_is_deep_enough_leaves_the_transaction_to_confirm() {
    let (mut cluster, tx, txid) = double_spent_in_a_block(307, "conflict-undone");
    // The block with the other spend is replaced, its transactions lost.
    let now = cluster.now().0;
    cluster.chain_mut().apply(now, ChainEvent::Reorg { depth: 1, drop_txs: true });
    cluster.run_until(10_000, |c| c.chain().in_mempool(&txid));
    assert!(cluster.chain().in_mempool(&txid), "not broadcast again once its inputs were free");
    mine(&mut cluster, 2);
    wait_all(&mut cluster, tx, TxState::Confirmed, 5_000);
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_backend_outage_stalls_the_broadcast_with_the_reason_and_the_transaction_confirms_once_it_is_back() {
    let (mut cluster, key) = on_chain(303, PlantedBugs::NONE);
    let now = cluster.now().0;
    for id in cluster.ids() {
        cluster.chain_mut().apply(now, ChainEvent::Outage { node: id, down: true });
    }
    let (tx, txid) = signed(&mut cluster, &key, "outage");
    cluster.run_for(chain_config().broadcast_timeout_ms + 2_000);
    assert!(all_in(&cluster, tx, &TxState::Signed));
    let stalled = observed_at(
        &cluster,
        |o| matches!(o, Observation::BroadcastStalled { tx: t, reason } if *t == tx && reason.contains("unreachable")),
    );
    assert_eq!(
        stalled.keys().copied().collect::<Vec<_>>(),
        cluster.ids(),
        "every node marks it stalled, naming the cause"
    );
    assert!(stalled.values().all(|n| *n == 1), "marked once: {stalled:?}");
    let marks = chain_records(&cluster, NodeId(2), tx);
    assert!(marks.last().is_some_and(|s| s.stalled.as_ref().is_some_and(|r| r.contains("unreachable"))), "{marks:?}");
    // Backed off: within the 30 s, broadcasts at 0, 2, 6, 14, 22, 30 s.
    let problems = observed_at(&cluster, |o| matches!(o, Observation::ChainProblem { tx: t, .. } if *t == tx));
    assert!(problems.values().all(|n| *n == 1), "the same problem is reported once: {problems:?}");

    // One backend comes back: that node broadcasts it; every node sees it
    // once its own backend answers.
    let now = cluster.now().0;
    cluster.chain_mut().apply(now, ChainEvent::Outage { node: NodeId(4), down: false });
    cluster.run_until(10_000, |c| c.chain().in_mempool(&txid));
    assert!(cluster.chain().in_mempool(&txid), "node 4 did not rebroadcast");
    mine(&mut cluster, 2);
    cluster.run_for(3_000);
    assert_eq!(scenario::state_at(&cluster, NodeId(4), tx), Some(TxState::Confirmed));
    assert_eq!(
        scenario::state_at(&cluster, NodeId(5), tx),
        Some(TxState::Signed),
        "a node without a backend knows nothing"
    );
    let now = cluster.now().0;
    for id in cluster.ids() {
        cluster.chain_mut().apply(now, ChainEvent::Outage { node: id, down: false });
    }
    wait_all(&mut cluster, tx, TxState::Confirmed, 5_000);
    let marks = chain_records(&cluster, NodeId(2), tx);
    assert!(
        marks.last().is_some_and(|s| s.stalled.is_none() && s.block.is_some()),
        "the stall mark is lifted: {marks:?}"
    );
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_node_restarted_while_its_transaction_waits_for_blocks_follows_it_to_confirmed() {
    let (mut cluster, key) = on_chain(304, PlantedBugs::NONE);
    let (tx, _) = signed(&mut cluster, &key, "restart");
    wait_all(&mut cluster, tx, TxState::Broadcast, 10_000);
    cluster.crash(NodeId(2));
    cluster.run_for(1_000);
    cluster.restart(NodeId(2)).unwrap();
    mine(&mut cluster, 2);
    wait_all(&mut cluster, tx, TxState::Confirmed, 5_000);
    // A confirmed transaction leaves memory once it has been confirmed for
    // `retain_final_ms`; one never broadcast stays.
    let retain = cluster.hosts()[&NodeId(1)].config.cluster.timeouts.retain_final_ms;
    cluster.run_for(retain + 15_000);
    assert!(cluster.node(NodeId(2)).retained().transactions == 0, "confirmed and settled: nothing held");
    assert_eq!(scenario::state_at(&cluster, NodeId(2), tx), Some(TxState::Confirmed), "the outcome stays");
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_transaction_never_seen_on_chain_stays_held_past_the_retention_time() {
    let (mut cluster, key) = on_chain(305, PlantedBugs::NONE);
    let now = cluster.now().0;
    cluster.chain_mut().apply(now, ChainEvent::Outage { node: NodeId(1), down: true });
    let (tx, _) = signed(&mut cluster, &key, "held");
    let retain = cluster.hosts()[&NodeId(1)].config.cluster.timeouts.retain_final_ms;
    cluster.run_for(retain + 15_000);
    assert_eq!(cluster.node(NodeId(1)).retained().transactions, 1, "dropped before it was on chain");
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Signed));
}

/// The checker bites: a node that takes the mempool for a block reports
/// a confirmation the chain does not hold.
#[cfg(feature = "planted-bugs")]
#[test]
fn the_checker_catches_a_confirmation_the_chain_does_not_hold() {
    let (mut cluster, key) = on_chain(306, PlantedBugs::confirming_in_mempool());
    let (tx, _) = signed(&mut cluster, &key, "early");
    cluster.run_for(5_000);
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Confirmed));
    let violations = checker::check(&cluster, &Default::default());
    assert!(
        violations.iter().any(|v| v.0.contains("Confirmed at depth 2; the chain holds it 0 deep")),
        "{violations:?}"
    );
}

/// And without the bug the same run has no violation (the rule is not
/// simply always on).
#[test]
fn the_same_run_without_the_bug_reports_no_early_confirmation() {
    let (mut cluster, key) = on_chain(306, PlantedBugs::NONE);
    let (tx, _) = signed(&mut cluster, &key, "early");
    cluster.run_for(5_000);
    assert_eq!(scenario::state_at(&cluster, NodeId(1), tx), Some(TxState::Broadcast));
    assert!(checker::check(&cluster, &Default::default()).is_empty());
}
