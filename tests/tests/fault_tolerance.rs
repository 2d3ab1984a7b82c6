//! The fault_tolerance suite: five real `mpc-node` processes (SQLite) and
//! what happens to a transaction when members stop, freeze or die under it.
//!
//! - ORCH-010, signing timeout: a signer frozen with SIGSTOP after it voted
//!   is asked to sign and never answers; after the signing timeout the
//!   coordinator gives that presignature up (never used again) and another
//!   signer set signs.
//! - ORCH-016, graceful shutdown: SIGTERM while the pool refills; the node
//!   exits 0, its sessions in flight are recorded abandoned and its peers
//!   told, the other four keep signing, and a restart resumes.
//! - ORCH-017, node failure during processing: `kill -9` of the proposer
//!   just after it accepted a PSBT, of a voter with the vote open, of the
//!   coordinator and of a signer mid-signing, and of every node at once
//!   after signing; each time every node ends with the signed transaction.
//!
//! The vote is held open by freezing (SIGSTOP) the members that must not
//! vote yet: with approve quorum 3 of 5, two votes leave it Voting until
//! the test thaws the others. After each test the five databases show no
//! presignature share used for two messages. Timeouts only guard against
//! hangs.

use mpc_core::tx::GroupKey;
use mpc_core::{NodeId, PresigId, Record};
use mpc_node::api::types::{HealthView, PresignatureStatus, TxStateName};
use mpc_sim::wallet::Spend;
use mpc_tests::audit::{
    assert_no_share_signed_two_messages, consumed_for, discards, metric, parse_tx, records, signer_sets,
};
use mpc_tests::flow::{
    destination, dkg, parse, signed_at, submit_psbt, transaction, wait_live, wait_pool, wait_state, wait_states,
    MINUTES,
};
use mpc_tests::{wait_for, LocalCluster, Options};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Short enough that a frozen signer costs seconds, long enough that its
/// probe window (a tenth) spans the test's freeze-and-thaw.
const SIGNING_MS: u64 = 10_000;

/// Five running nodes with a key and a pool of at least four.
fn cluster(test: &str) -> (LocalCluster, GroupKey) {
    let mut options = Options::default();
    options.timeouts.signing_ms = SIGNING_MS;
    let mut c = LocalCluster::new(test, options);
    c.start_all();
    wait_live(&c, &c.ids());
    let key = dkg(&c);
    wait_pool(&c, 4);
    (c, key)
}

fn spend(label: &str) -> Spend {
    Spend::simple(label, &[80_000], &destination(), 70_000, 2_000)
}

/// The coordination lease holder, as `via` sees it.
fn leader(c: &LocalCluster, via: u16) -> u16 {
    wait_for("a leader", MINUTES, || {
        let (_, body) = c.api(via).get_public("/api/v1/health")?;
        serde_json::from_str::<HealthView>(&body).ok()?.leader
    })
}

/// The lowest node id not in `not`.
fn member(c: &LocalCluster, not: &[u16]) -> u16 {
    c.ids().into_iter().find(|n| !not.contains(n)).expect("a node left")
}

fn freeze(c: &LocalCluster, ids: &[u16]) {
    for id in ids {
        c.signal(*id, libc::SIGSTOP);
    }
}

fn thaw(c: &LocalCluster, ids: &[u16]) {
    for id in ids {
        c.signal(*id, libc::SIGCONT);
    }
}

