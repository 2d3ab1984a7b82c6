//! Issue 11 item 7: the pool's maximum bounds ready plus generating at all
//! times, also when the lease moves or its holder restarts while sessions
//! it started are still running at their signers.

mod common;

use common::*;
use mpc_core::{Envelope, Input, NodeId, Observation, PeerMessage, PresigId, Record};
use mpc_sim::{Cluster, Delivery};

const BUDGET_MS: u64 = 900_000;

/// Ready and generating as the busiest node sees it, sampled after every
/// step until the pool is full and quiet again; returns the largest sum.
fn run_and_sample(cluster: &mut Cluster, max: usize) -> usize {
    let mut peak = 0;
    cluster.run_until(BUDGET_MS, |c| {
        let mut quiet = true;
        for id in c.ids().into_iter().filter(|id| c.is_up(*id)) {
            let s = c.node(id).status();
            peak = peak.max(s.pool_ready + s.pool_generating);
            // The per-signer-set figures add up to the totals.
            let sets_ready: usize = s.pool_sets.iter().map(|p| p.ready).sum();
            let sets_generating: usize = s.pool_sets.iter().map(|p| p.generating).sum();
            assert_eq!(sets_ready, s.pool_ready, "{id}");
            assert!(sets_generating <= s.pool_generating, "{id}: {sets_generating} > {}", s.pool_generating);
            quiet &= s.pool_generating == 0 && s.pool_ready >= max;
        }
        quiet
    });
    peak
}

/// A cluster whose pool's low water, target and maximum are all 4, with
/// as many sessions at once: any extra session shows.
fn tight_pool(seed: u64) -> (Cluster, usize) {
    let max = 4;
    let (cluster, _key) = keyed_cluster(seed, |c| {
        c.pool.low_water = max;
        c.pool.target = max;
        c.pool.max = max;
        c.pool.parallel_sessions = max;
    });
    (cluster, max)
}

#[test]
fn a_new_lease_holder_counts_its_predecessors_sessions() {
    let (mut cluster, max) = tight_pool(71);
    cluster.set_leader(Some(NodeId(1)));
    assert!(cluster.run_until(BUDGET_MS, |c| c.node(NodeId(2)).status().pool_generating >= max));
    // The lease moves while node 1's sessions are still running.
    cluster.set_leader(Some(NodeId(2)));
    let peak = run_and_sample(&mut cluster, max);
    assert!(peak <= max, "ready plus generating reached {peak}, above the maximum {max}");
    for id in cluster.ids() {
        assert!(cluster.node(id).status().pool_ready <= max, "{id}");
    }
    assert_invariants(&cluster, &[]);
}

#[test]
fn a_restarted_lease_holder_waits_out_the_sessions_it_forgot() {
    let (mut cluster, max) = tight_pool(72);
    cluster.set_leader(Some(NodeId(1)));
    assert!(cluster.run_until(BUDGET_MS, |c| c.node(NodeId(3)).status().pool_generating >= max));
    cluster.crash(NodeId(1));
    cluster.restart(NodeId(1)).unwrap();
    cluster.set_leader(Some(NodeId(1)));
    let peak = run_and_sample(&mut cluster, max);
    assert!(peak <= max, "ready plus generating reached {peak}, above the maximum {max}");
    assert_invariants(&cluster, &[]);
}

