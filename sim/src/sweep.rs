//! One seed, one run: a fault plan expanded from the seed, run on a fixture
//! cluster, then checked. A failing seed prints its plan and a one-line
//! replay command; the same seed gives the same trace hash.
//!
//! A run has a safety phase (faults active, invariants must hold) followed
//! by a liveness phase (partitions healed, crashed nodes restarted, no more
//! message loss; every transaction must reach a final state at every honest
//! node).

use crate::checker;
use crate::cluster::{Cluster, Delivery};
use crate::wallet::Spend;
use crate::{fixtures, scenario, setup};
use mpc_core::vote::{Decision, SignedVote, VoteBody};
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, Record, TxId, TxState};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::OnceLock;

pub const N: u16 = 5;
const SAFETY_MS: u64 = 120_000;
const LIVENESS_MS: u64 = 1_800_000;

/// What a Byzantine node does (at most one per run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ByzantineAct {
    /// Signs an approval for some peers and a rejection for others.
    EquivocateVotes,
    /// Sends votes claiming other members' names with invalid signatures.
    ForgeVoteSignatures,
    /// Corrupts every partial signature it sends.
    BadPartialSignatures,
    /// Sends nothing at all.
    Silence,
    /// As lease holder, redirects its signing requests to a transaction the
    /// cluster rejected, keeping the certificate of an approved one.
    SignRejected,
}

#[derive(Clone, Debug)]
pub struct TxPlan {
    pub at_ms: u64,
    pub node: NodeId,
    /// Pays an allowlisted destination (all honest nodes approve) or not
    /// (all reject).
    pub allowed: bool,
    pub inputs: usize,
}

#[derive(Clone, Debug)]
pub struct SeedPlan {
    pub seed: u64,
    pub leader: Option<NodeId>,
    pub loss_permille: u32,
    pub duplicate_permille: u32,
    pub max_delay_ms: u64,
    /// (start, end, isolated side).
    pub partitions: Vec<(u64, u64, BTreeSet<NodeId>)>,
    /// (at, node, down for).
    pub crashes: Vec<(u64, NodeId, u64)>,
    /// Crash this node right after it persists a record of this kind.
    pub crash_after_persist: Option<(NodeId, &'static str)>,
    pub byzantine: Option<(NodeId, ByzantineAct)>,
    /// Nodes whose policy rejects payments above 100k sat: 4-1 and 3-2
    /// splits on big payments.
    pub strict: Vec<NodeId>,
    pub txs: Vec<TxPlan>,
}

impl SeedPlan {
    /// Expands a seed into a plan. Many seeds have no Byzantine node.
    pub fn from_seed(seed: u64) -> SeedPlan {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut pick = |n: u64| rng.next_u64() % n;
        let node = |k: u64| NodeId(1 + (k % N as u64) as u16);
        let leader = if pick(4) == 0 { None } else { Some(node(pick(5))) };
        let loss_permille = [0, 0, 10, 50][pick(4) as usize];
        let duplicate_permille = [0, 20, 100][pick(3) as usize];
        let max_delay_ms = [0, 10, 200][pick(3) as usize];
        let mut partitions = Vec::new();
        match pick(4) {
            0 => {
                let start = pick(30_000);
                partitions.push((start, start + 5_000 + pick(60_000), [node(pick(5))].into()));
            }
            1 => {
                let a = node(pick(5));
                let b = NodeId(1 + (a.0 % N));
                let start = pick(30_000);
                partitions.push((start, start + 5_000 + pick(60_000), [a, b].into()));
            }
            _ => {}
        }
        let mut crashes = Vec::new();
        if pick(3) == 0 {
            crashes.push((pick(40_000), node(pick(5)), 1_000 + pick(60_000)));
        }
        let crash_after_persist = if pick(3) == 0 {
            let kinds = ["presig_consumed", "own_vote", "tx_accepted", "vote", "signed_tx", "tx_state"];
            Some((node(pick(5)), kinds[pick(kinds.len() as u64) as usize]))
        } else {
            None
        };
        let byzantine = match pick(9) {
            0 => Some((node(pick(5)), ByzantineAct::EquivocateVotes)),
            1 => Some((node(pick(5)), ByzantineAct::ForgeVoteSignatures)),
            2 => Some((node(pick(5)), ByzantineAct::BadPartialSignatures)),
            3 => Some((node(pick(5)), ByzantineAct::Silence)),
            4 => Some((node(pick(5)), ByzantineAct::SignRejected)),
            _ => None,
        };
        let first_strict = pick(5);
        let strict = (0..pick(3)).map(|k| node(first_strict + k)).collect();
        let txs = (0..1 + pick(3))
            .map(|_| TxPlan {
                at_ms: pick(20_000),
                node: node(pick(5)),
                allowed: pick(4) != 0,
                inputs: 1 + pick(2) as usize,
            })
            .collect();
        let mut plan = SeedPlan {
            seed,
            leader,
            loss_permille,
            duplicate_permille,
            max_delay_ms,
            partitions,
            crashes,
            crash_after_persist,
            byzantine,
            strict,
            txs,
        };
        // A Byzantine node's own crash or submission would blur what the
        // run tests; honest nodes take those roles.
        if let Some((b, _)) = plan.byzantine {
            let honest = |n: NodeId| if n == b { NodeId(1 + (b.0 % N)) } else { n };
            plan.txs.iter_mut().for_each(|t| t.node = honest(t.node));
            plan.crashes.iter_mut().for_each(|c| c.1 = honest(c.1));
            if let Some(c) = plan.crash_after_persist.as_mut() {
                c.0 = honest(c.0);
            }
        }
        plan
    }

