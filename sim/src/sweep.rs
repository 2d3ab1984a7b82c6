//! One seed, one run: a fault plan expanded from the seed, run on a fixture
//! cluster, then checked. A failing seed prints its plan and a one-line
//! replay command; the same seed gives the same trace hash.
//!
//! A run has a safety phase (faults active, invariants must hold) followed
//! by a liveness phase (partitions healed, crashed nodes restarted, no more
//! message loss; every transaction must reach a final state at every honest
//! node).

use crate::chain::ChainEvent;
use crate::checker;
use crate::cluster::{Cluster, NetOptions};
use crate::host::Clock;
use crate::host::Delivery;
use crate::wallet::Spend;
use crate::{fixtures, scenario, setup};
use mpc_core::vote::{Decision, SignedVote, VoteBody};
use mpc_core::{Envelope, NodeId, Observation, PeerMessage, Record, TxId, TxState};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::OnceLock;

pub const N: u16 = 5;
const SAFETY_MS: u64 = 120_000;
/// Presignatures in the fixture cluster's pool (`sim/fixtures`): 40 sets
/// of three signers.
const FIXTURE_POOL: usize = 40;
const LIVENESS_MS: u64 = 1_800_000;
/// How often (simulated ms) the checker runs during a run.
const CHECK_EVERY_MS: u64 = 10_000;
/// Simulated time live key generation gets, its faults and the
/// operator's retries included.
const KEYGEN_MS: u64 = 120_000;
/// Loss, duplication and delay during keygen stop here (its planned crash
/// and partition are over by then too). A cggmp24 session has no
/// retransmission: one lost round message fails the attempt, so under
/// constant loss an attempt rarely finishes; once the network heals, a
/// retry does.
const KEYGEN_FAULTS_MS: u64 = 35_000;
/// Key generation's deadline (`timeouts.dkg_ms`) in live-keygen runs:
/// keygen itself takes milliseconds, so a failed attempt is given up soon.
const KEYGEN_DEADLINE_MS: u64 = 15_000;

/// Record kinds after whose persisting a node may crash, before its sends.
pub const CRASH_AFTER_KINDS: [&str; 6] =
    ["presig_consumed", "own_vote", "tx_accepted", "vote", "signed_tx", "tx_state"];

/// Every Byzantine act a plan can schedule.
pub const BYZANTINE_ACTS: [ByzantineAct; 12] = [
    ByzantineAct::EquivocateVotes,
    ByzantineAct::ForgeVoteSignatures,
    ByzantineAct::BadPartialSignatures,
    ByzantineAct::Silence,
    ByzantineAct::SignRejected,
    ByzantineAct::ForeignVotes,
    ByzantineAct::ReplayOldMessages,
    ByzantineAct::RefuseToSign,
    ByzantineAct::FakeProposals,
    ByzantineAct::AbandonFlood,
    ByzantineAct::GarbleProtocol,
    ByzantineAct::AnnounceFlood,
];

/// How a seed's cluster starts, which decides what its crypto costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum SeedShape {
    /// Fixture key shares and a full fixture pool: votes, signing, crashes
    /// and Byzantine acts with milliseconds of cryptography. Refill is off.
    #[default]
    Fixture,
    /// Fixture key shares and an empty pool: the pool fills by live
    /// presigning (seconds of CPU each) under the seed's faults, and must
    /// return to its target once they heal.
    LivePresign,
    /// Fixture aux info only: live keygen at the start, under the plan's
    /// loss, duplication and delay and its keygen crash and partition,
    /// retried by the harness as an operator would; then live presigning.
    /// Keygen needs every member, so the Byzantine member behaves until
    /// the key exists (a silent one makes keygen impossible).
    LiveKeygen,
}

impl SeedShape {
    pub const ALL: [SeedShape; 3] = [SeedShape::Fixture, SeedShape::LivePresign, SeedShape::LiveKeygen];

    pub fn name(self) -> &'static str {
        match self {
            SeedShape::Fixture => "fixture",
            SeedShape::LivePresign => "live-presign",
            SeedShape::LiveKeygen => "live-keygen",
        }
    }

    pub fn parse(name: &str) -> Option<SeedShape> {
        SeedShape::ALL.into_iter().find(|s| s.name() == name)
    }
}

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
    /// Sends its votes signed for another cluster (a foreign session): its
    /// own key, but bound to a context this cluster never runs.
    ForeignVotes,
    /// Sends copies of its earlier messages again, to any member, later.
    /// Signed content is idempotent and sessions drop what they already
    /// have, so a replay must change nothing: the run checks it did not.
    ReplayOldMessages,
    /// Refuses every signing request it is asked, saying its share is
    /// spent: each refusal costs the presignature.
    RefuseToSign,
    /// Follows its messages with proposals that are not valid PSBTs.
    FakeProposals,
    /// Follows its messages with abandons of presignatures it neither
    /// signs nor was asked to use, trying to wipe the pool.
    AbandonFlood,
    /// Corrupts its cggmp24 round messages: to even-numbered members cut
    /// to half their length (they no longer decode), to odd-numbered ones
    /// with one byte flipped in the middle (they may decode, and then fail
    /// a proof cggmp24 checks).
    GarbleProtocol,
    /// Follows its messages with announcements of presignatures that were
    /// never started, trying to fill the pool's view with made-up ids.
    AnnounceFlood,
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
    pub shape: SeedShape,
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
    /// Each node's clock offset and drift.
    pub clocks: BTreeMap<NodeId, Clock>,
    /// Live keygen only: a partition (start, end, isolated side) and a
    /// crash (at, node, down for) while key generation runs.
    pub keygen_partition: Option<(u64, u64, BTreeSet<NodeId>)>,
    pub keygen_crash: Option<(u64, NodeId, u64)>,
    /// Faults of the simulated chain, at times in the safety phase: reorgs,
    /// mempool evictions, a double spend, a node's backend down (and up
    /// again). A block is mined every [`BLOCK_MS`] regardless.
    pub chain_faults: Vec<(u64, ChainEvent)>,
}

/// How often the simulated chain mines a block.
pub const BLOCK_MS: u64 = 5_000;

/// How every node follows the simulated chain in a sweep: two blocks deep,
/// looked up every 2 s, rebroadcast from 2 s doubling to 16 s, stalled
/// after 20 s unseen.
pub fn sweep_chain_config() -> mpc_core::ChainConfig {
    mpc_core::ChainConfig {
        confirmations: 2,
        check_ms: 2_000,
        rebroadcast_ms: 2_000,
        rebroadcast_max_ms: 16_000,
        broadcast_timeout_ms: 20_000,
    }
}

