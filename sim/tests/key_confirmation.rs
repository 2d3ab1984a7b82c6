//! Key confirmation and retried key generation (issue 11, item 8): a key is
//! the cluster's only once every member signed that the same attempt gave
//! it the same key; an attempt that finished at some members only is
//! abandoned and retried, and no two nodes ever adopt different keys.
//! Aux info is the TEST-ONLY fixture; keygen and confirmation are live.

use mpc_core::{
    Command, DkgClaim, DkgId, DkgRefusal, DkgStage, DkgStatement, NodeId, Observation, PeerMessage, Record, Reply,
    SessionId,
};
use mpc_sim::{checker, fixtures, setup, Cluster, Delivery};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

const LABEL: &str = "confirm-cluster";
const DEADLINE_MS: u64 = 10_000;

fn cluster(seed: u64) -> Cluster {
    let mut config = setup::cluster_config(LABEL, 5, 3);
    config.timeouts.dkg_ms = DEADLINE_MS;
    let records = fixtures::aux_records(5).expect("aux info fixture");
    Cluster::new(seed, setup::node_configs(&config), records).expect("cluster starts")
}

fn start_dkg(cluster: &mut Cluster, at: NodeId) -> Result<DkgId, DkgRefusal> {
    let request = cluster.command(at, Command::StartDkg);
    cluster.run_for(5);
    match cluster.reply(request) {
        Some(Reply::DkgStarted(result)) => result.clone(),
        other => panic!("unexpected reply {other:?}"),
    }
}

fn stage(cluster: &Cluster, id: NodeId) -> DkgStage {
    cluster.node(id).status().dkg_stage
}

fn adopted(cluster: &Cluster, id: NodeId) -> Option<DkgId> {
    cluster.hosts()[&id].store.iter().find_map(|r| match r {
        Record::KeyAdopted { dkg } => Some(*dkg),
        _ => None,
    })
}

fn all_keyed(cluster: &Cluster) -> bool {
    cluster.ids().iter().all(|id| cluster.node(*id).group_key().is_some())
}

fn keys(cluster: &Cluster) -> BTreeSet<String> {
    cluster.ids().iter().filter_map(|id| cluster.node(*id).group_key().map(|k| k.hex())).collect()
}

#[test]
fn a_key_is_adopted_only_once_every_member_confirmed_it() {
    let mut cluster = cluster(61);
    // Node 5's confirmations do not get through for a while.
    let withhold = Rc::new(Cell::new(true));
    let w = withhold.clone();
    cluster.set_interceptor(move |from, env| {
        if w.get() && from == NodeId(5) && matches!(env.msg, PeerMessage::DkgStatement(_)) {
            Delivery::Drop
        } else {
            Delivery::Deliver
        }
    });
    let dkg = start_dkg(&mut cluster, NodeId(1)).expect("started");
    cluster.run_for(5_000);
    // Node 5 holds every confirmation, so it adopted; the others miss its
    // confirmation and wait, holding their share pending.
    assert!(cluster.node(NodeId(5)).group_key().is_some(), "node 5 has every confirmation");
    for id in (1..=4).map(NodeId) {
        assert!(cluster.node(id).group_key().is_none(), "{id} adopted without node 5's confirmation");
        assert_eq!(stage(&cluster, id), DkgStage::Confirming);
        assert!(cluster.hosts()[&id].store.iter().any(|r| matches!(r, Record::KeyShare { dkg: d, .. } if *d == dkg)));
    }
    // No new attempt while that key may still be confirmed.
    match start_dkg(&mut cluster, NodeId(2)) {
        Err(DkgRefusal::AwaitingConfirmation { dkg: d, missing }) => {
            assert_eq!(d, dkg);
            assert_eq!(missing, vec![NodeId(5)]);
        }
        other => panic!("a retry over a pending share must be refused, got {other:?}"),
    }
    // Past the deadline the missing confirmation is reported, and the
    // share stays pending.
    cluster.run_for(DEADLINE_MS);
    let reported =
        cluster.observed(|o| matches!(o, Observation::DkgFailed { reason, .. } if reason.contains("(missing node-5)")));
    assert_eq!(reported.len(), 4, "each waiting node reports once: {reported:?}");
    assert!(cluster.node(NodeId(1)).group_key().is_none());

    // Once node 5 gets through, everyone adopts the same key.
    withhold.set(false);
    assert!(cluster.run_until(10_000, all_keyed), "the key is adopted everywhere once confirmations arrive");
    assert_eq!(keys(&cluster).len(), 1);
    for id in cluster.ids() {
        assert_eq!(adopted(&cluster, id), Some(dkg));
        let confirmations = cluster.hosts()[&id]
            .store
            .iter()
            .filter(|r| matches!(r, Record::DkgStatement(s) if s.dkg == dkg && !s.is_abandon()))
            .count();
        assert_eq!(confirmations, 5, "{id} keeps every member's confirmation");
    }
    assert!(checker::check(&cluster, &BTreeSet::new()).is_empty());
    // The adoption survives a restart.
    let key = cluster.node(NodeId(2)).group_key().cloned();
    cluster.crash(NodeId(2));
    cluster.restart(NodeId(2)).unwrap();
    assert_eq!(cluster.node(NodeId(2)).group_key().cloned(), key);
}

