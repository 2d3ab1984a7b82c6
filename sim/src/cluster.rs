//! A deterministic cluster on turmoil: five node hosts and one host that
//! plays etcd's lease, on a simulated network and a simulated clock.
//!
//! Each node host runs the unchanged `mpc_core::Node` behind a thin shell
//! ([`crate::host`]): datagrams in, `Node::handle`, then the step's records
//! made durable in the harness-owned store, then its sends. A crash (turmoil
//! cancels the host's tasks) loses exactly the volatile state; the restart
//! rebuilds the node from its records, the path the production node takes.
//!
//! Everything runs on one thread, and turmoil's clock moves only when the
//! harness steps it, so one seed replays one run. Protocol computations
//! (cggmp24 sessions) run on an engine thread per node and take a fixed
//! simulated time: their results are delivered at that simulated time
//! whatever the CPU took, so runs stay exact while engines work in parallel.

use crate::engine_thread::EngineThread;
use crate::host::{self, Clock, Delivery, Host, LeaseState, Shared, Snapshot, EPOCH_MS};
use mpc_core::{
    Command, Envelope, Identity, Input, Millis, Node, NodeConfig, NodeId, Observation, PeerMessage, PlantedBugs,
    Record, Reply, RequestId, TxId, TxState,
};
use sha2::{Digest, Sha256};
use std::cell::{Ref, RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

/// How far simulated time moves per turmoil step.
pub const TICK_MS: u64 = 10;
/// `run_until` checks its condition this often (simulated ms): conditions
/// read every node's status, which costs more than a quiet step.
const CHECK_EVERY_MS: u64 = 100;

pub struct Cluster {
    sim: turmoil::Sim<'static>,
    shared: Rc<RefCell<Shared>>,
    next_request: u64,
    pub observations: Vec<(Millis, NodeId, Observation)>,
    /// For each observation, how many records its node had made durable
    /// when it was observed: what was durable at that moment.
    pub observation_store_len: Vec<usize>,
    /// Restarts that did not bring back what the node knew before its crash.
    pub recovery_violations: Vec<String>,
    pub replies: Vec<(NodeId, RequestId, Reply)>,
    /// Lease holder changes seen by the lease host: (old, new).
    pub lease_changes: Vec<(Option<NodeId>, Option<NodeId>)>,
    /// Confirmations reported that the simulated chain did not hold.
    pub chain_violations: Vec<String>,
    partitioned: BTreeSet<NodeId>,
}

/// Network and clock settings of a run.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Message latency bounds of turmoil's network (ms).
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
    /// Per-node clock offset (ms) and drift (parts per million).
    pub clocks: BTreeMap<NodeId, Clock>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions { min_latency_ms: 1, max_latency_ms: 5, clocks: BTreeMap::new() }
    }
}

impl Cluster {
    /// Starts every node from its recovered records (empty for a fresh node).
    pub fn new(
        run_seed: u64,
        nodes: BTreeMap<NodeId, (NodeConfig, Identity)>,
        recovered: BTreeMap<NodeId, Vec<Record>>,
    ) -> anyhow::Result<Cluster> {
        Self::with_options(run_seed, nodes, recovered, PlantedBugs::NONE, NetOptions::default())
    }

    /// A cluster whose nodes all carry `bugs` (TEST ONLY: only a build with
    /// mpc-core's `planted-bugs` feature can make anything but `NONE`).
    pub fn with_bugs(
        run_seed: u64,
        nodes: BTreeMap<NodeId, (NodeConfig, Identity)>,
        recovered: BTreeMap<NodeId, Vec<Record>>,
        bugs: PlantedBugs,
    ) -> anyhow::Result<Cluster> {
        Self::with_options(run_seed, nodes, recovered, bugs, NetOptions::default())
    }