impl SeedPlan {
    /// Expands a seed into a plan. Many seeds have no Byzantine node.
    pub fn from_seed(seed: u64) -> SeedPlan {
        Self::shaped(seed, SeedShape::Fixture)
    }

    /// Expands a seed into a plan for a cluster of the given shape.
    pub fn shaped(seed: u64, shape: SeedShape) -> SeedPlan {
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
            Some((node(pick(5)), CRASH_AFTER_KINDS[pick(CRASH_AFTER_KINDS.len() as u64) as usize]))
        } else {
            None
        };
        let byzantine = match pick(14) {
            0 => Some((node(pick(5)), ByzantineAct::EquivocateVotes)),
            1 => Some((node(pick(5)), ByzantineAct::ForgeVoteSignatures)),
            2 => Some((node(pick(5)), ByzantineAct::BadPartialSignatures)),
            3 => Some((node(pick(5)), ByzantineAct::Silence)),
            4 => Some((node(pick(5)), ByzantineAct::SignRejected)),
            5 => Some((node(pick(5)), ByzantineAct::ForeignVotes)),
            6 => Some((node(pick(5)), ByzantineAct::ReplayOldMessages)),
            7 => Some((node(pick(5)), ByzantineAct::RefuseToSign)),
            8 => Some((node(pick(5)), ByzantineAct::FakeProposals)),
            9 => Some((node(pick(5)), ByzantineAct::AbandonFlood)),
            10 => Some((node(pick(5)), ByzantineAct::GarbleProtocol)),
            11 => Some((node(pick(5)), ByzantineAct::AnnounceFlood)),
            _ => None,
        };
        let first_strict = pick(5);
        let strict = (0..pick(3)).map(|k| node(first_strict + k)).collect();
        // Live presigning costs seconds per presignature: one transaction.
        let tx_count = if shape == SeedShape::Fixture { 1 + pick(3) } else { 1 };
        let txs = (0..tx_count)
            .map(|_| TxPlan {
                at_ms: pick(20_000),
                node: node(pick(5)),
                allowed: pick(4) != 0,
                inputs: 1 + pick(2) as usize,
            })
            .collect();
        // Clocks: most seeds agree to within a second; some are minutes
        // apart or run a few parts per thousand fast or slow.
        let clocks = (1..=N)
            .map(|i| {
                let offset_ms = [0, 0, 800, 120_000][pick(4) as usize] as i64 * if pick(2) == 0 { 1 } else { -1 };
                let drift_ppm = [0, 100, 5_000][pick(3) as usize] as i64 * if pick(2) == 0 { 1 } else { -1 };
                (NodeId(i), Clock { offset_ms, drift_ppm })
            })
            .collect();
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
            strict,
            txs,
            clocks,
            keygen_partition: None,
            keygen_crash: None,
            chain_faults: Vec::new(),
        };
        plan.plan_chain_faults();
        if shape == SeedShape::LiveKeygen {
            plan.after_keygen();
            plan.plan_keygen_faults();
        }
        plan.keep_byzantine_out_of_roles();
        plan
    }

    /// A silent member makes keygen impossible (it needs every member):
    /// that is a liveness limit, not a finding.
    fn after_keygen(&mut self) {
        if self.byzantine.is_some_and(|(_, act)| act == ByzantineAct::Silence) {
            self.byzantine = None;
        }
    }

    /// Keygen faults come from their own stream, so the rest of the plan
    /// is what it would be without them.
    fn plan_keygen_faults(&mut self) {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed ^ 0x6b65_7967_656e);
        let mut pick = |n: u64| rng.next_u64() % n;
        let node = |k: u64| NodeId(1 + (k % N as u64) as u16);
        if pick(2) == 0 {
            let start = pick(3_000);
            let side: BTreeSet<NodeId> = (0..1 + pick(2)).map(|k| node(k + pick(5))).collect();
            self.keygen_partition = Some((start, start + 2_000 + pick(28_000), side));
        }
        if pick(2) == 0 {
            self.keygen_crash = Some((pick(3_000), node(pick(5)), 1_000 + pick(29_000)));
        }
    }

    /// Chain faults come from their own stream too, so adding them left
    /// every other part of the plans as it was.
    fn plan_chain_faults(&mut self) {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed ^ 0x6368_6169_6e00);
        let mut pick = |n: u64| rng.next_u64() % n;
        let node = |k: u64| NodeId(1 + (k % N as u64) as u16);
        let mut faults = Vec::new();
        // Reorgs come while the transactions confirm (submitted in the
        // first 20 s, two blocks deep 10-15 s later), up to three blocks deep.
        if pick(3) == 0 {
            let depth = 1 + pick(3) as usize;
            faults.push((10_000 + pick(35_000), ChainEvent::Reorg { depth, drop_txs: pick(2) == 0 }));
        }
        if pick(4) == 0 {
            faults.push((pick(110_000), ChainEvent::EvictMempool));
        }
        if pick(6) == 0 {
            faults.push((5_000 + pick(60_000), ChainEvent::DoubleSpendFirstInMempool));
        }
        if pick(3) == 0 {
            let (at, down, who) = (pick(60_000), 5_000 + pick(40_000), node(pick(5)));
            faults.push((at, ChainEvent::Outage { node: who, down: true }));
            faults.push((at + down, ChainEvent::Outage { node: who, down: false }));
        }
        faults.sort_by_key(|(at, _)| *at);
        self.chain_faults = faults;
    }

    /// The same workload with every fault [`crate::shrink::fault_count`]
    /// counts removed (and none during keygen): no loss, duplication,
    /// partition, crash or Byzantine node, honest clocks. Delays and the
    /// strict policies stay: they are how a healthy network and an honest
    /// cluster behave. Issue 11 item 12's fault-free waste target is
    /// measured on such plans.
    pub fn without_faults(mut self) -> SeedPlan {
        self.loss_permille = 0;
        self.duplicate_permille = 0;
        self.partitions.clear();
        self.crashes.clear();
        self.crash_after_persist = None;
        self.byzantine = None;
        self.clocks.values_mut().for_each(|c| *c = Clock::default());
        self.keygen_partition = None;
        self.keygen_crash = None;
        self.chain_faults.clear();
        self
    }

    /// A Byzantine node's own crash or submission would blur what the run
    /// tests; honest nodes take those roles.
    pub fn keep_byzantine_out_of_roles(&mut self) {
        if let Some((b, _)) = self.byzantine {
            let honest = |n: NodeId| if n == b { NodeId(1 + (b.0 % N)) } else { n };
            self.txs.iter_mut().for_each(|t| t.node = honest(t.node));
            self.crashes.iter_mut().for_each(|c| c.1 = honest(c.1));
            if let Some(c) = self.crash_after_persist.as_mut() {
                c.0 = honest(c.0);
            }
        }
    }

    pub fn replay_command(&self) -> String {
        let shape = match self.shape {
            SeedShape::Fixture => String::new(),
            other => format!(" --shape {}", other.name()),
        };
        let features = if mpc_core::REDUCED_SECURITY_TEST_ONLY { " --features reduced-security" } else { "" };
        // A plan with no fault whose seed draws some was run `--fault-free`.
        let stripped = crate::shrink::fault_count(self) == 0
            && crate::shrink::fault_count(&SeedPlan::shaped(self.seed, self.shape)) > 0;
        let fault_free = if stripped { " --fault-free" } else { "" };
        format!("cargo run --release -p mpc-sim{features} --bin mpc-sim -- --seed {}{shape}{fault_free}", self.seed)
    }
}