/// Counts keygen protocol messages from node 1 to node 5 in one attempt,
/// and optionally drops the `drop`-th.
fn keygen_messages_1_to_5(cluster: &mut Cluster, drop: Option<usize>) -> Rc<Cell<usize>> {
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    cluster.set_interceptor(move |from, env| {
        if from == NodeId(1) && env.to == NodeId(5) {
            if let PeerMessage::Protocol { session: SessionId::Keygen(_), .. } = &env.msg {
                c.set(c.get() + 1);
                if Some(c.get()) == drop {
                    return Delivery::Drop;
                }
            }
        }
        Delivery::Deliver
    });
    count
}

#[test]
fn a_keygen_finished_at_some_members_only_is_abandoned_then_retried() {
    // A dry run counts node 1's keygen messages to node 5; the real run
    // (same seed, same schedule up to the drop) loses the last one, so
    // nodes 1-4 finish keygen and node 5 never does.
    let mut dry = cluster(62);
    let sent = keygen_messages_1_to_5(&mut dry, None);
    start_dkg(&mut dry, NodeId(1)).unwrap();
    assert!(dry.run_until(10_000, all_keyed));
    let last = sent.get();
    assert!(last > 1);

    let mut cluster = cluster(62);
    keygen_messages_1_to_5(&mut cluster, Some(last));
    let first = start_dkg(&mut cluster, NodeId(1)).unwrap();
    cluster.run_for(3_000);
    for id in (1..=4).map(NodeId) {
        assert_eq!(stage(&cluster, id), DkgStage::Confirming, "{id} finished keygen");
    }
    assert_eq!(stage(&cluster, NodeId(5)), DkgStage::Keygen, "node 5 waits for the lost message");
    assert!(matches!(start_dkg(&mut cluster, NodeId(2)), Err(DkgRefusal::AwaitingConfirmation { .. })));

    // At the deadline node 5 gives up without a share and signs so; the
    // others learn that the pending key can never be confirmed.
    cluster.run_for(DEADLINE_MS);
    let abandoned = |c: &Cluster, id: NodeId| {
        c.hosts()[&id]
            .store
            .iter()
            .any(|r| matches!(r, Record::DkgStatement(s) if s.dkg == first && s.member == NodeId(5) && s.is_abandon()))
    };
    for id in cluster.ids() {
        assert!(abandoned(&cluster, id), "{id} holds node 5's abandonment");
        assert!(cluster.node(id).group_key().is_none());
    }

    // The operator retries: every member joins, and the new key is adopted.
    let second = start_dkg(&mut cluster, NodeId(2)).expect("a retry is allowed once the attempt is abandoned");
    assert_ne!(first, second);
    assert!(cluster.run_until(10_000, all_keyed), "the retried DKG keys every member");
    assert_eq!(keys(&cluster).len(), 1);
    for id in cluster.ids() {
        assert_eq!(adopted(&cluster, id), Some(second), "{id} adopted the retry's key");
    }
    let shares = cluster.hosts()[&NodeId(1)].store.iter().filter(|r| matches!(r, Record::KeyShare { .. })).count();
    assert_eq!(shares, 2, "node 1 held a pending share of the first attempt, replaced by the second");
    assert!(checker::check(&cluster, &BTreeSet::new()).is_empty());
    // Restarted, a node comes back with the retry's key, not the first one.
    let key = cluster.node(NodeId(1)).group_key().cloned();
    cluster.crash(NodeId(1));
    cluster.restart(NodeId(1)).unwrap();
    assert_eq!(cluster.node(NodeId(1)).group_key().cloned(), key);
}

