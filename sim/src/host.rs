//! The software of the simulated hosts: a node shell around
//! `mpc_core::Node`, and the lease host that stands in for etcd.
//!
//! The node shell does what the production shell does, over turmoil's
//! network instead of QUIC: it turns datagrams, timers, lease changes,
//! engine results and operator commands into inputs, and performs each
//! step in the order the core's contract requires (records durable, then
//! sends). Every `select!` is `biased`, so no ambient randomness decides
//! which input comes first.

use crate::engine_thread::EngineThread;
use bincode::Options;
use mpc_core::engine::ComputeJob;
use mpc_core::{
    drive, ChainRequest, Core, Envelope, Identity, Input, Millis, Node, NodeConfig, NodeId, Observation, PeerMessage,
    PlantedBugs, Record, RecoveredState, Reply, RequestId, Shell, Step, TxId, TxState,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use turmoil::net::UdpSocket;

/// Simulated wall-clock start of every run (2023-11-14): nodes' clocks are
/// this plus simulated time, plus their drift.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// What an interceptor decides for a message leaving a host.
pub enum Delivery {
    Deliver,
    Drop,
    /// Send after this many extra milliseconds (reordering).
    Delay(u64),
    /// Send twice, the copy after this many extra milliseconds.
    Duplicate(u64),
    /// Send it, then this other message to the same recipient (a replay).
    WithReplay(Box<PeerMessage>),
}

pub(crate) type Interceptor = Box<dyn FnMut(NodeId, &mut Envelope) -> Delivery>;
/// Sees each step's records once they are durable; true crashes the node
/// before anything else of the step is performed.
pub(crate) type CrashPoint = Box<dyn FnMut(NodeId, &[Record]) -> bool>;

/// One node host's shell state: what survives a crash (config, identity,
/// the durable store) and what does not (the node, its inbox, its engine's
/// sessions).
pub struct Host {
    pub config: NodeConfig,
    pub identity: Identity,
    /// None while crashed.
    pub node: Option<Node>,
    /// Durable records, in persist order: survives crashes.
    pub store: Vec<Record>,
    /// Where each step's persist list ends in `store` (records recovered at
    /// start count as one step): a database shell applies each step as one
    /// transaction.
    pub step_ends: Vec<usize>,
    pub(crate) engine: EngineThread,
    pub(crate) incarnation: u32,
    pub(crate) bugs: PlantedBugs,
    /// What the node knew when it crashed, to compare after its restart.
    pub(crate) before_crash: Option<Snapshot>,
    /// Inputs from the harness and the shell's own tasks (commands, lease
    /// changes, engine results); None while crashed.
    pub(crate) inbox: Option<UnboundedSender<Input>>,
    pub(crate) clock: Clock,
    pub(crate) name: String,
}

/// The durable part of a node's view: what a restart must bring back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    consumed: usize,
    transactions: Vec<(TxId, TxState)>,
}

impl Snapshot {
    pub(crate) fn of(node: &Node) -> Snapshot {
        let status = node.status();
        Snapshot { consumed: status.own_consumed, transactions: status.transactions }
    }
}

/// The world of the simulated hosts, shared with the harness that runs them.
/// Hosts borrow it only between awaits, so the harness sees it whole
/// between steps.
pub(crate) struct Shared {
    pub hosts: BTreeMap<NodeId, Host>,
    pub addrs: BTreeMap<IpAddr, NodeId>,
    pub run_seed: u64,
    pub observations: Vec<(Millis, NodeId, Observation, usize)>,
    pub replies: Vec<(NodeId, RequestId, Reply)>,
    pub recovery_violations: Vec<String>,
    /// Messages a node handled from the watched sender: (from, to, message).
    pub watched: Option<NodeId>,
    pub delivered_from_watched: Vec<(NodeId, PeerMessage)>,
    pub garbage_frames: u64,
    pub interceptor: Option<Interceptor>,
    pub crash_point: Option<CrashPoint>,
    /// Hosts that asked to be crashed (at a crash point) this step.
    pub crash_requested: Vec<NodeId>,
    pub lease: LeaseState,
    pub trace: Sha256,
    pub steps: u64,
    pub handle_timings: Option<BTreeMap<&'static str, Vec<Duration>>>,
    /// The Bitcoin chain every node's backend sees.
    pub chain: crate::chain::SimChain,
}