/// Presigning starts are fenced by the lease term. A holder cut off from
/// etcd keeps running until it notices, and its starts can arrive after the
/// lease has moved on: members refuse a start from a superseded term, and
/// one from a member that does not hold the current term. A start under a
/// newer term than a member knows of (its own view of the lease lags) is
/// joined, within what one coordinator may ask of a signer.
#[test]
fn presigning_starts_are_fenced_by_the_lease_term() {
    let (mut cluster, max) = tight_pool(73);
    // Node 2 holds the lease; node 1's starts claim the term before (as a
    // cut-off holder's would), the current one, and the next.
    cluster.set_leader(Some(NodeId(2)));
    cluster.run_for(2_000);
    let term = cluster.lease_term();
    assert!(term >= 1, "a held lease has a term");
    let (signer, old_holder) = (NodeId(3), NodeId(1));
    let signers = vec![NodeId(1), NodeId(3), NodeId(4)];
    let start = |seq: u64, term: u64| Input::Peer {
        from: old_holder,
        msg: PeerMessage::PresignStart { id: PresigId { origin: old_holder, seq }, signers: signers.clone(), term },
    };
    let refusals = |cluster: &Cluster, needle: &str| {
        observed_at(cluster, |o| {
            matches!(o, Observation::RejectedMessage { from, kind, reason }
                if *from == old_holder && kind == "presign_start" && reason.contains(needle))
        })
        .get(&signer)
        .copied()
        .unwrap_or(0)
    };
    let joined = |cluster: &Cluster, seq: u64| {
        cluster.hosts()[&signer]
            .store
            .iter()
            .any(|r| matches!(r, Record::PresigGenerating { id, .. } if *id == PresigId { origin: old_holder, seq }))
    };
    let base = 1 << 30;

    cluster.input(signer, start(base, term - 1));
    cluster.run_for(100);
    assert_eq!(refusals(&cluster, "superseded"), 1, "a start from the old term was not refused");
    assert!(!joined(&cluster, base));

    cluster.input(signer, start(base + 1, term));
    cluster.run_for(100);
    assert_eq!(refusals(&cluster, "is held by"), 1, "a start from a non-holder of the current term was not refused");
    assert!(!joined(&cluster, base + 1));

    // A newer term than the signer knows: joined, but no more sessions at
    // once than a coordinator runs.
    let parallel = max; // tight_pool runs `max` sessions at once
    for k in 0..parallel as u64 + 2 {
        cluster.input(signer, start(base + 10 + k, term + 1));
    }
    cluster.run_for(100);
    let joined_count = (0..parallel as u64 + 2).filter(|k| joined(&cluster, base + 10 + k)).count();
    assert_eq!(joined_count, parallel, "sessions from one origin at once");
    assert_eq!(refusals(&cluster, "sessions running"), 2);
}

/// The lease fence at work: a holder's session starts (and its abandons)
/// that arrive long after the lease moved on, as a cut-off holder's queued
/// messages would (here held back 200 s, longer than the successor waits
/// before refilling), are refused, so the pool never passes the maximum.
/// Without the fence the signers run them and the pool reaches 8 of 4.
#[test]
fn a_superseded_holders_late_starts_never_pass_the_maximum() {
    let (mut cluster, max) = tight_pool(74);
    cluster.set_interceptor(|from, env: &mut Envelope| {
        if from == NodeId(1) && matches!(env.msg, PeerMessage::PresignStart { .. } | PeerMessage::PresigAbandon { .. })
        {
            Delivery::Delay(200_000)
        } else {
            Delivery::Deliver
        }
    });
    cluster.set_leader(Some(NodeId(1)));
    assert!(cluster.run_until(BUDGET_MS, |c| c.node(NodeId(1)).status().pool_generating >= max));
    cluster.set_leader(Some(NodeId(2)));
    cluster.run_for(250_000);
    let late = observed_at(&cluster, |o| {
        matches!(o, Observation::RejectedMessage { from, kind, reason }
            if *from == NodeId(1) && kind == "presign_start" && reason.contains("superseded"))
    });
    let peak = run_and_sample(&mut cluster, max);
    let ready = cluster.node(NodeId(2)).status().pool_ready;
    assert!(
        peak <= max && ready <= max,
        "ready plus generating reached {peak} ({ready} ready), above the maximum {max}"
    );
    assert!(!late.is_empty(), "no late start arrived: the test proves nothing");
    assert_invariants(&cluster, &[]);
}