#[test]
fn a_member_restarted_during_keygen_abandons_the_attempt_it_lost() {
    let mut cluster = cluster(63);
    // Node 3 goes down right after it joins, before it sends anything.
    cluster.set_crash_point(|node, records| {
        node == NodeId(3) && records.iter().any(|r| matches!(r, Record::DkgJoined { .. }))
    });
    let first = start_dkg(&mut cluster, NodeId(1)).unwrap();
    cluster.run_for(1_000);
    assert!(!cluster.is_up(NodeId(3)));
    cluster.clear_crash_point();
    cluster.restart(NodeId(3)).unwrap();
    cluster.run_for(500);
    // Well before the deadline: node 3 lost its session, said so, and the
    // others gave the attempt up at once.
    for id in cluster.ids() {
        assert_ne!(stage(&cluster, id), DkgStage::Keygen, "{id} still runs an attempt node 3 abandoned");
    }
    let gave_up = cluster.observed(|o| matches!(o, Observation::DkgFailed { dkg, .. } if *dkg == first));
    assert_eq!(gave_up.len(), 5, "{gave_up:?}");
    start_dkg(&mut cluster, NodeId(4)).expect("retry");
    assert!(cluster.run_until(10_000, all_keyed));
    assert_eq!(keys(&cluster).len(), 1);
    assert!(checker::check(&cluster, &BTreeSet::new()).is_empty());
}

#[test]
fn forged_or_disagreeing_confirmations_never_make_a_key() {
    let mut cluster = cluster(64);
    // Node 5 is Byzantine: it confirms a different key, properly signed.
    let node5 = setup::vote_key(LABEL, NodeId(5));
    cluster.set_interceptor(move |from, env| {
        if from == NodeId(5) {
            if let PeerMessage::DkgStatement(s) = &env.msg {
                if let (NodeId(5), DkgClaim::Confirmed { public_key }) = (s.member, &s.claim) {
                    let mut other = public_key.clone();
                    other[1] ^= 1;
                    let lie =
                        DkgStatement::sign(s.dkg, s.member, DkgClaim::Confirmed { public_key: other }, &node5, LABEL);
                    env.msg = PeerMessage::DkgStatement(lie);
                }
            }
        }
        Delivery::Deliver
    });
    let dkg = start_dkg(&mut cluster, NodeId(1)).unwrap();
    cluster.run_for(5_000);
    for id in (1..=4).map(NodeId) {
        assert!(cluster.node(id).group_key().is_none(), "{id} adopted over a disagreeing confirmation");
    }
    let disagree = cluster
        .observed(|o| matches!(o, Observation::DkgFailed { reason, .. } if reason.contains("different group key")));
    assert_eq!(disagree.len(), 4);

    // A forged statement (bad signature) is refused and changes nothing.
    let forged = DkgStatement { dkg, member: NodeId(2), claim: DkgClaim::Abandoned, signature: [7; 64] };
    cluster.inject(NodeId(5), NodeId(1), PeerMessage::DkgStatement(forged));
    cluster.run_for(100);
    let refused =
        cluster.observed(|o| matches!(o, Observation::RejectedMessage { kind, .. } if kind == "dkg_statement"));
    assert_eq!(refused.len(), 1);
    let held: BTreeMap<NodeId, usize> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let abandons = cluster.hosts()[&id]
                .store
                .iter()
                .filter(|r| matches!(r, Record::DkgStatement(s) if s.is_abandon()))
                .count();
            (id, abandons)
        })
        .collect();
    assert!(held.values().all(|n| *n == 0), "a forged abandonment was held: {held:?}");
    assert!(matches!(start_dkg(&mut cluster, NodeId(1)), Err(DkgRefusal::AwaitingConfirmation { .. })));
}

/// Key generation alone over many live-keygen plans: the network loses,
/// duplicates and delays messages, a member is cut off or crashes while
/// keygen runs, and the harness retries as an operator would. Every seed
/// must end with every member holding the one key, and the faults must
/// have made retries happen. `MPC_SIM_KEYGEN_PHASE_SEEDS` (e.g. `0..1000`)
/// widens the range.
#[test]
fn live_keygen_under_loss_partitions_and_crashes_keys_every_member() {
    use mpc_sim::sweep::{run_keygen_phase, SeedPlan, SeedShape};
    let seeds = std::env::var("MPC_SIM_KEYGEN_PHASE_SEEDS").unwrap_or_else(|_| "0..80".into());
    let (a, b) = seeds.split_once("..").expect("range a..b");
    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for seed in a..b {
        let plan = SeedPlan::shaped(seed, SeedShape::LiveKeygen);
        let outcome = run_keygen_phase(&plan);
        if !outcome.violations.is_empty() {
            failures.push(format!("seed {seed}:\n{plan}  {:?}", outcome.violations));
        }
        for (k, v) in outcome.coverage {
            *totals.entry(k).or_default() += v;
        }
    }
    assert!(failures.is_empty(), "{} seeds failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("keygen phase over seeds {seeds}: {totals:?}");
    for kind in ["crash and restart", "partition", "key generation retried"] {
        assert!(totals.get(kind).copied().unwrap_or(0) > 0, "no seed had a {kind}: {totals:?}");
    }
}