    pub fn with_options(
        run_seed: u64,
        nodes: BTreeMap<NodeId, (NodeConfig, Identity)>,
        mut recovered: BTreeMap<NodeId, Vec<Record>>,
        bugs: PlantedBugs,
        options: NetOptions,
    ) -> anyhow::Result<Cluster> {
        let mut sim = turmoil::Builder::new()
            .tick_duration(Duration::from_millis(TICK_MS))
            .simulation_duration(Duration::from_secs(365 * 24 * 3600))
            .min_message_latency(Duration::from_millis(options.min_latency_ms))
            .max_message_latency(Duration::from_millis(options.max_latency_ms.max(options.min_latency_ms)))
            .udp_capacity(1 << 16)
            .rng_seed(run_seed)
            .build();
        let mut hosts = BTreeMap::new();
        for (id, (config, identity)) in nodes {
            let store = recovered.remove(&id).unwrap_or_default();
            hosts.insert(
                id,
                Host {
                    config,
                    identity,
                    node: None,
                    step_ends: if store.is_empty() { Vec::new() } else { vec![store.len()] },
                    store,
                    engine: EngineThread::spawn(format!("engine-{}", id.0)),
                    incarnation: 0,
                    bugs,
                    before_crash: None,
                    inbox: None,
                    clock: options.clocks.get(&id).copied().unwrap_or_default(),
                    name: host::node_host_name(id),
                },
            );
        }
        let shared = Rc::new(RefCell::new(Shared {
            hosts,
            addrs: BTreeMap::new(),
            run_seed,
            observations: Vec::new(),
            replies: Vec::new(),
            recovery_violations: Vec::new(),
            watched: None,
            delivered_from_watched: Vec::new(),
            garbage_frames: 0,
            interceptor: None,
            crash_point: None,
            crash_requested: Vec::new(),
            lease: LeaseState::default(),
            trace: Sha256::new(),
            steps: 0,
            handle_timings: None,
            chain: Default::default(),
        }));
        let lease_shared = shared.clone();
        sim.host(host::LEASE_HOST, move || host::lease_host(lease_shared.clone()));
        let ids: Vec<NodeId> = shared.borrow().hosts.keys().copied().collect();
        for id in ids {
            let name = host::node_host_name(id);
            let node_shared = shared.clone();
            sim.host(name.as_str(), move || host::node_host(node_shared.clone(), id));
            let addr = sim.lookup(name.as_str());
            shared.borrow_mut().addrs.insert(addr, id);
        }
        let mut cluster = Cluster {
            sim,
            shared,
            next_request: 0,
            observations: Vec::new(),
            observation_store_len: Vec::new(),
            recovery_violations: Vec::new(),
            replies: Vec::new(),
            lease_changes: Vec::new(),
            chain_violations: Vec::new(),
            partitioned: BTreeSet::new(),
        };
        // One step starts every host: each recovers its node from its records.
        cluster.step();
        if let Some(id) = cluster.ids().into_iter().find(|id| !cluster.is_up(*id)) {
            anyhow::bail!("{id} did not start from its records");
        }
        Ok(cluster)
    }

    /// True (simulated) time; each node's own clock adds its drift.
    pub fn now(&self) -> Millis {
        Millis(EPOCH_MS + self.sim.elapsed().as_millis() as u64)
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.shared.borrow().hosts.keys().copied().collect()
    }

