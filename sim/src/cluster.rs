//! A deterministic one-process cluster: n nodes, one ordered event queue,
//! a virtual clock, an inline engine and a durable store per node.
//!
//! The driver follows the core's contract exactly: for every step it makes
//! `persist` durable first, then sends, then queues compute jobs and the
//! wake-up. A crash can be injected between the two halves, which is where
//! a presignature's consumption must already be durable.

use mpc_core::engine::{ComputeJob, Engine};
use mpc_core::{
    Command, Envelope, Identity, Input, Millis, Node, NodeConfig, NodeId, Observation, PeerMessage, PlantedBugs,
    Record, RecoveredState, Reply, RequestId, Step, TxId, TxState,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::mpsc;

/// One node's protocol engine on a thread of its own (engines are not
/// `Send`, so each is created on its thread). Jobs go in and results come
/// out in order, so a host's engine behaves exactly as if run inline.
struct EngineThread {
    jobs: mpsc::Sender<EngineCommand>,
    results: mpsc::Receiver<mpc_core::ComputeResult>,
}

enum EngineCommand {
    Run(ComputeJob),
    /// The node crashed: its running sessions are lost.
    Reset,
}

impl EngineThread {
    fn spawn(name: String) -> EngineThread {
        let (jobs, job_rx) = mpsc::channel::<EngineCommand>();
        let (result_tx, results) = mpsc::channel();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut engine = Engine::new();
                for command in job_rx {
                    match command {
                        EngineCommand::Run(job) => {
                            if result_tx.send(engine.run(job)).is_err() {
                                return;
                            }
                        }
                        EngineCommand::Reset => engine = Engine::new(),
                    }
                }
            })
            .expect("spawn engine thread");
        EngineThread { jobs, results }
    }

    fn submit(&self, job: ComputeJob) {
        self.jobs.send(EngineCommand::Run(job)).expect("engine thread alive");
    }

    fn result(&self) -> mpc_core::ComputeResult {
        self.results.recv().expect("engine thread alive")
    }
}

/// What an interceptor decides for a message in flight.
pub enum Delivery {
    Deliver,
    Drop,
    /// Deliver after this many extra milliseconds (reordering).
    Delay(u64),
    /// Deliver twice, the copy after this many extra milliseconds.
    Duplicate(u64),
}

type Interceptor = Box<dyn FnMut(NodeId, &mut Envelope) -> Delivery>;
type CrashPoint = Box<dyn FnMut(NodeId, &Step) -> bool>;

enum Event {
    Message { from: NodeId, to: NodeId, msg: PeerMessage },
    Compute { node: NodeId, incarnation: u32, job: ComputeJob },
    Tick { node: NodeId, incarnation: u32 },
    Input { node: NodeId, input: Input },
}

pub struct Host {
    pub config: NodeConfig,
    pub identity: Identity,
    /// None while crashed.
    pub node: Option<Node>,
    /// Durable records, in persist order: survives crashes.
    pub store: Vec<Record>,
    engine: EngineThread,
    incarnation: u32,
    wake_at: Option<Millis>,
    bugs: PlantedBugs,
    /// What the node knew when it crashed, to compare after its restart.
    before_crash: Option<Snapshot>,
}

/// The durable part of a node's view: what a restart must bring back.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    consumed: usize,
    transactions: Vec<(TxId, TxState)>,
}

impl Snapshot {
    fn of(node: &Node) -> Snapshot {
        let status = node.status();
        Snapshot { consumed: status.own_consumed, transactions: status.transactions }
    }
}

pub struct Cluster {
    pub hosts: BTreeMap<NodeId, Host>,
    queue: BTreeMap<(Millis, u64), Event>,
    now: Millis,
    next_event: u64,
    run_seed: u64,
    /// Virtual network latency per message.
    pub latency_ms: u64,
    leader: Option<NodeId>,
    next_request: u64,
    pub observations: Vec<(Millis, NodeId, Observation)>,
    /// For each observation, how many records its node had made durable
    /// when it was observed: what was durable at that moment.
    pub observation_store_len: Vec<usize>,
    /// Restarts that did not bring back what the node knew before its crash.
    pub recovery_violations: Vec<String>,
    /// Messages that arrived while their recipient was down: (to, message).
    pub dropped_at_down_nodes: Vec<(NodeId, PeerMessage)>,
    pub replies: Vec<(NodeId, RequestId, Reply)>,
    interceptor: Option<Interceptor>,
    crash_point: Option<CrashPoint>,
    trace: Sha256,
    pub steps: u64,
    /// When set, how long each `Node::handle` call took, by input kind. For
    /// benchmarks only: it never changes what the cluster does.
    pub handle_timings: Option<BTreeMap<&'static str, Vec<std::time::Duration>>>,
}