    pub fn replay_command(&self) -> String {
        let features = if mpc_core::REDUCED_SECURITY_TEST_ONLY { " --features reduced-security" } else { "" };
        format!("cargo run --release -p mpc-sim{features} --bin mpc-sim -- --seed {}", self.seed)
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct SeedOutcome {
    pub trace_hash: String,
    pub violations: Vec<String>,
    /// Rare paths reached, by name.
    pub coverage: BTreeMap<&'static str, u64>,
    pub signed: usize,
    pub rejected: usize,
    /// Every observation, in order, when the run was asked to trace.
    pub log: Vec<String>,
}

fn fixture_records() -> &'static BTreeMap<NodeId, Vec<Record>> {
    static RECORDS: OnceLock<BTreeMap<NodeId, Vec<Record>>> = OnceLock::new();
    RECORDS.get_or_init(|| fixtures::load_cluster(N).expect("fixture cluster (see sim/src/fixtures.rs)"))
}

/// Runs one seed and checks it.
pub fn run_seed(plan: &SeedPlan) -> SeedOutcome {
    run_seed_traced(plan, false)
}

/// [`run_seed`], optionally keeping a readable log of every observation.
pub fn run_seed_traced(plan: &SeedPlan, trace: bool) -> SeedOutcome {
    run_seed_with_bugs(plan, trace, mpc_core::PlantedBugs::NONE)
}

/// [`run_seed_traced`] with bugs planted in every node (TEST ONLY).
pub fn run_seed_with_bugs(plan: &SeedPlan, trace: bool, bugs: mpc_core::PlantedBugs) -> SeedOutcome {
    let mut config = setup::cluster_config(fixtures::FIXTURE_CLUSTER_ID, N, 3);
    // The fixture pool serves the run; refill (live presigning, seconds of
    // CPU each) starts only if it runs low.
    config.pool.low_water = 1;
    config.pool.target = 2;
    config.pool.max = 60;
    let mut nodes = setup::node_configs(&config);
    for strict in &plan.strict {
        if let Some((cfg, _)) = nodes.get_mut(strict) {
            cfg.policy.max_amount_sat = 100_000;
        }
    }
    let mut cluster =
        Cluster::with_bugs(plan.seed, nodes, fixture_records().clone(), bugs).expect("fixture cluster starts");
    let key = cluster.node(NodeId(1)).group_key().expect("fixture is keyed").clone();
    cluster.set_leader(plan.leader);

    let net = Rc::new(RefCell::new(NetState { cut: BTreeSet::new(), lossy: true, tampered: Vec::new() }));
    install_interceptor(&mut cluster, plan, net.clone());
    let crash_hits = Rc::new(RefCell::new(0u64));
    if let Some((victim, kind)) = plan.crash_after_persist {
        let hits = crash_hits.clone();
        cluster.set_crash_point(move |node, step| {
            let fire = node == victim && *hits.borrow() == 0 && step.persist.iter().any(|r| r.kind() == kind);
            if fire {
                *hits.borrow_mut() += 1;
            }
            fire
        });
    }

    // The safety phase: a timeline of faults and submissions.
    enum Act {
        Submit(usize),
        Cut(BTreeSet<NodeId>),
        Heal,
        Crash(NodeId),
        Restart(NodeId),
    }
    let mut timeline: Vec<(u64, Act)> = Vec::new();
    for (i, t) in plan.txs.iter().enumerate() {
        timeline.push((t.at_ms, Act::Submit(i)));
    }
    for (start, end, side) in &plan.partitions {
        timeline.push((*start, Act::Cut(side.clone())));
        timeline.push((*end, Act::Heal));
    }
    for (at, node, down) in &plan.crashes {
        timeline.push((*at, Act::Crash(*node)));
        timeline.push((at + down, Act::Restart(*node)));
    }
    timeline.sort_by_key(|(at, _)| *at);
    let destination = bitcoin::Address::from_str(setup::TEST_DESTINATION)
        .unwrap()
        .require_network(bitcoin::Network::Regtest)
        .unwrap();
    let stranger = bitcoin::Address::from_str("bcrt1qq6hag67dl53wl99vzg42z8eyzfz2xlkvwk6f7m")
        .unwrap()
        .require_network(bitcoin::Network::Regtest)
        .unwrap();
    let start = cluster.now();
    let mut submitted: Vec<(usize, NodeId)> = Vec::new();
    for (at, act) in timeline {
        let target = start.plus(at);
        let wait = target.0.saturating_sub(cluster.now().0);
        cluster.run_for(wait);
        match act {
            Act::Submit(i) => {
                let t = &plan.txs[i];
                let to = if t.allowed { &destination } else { &stranger };
                let values: Vec<u64> = (0..t.inputs).map(|k| 90_000 + 10_000 * k as u64).collect();
                let amount = if i % 2 == 0 { 60_000 } else { 150_000 };
                let spend = Spend::simple(&format!("seed-{}-tx-{i}", plan.seed), &values, to, amount, 2_000);
                if cluster.is_up(t.node) {
                    cluster.command(t.node, mpc_core::Command::SubmitPsbt { psbt: spend.psbt_bytes(&key) });
                    submitted.push((i, t.node));
                }
            }
            Act::Cut(side) => net.borrow_mut().cut = side,
            Act::Heal => net.borrow_mut().cut.clear(),
            Act::Crash(n) => {
                if cluster.is_up(n) {
                    cluster.crash(n)
                }
            }
            Act::Restart(n) => {
                if !cluster.is_up(n) {
                    cluster.restart(n).expect("restart from records")
                }
            }
        }
    }
    let elapsed = cluster.now().0 - start.0;
    cluster.run_for(SAFETY_MS.saturating_sub(elapsed));

    // The liveness phase: faults heal, Byzantine behaviour goes on.
    cluster.clear_crash_point();
    {
        let mut n = net.borrow_mut();
        n.cut.clear();
        n.lossy = false;
    }
    for id in cluster.ids() {
        if !cluster.is_up(id) {
            cluster.restart(id).expect("restart from records");
        }
    }
    // Coordination heals too: some honest node holds the lease again.
    let byz = plan.byzantine.map(|(b, _)| b);
    if plan.leader.is_none() || plan.leader == byz {
        let leader = cluster.ids().into_iter().find(|id| Some(*id) != byz);
        cluster.set_leader(leader);
    }
    let byzantine: BTreeSet<NodeId> = plan.byzantine.map(|(b, _)| b).into_iter().collect();
    let accepted: BTreeSet<TxId> = cluster
        .replies
        .iter()
        .filter_map(|(_, _, r)| match r {
            mpc_core::Reply::Submitted(Ok(tx)) => Some(*tx),
            _ => None,
        })
        .collect();
    let honest: Vec<NodeId> = cluster.ids().into_iter().filter(|id| !byzantine.contains(id)).collect();
    let done = cluster.run_until(LIVENESS_MS, |c| {
        accepted.iter().all(|tx| honest.iter().all(|id| scenario::state_at(c, *id, *tx).is_some_and(|s| s.is_final())))
    });

    let mut outcome = SeedOutcome { trace_hash: cluster.trace_hash(), ..Default::default() };
    if trace {
        outcome.log =
            cluster.observations.iter().map(|(at, node, o)| format!("{:>9} {node} {o:?}", at.0 - start.0)).collect();
    }
    outcome.violations = checker::check(&cluster, &byzantine).into_iter().map(|v| v.0).collect();
    if !done {
        for tx in &accepted {
            let states: Vec<(NodeId, Option<TxState>)> =
                honest.iter().map(|id| (*id, scenario::state_at(&cluster, *id, *tx))).collect();
            if states.iter().any(|(_, s)| !s.as_ref().is_some_and(settled)) {
                outcome.violations.push(format!("liveness: {} not final at every honest node: {states:?}", tx.short()));
            }
        }
    }
    if let Some((b, act)) = plan.byzantine {
        // Acts that reached a live node: tampered messages sent, less those
        // that arrived while their recipient was down.
        let fired = {
            let net = net.borrow();
            let mut lost = cluster.dropped_at_down_nodes.clone();
            net.tampered
                .iter()
                .filter(|sent| match lost.iter().position(|d| d == *sent) {
                    Some(i) => {
                        lost.swap_remove(i);
                        false
                    }
                    None => true,
                })
                .count() as u64
        };
        check_attribution(&cluster, b, act, fired, &mut outcome);
        if fired > 0 {
            *outcome.coverage.entry("byzantine act delivered").or_default() += fired;
        }
    }
    for tx in &accepted {
        match scenario::state_at(&cluster, honest[0], *tx) {
            Some(TxState::Signed) => outcome.signed += 1,
            Some(TxState::Rejected) => outcome.rejected += 1,
            _ => {}
        }
    }
    let mut cov = |name: &'static str, n: usize| {
        if n > 0 {
            *outcome.coverage.entry(name).or_default() += n as u64;
        }
    };
    cov("crash between persist and send", *crash_hits.borrow() as usize);
    cov("crash and restart", plan.crashes.len());
    cov("partition", plan.partitions.len());
    cov("equivocation detected", cluster.observed(|o| matches!(o, Observation::Equivocation { .. })).len());
    cov("forged vote refused", cluster.observed(|o| matches!(o, Observation::ForgedVote { .. })).len());
    cov("forged certificate refused", cluster.observed(|o| matches!(o, Observation::ForgedCertificate { .. })).len());
    cov(
        "bad partial signature named",
        cluster.observed(|o| matches!(o, Observation::BadPartialSignature { .. })).len(),
    );
    cov("signing retried", cluster.observed(|o| matches!(o, Observation::SigningRetried { .. })).len());
    cov(
        "presignature reuse refused",
        cluster
            .observed(|o| matches!(o, Observation::SigningRefused { reason, .. } if reason.contains("UsedElsewhere")))
            .len(),
    );
    cov("presignature split between messages", checker::split_presignatures(&cluster));
    cov("live presignature generated", cluster.observed(|o| matches!(o, Observation::PresigReady { .. })).len());
    cov("presignature discarded", cluster.observed(|o| matches!(o, Observation::PresigDiscarded { .. })).len());
    cov("transaction signed", outcome.signed);
    cov("transaction rejected", outcome.rejected);
    outcome
}

/// Where a transaction may rest at the end of a run: a final state, or
/// Expired (no certificate by the vote deadline, as when honest nodes split
/// 2-2 and the fifth vote is an equivocator's).
fn settled(s: &TxState) -> bool {
    s.is_final() || *s == TxState::Expired
}

/// Invariant 6's other half: an act that reached an honest node was seen
/// and pinned on the right node. (Silence is only visible as absence; the
/// run's liveness check covers it.)
fn check_attribution(cluster: &Cluster, b: NodeId, act: ByzantineAct, fired: u64, outcome: &mut SeedOutcome) {
    if fired == 0 {
        return;
    }
    let detected = match act {
        ByzantineAct::EquivocateVotes => {
            !cluster.observed(|o| matches!(o, Observation::Equivocation { voter, .. } if *voter == b)).is_empty()
        }
        ByzantineAct::ForgeVoteSignatures => {
            !cluster.observed(|o| matches!(o, Observation::ForgedVote { from, .. } if *from == b)).is_empty()
        }
        ByzantineAct::BadPartialSignatures => !cluster
            .observed(|o| matches!(o, Observation::BadPartialSignature { signer, .. } if *signer == b))
            .is_empty(),
        ByzantineAct::Silence => true,
        ByzantineAct::SignRejected => {
            !cluster.observed(|o| matches!(o, Observation::ForgedCertificate { from, .. } if *from == b)).is_empty()
        }
    };
    if !detected {
        outcome
            .violations
            .push(format!("byzantine {act:?} by {b} reached honest nodes {fired} times, never attributed"));
    }
}

struct NetState {
    /// Nodes cut off from the rest.
    cut: BTreeSet<NodeId>,
    /// Loss, duplication and delay apply only in the safety phase.
    lossy: bool,
    /// Messages the Byzantine act changed, or withheld (silence), that the
    /// network would have delivered: (recipient, message).
    tampered: Vec<(NodeId, PeerMessage)>,
}

fn install_interceptor(cluster: &mut Cluster, plan: &SeedPlan, net: Rc<RefCell<NetState>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(plan.seed ^ 0x006e_6574_776f_726b);
    let (loss, dup, delay) = (plan.loss_permille as u64, plan.duplicate_permille as u64, plan.max_delay_ms);
    let byzantine = plan.byzantine;
    let cluster_id = fixtures::FIXTURE_CLUSTER_ID;
    // Reject votes seen in flight, per transaction: what a Byzantine node
    // could learn by listening.
    let mut rejections: BTreeMap<TxId, BTreeSet<NodeId>> = BTreeMap::new();
    cluster.set_interceptor(move |from, env: &mut Envelope| {
        if let PeerMessage::Vote(v) = &env.msg {
            if !v.body.decision.is_approve() {
                rejections.entry(v.body.tx).or_default().insert(v.body.voter);
            }
        }
        let mut net = net.borrow_mut();
        if net.cut.contains(&from) != net.cut.contains(&env.to) {
            return Delivery::Drop;
        }
        let before = env.msg.clone();
        let decision = network_faults(&net, &mut rng, loss, dup, delay);
        if let Some((b, act)) = byzantine {
            if from == b {
                match act {
                    ByzantineAct::Silence => {
                        if !matches!(decision, Delivery::Drop) {
                            net.tampered.push((env.to, env.msg.clone()));
                        }
                        return Delivery::Drop;
                    }
                    ByzantineAct::EquivocateVotes => {
                        if let PeerMessage::Vote(v) = &env.msg {
                            if v.body.voter == b && env.to.0.is_multiple_of(2) {
                                let flipped = match v.body.decision {
                                    Decision::Approve => Decision::Reject("equivocation".into()),
                                    Decision::Reject(_) => Decision::Approve,
                                };
                                let body = VoteBody { decision: flipped, ..v.body.clone() };
                                env.msg = PeerMessage::Vote(SignedVote::sign(
                                    body,
                                    &setup::vote_key(cluster_id, b),
                                    cluster_id,
                                ));
                            }
                        }
                    }
                    ByzantineAct::ForgeVoteSignatures => {
                        if let PeerMessage::Vote(v) = &env.msg {
                            if v.body.voter == b {
                                // Claim the next member's name, with a broken signature.
                                let mut forged = v.clone();
                                forged.body.voter = NodeId(1 + (b.0 % N));
                                forged.signature[0] ^= 0xff;
                                env.msg = PeerMessage::Vote(forged);
                            }
                        }
                    }
                    ByzantineAct::BadPartialSignatures => {
                        if let PeerMessage::SigningResponse { result: Ok(p), .. } = &mut env.msg {
                            p.0[31] ^= 0x01;
                        }
                    }
                    ByzantineAct::SignRejected => {
                        let rejected = rejections.iter().find(|(_, voters)| voters.len() >= 4).map(|(tx, _)| *tx);
                        if let (PeerMessage::SigningRequest { tx, .. }, Some(rejected)) = (&mut env.msg, rejected) {
                            *tx = rejected;
                        }
                    }
                }
            }
        }
        if env.msg != before && !matches!(decision, Delivery::Drop) {
            net.tampered.push((env.to, env.msg.clone()));
        }
        decision
    });
}

/// Loss, duplication and reordering for one message, in the safety phase.
fn network_faults(net: &NetState, rng: &mut ChaCha20Rng, loss: u64, dup: u64, delay: u64) -> Delivery {
    let roll = rng.next_u64() % 1000;
    if !net.lossy {
        return Delivery::Deliver;
    }
    if roll < loss {
        Delivery::Drop
    } else if roll < loss + dup {
        Delivery::Duplicate(rng.next_u64() % (delay + 1))
    } else if delay > 0 {
        Delivery::Delay(rng.next_u64() % (delay + 1))
    } else {
        Delivery::Deliver
    }
}