/// The host that plays etcd's lease.
pub const LEASE_HOST: &str = "etcd";
const PEER_PORT: u16 = 7000;
const LEASE_PORT: u16 = 2379;
const LEASE_CLIENT_PORT: u16 = 7001;
/// Lease time-to-live: a holder that cannot renew for this long loses it.
pub const LEASE_TTL_MS: u64 = 10_000;
const KEEPALIVE_MS: u64 = 3_000;
/// Simulated time one engine job takes, whatever the CPU took.
pub const COMPUTE_MS: u64 = 20;
/// Largest frame a shell accepts.
const MAX_FRAME: u64 = 4 << 20;

pub fn node_host_name(id: NodeId) -> String {
    format!("node{}", id.0)
}

/// A host's clock: true simulated time plus an offset, running fast or slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub offset_ms: i64,
    pub drift_ppm: i64,
}

impl Clock {
    /// What this clock reads `elapsed_ms` into the run.
    pub fn local(&self, elapsed_ms: u64) -> Millis {
        let e = elapsed_ms as i64;
        Millis((EPOCH_MS as i64 + self.offset_ms + e + e * self.drift_ppm / 1_000_000) as u64)
    }

    /// The first elapsed time (ms) at which this clock reads at least `t`.
    pub fn elapsed_at(&self, t: Millis) -> u64 {
        let target = t.0 as i64 - EPOCH_MS as i64 - self.offset_ms;
        if target <= 0 {
            return 0;
        }
        let rate = 1_000_000 + self.drift_ppm as i128;
        let mut e = ((target as i128 * 1_000_000) / rate).max(0) as u64;
        while self.local(e) < t {
            e += 1;
        }
        e
    }
}

/// The lease as etcd would hold it, kept by the harness so that tests can
/// force a holder.
#[derive(Default)]
pub struct LeaseState {
    /// Holder and when its lease lapses (simulated ms).
    pub holder: Option<(NodeId, u64)>,
    /// Nodes that campaign; others only watch.
    pub candidates: BTreeSet<NodeId>,
    /// Holder changes since the harness last looked: (old, new).
    pub changes: Vec<(Option<NodeId>, Option<NodeId>)>,
    /// The lease's term: one more for every new holder, as etcd's create
    /// revision of the `leader` key grows.
    pub term: u64,
    /// The holder and term last announced to the nodes.
    announced: Option<(Option<NodeId>, u64)>,
}

impl LeaseState {
    pub fn force(&mut self, leader: Option<NodeId>, now_ms: u64) {
        self.set(leader.map(|l| (l, now_ms + LEASE_TTL_MS)));
        self.candidates = leader.into_iter().collect();
    }

    fn set(&mut self, holder: Option<(NodeId, u64)>) {
        let (old, new) = (self.holder.map(|h| h.0), holder.map(|h| h.0));
        if old != new {
            self.changes.push((old, new));
            if new.is_some() {
                self.term += 1;
            }
        }
        self.holder = holder;
    }

    fn expire(&mut self, now_ms: u64) {
        if self.holder.is_some_and(|(_, lapses)| now_ms >= lapses) {
            self.set(None);
        }
    }

    /// A keep-alive from `from`: renews its lease, or grants a free lease to
    /// a candidate.
    fn keepalive(&mut self, from: NodeId, campaign: bool, now_ms: u64) {
        self.expire(now_ms);
        if !campaign || !self.candidates.contains(&from) {
            return;
        }
        match self.holder {
            None => self.set(Some((from, now_ms + LEASE_TTL_MS))),
            Some((h, _)) if h == from => self.holder = Some((from, now_ms + LEASE_TTL_MS)),
            Some(_) => {}
        }
    }
}