    pub fn hosts(&self) -> Ref<'_, BTreeMap<NodeId, Host>> {
        Ref::map(self.shared.borrow(), |s| &s.hosts)
    }

    /// The Bitcoin chain the nodes' backends see.
    pub fn chain(&self) -> Ref<'_, crate::chain::SimChain> {
        Ref::map(self.shared.borrow(), |s| &s.chain)
    }

    /// For tests and the sweep: mine, reorganise, schedule faults.
    pub fn chain_mut(&mut self) -> RefMut<'_, crate::chain::SimChain> {
        RefMut::map(self.shared.borrow_mut(), |s| &mut s.chain)
    }

    /// For tests that plant records to show the checker catches them.
    pub fn hosts_mut(&mut self) -> RefMut<'_, BTreeMap<NodeId, Host>> {
        RefMut::map(self.shared.borrow_mut(), |s| &mut s.hosts)
    }

    pub fn node(&self, id: NodeId) -> Ref<'_, Node> {
        Ref::map(self.shared.borrow(), |s| s.hosts[&id].node.as_ref().expect("node is up"))
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.shared.borrow().hosts[&id].node.is_some()
    }

    /// Every message leaving a node host passes through `f`, which may alter
    /// or drop it (the host's faulty network card, or a Byzantine shell).
    pub fn set_interceptor(&mut self, f: impl FnMut(NodeId, &mut Envelope) -> Delivery + 'static) {
        self.shared.borrow_mut().interceptor = Some(Box::new(f));
    }

    /// After a step's records are durable and before anything else of it is
    /// performed, `f` may crash the node (returning true).
    pub fn set_crash_point(&mut self, f: impl FnMut(NodeId, &[Record]) -> bool + 'static) {
        self.shared.borrow_mut().crash_point = Some(Box::new(f));
    }

    pub fn clear_crash_point(&mut self) {
        self.shared.borrow_mut().crash_point = None;
    }

    /// Records every message nodes handle from `sender` (for accounting of a
    /// Byzantine node's acts that reached a live node).
    pub fn watch_deliveries_from(&mut self, sender: NodeId) {
        self.shared.borrow_mut().watched = Some(sender);
    }

    /// (recipient, message) for every message a live node handled from the
    /// watched sender.
    pub fn delivered_from_watched(&self) -> Vec<(NodeId, PeerMessage)> {
        self.shared.borrow().delivered_from_watched.clone()
    }

    /// Frames that did not decode as a peer message (dropped by the shell).
    pub fn garbage_frames(&self) -> u64 {
        self.shared.borrow().garbage_frames
    }

    /// A digest of everything every node did: same seed, same hash.
    pub fn trace_hash(&self) -> String {
        hex::encode(self.shared.borrow().trace.clone().finalize())
    }

    pub fn steps(&self) -> u64 {
        self.shared.borrow().steps
    }

    /// Starts timing every `Node::handle` call, by input kind (benchmarks
    /// only: it never changes what the cluster does).
    pub fn time_handles(&mut self) {
        self.shared.borrow_mut().handle_timings = Some(BTreeMap::new());
    }

    pub fn take_handle_timings(&mut self) -> BTreeMap<&'static str, Vec<Duration>> {
        self.shared.borrow_mut().handle_timings.take().unwrap_or_default()
    }

    /// Makes `leader` hold the coordination lease now (as if it had won the
    /// election), and the only candidate; `None` leaves the lease free with
    /// no candidate: coordination unavailable. Nodes learn it from the lease
    /// host, as from an etcd watch.
    pub fn set_leader(&mut self, leader: Option<NodeId>) {
        let now = self.sim.elapsed().as_millis() as u64;
        let mut shared = self.shared.borrow_mut();
        shared.lease.force(leader, now);
    }

    /// Nodes that campaign for the lease: when the holder's lease lapses
    /// (crash, partition), one of them takes it over.
    pub fn set_lease_candidates(&mut self, candidates: BTreeSet<NodeId>) {
        self.shared.borrow_mut().lease.candidates = candidates;
    }

    pub fn lease_holder(&self) -> Option<NodeId> {
        self.shared.borrow().lease.holder.map(|(n, _)| n)
    }

    /// The lease's current term (one more for every new holder).
    pub fn lease_term(&self) -> u64 {
        self.shared.borrow().lease.term
    }

    /// Queues an operator command at `node`; the reply lands in `replies`.
    pub fn command(&mut self, node: NodeId, command: Command) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.input(node, Input::Command { request, command });
        request
    }

    /// Queues any input at a node (safe primes, for instance). Lost if the
    /// node is down, like a request to a crashed process.
    pub fn input(&mut self, node: NodeId, input: Input) {
        if let Some(inbox) = &self.shared.borrow().hosts[&node].inbox {
            let _ = inbox.send(input);
        }
    }

    /// Delivers a message as if `from` had sent it (for Byzantine tests).
    pub fn inject(&mut self, from: NodeId, to: NodeId, msg: PeerMessage) {
        self.input(to, Input::Peer { from, msg });
    }

    pub fn reply(&self, request: RequestId) -> Option<&Reply> {
        self.replies.iter().find(|(_, r, _)| *r == request).map(|(_, _, reply)| reply)
    }

    /// Crashes a node: turmoil cancels its software; volatile state and its
    /// engine's sessions are lost, the store is kept.
    pub fn crash(&mut self, id: NodeId) {
        let name = {
            let mut shared = self.shared.borrow_mut();
            let host = shared.hosts.get_mut(&id).expect("known node");
            if let Some(node) = &host.node {
                host.before_crash = Some(Snapshot::of(node));
            }
            host.node = None;
            host.inbox = None;
            host.engine.reset();
            host.name.clone()
        };
        self.sim.crash(name.as_str());
    }

    /// Restarts a crashed node: its software starts again and rebuilds the
    /// node from its durable records.
    pub fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        let name = {
            let mut shared = self.shared.borrow_mut();
            let host = shared.hosts.get_mut(&id).expect("known node");
            host.incarnation += 1;
            host.name.clone()
        };
        self.sim.bounce(name.as_str());
        self.step();
        anyhow::ensure!(self.is_up(id), "{id} did not restart from its records");
        Ok(())
    }

    /// Cuts `side` off from every other host (the lease host stays with the
    /// rest); replaces any earlier partition.
    pub fn partition(&mut self, side: &BTreeSet<NodeId>) {
        self.heal();
        let ids = self.ids();
        for a in side {
            let a_name = host::node_host_name(*a);
            for b in ids.iter().filter(|b| !side.contains(b)) {
                self.sim.partition(a_name.as_str(), host::node_host_name(*b).as_str());
            }
            self.sim.partition(a_name.as_str(), host::LEASE_HOST);
        }
        self.partitioned = side.clone();
    }

    pub fn heal(&mut self) {
        let ids = self.ids();
        for a in std::mem::take(&mut self.partitioned) {
            let a_name = host::node_host_name(a);
            for b in ids.iter().filter(|b| **b != a) {
                self.sim.repair(a_name.as_str(), host::node_host_name(*b).as_str());
            }
            self.sim.repair(a_name.as_str(), host::LEASE_HOST);
        }
    }

    fn step(&mut self) {
        self.sim.step().expect("simulated hosts run");
        let crashes = std::mem::take(&mut self.shared.borrow_mut().crash_requested);
        for id in crashes {
            self.crash(id);
        }
        let mut shared = self.shared.borrow_mut();
        let new = shared.observations.len();
        for (at, node, o, durable) in shared.observations.drain(..) {
            self.observations.push((at, node, o));
            self.observation_store_len.push(durable);
        }
        // Before the chain moves on: a node reports Confirmed only for
        // what the chain holds at the depth it is configured for, and a
        // conflict only for a spend of an input held that deep.
        let start = self.observations.len() - new;
        for (_, node, o) in &self.observations[start..] {
            let problem = match o {
                Observation::TxStateChanged { tx, to: TxState::Confirmed, .. } => {
                    chain_contradicts(&shared, *node, *tx, ChainClaim::Confirmed)
                }
                Observation::TxStateChanged { tx, to: TxState::Failed(reason), .. }
                    if reason.starts_with("conflict:") =>
                {
                    chain_contradicts(&shared, *node, *tx, ChainClaim::Conflict)
                }
                _ => None,
            };
            self.chain_violations.extend(problem);
        }
        let now = self.sim.elapsed().as_millis() as u64;
        shared.chain.tick(now);
        self.replies.append(&mut shared.replies);
        self.recovery_violations.append(&mut shared.recovery_violations);
        self.lease_changes.append(&mut shared.lease.changes);
    }

    /// Steps the simulation until `done` holds or simulated time passes
    /// `limit_ms` from now. Returns whether `done` held.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let limit = self.sim.elapsed() + Duration::from_millis(limit_ms);
        loop {
            if done(self) {
                return true;
            }
            for _ in 0..CHECK_EVERY_MS / TICK_MS {
                if self.sim.elapsed() >= limit {
                    return done(self);
                }
                self.step();
            }
        }
    }

    /// Runs for `limit_ms` of simulated time.
    pub fn run_for(&mut self, limit_ms: u64) {
        self.run_until(limit_ms, |_| false);
    }

    /// Observations of one kind, with where and when they happened.
    pub fn observed(&self, f: impl Fn(&Observation) -> bool) -> Vec<(NodeId, Observation)> {
        self.observations.iter().filter(|(_, _, o)| f(o)).map(|(_, n, o)| (*n, o.clone())).collect()
    }
}