/// The plan in a readable form: what a failure report prints.
impl std::fmt::Display for SeedPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
        writeln!(f, "  seed {}, shape {}", self.seed, self.shape.name())?;
        writeln!(
            f,
            "  network: loss {:.1}%, duplication {:.1}%, extra latency up to {} ms",
            self.loss_permille as f64 / 10.0,
            self.duplicate_permille as f64 / 10.0,
            self.max_delay_ms
        )?;
        match self.leader {
            Some(l) => writeln!(f, "  lease: {l} holds it first; honest nodes campaign")?,
            None => writeln!(f, "  lease: nobody holds it until the liveness phase")?,
        }
        for (id, c) in self.clocks.iter().filter(|(_, c)| **c != Clock::default()) {
            writeln!(f, "  clock {id}: offset {:+} ms, drift {:+} ppm", c.offset_ms, c.drift_ppm)?;
        }
        if let Some((start, end, side)) = &self.keygen_partition {
            let side: Vec<String> = side.iter().map(|n| n.to_string()).collect();
            writeln!(
                f,
                "  during keygen: partition {}..{}: {{{}}} cut off",
                secs(*start),
                secs(*end),
                side.join(", ")
            )?;
        }
        if let Some((at, node, down)) = &self.keygen_crash {
            writeln!(f, "  during keygen: crash {node} at {} for {}", secs(*at), secs(*down))?;
        }
        for (start, end, side) in &self.partitions {
            let side: Vec<String> = side.iter().map(|n| n.to_string()).collect();
            writeln!(f, "  partition {}..{}: {{{}}} cut off", secs(*start), secs(*end), side.join(", "))?;
        }
        for (at, node, down) in &self.crashes {
            writeln!(f, "  crash {node} at {} for {}", secs(*at), secs(*down))?;
        }
        if let Some((node, kind)) = self.crash_after_persist {
            writeln!(f, "  crash {node} right after it persists a {kind} record, before the sends")?;
        }
        match self.byzantine {
            Some((node, act)) => writeln!(f, "  byzantine {node}: {act:?}")?,
            None => writeln!(f, "  no byzantine node")?,
        }
        if !self.strict.is_empty() {
            let strict: Vec<String> = self.strict.iter().map(|n| n.to_string()).collect();
            writeln!(f, "  strict policy (max 100k sat): {}", strict.join(", "))?;
        }
        for (i, t) in self.txs.iter().enumerate() {
            let to = if t.allowed { "allowlisted destination" } else { "unknown destination" };
            writeln!(f, "  tx {i} at {} to {}: {to}, {} input(s)", secs(t.at_ms), t.node, t.inputs)?;
        }
        for (at, event) in &self.chain_faults {
            writeln!(f, "  chain at {}: {event:?}", secs(*at))?;
        }
        Ok(())
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
    /// Presignatures made and wasted ([`checker::presignature_use`]).
    pub presigs_made: usize,
    pub presigs_wasted: usize,
    /// Presignatures that served a signature (every signer consumed it for
    /// the same message).
    pub presigs_served: usize,
    /// The wasted presignatures by cause ([`checker::waste_causes`]).
    pub waste_causes: BTreeMap<String, usize>,
    /// Every observation, in order, when the run was asked to trace.
    pub log: Vec<String>,
    /// Each node's durable records at the end, when asked for
    /// ([`run_seed_keeping_stores`]): realistic record streams for the
    /// storage tests.
    pub stores: BTreeMap<NodeId, Vec<Record>>,
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

/// [`run_seed`], keeping every node's records in [`SeedOutcome::stores`].
pub fn run_seed_keeping_stores(plan: &SeedPlan) -> SeedOutcome {
    run(plan, false, mpc_core::PlantedBugs::NONE, true, false)
}

/// [`run_seed_traced`] with bugs planted in every node (TEST ONLY).
pub fn run_seed_with_bugs(plan: &SeedPlan, trace: bool, bugs: mpc_core::PlantedBugs) -> SeedOutcome {
    run(plan, trace, bugs, false, false)
}

/// A live-keygen plan's key generation alone, under its keygen faults,
/// with the pool's refill off: milliseconds of cryptography per attempt,
/// so many seeds can test key confirmation and retries. The outcome holds
/// the checker's violations and the keygen coverage.
pub fn run_keygen_phase(plan: &SeedPlan) -> SeedOutcome {
    assert_eq!(plan.shape, SeedShape::LiveKeygen, "only live-keygen plans generate a key");
    run(plan, false, mpc_core::PlantedBugs::NONE, false, true)
}