#[derive(Serialize, Deserialize)]
enum LeaseMsg {
    KeepAlive { campaign: bool },
    State { holder: Option<NodeId>, term: u64 },
}

fn elapsed_ms() -> u64 {
    turmoil::sim_elapsed().expect("inside a simulated host").as_millis() as u64
}

fn frame_options() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes().with_limit(MAX_FRAME)
}

fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// The lease host: grants the lease to the first candidate to ask for a
/// free one, renews it on keep-alives, lets it lapse after the TTL, and
/// tells every node each change (an etcd watch).
pub(crate) async fn lease_host(shared: Rc<RefCell<Shared>>) -> turmoil::Result {
    let socket = UdpSocket::bind(any_addr(LEASE_PORT)).await?;
    let mut buf = vec![0u8; 1024];
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            biased;
            r = socket.recv_from(&mut buf) => {
                let (len, src) = r?;
                let from = shared.borrow().addrs.get(&src.ip()).copied();
                if let (Some(from), Ok(LeaseMsg::KeepAlive { campaign })) =
                    (from, frame_options().deserialize::<LeaseMsg>(&buf[..len]))
                {
                    let (holder, term) = {
                        let mut s = shared.borrow_mut();
                        s.lease.keepalive(from, campaign, elapsed_ms());
                        (s.lease.holder.map(|h| h.0), s.lease.term)
                    };
                    let reply = bincode::serialize(&LeaseMsg::State { holder, term }).expect("lease messages serialise");
                    let _ = socket.try_send_to(&reply, src);
                }
            }
            _ = ticks.tick() => {}
        }
        let (announce, addrs) = {
            let mut s = shared.borrow_mut();
            s.lease.expire(elapsed_ms());
            let current = (s.lease.holder.map(|h| h.0), s.lease.term);
            let announce = (s.lease.announced != Some(current)).then_some(current);
            s.lease.announced = Some(current);
            (announce, s.addrs.keys().copied().collect::<Vec<_>>())
        };
        if let Some((holder, term)) = announce {
            let msg = bincode::serialize(&LeaseMsg::State { holder, term }).expect("lease messages serialise");
            for addr in addrs {
                let _ = socket.try_send_to(&msg, SocketAddr::new(addr, LEASE_CLIENT_PORT));
            }
        }
    }
}