fn input_kind(input: &Input) -> &'static str {
    match input {
        Input::Peer { msg, .. } => msg.kind(),
        Input::Tick => "tick",
        Input::Command { .. } => "command",
        Input::Leadership { .. } => "leadership",
        Input::Compute(_) => "compute_result",
        Input::SafePrimes(_) => "safe_primes",
    }
}

impl Cluster {
    /// Starts every node from its recovered records (empty for a fresh node).
    pub fn new(
        run_seed: u64,
        nodes: BTreeMap<NodeId, (NodeConfig, Identity)>,
        recovered: BTreeMap<NodeId, Vec<Record>>,
    ) -> anyhow::Result<Cluster> {
        Self::with_bugs(run_seed, nodes, recovered, PlantedBugs::NONE)
    }

    /// A cluster whose nodes all carry `bugs` (TEST ONLY: only a build with
    /// mpc-core's `planted-bugs` feature can make anything but `NONE`).
    pub fn with_bugs(
        run_seed: u64,
        nodes: BTreeMap<NodeId, (NodeConfig, Identity)>,
        mut recovered: BTreeMap<NodeId, Vec<Record>>,
        bugs: PlantedBugs,
    ) -> anyhow::Result<Cluster> {
        let mut hosts = BTreeMap::new();
        for (id, (config, identity)) in nodes {
            let store = recovered.remove(&id).unwrap_or_default();
            let seed = crate::setup::node_seed(run_seed, id, 0);
            let records = RecoveredState { records: store.clone() };
            let node = Node::with_bugs(config.clone(), identity.clone(), seed, records, bugs)?;
            hosts.insert(
                id,
                Host {
                    config,
                    identity,
                    node: Some(node),
                    store,
                    engine: EngineThread::spawn(format!("engine-{}", id.0)),
                    incarnation: 0,
                    wake_at: None,
                    bugs,
                    before_crash: None,
                },
            );
        }
        let mut cluster = Cluster {
            hosts,
            queue: BTreeMap::new(),
            now: Millis(1_700_000_000_000),
            next_event: 0,
            run_seed,
            latency_ms: 5,
            leader: None,
            next_request: 0,
            observations: Vec::new(),
            observation_store_len: Vec::new(),
            recovery_violations: Vec::new(),
            dropped_at_down_nodes: Vec::new(),
            replies: Vec::new(),
            interceptor: None,
            crash_point: None,
            trace: Sha256::new(),
            steps: 0,
            handle_timings: None,
        };
        let ids: Vec<NodeId> = cluster.hosts.keys().copied().collect();
        for id in ids {
            cluster.push(cluster.now, Event::Tick { node: id, incarnation: 0 });
        }
        Ok(cluster)
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.hosts.keys().copied().collect()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.hosts[&id].node.as_ref().expect("node is up")
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.hosts[&id].node.is_some()
    }

    /// Every message in flight passes through `f`, which may alter or drop it.
    pub fn set_interceptor(&mut self, f: impl FnMut(NodeId, &mut Envelope) -> Delivery + 'static) {
        self.interceptor = Some(Box::new(f));
    }

    /// After a step's records are durable and before anything else of it is
    /// performed, `f` may crash the node (returning true).
    pub fn set_crash_point(&mut self, f: impl FnMut(NodeId, &Step) -> bool + 'static) {
        self.crash_point = Some(Box::new(f));
    }

    pub fn clear_crash_point(&mut self) {
        self.crash_point = None;
    }

    /// A digest of everything every node did: same seed, same hash.
    pub fn trace_hash(&self) -> String {
        hex::encode(self.trace.clone().finalize())
    }

    fn push(&mut self, at: Millis, event: Event) {
        self.queue.insert((at, self.next_event), event);
        self.next_event += 1;
    }

    /// Tells every node who holds the coordination lease.
    pub fn set_leader(&mut self, leader: Option<NodeId>) {
        self.leader = leader;
        for id in self.ids() {
            self.push(self.now, Event::Input { node: id, input: Input::Leadership { leader } });
        }
    }