fn run(plan: &SeedPlan, trace: bool, bugs: mpc_core::PlantedBugs, keep_stores: bool, keygen_only: bool) -> SeedOutcome {
    let mut config = setup::cluster_config(fixtures::FIXTURE_CLUSTER_ID, N, 3);
    let mut records = fixture_records().clone();
    match plan.shape {
        // The fixture pool serves the run; no refill.
        SeedShape::Fixture => {
            config.pool.low_water = 0;
            config.pool.target = 0;
            config.pool.max = FIXTURE_POOL;
        }
        SeedShape::LiveKeygen => {
            records = fixtures::aux_records(N).expect("aux info fixture (see sim/src/fixtures.rs)");
            config.timeouts.dkg_ms = KEYGEN_DEADLINE_MS;
            config.pool.low_water = 1;
            config.pool.target = 2;
            config.pool.max = 4;
            config.pool.parallel_sessions = 2;
            if keygen_only {
                (config.pool.low_water, config.pool.target) = (0, 0);
            }
        }
        SeedShape::LivePresign => {
            for store in records.values_mut() {
                store.retain(|r| !matches!(r.kind(), "presig_generating" | "presig_ready" | "presig_announced"));
            }
            config.pool.low_water = 1;
            config.pool.target = 2;
            config.pool.max = 4;
            config.pool.parallel_sessions = 2;
        }
    }
    let mut nodes = setup::node_configs(&config);
    for (node, _) in nodes.values_mut() {
        node.chain = Some(sweep_chain_config());
    }
    for strict in &plan.strict {
        if let Some((cfg, _)) = nodes.get_mut(strict) {
            cfg.policy.max_amount_sat = 100_000;
        }
    }
    let options = NetOptions { min_latency_ms: 1, max_latency_ms: 1 + plan.max_delay_ms, clocks: plan.clocks.clone() };
    let mut cluster = Cluster::with_options(plan.seed, nodes, records, bugs, options).expect("fixture cluster starts");
    let byz = plan.byzantine.map(|(b, _)| b);
    let honest: Vec<NodeId> = cluster.ids().into_iter().filter(|id| Some(*id) != byz).collect();
    // The planned leader holds the lease first; every honest node campaigns,
    // so a holder that crashes or is cut off loses it to another.
    cluster.set_leader(plan.leader);
    if let Some(leader) = plan.leader {
        cluster.set_lease_candidates(honest.iter().copied().chain([leader]).collect());
    }
    if let Some(b) = byz {
        cluster.watch_deliveries_from(b);
    }

    let net =
        Rc::new(RefCell::new(NetState { lossy: true, keygen: false, tampered: Vec::new(), withheld: Vec::new() }));
    install_interceptor(&mut cluster, plan, net.clone());
    let mut keygen = KeygenRun::default();
    if plan.shape == SeedShape::LiveKeygen {
        // Until the key exists the Byzantine node behaves; the safety
        // timeline starts after keygen.
        net.borrow_mut().keygen = true;
        match keygen_phase(&mut cluster, plan, &honest, &net) {
            Ok(run) => keygen = run,
            Err(why) => {
                return SeedOutcome {
                    trace_hash: cluster.trace_hash(),
                    violations: vec![format!("liveness: {why}")],
                    ..Default::default()
                }
            }
        }
        net.borrow_mut().keygen = false;
        if keygen_only {
            let byzantine: BTreeSet<NodeId> = byz.into_iter().collect();
            let mut coverage = BTreeMap::new();
            coverage.insert("crash and restart", keygen.crashes as u64);
            coverage.insert("partition", keygen.partitions as u64);
            coverage.insert("key generation retried", keygen.attempts.saturating_sub(1) as u64);
            return SeedOutcome {
                trace_hash: cluster.trace_hash(),
                violations: checker::check(&cluster, &byzantine).into_iter().map(|v| v.0).collect(),
                coverage,
                ..Default::default()
            };
        }
    }
    let key = cluster.node(honest[0]).group_key().expect("keyed").clone();
    let crash_hits = Rc::new(RefCell::new(0u64));
    if let Some((victim, kind)) = plan.crash_after_persist {
        let hits = crash_hits.clone();
        cluster.set_crash_point(move |node, records| {
            let fire = node == victim && *hits.borrow() == 0 && records.iter().any(|r| r.kind() == kind);
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
    let clocks_at_start = clock_errors(&mut cluster);
    let start = cluster.now();
    {
        let elapsed_at_start = start.0 - crate::EPOCH_MS;
        let mut chain = cluster.chain_mut();
        chain.mine_every_ms = Some(BLOCK_MS);
        for (at, event) in &plan.chain_faults {
            chain.schedule(elapsed_at_start + at, event.clone());
        }
    }
    let mut submitted: Vec<(usize, NodeId, mpc_core::RequestId)> = Vec::new();
    // Faults counted as they take effect, not as planned: a crash of a node
    // already down, or a partition that separates nobody, is no fault.
    let (mut crashes_done, mut partitions_done) = (0usize, 0usize);
    // The checker also runs during the run, at every scheduled event and
    // every ten simulated seconds, so a report says when a violation first
    // appeared.
    let byzantine: BTreeSet<NodeId> = byz.into_iter().collect();
    let mut first_seen: BTreeMap<String, u64> = BTreeMap::new();
    let pool_max = config.pool.max;
    let mut check_now = |cluster: &Cluster| {
        let at = cluster.now().0 - start.0;
        for v in checker::check(cluster, &byzantine) {
            first_seen.entry(v.0).or_insert(at);
        }
        // The pool's maximum bounds ready plus generating at all times, as
        // every honest node that holds (or believes it holds) the lease
        // counts them: also across partitions, where a cut-off holder's
        // late session starts are fenced by the lease term. (A node that
        // does not coordinate may lag: it hears that a presignature was
        // used only when its signers discard or consume it.)
        for id in cluster.ids().into_iter().filter(|id| cluster.is_up(*id) && !byzantine.contains(id)) {
            let s = cluster.node(id).status();
            if s.leader == Some(id) && s.pool_ready + s.pool_generating > pool_max {
                let v = format!(
                    "{id} counts {} ready and {} generating, above the maximum {pool_max}",
                    s.pool_ready, s.pool_generating
                );
                first_seen.entry(v).or_insert(at);
            }
        }
    };
    for (at, act) in timeline {
        let target = start.plus(at);
        while cluster.now() < target {
            cluster.run_for((target.0 - cluster.now().0).min(CHECK_EVERY_MS));
            check_now(&cluster);
        }
        match act {
            Act::Submit(i) => {
                let t = &plan.txs[i];
                let to = if t.allowed { &destination } else { &stranger };
                // Every planned spend is valid: odd ones pay 150,000 sat (over
                // a strict node's cap) from inputs that can afford it.
                let (base, amount) = if i % 2 == 0 { (90_000, 60_000) } else { (160_000, 150_000) };
                let values: Vec<u64> = (0..t.inputs).map(|k| base + 10_000 * k as u64).collect();
                let spend = Spend::simple(&format!("seed-{}-tx-{i}", plan.seed), &values, to, amount, 2_000);
                if cluster.is_up(t.node) {
                    let request =
                        cluster.command(t.node, mpc_core::Command::SubmitPsbt { psbt: spend.psbt_bytes(&key) });
                    submitted.push((i, t.node, request));
                }
            }
            Act::Cut(side) => {
                let ids = cluster.ids();
                if !side.is_empty() && ids.iter().any(|id| !side.contains(id)) {
                    partitions_done += 1;
                }
                cluster.partition(&side)
            }
            Act::Heal => cluster.heal(),
            Act::Crash(n) => {
                if cluster.is_up(n) {
                    crashes_done += 1;
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
    while cluster.now() < start.plus(SAFETY_MS) {
        cluster.run_for((start.plus(SAFETY_MS).0 - cluster.now().0).min(CHECK_EVERY_MS));
        check_now(&cluster);
    }

    let lease_lapses = cluster.lease_changes.iter().filter(|(old, new)| old.is_some() && new.is_none()).count();
    // Clock faults as the cores saw them over the safety phase: an offset
    // over a minute at its end, a rate off by over 0.1% across it (nodes up
    // at both samples).
    let clocks_at_end = clock_errors(&mut cluster);
    let span = (cluster.now().0 - start.0) as i64;
    let offsets_seen = clocks_at_end.values().filter(|e| e.abs() > 60_000).count();
    let drifts_seen = clocks_at_end
        .iter()
        .filter(|(id, end)| clocks_at_start.get(id).is_some_and(|begin| (**end - begin).abs() * 1_000 > span))
        .count();

    // The liveness phase: faults heal, Byzantine behaviour goes on.
    cluster.clear_crash_point();
    cluster.heal();
    net.borrow_mut().lossy = false;
    for id in cluster.ids() {
        if !cluster.is_up(id) {
            cluster.restart(id).expect("restart from records");
        }
    }
    // Coordination heals too: an honest node holds the lease, all honest
    // nodes campaign.
    if plan.leader.is_none() || plan.leader == byz {
        cluster.set_leader(Some(honest[0]));
    }
    cluster.set_lease_candidates(honest.iter().copied().collect());
    {
        let now = cluster.now().0 - crate::EPOCH_MS;
        let ids = cluster.ids();
        let mut chain = cluster.chain_mut();
        for node in ids {
            chain.apply(now, ChainEvent::Outage { node, down: false });
        }
    }
    let accepted: BTreeSet<TxId> = cluster
        .replies
        .iter()
        .filter_map(|(_, _, r)| match r {
            mpc_core::Reply::Submitted(Ok(tx)) => Some(*tx),
            _ => None,
        })
        .collect();
    // The pool refills when it falls below low water, up to its target:
    // after healing it must be back within that band, and a dip below low
    // water must be followed by a refill to the target (sampled at the
    // lease holder). The fixture shape never refills: its low water and
    // target are zero, and only its maximum is checked.
    let target = config.pool.low_water;
    let full = config.pool.target;
    let dipped = Cell::new(false);
    let pool_ready = |c: &Cluster| match c.lease_holder() {
        Some(l) if c.is_up(l) => c.node(l).status().pool_ready,
        _ => 0,
    };
    let done = cluster.run_until(LIVENESS_MS, |c| {
        let ready = pool_ready(c);
        if ready < target {
            dipped.set(true);
        } else if ready >= full {
            dipped.set(false);
        }
        ready >= target
            && !dipped.get()
            && accepted
                .iter()
                .all(|tx| honest.iter().all(|id| scenario::state_at(c, *id, *tx).is_some_and(|s| settled(&s))))
    });

    let mut outcome = SeedOutcome { trace_hash: cluster.trace_hash(), ..Default::default() };
    if trace {
        outcome.log =
            cluster.observations.iter().map(|(at, node, o)| format!("{:>9} {node} {o:?}", at.0 - start.0)).collect();
    }
    check_now(&cluster);
    if keep_stores {
        outcome.stores = cluster.hosts().iter().map(|(id, h)| (*id, h.store.clone())).collect();
    }
    outcome.violations =
        first_seen.into_iter().map(|(v, at)| format!("{v} (first seen at {:.1}s)", at as f64 / 1000.0)).collect();
    // A valid submission the node refused is a finding, not noise.
    for (i, node, request) in &submitted {
        if let Some(mpc_core::Reply::Submitted(Err(refusal))) = cluster.reply(*request) {
            outcome.violations.push(format!("{node} refused planned tx {i}, a valid spend: {refusal}"));
        }
    }
    // Never above its maximum (the fixture shape's maximum is the fixture
    // pool's size: nothing is generated there, so nothing may appear).
    if pool_ready(&cluster) > config.pool.max {
        outcome.violations.push(format!(
            "the pool holds {} ready presignatures, above its maximum {}",
            pool_ready(&cluster),
            config.pool.max
        ));
    }
    if !done {
        if pool_ready(&cluster) < target || dipped.get() {
            outcome.violations.push(format!(
                "liveness: the pool holds {} ready presignatures, low water {target}, target {full}, \
                 lease holder {:?}",
                pool_ready(&cluster),
                cluster.lease_holder()
            ));
        }
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
        // Silence counts as fired when a coordinator waited out an answer
        // b withheld: the attempt (that input, that presignature) timed out
        // there. Each such coordinator must then suspect b.
        // Likewise a refusal counts where it cost an attempt: the
        // coordinator retried that input because b refused (one that came
        // after the input was signed another way cost nothing).
        let cost_at = match act {
            ByzantineAct::Silence => {
                coordinators_who_retried(&cluster, &net.borrow().withheld, |r| r == "signing timed out")
            }
            ByzantineAct::RefuseToSign => {
                let refused = format!("{b} refused");
                coordinators_who_retried(&cluster, &net.borrow().tampered, |r| r.starts_with(&refused))
            }
            _ => BTreeSet::new(),
        };
        let fired = if matches!(act, ByzantineAct::Silence | ByzantineAct::RefuseToSign) {
            cost_at.len() as u64
        } else {
            let net = net.borrow();
            let mut delivered = cluster.delivered_from_watched();
            let reached: Vec<&(NodeId, PeerMessage)> = net
                .tampered
                .iter()
                .filter(|sent| match delivered.iter().position(|d| d == *sent) {
                    Some(i) => {
                        delivered.swap_remove(i);
                        true
                    }
                    None => false,
                })
                .collect();
            if act == ByzantineAct::AnnounceFlood {
                // Announcements within what an honest signer may have
                // pending look like ones whose start is still on its way:
                // only those past that allowance, per recipient, must be
                // refused.
                let allowance = (config.pool.max + config.pool.parallel_sessions) as u64;
                let mut per_recipient: BTreeMap<NodeId, u64> = BTreeMap::new();
                for (to, _) in &reached {
                    *per_recipient.entry(*to).or_default() += 1;
                }
                per_recipient.values().map(|n| n.saturating_sub(allowance)).sum()
            } else {
                reached.len() as u64
            }
        };
        check_attribution(&cluster, b, act, fired, &cost_at, &mut outcome);
        if fired > 0 {
            *outcome.coverage.entry("byzantine act delivered").or_default() += fired;
            let name = match act {
                ByzantineAct::ReplayOldMessages => Some("replayed message delivered"),
                ByzantineAct::ForeignVotes => Some("foreign-session vote delivered"),
                _ => None,
            };
            if let Some(name) = name {
                *outcome.coverage.entry(name).or_default() += fired;
            }
        }
    }
    for tx in &accepted {
        match scenario::state_at(&cluster, honest[0], *tx) {
            Some(TxState::Signed | TxState::Broadcast | TxState::Confirmed) => outcome.signed += 1,
            Some(TxState::Failed(r)) if r.starts_with("conflict:") => outcome.signed += 1,
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
    cov("crash and restart", crashes_done + keygen.crashes);
    cov("partition", partitions_done + keygen.partitions);
    cov("key generation retried", keygen.attempts.saturating_sub(1));
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
    cov("lease lapsed (holder crashed or cut off)", lease_lapses);
    cov("clock drifting over 0.1%", drifts_seen);
    cov("clock offset over a minute", offsets_seen);
    cov("garbage frame dropped", cluster.garbage_frames() as usize);
    let presigs = checker::presignature_use(&cluster);
    (outcome.presigs_made, outcome.presigs_wasted, outcome.presigs_served) =
        (presigs.made, presigs.wasted, presigs.served);
    outcome.waste_causes = checker::waste_causes(&cluster);
    let confirmed_txs: BTreeSet<TxId> = cluster
        .observed(|o| matches!(o, Observation::TxStateChanged { to: TxState::Confirmed, .. }))
        .into_iter()
        .filter_map(|(_, o)| match o {
            Observation::TxStateChanged { tx, .. } => Some(tx),
            _ => None,
        })
        .collect();
    cov("transaction confirmed", confirmed_txs.len());
    cov(
        "confirmation lost to a reorg",
        cluster.observed(|o| matches!(o, Observation::TxStateChanged { from: TxState::Confirmed, .. })).len(),
    );
    cov(
        "double spend ended a transaction",
        cluster
            .observed(|o| matches!(o, Observation::TxStateChanged { to: TxState::Failed(r), .. } if r.starts_with("conflict:")))
            .len(),
    );
    cov("broadcast stalled", cluster.observed(|o| matches!(o, Observation::BroadcastStalled { .. })).len());
    cov("transaction signed", outcome.signed);
    cov("transaction rejected", outcome.rejected);
    outcome
}

/// How far each up node's clock, as its core last read it, is from true
/// time (ms): every up node is handed a tick and the cluster runs one
/// millisecond, so each reading is fresh.
fn clock_errors(cluster: &mut Cluster) -> BTreeMap<NodeId, i64> {
    let up: Vec<NodeId> = cluster.ids().into_iter().filter(|id| cluster.is_up(*id)).collect();
    for id in &up {
        cluster.input(*id, mpc_core::Input::Tick);
    }
    cluster.run_for(1);
    let now = cluster.now().0 as i64;
    up.into_iter().filter(|id| cluster.is_up(*id)).map(|id| (id, cluster.node(id).clock().0 as i64 - now)).collect()
}

/// Runs plans on `threads` threads (each seed is independent and runs on
/// its own simulation), calling `each` in plan order as outcomes arrive.
pub fn run_batch(
    plans: &[SeedPlan],
    threads: usize,
    run: impl Fn(&SeedPlan) -> SeedOutcome + Sync,
    mut each: impl FnMut(&SeedPlan, SeedOutcome),
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let tx = tx.clone();
            let (next, run) = (&next, &run);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(plan) = plans.get(i) else { return };
                if tx.send((i, run(plan))).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut ready = BTreeMap::new();
        let mut expected = 0;
        for (i, outcome) in rx {
            ready.insert(i, outcome);
            while let Some(outcome) = ready.remove(&expected) {
                each(&plans[expected], outcome);
                expected += 1;
            }
        }
    });
}

/// Threads for a batch: the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Where a transaction may rest at the end of a run: a final state, or
/// Expired (no certificate by the vote deadline, as when honest nodes split
/// 2-2 and the fifth vote is an equivocator's). A signed one must have got
/// to the end of its life on chain: confirmed, or beaten by a conflicting
/// spend (every backend answers in the liveness phase and blocks keep
/// coming).
fn settled(s: &TxState) -> bool {
    (s.is_final() || *s == TxState::Expired) && !matches!(s, TxState::Signed | TxState::Broadcast)
}

/// The coordinators for which one of b's signing responses (withheld or
/// changed, in `messages`) cost an attempt: the attempt with that
/// presignature on that input was retried there for a reason `why` accepts.
fn coordinators_who_retried(
    cluster: &Cluster,
    messages: &[(NodeId, PeerMessage)],
    why: impl Fn(&str) -> bool,
) -> BTreeSet<NodeId> {
    let retried: BTreeSet<(NodeId, TxId, u32, mpc_core::PresigId)> = cluster
        .observed(|o| matches!(o, Observation::SigningRetried { reason, .. } if why(reason)))
        .into_iter()
        .filter_map(|(node, o)| match o {
            Observation::SigningRetried { tx, input, presig, .. } => Some((node, tx, input, presig)),
            _ => None,
        })
        .collect();
    messages
        .iter()
        .filter_map(|(to, m)| match m {
            PeerMessage::SigningResponse { tx, input, presig, .. } => {
                retried.contains(&(*to, *tx, *input, *presig)).then_some(*to)
            }
            _ => None,
        })
        .collect()
}

/// Invariant 6's other half: an act that reached an honest node was seen
/// and pinned on the right node. Silence and refusals count as fired where
/// they cost a coordinator an attempt (`cost_at`: it waited out a withheld
/// partial signature, or retried after a refusal), and each of those
/// coordinators must suspect the member. A replayed message
/// is b's own valid message of before: it cannot be pinned, only survived.
fn check_attribution(
    cluster: &Cluster,
    b: NodeId,
    act: ByzantineAct,
    fired: u64,
    cost_at: &BTreeSet<NodeId>,
    outcome: &mut SeedOutcome,
) {
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
        ByzantineAct::ForeignVotes => {
            !cluster.observed(|o| matches!(o, Observation::ForgedVote { from, .. } if *from == b)).is_empty()
        }
        // A coordinator that waited an attempt out suspects every signer
        // whose answer it lacks, and one that retried because b refused
        // suspects b. (An answer that cost no attempt, because the input
        // was signed another way first, is nothing to pin.)
        ByzantineAct::Silence | ByzantineAct::RefuseToSign => cost_at.is_subset(&suspecting(cluster, b)),
        // A replay is an old message of b's, valid then: nothing to pin on
        // b; the invariants and the liveness check are what must hold.
        ByzantineAct::ReplayOldMessages => true,
        ByzantineAct::SignRejected => {
            !cluster.observed(|o| matches!(o, Observation::ForgedCertificate { from, .. } if *from == b)).is_empty()
        }
        ByzantineAct::FakeProposals => {
            !cluster.observed(|o| matches!(o, Observation::ProposalRejected { from, .. } if *from == b)).is_empty()
        }
        ByzantineAct::AbandonFlood => !cluster
            .observed(|o| matches!(o, Observation::RejectedMessage { from, kind, .. } if *from == b && kind == "presig_abandon"))
            .is_empty(),
        // A round message cut short never decodes: every even-numbered
        // member that got one in a running session names b.
        ByzantineAct::GarbleProtocol => !cluster
            .observed(|o| matches!(o, Observation::ProtocolFailed { blamed, .. } if blamed.contains(&b)))
            .is_empty(),
        // Made-up announcements past what an honest signer can have
        // pending are refused, naming b.
        ByzantineAct::AnnounceFlood => !cluster
            .observed(|o| matches!(o, Observation::RejectedMessage { from, kind, .. } if *from == b && kind == "presig_ready"))
            .is_empty(),
    };
    if !detected {
        outcome
            .violations
            .push(format!("byzantine {act:?} by {b} reached honest nodes {fired} times, never attributed"));
    }
}

/// The nodes that suspected `b` at some point.
fn suspecting(cluster: &Cluster, b: NodeId) -> BTreeSet<NodeId> {
    cluster
        .observed(|o| matches!(o, Observation::MemberSuspected { member, .. } if *member == b))
        .into_iter()
        .map(|(node, _)| node)
        .collect()
}

/// What live key generation went through.
#[derive(Default)]
struct KeygenRun {
    /// Attempts the operator (the harness) started.
    attempts: usize,
    crashes: usize,
    partitions: usize,
}

/// Live key generation under the plan's network faults (for the first
/// [`KEYGEN_FAULTS_MS`]) and its keygen crash and partition. The harness is the
/// operator: whenever no attempt runs anywhere and the key is not held
/// everywhere, it starts one at an honest node that accepts the command
/// (a node holding a pending share refuses until an abandonment proves
/// its attempt dead). Every node must hold the key within [`KEYGEN_MS`].
fn keygen_phase(
    cluster: &mut Cluster,
    plan: &SeedPlan,
    honest: &[NodeId],
    net: &Rc<RefCell<NetState>>,
) -> Result<KeygenRun, String> {
    use mpc_core::{Command, DkgStage, Reply};
    let start = cluster.now();
    let mut run = KeygenRun::default();
    let (mut cut, mut healed, mut crashed, mut restarted) = (false, false, false, false);
    let mut rotation = 0usize;
    let mut next_look = start;
    let keyed = |c: &Cluster| c.ids().iter().all(|id| c.is_up(*id) && c.node(*id).group_key().is_some());
    while cluster.now() < start.plus(KEYGEN_MS) {
        let t = cluster.now().0 - start.0;
        net.borrow_mut().lossy = t < KEYGEN_FAULTS_MS;
        if let Some((from, until, side)) = &plan.keygen_partition {
            if t >= *from && !cut {
                cut = true;
                run.partitions += 1;
                cluster.partition(side);
            }
            if t >= *until && cut && !healed {
                healed = true;
                cluster.heal();
            }
        }
        if let Some((at, node, down)) = plan.keygen_crash {
            if t >= at && !crashed {
                crashed = true;
                run.crashes += 1;
                cluster.crash(node);
            }
            if t >= at + down && crashed && !restarted {
                restarted = true;
                cluster.restart(node).map_err(|e| format!("restart during keygen: {e}"))?;
            }
        }
        if keyed(cluster) {
            // The safety timeline starts from a whole network.
            cluster.heal();
            net.borrow_mut().lossy = true;
            return Ok(run);
        }
        if cluster.now() >= next_look {
            let running = cluster.ids().into_iter().filter(|id| cluster.is_up(*id)).any(|id| {
                matches!(
                    cluster.node(id).status().dkg_stage,
                    DkgStage::WaitingForPrimes | DkgStage::AuxInfo | DkgStage::Keygen
                )
            });
            let up: Vec<NodeId> = honest.iter().copied().filter(|id| cluster.is_up(*id)).collect();
            if !running && !up.is_empty() {
                for k in 0..up.len() {
                    let node = up[(rotation + k) % up.len()];
                    let request = cluster.command(node, Command::StartDkg);
                    cluster.run_for(5);
                    if matches!(cluster.reply(request), Some(Reply::DkgStarted(Ok(_)))) {
                        run.attempts += 1;
                        break;
                    }
                }
                rotation += 1;
            }
            next_look = cluster.now().plus(2_000);
        }
        cluster.run_for(500);
    }
    let missing: Vec<String> = cluster
        .ids()
        .into_iter()
        .filter(|id| !cluster.is_up(*id) || cluster.node(*id).group_key().is_none())
        .map(|id| id.to_string())
        .collect();
    Err(format!(
        "live keygen did not key {} within {} s ({} attempts)",
        missing.join(", "),
        KEYGEN_MS / 1000,
        run.attempts
    ))
}

struct NetState {
    /// Live keygen in progress: network faults, no Byzantine acts.
    keygen: bool,
    /// Loss, duplication and delay apply only in the safety phase.
    lossy: bool,
    /// Messages the Byzantine act changed that the network would have
    /// delivered: (recipient, message).
    tampered: Vec<(NodeId, PeerMessage)>,
    /// Messages a silent member withheld that the network would have
    /// delivered: (recipient, message).
    withheld: Vec<(NodeId, PeerMessage)>,
}

fn install_interceptor(cluster: &mut Cluster, plan: &SeedPlan, net: Rc<RefCell<NetState>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(plan.seed ^ 0x006e_6574_776f_726b);
    let (loss, dup, delay) = (plan.loss_permille as u64, plan.duplicate_permille as u64, plan.max_delay_ms);
    let byzantine = plan.byzantine;
    let cluster_id = fixtures::FIXTURE_CLUSTER_ID;
    // Reject votes seen in flight, per transaction: what a Byzantine node
    // could learn by listening.
    let mut rejections: BTreeMap<TxId, BTreeSet<NodeId>> = BTreeMap::new();
    // What the Byzantine node sent so far, for replays.
    let mut sent: Vec<PeerMessage> = Vec::new();
    // Presignatures others asked signers to use, and whom they asked: the
    // abandon flood targets those the Byzantine node has no part in.
    let mut requested: BTreeMap<mpc_core::PresigId, BTreeSet<NodeId>> = BTreeMap::new();
    cluster.set_interceptor(move |from, env: &mut Envelope| {
        if let PeerMessage::Vote(v) = &env.msg {
            if !v.body.decision.is_approve() {
                rejections.entry(v.body.tx).or_default().insert(v.body.voter);
            }
        }
        if let PeerMessage::SigningRequest { presig, .. } = &env.msg {
            let parties = requested.entry(*presig).or_default();
            parties.insert(from);
            parties.insert(env.to);
        }
        let mut net = net.borrow_mut();
        let before = env.msg.clone();
        let decision = network_faults(&net, &mut rng, loss, dup, delay);
        if net.keygen {
            return decision;
        }
        if let Some((b, act)) = byzantine {
            if from == b {
                match act {
                    ByzantineAct::Silence => {
                        if !matches!(decision, Delivery::Drop) {
                            net.withheld.push((env.to, env.msg.clone()));
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
                    ByzantineAct::ForeignVotes => {
                        if let PeerMessage::Vote(v) = &env.msg {
                            if v.body.voter == b {
                                let key = setup::vote_key(cluster_id, b);
                                env.msg = PeerMessage::Vote(SignedVote::sign(v.body.clone(), &key, "foreign-cluster"));
                            }
                        }
                    }
                    ByzantineAct::ReplayOldMessages => {
                        // The message goes out as it is, and so does an old one.
                        let replay = (!sent.is_empty() && rng.next_u64() % 3 == 0)
                            .then(|| sent[(rng.next_u64() % sent.len() as u64) as usize].clone());
                        if sent.len() < 256 {
                            sent.push(env.msg.clone());
                        }
                        if let Some(old) = replay {
                            if !matches!(decision, Delivery::Drop) {
                                net.tampered.push((env.to, old.clone()));
                                return Delivery::WithReplay(Box::new(old));
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
                    ByzantineAct::RefuseToSign => {
                        if let PeerMessage::SigningResponse { result, .. } = &mut env.msg {
                            *result = Err(mpc_core::message::SigningRefusal::PresignatureUsedElsewhere);
                        }
                    }
                    ByzantineAct::GarbleProtocol => garble_protocol_message(env),
                    ByzantineAct::FakeProposals | ByzantineAct::AbandonFlood | ByzantineAct::AnnounceFlood => {
                        let extra = if act == ByzantineAct::FakeProposals {
                            let mut psbt = b"psbt\xff".to_vec();
                            psbt.extend((0..64).map(|_| rng.next_u64() as u8));
                            (rng.next_u64() % 4 == 0).then_some(PeerMessage::Proposal { psbt })
                        } else if act == ByzantineAct::AnnounceFlood {
                            // A made-up id of b's own, b and the next two
                            // members as signers, plausible-looking points.
                            let id = mpc_core::PresigId { origin: b, seq: (1 << 40) | (rng.next_u64() % (1 << 20)) };
                            let mut signers: Vec<NodeId> = (0..3).map(|k| NodeId(1 + (b.0 - 1 + k) % N)).collect();
                            signers.sort();
                            let point = |rng: &mut ChaCha20Rng| {
                                let mut p = vec![2u8];
                                p.extend((0..32).map(|_| rng.next_u64() as u8));
                                p
                            };
                            let public = mpc_core::engine::PresigPublic {
                                gamma: point(&mut rng),
                                commitments: (0..3).map(|_| (point(&mut rng), point(&mut rng))).collect(),
                            };
                            (rng.next_u64() % 2 == 0).then_some(PeerMessage::PresigReady { id, signers, public })
                        } else {
                            let targets: Vec<mpc_core::PresigId> =
                                requested.iter().filter(|(_, p)| !p.contains(&b)).map(|(id, _)| *id).collect();
                            (!targets.is_empty()).then(|| PeerMessage::PresigAbandon {
                                id: targets[(rng.next_u64() % targets.len() as u64) as usize],
                            })
                        };
                        if let Some(extra) = extra {
                            if !matches!(decision, Delivery::Drop) {
                                net.tampered.push((env.to, extra.clone()));
                                return Delivery::WithReplay(Box::new(extra));
                            }
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

/// [`ByzantineAct::GarbleProtocol`] on one message: a cggmp24 round
/// message to an even-numbered member is cut to half its length (it no
/// longer decodes), one to an odd-numbered member gets its middle byte
/// flipped (it may decode, and then fail a proof). Other messages pass.
pub fn garble_protocol_message(env: &mut Envelope) {
    if let PeerMessage::Protocol { payload, .. } = &mut env.msg {
        let middle = payload.len() / 2;
        if env.to.0.is_multiple_of(2) {
            payload.truncate(middle);
        } else if let Some(byte) = payload.get_mut(middle) {
            *byte ^= 0x5a;
        }
    }
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