/// What a node said of a transaction on chain.
#[derive(Clone, Copy, Debug)]
enum ChainClaim {
    /// It is at the confirmation depth.
    Confirmed,
    /// A conflicting spend of one of its inputs is at that depth.
    Conflict,
}

/// Why `node`'s claim about `tx` is wrong for the chain as it is, if it is.
fn chain_contradicts(shared: &Shared, node: NodeId, tx: TxId, claim: ChainClaim) -> Option<String> {
    let host = &shared.hosts[&node];
    let depth = host.config.chain.as_ref().map_or(1, |c| c.confirmations);
    let raw = host.store.iter().rev().find_map(|r| match r {
        Record::SignedTx { tx: t, raw_tx, .. } if *t == tx => Some(raw_tx),
        _ => None,
    });
    let Some(raw) = raw else {
        return Some(format!("{node} reported {} {claim:?} without a signed transaction", tx.short()));
    };
    let signed: bitcoin::Transaction = bitcoin::consensus::deserialize(raw).ok()?;
    let held = match claim {
        ChainClaim::Confirmed => shared.chain.confirmations(&signed.compute_txid()),
        ChainClaim::Conflict => shared.chain.conflict_depth(&signed),
    };
    (held < depth)
        .then(|| format!("{node} reported {} {claim:?} at depth {depth}; the chain holds it {held} deep", tx.short()))
}

impl Drop for Cluster {
    /// Cancels every host's software first: their tasks hold the shared
    /// state, which would otherwise keep the engine threads alive.
    fn drop(&mut self) {
        let names: Vec<String> = self.shared.borrow().hosts.values().map(|h| h.name.clone()).collect();
        for name in names {
            if self.sim.is_host_running(name.as_str()) {
                self.sim.crash(name.as_str());
            }
        }
        if self.sim.is_host_running(host::LEASE_HOST) {
            self.sim.crash(host::LEASE_HOST);
        }
    }
}