/// Freezes every node but `proposer` and `voter`, submits `spend` to
/// `proposer` and waits (polling fast) until `voter`'s vote reached it:
/// two approvals of the three needed, so it stays Voting. Returns the
/// transaction and the nodes left frozen.
fn submit_with_the_vote_held_open(
    c: &LocalCluster,
    key: &GroupKey,
    proposer: u16,
    voter: u16,
    spend: &Spend,
) -> (String, Vec<u16>) {
    let frozen: Vec<u16> = c.ids().into_iter().filter(|n| *n != proposer && *n != voter).collect();
    freeze(c, &frozen);
    let tx = submit_psbt(c, proposer, spend.psbt_bytes(key));
    let started = Instant::now();
    loop {
        let view = transaction(c, proposer, &tx);
        if let Some(v) = view.filter(|v| v.votes.iter().any(|x| x.voter == voter)) {
            assert_eq!(v.state, TxStateName::Voting, "two votes of five approved it: {v:?}");
            return (tx, frozen);
        }
        assert!(started.elapsed() < MINUTES, "node {voter}'s vote never reached node {proposer}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn orch_010_a_signer_frozen_mid_signing_costs_its_presignature_and_another_set_signs() {
    let (c, key) = cluster("orch010");
    let coordinator = leader(&c, 1);
    // A ready presignature of the coordinator with two others: the signer
    // to freeze and its partner.
    let (signer, partner) = wait_for("a ready signer set with the coordinator", 5 * MINUTES, || {
        let status: PresignatureStatus = parse(&c.api(coordinator).get("/api/v1/presignatures/status")?.body);
        status.signer_sets.iter().filter(|s| s.ready > 0 && s.signers.contains(&coordinator)).find_map(|s| {
            let others: Vec<u16> = s.signers.iter().copied().filter(|n| *n != coordinator).collect();
            (others.len() == 2).then(|| (others[0], others[1]))
        })
    });
    let idle: Vec<u16> = c.ids().into_iter().filter(|n| ![coordinator, signer, partner].contains(n)).collect();
    // The coordinator asks straight away (no probe) only signers it heard
    // from lately whose votes it holds, and it picks among sets whose
    // members it heard from within a signing timeout first: the other two
    // members stay silent longer than that, so that set is the pick.
    freeze(&c, &idle);
    std::thread::sleep(Duration::from_millis(SIGNING_MS + 1_000));
    let retries_before = metric(&c, &[coordinator], "mpc_signing_retries_total");
    let spent = spend("orch-010");
    // The vote held open by the partner: the signer votes and is heard,
    // then freezes; the partner's vote approves and the requests go out.
    freeze(&c, &[partner]);
    let tx = submit_psbt(&c, coordinator, spent.psbt_bytes(&key));
    let started = Instant::now();
    while !transaction(&c, coordinator, &tx).is_some_and(|v| v.votes.iter().any(|x| x.voter == signer)) {
        assert!(started.elapsed() < MINUTES, "node {signer}'s vote never reached node {coordinator}");
        std::thread::sleep(Duration::from_millis(20));
    }
    freeze(&c, &[signer]);
    thaw(&c, &[partner]);
    wait_for("the coordinator to give the frozen signer's presignature up", 2 * MINUTES, || {
        (metric(&c, &[coordinator], "mpc_signing_retries_total") > retries_before).then_some(())
    });
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(SIGNING_MS),
        "a retry after {waited:?}, before the signing timeout: not the frozen signer's doing"
    );
    // The others back: a set without the frozen signer signs.
    thaw(&c, &idle);
    let others: Vec<u16> = c.ids().into_iter().filter(|n| *n != signer).collect();
    wait_state(&c, &others, &tx, TxStateName::Signed, 5 * MINUTES);
    // The frozen node, thawed, learns the outcome.
    thaw(&c, &[signer]);
    signed_at(&c, &c.ids(), &key, &tx, &spent);
    eprintln!("node {signer} frozen mid-signing; the coordinator, node {coordinator}, retried after {waited:?}");

    // From the databases: the presignature the frozen signer held was
    // consumed by its live signers for this transaction (signing had
    // begun), and another set, without it, signed.
    let all = records(&c);
    let sets = signer_sets(&all, coordinator);
    let used = consumed_for(&all, parse_tx(&tx));
    let with_frozen: Vec<PresigId> =
        used.keys().copied().filter(|id| sets.get(id).is_some_and(|s| s.contains(&NodeId(signer)))).collect();
    assert!(!with_frozen.is_empty(), "a retry, but no presignature with node {signer} was consumed: {used:?}");
    assert!(
        used.iter().any(|(id, by)| !with_frozen.contains(id) && by.len() == 3),
        "no other set of three consumed its shares for the transaction: {used:?}"
    );
    // The given-up presignature is never used again: sign two more and
    // look for it in every consumption of every node.
    for more in 0..2 {
        let spent = spend(&format!("orch-010-after-{more}"));
        let next = submit_psbt(&c, coordinator, spent.psbt_bytes(&key));
        signed_at(&c, &c.ids(), &key, &next, &spent);
    }
    let all = records(&c);
    for (node, recs) in &all {
        for r in recs {
            if let Record::PresigConsumed { id, tx: t, .. } = r {
                assert!(
                    !with_frozen.contains(id) || *t == parse_tx(&tx),
                    "node {node} used the given-up {id} for another transaction"
                );
            }
        }
    }
    // The frozen signer's own share of it: consumed for this message (it
    // answered the stale request once thawed, and the answer was not
    // needed) or discarded (the abandon came first); never left ready.
    for id in &with_frozen {
        let settled = all[&signer].iter().any(
            |r| matches!(r, Record::PresigConsumed { id: i, .. } | Record::PresigDiscarded { id: i, .. } if i == id),
        );
        assert!(settled, "node {signer} still holds {id} as if usable");
    }
    assert_no_share_signed_two_messages(&all);
}

#[test]
fn orch_016_sigterm_mid_work_exits_0_abandons_its_sessions_and_a_restart_resumes() {
    let (mut c, key) = cluster("orch016");
    let before = spend("orch-016-before");
    let before_tx = submit_psbt(&c, 2, before.psbt_bytes(&key));
    signed_at(&c, &c.ids(), &key, &before_tx, &before);
    // SIGTERM node 2 while presignature sessions are running (the pool
    // refills towards its target): its last step persists, its sessions in
    // flight are recorded abandoned and its peers told. A session can
    // finish just between the look and the signal, so up to three tries.
    let mut abandoned_by_2: Vec<PresigId> = Vec::new();
    for attempt in 0..3 {
        if attempt > 0 {
            c.start(2);
            wait_live(&c, &[2]);
        }
        wait_for("sessions in flight", 5 * MINUTES, || {
            (metric(&c, &[2], "mpc_presignatures{state=\"generating\"}") > 0.0).then_some(())
        });
        let status = c.terminate(2, MINUTES);
        assert_eq!(status.code(), Some(0), "node 2 exited {status}:\n{}", c.log_tail(2, 30));
        let log = c.log(2);
        for line in ["SIGTERM received", "last step persisted; closing connections", "stopped"] {
            assert!(log.contains(line), "node 2's log lacks {line:?}:\n{}", c.log_tail(2, 30));
        }
        assert!(c.api(2).get_public("/api/v1/health").is_none(), "node 2's API still answers after it exited");
        let all = records(&c);
        abandoned_by_2 =
            discards(&all)[&2].iter().filter(|(_, reason)| reason.contains("shut down")).map(|(id, _)| *id).collect();
        // Nothing of node 2's is left generating: every share it started
        // is ready, consumed or discarded in its database.
        let mut open: BTreeSet<PresigId> = BTreeSet::new();
        for r in &all[&2] {
            match r {
                Record::PresigGenerating { id, .. } => {
                    open.insert(*id);
                }
                Record::PresigReady { id, .. }
                | Record::PresigConsumed { id, .. }
                | Record::PresigDiscarded { id, .. } => {
                    open.remove(id);
                }
                _ => {}
            }
        }
        assert!(open.is_empty(), "node 2 shut down leaving sessions neither finished nor abandoned: {open:?}");
        if !abandoned_by_2.is_empty() {
            break;
        }
        eprintln!("attempt {attempt}: no session was in flight at node 2 when it stopped");
    }
    assert!(!abandoned_by_2.is_empty(), "three SIGTERMs found no session in flight: the shutdown path was not shown");
    // Its peers discard their shares of those sessions on its word, long
    // before the session deadline would have.
    wait_for("a peer discarding on node 2's abandon", MINUTES, || {
        let d = discards(&records(&c));
        [1u16, 3, 4, 5]
            .iter()
            .any(|n| d[n].iter().any(|(id, reason)| abandoned_by_2.contains(id) && reason == "abandoned by node-2"))
            .then_some(())
    });
    // The other four keep serving and signing.
    let during = spend("orch-016-during");
    let during_tx = submit_psbt(&c, 1, during.psbt_bytes(&key));
    wait_state(&c, &[1, 3, 4, 5], &during_tx, TxStateName::Signed, 5 * MINUTES);
    // Restarted, node 2 resumes: what it had, and what it missed.
    c.start(2);
    wait_live(&c, &[2]);
    signed_at(&c, &c.ids(), &key, &before_tx, &before);
    signed_at(&c, &c.ids(), &key, &during_tx, &during);
    let after = spend("orch-016-after");
    let after_tx = submit_psbt(&c, 2, after.psbt_bytes(&key));
    signed_at(&c, &c.ids(), &key, &after_tx, &after);
    assert_no_share_signed_two_messages(&records(&c));
}

#[test]
fn orch_017_kill_9_at_each_point_of_a_transactions_life_and_every_node_finishes_it() {
    let (mut c, key) = cluster("orch017");
    let coordinator = leader(&c, 1);

    // 1. The proposer, just after it accepted the PSBT and voted: the
    //    others are frozen and have not voted.
    let proposer = member(&c, &[coordinator]);
    let s1 = spend("orch-017-proposer");
    let rest: Vec<u16> = c.ids().into_iter().filter(|n| *n != proposer).collect();
    freeze(&c, &rest);
    let tx1 = submit_psbt(&c, proposer, s1.psbt_bytes(&key));
    wait_for("the proposer's own vote", MINUTES, || {
        transaction(&c, proposer, &tx1).filter(|v| v.votes.iter().any(|x| x.own)).map(|_| ())
    });
    c.kill9(proposer);
    thaw(&c, &rest);
    c.start(proposer);
    wait_live(&c, &[proposer]);
    signed_at(&c, &c.ids(), &key, &tx1, &s1);
    eprintln!("point 1: proposer node {proposer} killed after accepting; signed everywhere");

    // 2. A voter with the vote open: its vote reached the proposer, then
    //    it dies; the thawed others approve; restarted, it catches up.
    wait_pool(&c, 4);
    let voter = member(&c, &[coordinator, proposer]);
    let s2 = spend("orch-017-voter");
    let (tx2, frozen) = submit_with_the_vote_held_open(&c, &key, coordinator, voter, &s2);
    c.kill9(voter);
    thaw(&c, &frozen);
    let alive: Vec<u16> = c.ids().into_iter().filter(|n| *n != voter).collect();
    wait_state(&c, &alive, &tx2, TxStateName::Signed, 5 * MINUTES);
    c.start(voter);
    wait_live(&c, &[voter]);
    signed_at(&c, &c.ids(), &key, &tx2, &s2);
    eprintln!("point 2: voter node {voter} killed with the vote open; signed everywhere");

    // 3. A signer mid-signing: it voted, froze before the signing request
    //    and is killed while frozen.
    wait_pool(&c, 4);
    let coordinator = leader(&c, proposer);
    let signer = member(&c, &[coordinator, proposer, voter]);
    let s3 = spend("orch-017-signer");
    let (tx3, frozen) = submit_with_the_vote_held_open(&c, &key, coordinator, signer, &s3);
    freeze(&c, &[signer]);
    thaw(&c, &frozen);
    wait_states(&c, &[coordinator], &tx3, &[TxStateName::Signing, TxStateName::Signed], 2 * MINUTES);
    c.kill9(signer);
    let alive: Vec<u16> = c.ids().into_iter().filter(|n| *n != signer).collect();
    wait_state(&c, &alive, &tx3, TxStateName::Signed, 5 * MINUTES);
    c.start(signer);
    wait_live(&c, &[signer]);
    signed_at(&c, &c.ids(), &key, &tx3, &s3);
    eprintln!("point 3: signer node {signer} killed mid-signing; signed everywhere");

    // 4. The coordinator mid-signing: a signer is frozen after its vote so
    //    that signing may wait on it; the coordinator dies in Signing (or
    //    just after it signed). The next lease holder takes over.
    wait_pool(&c, 4);
    let coordinator = leader(&c, signer);
    let stalled = member(&c, &[coordinator, signer]);
    let s4 = spend("orch-017-coordinator");
    let (tx4, frozen) = submit_with_the_vote_held_open(&c, &key, coordinator, stalled, &s4);
    freeze(&c, &[stalled]);
    thaw(&c, &frozen);
    wait_states(&c, &[coordinator], &tx4, &[TxStateName::Signing, TxStateName::Signed], 2 * MINUTES);
    let state_at_kill = transaction(&c, coordinator, &tx4).map(|v| v.state);
    c.kill9(coordinator);
    thaw(&c, &[stalled]);
    let alive: Vec<u16> = c.ids().into_iter().filter(|n| *n != coordinator).collect();
    wait_state(&c, &alive, &tx4, TxStateName::Signed, 5 * MINUTES);
    c.start(coordinator);
    wait_live(&c, &[coordinator]);
    signed_at(&c, &c.ids(), &key, &tx4, &s4);
    eprintln!("point 4: coordinator node {coordinator} killed in {state_at_kill:?}; signed everywhere");

    // 5. Every node at once, after signing (a power cut): restarted, each
    //    serves the transactions signed, and the cluster signs again.
    for id in c.ids() {
        c.kill9(id);
    }
    c.start_all();
    wait_live(&c, &c.ids());
    for (tx, s) in [(&tx1, &s1), (&tx2, &s2), (&tx3, &s3), (&tx4, &s4)] {
        signed_at(&c, &c.ids(), &key, tx, s);
    }
    wait_pool(&c, 1);
    let s5 = spend("orch-017-after-power-cut");
    let tx5 = submit_psbt(&c, 1, s5.psbt_bytes(&key));
    signed_at(&c, &c.ids(), &key, &tx5, &s5);
    eprintln!("point 5: all five killed at once; every transaction served signed, and a new one signed");
    let all = records(&c);
    let consumed = assert_no_share_signed_two_messages(&all);
    assert!(consumed >= 5 * 3, "five single-input transactions signed, yet only {consumed} consumptions recorded");
}