/// A node's lease client: keeps its lease alive if it campaigns, and feeds
/// the core who holds the lease. Without word from the lease host for a TTL
/// (less a keep-alive period, so a cut-off holder steps down before anyone
/// can take over), the leader is unknown.
async fn lease_client(shared: Rc<RefCell<Shared>>, id: NodeId, inbox: UnboundedSender<Input>) -> turmoil::Result {
    let socket = UdpSocket::bind(any_addr(LEASE_CLIENT_PORT)).await?;
    let lease = SocketAddr::new(turmoil::lookup(LEASE_HOST), LEASE_PORT);
    let mut buf = vec![0u8; 1024];
    let mut reported: Option<(Option<NodeId>, u64)> = None;
    let mut last_heard = elapsed_ms();
    let mut ticks = tokio::time::interval(Duration::from_millis(KEEPALIVE_MS));
    loop {
        tokio::select! {
            biased;
            r = socket.recv_from(&mut buf) => {
                let (len, _) = r?;
                if let Ok(LeaseMsg::State { holder, term }) = frame_options().deserialize::<LeaseMsg>(&buf[..len]) {
                    last_heard = elapsed_ms();
                    if reported != Some((holder, term)) {
                        reported = Some((holder, term));
                        if inbox.send(Input::Leadership { leader: holder, term }).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            _ = ticks.tick() => {
                let campaign = shared.borrow().lease.candidates.contains(&id);
                let msg = bincode::serialize(&LeaseMsg::KeepAlive { campaign }).expect("lease messages serialise");
                let _ = socket.try_send_to(&msg, lease);
                let stale = elapsed_ms() >= last_heard + LEASE_TTL_MS - KEEPALIVE_MS;
                if let Some((Some(_), term)) = reported.filter(|_| stale) {
                    reported = Some((None, term));
                    if inbox.send(Input::Leadership { leader: None, term }).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Runs engine jobs in order, each taking [`COMPUTE_MS`] of simulated time.
/// Jobs queued together go to the engine thread at once, so engines of all
/// hosts work in parallel while the simulation waits.
async fn compute(
    shared: Rc<RefCell<Shared>>,
    id: NodeId,
    incarnation: u32,
    mut jobs: UnboundedReceiver<ComputeJob>,
    inbox: UnboundedSender<Input>,
) {
    while let Some(job) = jobs.recv().await {
        let mut queued = 1;
        shared.borrow().hosts[&id].engine.submit(incarnation, job);
        while let Ok(job) = jobs.try_recv() {
            shared.borrow().hosts[&id].engine.submit(incarnation, job);
            queued += 1;
        }
        for _ in 0..queued {
            tokio::time::sleep(Duration::from_millis(COMPUTE_MS)).await;
            let result = shared.borrow().hosts[&id].engine.result(incarnation);
            if inbox.send(Input::Compute(result)).is_err() {
                return;
            }
        }
    }
}

/// Rebuilds the node from its durable records: the recovery path the
/// production node takes. Returns the incarnation, or None if the records
/// do not replay.
fn start(shared: &RefCell<Shared>, id: NodeId, inbox: UnboundedSender<Input>) -> Option<u32> {
    let mut s = shared.borrow_mut();
    let run_seed = s.run_seed;
    let Shared { hosts, recovery_violations, .. } = &mut *s;
    let host = hosts.get_mut(&id).expect("known node");
    let seed = crate::setup::node_seed(run_seed, id, host.incarnation);
    let records = RecoveredState { records: host.store.clone() };
    match Node::with_bugs(host.config.clone(), host.identity.clone(), seed, records, host.bugs) {
        Ok(node) => {
            if let Some(before) = host.before_crash.take() {
                let after = Snapshot::of(&node);
                if after != before {
                    recovery_violations.push(format!("{id} restarted with {after:?}, had {before:?} before its crash"));
                }
            }
            host.node = Some(node);
            host.inbox = Some(inbox);
            Some(host.incarnation)
        }
        Err(e) => {
            recovery_violations.push(format!("{id} could not start from its records: {e}"));
            None
        }
    }
}

/// A node host's software, from start (or restart) until turmoil cancels
/// it: the node rebuilt from its records, run by the core's driver over
/// [`SimShell`].
pub(crate) async fn node_host(shared: Rc<RefCell<Shared>>, id: NodeId) -> turmoil::Result {
    let (inbox_tx, inbox) = unbounded_channel();
    let (jobs_tx, jobs_rx) = unbounded_channel();
    let Some(incarnation) = start(&shared, id, inbox_tx.clone()) else {
        std::future::pending::<()>().await;
        return Ok(());
    };
    let socket = Rc::new(UdpSocket::bind(any_addr(PEER_PORT)).await?);
    tokio::task::spawn_local(compute(shared.clone(), id, incarnation, jobs_rx, inbox_tx.clone()));
    tokio::task::spawn_local(lease_client(shared.clone(), id, inbox_tx));
    let peers: BTreeMap<NodeId, SocketAddr> =
        shared.borrow().addrs.iter().map(|(ip, n)| (*n, SocketAddr::new(*ip, PEER_PORT))).collect();
    let mut node = HostedNode { shared: shared.clone(), id };
    let mut shell = SimShell {
        shared,
        id,
        socket,
        peers,
        jobs: jobs_tx,
        inbox,
        last_tick: None,
        buf: vec![0u8; MAX_FRAME as usize],
    };
    match drive(&mut node, &mut shell).await {
        Ok(()) => Ok(()),
        Err(never) => match never {},
    }
}

/// The node as the driver sees it: it stays in [`Host::node`], where the
/// harness inspects it between steps, and is borrowed only for one
/// `handle` call at a time.
struct HostedNode {
    shared: Rc<RefCell<Shared>>,
    id: NodeId,
}

impl Core for HostedNode {
    fn handle(&mut self, now: Millis, input: Input) -> Step {
        let mut s = self.shared.borrow_mut();
        let Shared { hosts, steps, handle_timings, .. } = &mut *s;
        let node = hosts.get_mut(&self.id).and_then(|h| h.node.as_mut()).expect("a running host has its node");
        *steps += 1;
        let Some(timings) = handle_timings.as_mut() else { return node.handle(now, input) };
        let kind = input_kind(&input);
        let started = std::time::Instant::now();
        let step = node.handle(now, input);
        timings.entry(kind).or_default().push(started.elapsed());
        step
    }
}

/// The simulator's shell: turmoil datagrams, timers on the host's drifting
/// clock, lease changes and engine results in; records into the
/// harness-owned store (where the crash points are), observations and
/// replies to the harness, sends through the interceptor (the faulty
/// network card or the Byzantine shell) onto turmoil's network.
struct SimShell {
    shared: Rc<RefCell<Shared>>,
    id: NodeId,
    socket: Rc<UdpSocket>,
    peers: BTreeMap<NodeId, SocketAddr>,
    jobs: UnboundedSender<ComputeJob>,
    inbox: UnboundedReceiver<Input>,
    /// When the last timer fired (simulated ms).
    last_tick: Option<u64>,
    buf: Vec<u8>,
}

impl SimShell {
    /// Accounts for an input about to be handled: the trace, and messages
    /// from the watched (Byzantine) sender that reached a live node.
    fn handing_in(&self, now: Millis, input: &Input) {
        let mut s = self.shared.borrow_mut();
        if let Input::Peer { from, msg } = input {
            if s.watched == Some(*from) {
                s.delivered_from_watched.push((self.id, msg.clone()));
            }
        }
        s.trace.update(self.id.0.to_be_bytes());
        s.trace.update(now.0.to_be_bytes());
    }
}

impl Shell for SimShell {
    type Error = Infallible;

    async fn next(&mut self, wake_at: Option<Millis>) -> Option<(Millis, Input)> {
        loop {
            let clock = self.shared.borrow().hosts[&self.id].clock;
            let now = elapsed_ms();
            // At most one tick per turmoil step: a timer already due fires
            // at the next step, never in a loop at frozen time.
            let sleep_ms = match wake_at {
                Some(at) => clock.elapsed_at(at).saturating_sub(now).max(u64::from(self.last_tick == Some(now))),
                None => 3_600_000,
            };
            let input = tokio::select! {
                biased;
                Some(input) = self.inbox.recv() => input,
                r = self.socket.recv_from(&mut self.buf) => {
                    let Ok((len, src)) = r else { continue };
                    match decode(&self.shared, src, &self.buf[..len]) {
                        Some(input) => input,
                        None => continue,
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                    if wake_at.is_none() {
                        continue;
                    }
                    self.last_tick = Some(elapsed_ms());
                    Input::Tick
                }
            };
            let now = clock.local(elapsed_ms());
            self.handing_in(now, &input);
            return Some((now, input));
        }
    }

    async fn persist(&mut self, records: &[Record]) -> Result<(), Infallible> {
        let crash = {
            let mut s = self.shared.borrow_mut();
            let Shared { hosts, trace, crash_point, crash_requested, .. } = &mut *s;
            let host = hosts.get_mut(&self.id).expect("known node");
            for record in records {
                trace.update(bincode::serialize(record).expect("records serialise"));
                host.store.push(record.clone());
            }
            host.step_ends.push(host.store.len());
            let crash = crash_point.as_mut().is_some_and(|f| f(self.id, records));
            if crash {
                crash_requested.push(self.id);
            }
            crash
        };
        if crash {
            // Durable, and nothing else of the step happens: the host waits
            // for the harness to crash it.
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    fn observe(&mut self, observations: &[Observation]) {
        let mut s = self.shared.borrow_mut();
        let true_now = Millis(EPOCH_MS + elapsed_ms());
        let durable = s.hosts[&self.id].store.len();
        for o in observations {
            s.trace.update(serde_json::to_vec(o).expect("observations serialise"));
            s.observations.push((true_now, self.id, o.clone(), durable));
        }
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        let mut s = self.shared.borrow_mut();
        s.trace.update(format!("{request:?}{reply:?}").as_bytes());
        s.replies.push((self.id, request, reply));
    }

    fn send(&mut self, envelopes: Vec<Envelope>) {
        let mut s = self.shared.borrow_mut();
        let Shared { trace, interceptor, .. } = &mut *s;
        for mut env in envelopes {
            let deliver = match interceptor.as_mut() {
                Some(f) => f(self.id, &mut env),
                None => Delivery::Deliver,
            };
            let bytes = bincode::serialize(&env.msg).expect("messages serialise");
            trace.update(&bytes);
            let Some(to) = self.peers.get(&env.to).copied() else { continue };
            let socket = &self.socket;
            let delayed = |extra: u64, bytes: Vec<u8>| {
                let socket = socket.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_millis(extra)).await;
                    let _ = socket.try_send_to(&bytes, to);
                });
            };
            match deliver {
                Delivery::Deliver => {
                    let _ = socket.try_send_to(&bytes, to);
                }
                Delivery::Drop => {}
                Delivery::Delay(extra) => delayed(extra, bytes),
                Delivery::Duplicate(extra) => {
                    let _ = socket.try_send_to(&bytes, to);
                    delayed(extra, bytes);
                }
                Delivery::WithReplay(old) => {
                    let _ = socket.try_send_to(&bytes, to);
                    let old = bincode::serialize(&old).expect("messages serialise");
                    trace.update(&old);
                    let _ = socket.try_send_to(&old, to);
                }
            }
        }
    }

    fn compute(&mut self, jobs: Vec<ComputeJob>) {
        for job in jobs {
            let _ = self.jobs.send(job);
        }
    }

    /// Answered at once from the simulated chain, and handed in before
    /// anything else: the chain only changes between simulation steps, so
    /// what the core decides from an answer holds for the chain as it is
    /// when the decision is observed.
    fn chain(&mut self, requests: Vec<ChainRequest>) {
        let mut s = self.shared.borrow_mut();
        let Shared { hosts, chain, trace, .. } = &mut *s;
        let Some(inbox) = hosts.get(&self.id).and_then(|h| h.inbox.clone()) else { return };
        for request in requests {
            let report = chain.answer(self.id, &request);
            trace.update(format!("{report:?}").as_bytes());
            let _ = inbox.send(Input::Chain(report));
        }
    }
}

/// A datagram from a member, as the transport authenticates it (by address
/// here, by mTLS certificate in production); anything else is dropped.
fn decode(shared: &RefCell<Shared>, src: SocketAddr, bytes: &[u8]) -> Option<Input> {
    let mut s = shared.borrow_mut();
    let from = s.addrs.get(&src.ip()).copied();
    match (from, frame_options().deserialize::<PeerMessage>(bytes)) {
        (Some(from), Ok(msg)) => Some(Input::Peer { from, msg }),
        _ => {
            s.garbage_frames += 1;
            None
        }
    }
}

/// Timings are kept per message kind for peer messages, per input kind
/// otherwise.
fn input_kind(input: &Input) -> &'static str {
    match input {
        Input::Peer { msg, .. } => msg.kind(),
        other => other.kind(),
    }
}