    /// Queues an operator command at `node`; the reply lands in `replies`.
    pub fn command(&mut self, node: NodeId, command: Command) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.push(self.now, Event::Input { node, input: Input::Command { request, command } });
        request
    }

    /// Queues any input at a node (safe primes, for instance).
    pub fn input(&mut self, node: NodeId, input: Input) {
        self.push(self.now, Event::Input { node, input });
    }

    /// Delivers a message as if `from` had sent it (for Byzantine tests).
    pub fn inject(&mut self, from: NodeId, to: NodeId, msg: PeerMessage) {
        self.push(self.now, Event::Message { from, to, msg });
    }

    pub fn reply(&self, request: RequestId) -> Option<&Reply> {
        self.replies.iter().find(|(_, r, _)| *r == request).map(|(_, _, reply)| reply)
    }

    /// Crashes a node: volatile state and its engine are lost, the store is kept.
    pub fn crash(&mut self, id: NodeId) {
        let host = self.hosts.get_mut(&id).expect("known node");
        if let Some(node) = &host.node {
            host.before_crash = Some(Snapshot::of(node));
        }
        host.node = None;
        host.engine.jobs.send(EngineCommand::Reset).expect("engine thread alive");
        host.wake_at = None;
    }

    /// Restarts a crashed node from its durable records.
    pub fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        let leader = self.leader;
        let now = self.now;
        let run_seed = self.run_seed;
        let host = self.hosts.get_mut(&id).expect("known node");
        host.incarnation += 1;
        let seed = crate::setup::node_seed(run_seed, id, host.incarnation);
        let recovered = RecoveredState { records: host.store.clone() };
        let node = Node::with_bugs(host.config.clone(), host.identity.clone(), seed, recovered, host.bugs)?;
        if let Some(before) = host.before_crash.take() {
            let after = Snapshot::of(&node);
            if after != before {
                self.recovery_violations
                    .push(format!("{id} restarted with {after:?}, had {before:?} before its crash"));
            }
        }
        let host = self.hosts.get_mut(&id).expect("known node");
        host.node = Some(node);
        let incarnation = host.incarnation;
        self.push(now, Event::Input { node: id, input: Input::Leadership { leader } });
        self.push(now, Event::Tick { node: id, incarnation });
        Ok(())
    }

    /// Processes events until `done` holds or virtual time passes `limit_ms`
    /// from now. Returns whether `done` held.
    pub fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        let limit = self.now.plus(limit_ms);
        loop {
            if done(self) {
                return true;
            }
            let Some((&(at, seq), _)) = self.queue.iter().next() else { return done(self) };
            if at > limit {
                self.now = limit;
                return done(self);
            }
            let event = self.queue.remove(&(at, seq)).expect("just seen");
            self.now = self.now.max(at);
            if let Event::Compute { .. } = event {
                self.process_compute_batch(event);
            } else {
                self.process(event);
            }
        }
    }

    /// Runs the compute event at the head of the queue together with the
    /// compute events right behind it, each on its node's engine thread, then
    /// hands the results to the nodes in queue order. The outcome is the
    /// same as running them one by one: each engine sees its own jobs in
    /// order, and nothing a node does with a result can reach a job already
    /// queued ahead of that node's reaction.
    fn process_compute_batch(&mut self, first: Event) {
        let mut batch = vec![first];
        while let Some((&key, Event::Compute { .. })) = self.queue.iter().next() {
            if key.0 > self.now {
                break;
            }
            batch.push(self.queue.remove(&key).expect("just seen"));
        }
        let mut dispatched = Vec::with_capacity(batch.len());
        for event in batch {
            let Event::Compute { node, incarnation, job } = event else { unreachable!("batch holds compute events") };
            let host = &self.hosts[&node];
            let live = host.incarnation == incarnation && host.node.is_some();
            if live {
                host.engine.submit(job);
            }
            dispatched.push((node, incarnation, live));
        }
        for (node, incarnation, live) in dispatched {
            if !live {
                continue;
            }
            let result = self.hosts[&node].engine.result();
            let now = self.now;
            let host = self.hosts.get_mut(&node).expect("known node");
            if host.incarnation != incarnation {
                continue;
            }
            let Some(core) = host.node.as_mut() else { continue };
            let step = Self::timed_handle(&mut self.handle_timings, core, now, Input::Compute(result));
            self.perform(node, step);
        }
    }

    /// Runs until nothing is left to do before `limit_ms` passes.
    pub fn run_for(&mut self, limit_ms: u64) {
        self.run_until(limit_ms, |_| false);
    }

    fn process(&mut self, event: Event) {
        let (id, input) = match event {
            Event::Message { from, to, msg } => (to, Input::Peer { from, msg }),
            Event::Input { node, input } => (node, input),
            Event::Tick { node, incarnation } => {
                let host = self.hosts.get_mut(&node).expect("known node");
                if host.incarnation != incarnation {
                    return;
                }
                host.wake_at = None;
                (node, Input::Tick)
            }
            Event::Compute { .. } => unreachable!("compute events run in batches"),
        };
        let now = self.now;
        let Some(node) = self.hosts.get_mut(&id).and_then(|h| h.node.as_mut()) else {
            if let Input::Peer { msg, .. } = input {
                self.dropped_at_down_nodes.push((id, msg));
            }
            return;
        };
        let step = Self::timed_handle(&mut self.handle_timings, node, now, input);
        self.perform(id, step);
    }

    fn timed_handle(
        timings: &mut Option<BTreeMap<&'static str, Vec<std::time::Duration>>>,
        node: &mut Node,
        now: Millis,
        input: Input,
    ) -> Step {
        let Some(timings) = timings.as_mut() else { return node.handle(now, input) };
        let kind = input_kind(&input);
        let started = std::time::Instant::now();
        let step = node.handle(now, input);
        timings.entry(kind).or_default().push(started.elapsed());
        step
    }

    /// Executes a step in the order the core's contract requires.
    fn perform(&mut self, id: NodeId, step: Step) {
        self.steps += 1;
        self.trace.update(id.0.to_be_bytes());
        self.trace.update(self.now.0.to_be_bytes());
        let host = self.hosts.get_mut(&id).expect("known node");
        for record in &step.persist {
            self.trace.update(bincode::serialize(record).expect("records serialise"));
            host.store.push(record.clone());
        }
        if let Some(crash) = self.crash_point.as_mut() {
            if crash(id, &step) {
                self.crash(id);
                return;
            }
        }
        let durable = self.hosts[&id].store.len();
        for o in &step.observations {
            self.trace.update(serde_json::to_vec(o).expect("observations serialise"));
            self.observations.push((self.now, id, o.clone()));
            self.observation_store_len.push(durable);
        }
        for (request, reply) in step.replies {
            self.trace.update(format!("{request:?}{reply:?}").as_bytes());
            self.replies.push((id, request, reply));
        }
        let incarnation = self.hosts[&id].incarnation;
        for mut env in step.send {
            let deliver = match self.interceptor.as_mut() {
                Some(f) => f(id, &mut env),
                None => Delivery::Deliver,
            };
            self.trace.update(bincode::serialize(&env.msg).expect("messages serialise"));
            let at = self.now.plus(self.latency_ms);
            match deliver {
                Delivery::Deliver => self.push(at, Event::Message { from: id, to: env.to, msg: env.msg }),
                Delivery::Drop => {}
                Delivery::Delay(extra) => {
                    self.push(at.plus(extra), Event::Message { from: id, to: env.to, msg: env.msg })
                }
                Delivery::Duplicate(extra) => {
                    self.push(at, Event::Message { from: id, to: env.to, msg: env.msg.clone() });
                    self.push(at.plus(extra), Event::Message { from: id, to: env.to, msg: env.msg });
                }
            }
        }
        for job in step.compute {
            self.push(self.now, Event::Compute { node: id, incarnation, job });
        }
        let host = self.hosts.get_mut(&id).expect("known node");
        if let Some(at) = step.wake_at {
            if host.wake_at != Some(at) {
                host.wake_at = Some(at);
                self.push(at.max(self.now), Event::Tick { node: id, incarnation });
            }
        }
    }

    /// Observations of one kind, with where and when they happened.
    pub fn observed(&self, f: impl Fn(&Observation) -> bool) -> Vec<(NodeId, Observation)> {
        self.observations.iter().filter(|(_, _, o)| f(o)).map(|(_, n, o)| (*n, o.clone())).collect()
    }
}
