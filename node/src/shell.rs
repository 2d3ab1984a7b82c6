//! The node's [`Shell`]: the core's driver plugged into the world.
//!
//! Inputs come from the QUIC transport (peer messages, senders as their
//! certificates name them), the compute workers (engine results), etcd's
//! view (leadership, and whether consumptions can be fenced), the HTTP API
//! (operator commands), the background prime generator, the clock and the
//! shutdown signal. Each step's records go to the database in one
//! transaction, fenced in etcd first when it consumes a presignature
//! (DESIGN §4); only then are its observations (metrics, log), replies (the
//! waiting API request), sends (the transport's bounded queues) and compute
//! jobs (the workers) performed, by the driver, in that order.
//!
//! The shell decides nothing about the protocol: it translates.

use crate::compute::Workers;
use crate::control::{Check, CommandRequest, Health, PrimesState};
use crate::leadership::LeadershipRule;
use crate::metrics::Metrics;
use mpc_core::engine::{ComputeJob, SafePrimes};
use mpc_core::{
    ChainReport, ChainRequest, ChainSight, Command, Core, Envelope, Input, Millis, Node, NodeId, Observation, Record,
    Reply, RequestId, Secret, Shell, StatusReport, Step,
};
use mpc_io_quic::{Inbox, Transport};
use mpc_io_store::coord::{CoordView, Coordinator, Health as CoordHealth, LeadershipGate};
use mpc_io_store::{Store, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// How often the shell asks the core for its status, for the metrics'
/// gauges and the health report.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Request ids at and above this are the shell's own status queries; the
/// API's commands count up from zero.
const INTERNAL_REQUESTS: u64 = 1 << 63;
/// How long consumption stays off after a consuming step could not be
/// fenced in etcd.
const FENCING_RETRY: Duration = Duration::from_secs(5);

/// The node's clock in milliseconds since the Unix epoch, never going
/// backwards (the core requires it; the daily cap counts days by it).
#[derive(Default)]
pub struct Clock {
    last: u64,
}

impl Clock {
    pub fn now(&mut self) -> Millis {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.last = self.last.max(wall);
        Millis(self.last)
    }

    /// How long from now until `at` on this clock.
    fn until(&mut self, at: Millis) -> Duration {
        Duration::from_millis(at.0.saturating_sub(self.now().0))
    }
}

/// Why a step could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// The node as the driver steps it: each `handle` is timed for metrics.
pub struct TimedNode {
    pub node: Node,
    pub metrics: Arc<Metrics>,
}

impl Core for TimedNode {
    fn handle(&mut self, now: Millis, input: Input) -> Step {
        let kind = crate::metrics::input_kind(&input);
        let started = Instant::now();
        let step = self.node.handle(now, input);
        self.metrics.handled(kind, started.elapsed());
        step
    }
}

/// Everything outside the core that one node talks to.
/// A function every outgoing message passes through before the transport
/// (see [`crate::run::run_with`]): it may change, multiply or drop it.
/// mpc-node never installs one; the TEST-ONLY rogue member of the
/// byzantine_scenarios suite (`tests/src/bin/mpc-rogue.rs`) does, to cheat.
pub type Outbound = Box<dyn FnMut(Envelope) -> Vec<Envelope> + Send>;

pub struct NodeShell {
    pub me: NodeId,
    pub clock: Clock,
    pub store: Arc<Store>,
    pub coord: Arc<Coordinator>,
    pub transport: Arc<Transport>,
    pub inbound: Inbox,
    pub workers: Workers,
    pub commands: mpsc::Receiver<CommandRequest>,
    pub coord_view: watch::Receiver<CoordView>,
    pub primes: Option<oneshot::Receiver<SafePrimes>>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub health_tx: watch::Sender<Health>,
    pub health: Health,
    /// The Bitcoin backend's state, from [`crate::backend_watch`].
    pub bitcoin_health: Option<watch::Receiver<crate::backend_watch::BackendView>>,
    /// API requests waiting for the core's reply.
    pub waiting: BTreeMap<RequestId, oneshot::Sender<Reply>>,
    pub next_request: u64,
    pub next_internal: u64,
    /// Inputs decided on but not yet handed in (one etcd view change can
    /// mean two inputs).
    pub queued: VecDeque<Input>,
    pub next_status: Instant,
    /// When the background prime generation started, for status.
    pub primes_since: Option<Instant>,
    /// The group key is published to etcd once (compare-and-set).
    pub key_published: bool,
    /// The shutdown step was handed in.
    pub shutting_down: bool,
    /// When a consuming step last failed to fence in etcd: consumption stays
    /// off for [`FENCING_RETRY`] after it, whatever the etcd view says.
    pub fencing_failed_at: Option<Instant>,
    /// What the core was last told about consuming (see `Input::Coordination`).
    pub told_reachable: Option<bool>,
    /// The Bitcoin backend the core's chain requests go to; `None` without
    /// a `[bitcoin]` section (the core then asks nothing).
    pub chain: Option<ChainLink>,
    /// `None` in mpc-node: see [`Outbound`].
    pub outbound: Option<Outbound>,
    /// Whether this node reaches enough peers to lead (see
    /// [`crate::leadership`]), and the gate that tells the etcd task.
    pub leadership: LeadershipRule,
    pub leadership_gate: LeadershipGate,
    /// The input handed to the core last: when, and what (its kind and a
    /// peer message's kind), so the next call can tell how long the whole
    /// step took (see [`SLOW_STEP`]).
    pub step_started: Option<(Instant, &'static str, &'static str)>,
}

/// A step (the core's handling, persisting, handing messages out) that
/// takes this long is logged: every input behind it waited as long.
const SLOW_STEP: Duration = Duration::from_millis(100);

/// The core's line to bitcoind: requests run as tasks, at most
/// [`CHAIN_REQUESTS_IN_FLIGHT`] at once, and their answers queue here.
pub struct ChainLink {
    pub rpc: crate::bitcoin_rpc::BitcoinRpc,
    pub answers_tx: mpsc::UnboundedSender<ChainReport>,
    pub answers: mpsc::UnboundedReceiver<ChainReport>,
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// Chain lookups and broadcasts running at once. A request beyond it is
/// dropped: the core asks again at its next poll or backoff, so a slow
/// backend costs time, not memory.
pub const CHAIN_REQUESTS_IN_FLIGHT: usize = 8;

impl ChainLink {
    pub fn new(rpc: crate::bitcoin_rpc::BitcoinRpc) -> ChainLink {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        ChainLink {
            rpc,
            answers_tx,
            answers,
            in_flight: Arc::new(tokio::sync::Semaphore::new(CHAIN_REQUESTS_IN_FLIGHT)),
        }
    }
}

impl NodeShell {
    /// Inputs for the etcd view as it is now: the core starts every
    /// incarnation knowing who leads and whether it may consume.
    pub fn queue_coord_view(&mut self) {
        let view = self.coord_view.borrow_and_update().clone();
        self.queued.push_back(view.leadership_input());
        self.told_reachable = None;
        self.queue_reachability();
        self.health.etcd = match &view.health {
            CoordHealth::Ok => Check::ok(),
            CoordHealth::Degraded { reason } => Check::failing(reason.clone()),
        };
        self.health.leader = view.leader.map(|l| l.0);
        self.publish_health();
    }

    /// Tells the core whether it may consume, when that changed: etcd
    /// reachable, and no fencing failure in the last [`FENCING_RETRY`].
    fn queue_reachability(&mut self) {
        let recently_failed = self.fencing_failed_at.is_some_and(|t| t.elapsed() < FENCING_RETRY);
        let reachable = self.coord_view.borrow().etcd_reachable && !recently_failed;
        if self.told_reachable != Some(reachable) {
            self.told_reachable = Some(reachable);
            self.queued.push_back(Input::Coordination { reachable });
        }
    }

    /// The next input for the core (see [`Shell::next`]).
    async fn next_input(&mut self, wake_at: Option<Millis>) -> Option<(Millis, Input)> {
        self.health.driver_running = true;
        loop {
            self.queue_reachability();
            self.check_leadership_fitness();
            if let Some(input) = self.queued.pop_front() {
                return Some((self.clock.now(), input));
            }
            if Instant::now() >= self.next_status {
                self.next_status = Instant::now() + STATUS_EVERY;
                let query = self.status_query();
                return Some((self.clock.now(), query));
            }
            let mut sleep = match wake_at {
                Some(at) => self.clock.until(at).min(STATUS_EVERY),
                None => STATUS_EVERY,
            };
            if let Some(failed) = self.fencing_failed_at {
                sleep = sleep.min((failed + FENCING_RETRY).saturating_duration_since(Instant::now()));
            }
            let status_due = tokio::time::Instant::from_std(self.next_status);
            let primes_pending = self.primes.is_some();
            let event = tokio::select! {
                biased;
                changed = self.shutdown.changed(), if !self.shutting_down => {
                    Event::Shutdown(changed.is_err() || *self.shutdown.borrow())
                }
                Some(result) = self.workers.next() => Event::Input(Input::Compute(result)),
                Ok(()) = self.coord_view.changed() => Event::CoordView,
                Some(request) = self.commands.recv() => Event::Command(request),
                primes = async { self.primes.as_mut().expect("guarded").await }, if primes_pending => {
                    Event::Primes(primes.ok())
                }
                Some(inbound) = self.inbound.recv() => {
                    if let (Some(waited), mpc_io_quic::Inbound::Message { msg, .. }) = (self.inbound.last_wait(), &inbound) {
                        self.metrics.inbox_waited(msg.kind(), waited);
                    }
                    Event::Input(inbound.into_input())
                }
                Some(report) = async { self.chain.as_mut().expect("guarded").answers.recv().await }, if self.chain.is_some() => {
                    Event::Input(Input::Chain(report))
                }
                _ = tokio::time::sleep_until(status_due) => Event::Nothing,
                _ = tokio::time::sleep(sleep) => Event::Timer,
            };
            let input = match event {
                Event::Input(input) => {
                    self.note_chain_tip(&input);
                    input
                }
                Event::Shutdown(true) => {
                    self.shutting_down = true;
                    info!(node = self.me.0, "shutting down: abandoning sessions in flight");
                    Input::ShutDown
                }
                Event::Shutdown(false) | Event::Nothing => continue,
                Event::CoordView => {
                    self.queue_coord_view();
                    continue;
                }
                Event::Command(request) => {
                    let id = RequestId(self.next_request);
                    self.next_request = (self.next_request + 1) % INTERNAL_REQUESTS;
                    self.waiting.insert(id, request.reply);
                    Input::Command { request: id, command: request.command }
                }
                Event::Primes(primes) => {
                    self.primes = None;
                    let Some(primes) = primes else { continue };
                    info!(node = self.me.0, "safe primes ready");
                    Input::SafePrimes(Secret::new(primes))
                }
                Event::Timer => {
                    if wake_at.is_some_and(|at| self.clock.now() >= at) {
                        Input::Tick
                    } else {
                        continue;
                    }
                }
            };
            return Some((self.clock.now(), input));
        }
    }

    /// Opens or closes the leadership gate as the connected peers say.
    fn check_leadership_fitness(&mut self) {
        let connected = self.transport.connected_peers();
        let fit = self.leadership.observe(connected, Instant::now());
        if fit != self.leadership_gate.is_open() {
            if fit {
                info!(node = self.me.0, connected, "reaches enough peers to lead");
            } else {
                warn!(
                    node = self.me.0,
                    connected,
                    needed = self.leadership.needed_peers(),
                    "reaches too few peers to run a presigning session: gives up the leadership or does not claim it"
                );
            }
            self.leadership_gate.set(fit);
        }
    }

    fn publish_health(&mut self) {
        self.health.peers_connected = self.transport.connected_peers();
        if let Some(watch) = self.bitcoin_health.as_mut() {
            let fresh = watch.has_changed().unwrap_or(false);
            let backend = watch.borrow_and_update().clone();
            self.health.bitcoin = Some(backend.check);
            if fresh || self.health.bitcoin_tip.is_none() {
                self.health.bitcoin_tip = backend.tip;
            }
        }
        self.health_tx.send_replace(self.health.clone());
    }

    /// A transaction found in a block tells the tip too (its height plus
    /// its depth): newer than the health poll's, so the API's depth of a
    /// transaction just confirmed is known at once. A later poll (or
    /// report) replaces it, also after a reorg lowered the tip.
    fn note_chain_tip(&mut self, input: &Input) {
        if let Input::Chain(ChainReport::Checked {
            sight: Ok(ChainSight::InBlock { height, confirmations, .. }), ..
        }) = input
        {
            // The health poll's latest first, so it cannot overwrite this.
            self.publish_health();
            self.health.bitcoin_tip = Some(height + confirmations.saturating_sub(1));
            self.health_tx.send_replace(self.health.clone());
        }
    }

    /// The shell's own status query, so gauges and health stay current.
    fn status_query(&mut self) -> Input {
        let request = RequestId(INTERNAL_REQUESTS + self.next_internal);
        self.next_internal = self.next_internal.wrapping_add(1) % INTERNAL_REQUESTS;
        Input::Command { request, command: Command::Status }
    }

    fn on_status(&mut self, report: &StatusReport) {
        self.metrics.status(report);
        self.metrics.peers_connected(self.transport.connected_peers());
        let stats = &self.transport.stats;
        self.metrics.certificate_rotations(
            stats.rotations.load(std::sync::atomic::Ordering::Relaxed),
            stats.rotations_refused.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.health.key_present = report.public_key_hex.is_some();
        self.health.pool_ready = report.pool_ready;
        self.health.pool_low_water = report.pool_low_water;
        self.health.primes = if report.primes_ready {
            PrimesState::Ready
        } else if let Some(since) = self.primes_since {
            PrimesState::Generating { seconds: since.elapsed().as_secs() }
        } else {
            PrimesState::Missing
        };
        if let (Some(key), false) = (&report.public_key_hex, self.key_published) {
            self.key_published = true;
            self.publish_key(key.clone());
        }
        self.publish_health();
    }

    /// DESIGN §4: the group key goes to etcd by compare-and-set; a key
    /// already there that differs is refused loudly (two DKGs for one
    /// cluster would send funds to a key nobody can use).
    fn publish_key(&self, key_hex: String) {
        let coord = self.coord.clone();
        let health = self.health_tx.clone();
        tokio::spawn(async move {
            let Ok(bytes) = hex::decode(&key_hex) else { return };
            let mut pauses = mpc_io_store::backoff::jittered(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                match coord.publish_public_key(&bytes).await {
                    Ok(outcome) => {
                        info!(public_key = %key_hex, ?outcome, "group public key in etcd");
                        return;
                    }
                    Err(mpc_io_store::coord::CoordError::Unreachable(e)) => {
                        debug!("publishing the public key waits for etcd: {e}");
                    }
                    Err(e) => {
                        error!("publishing the public key failed: {e}");
                        health.send_modify(|h| h.etcd = Check::failing(e.to_string()));
                        return;
                    }
                }
                tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(30))).await;
            }
        });
    }

    fn log(&self, o: &Observation) {
        match o {
            Observation::Equivocation { .. }
            | Observation::ForgedVote { .. }
            | Observation::ForgedCertificate { .. }
            | Observation::BadPartialSignature { .. }
            | Observation::ForeignVote { .. }
            | Observation::DkgFailed { .. }
            | Observation::ProtocolFailed { .. }
            | Observation::SigningStalled { .. }
            | Observation::BroadcastStalled { .. }
            | Observation::ChainProblem { .. }
            | Observation::IllegalTransition { .. } => warn!(node = self.me.0, event = ?o, "misbehaviour or failure"),
            Observation::RejectedMessage { .. }
            | Observation::ProposalRejected { .. }
            | Observation::TransportRefused { .. }
            | Observation::MemberSuspected { .. }
            | Observation::SigningProbeUnanswered { .. }
            | Observation::SigningRefused { .. } => info!(node = self.me.0, event = ?o, "refused"),
            Observation::DkgCompleted { .. } | Observation::TxSigned { .. } | Observation::TxStateChanged { .. } => {
                info!(node = self.me.0, event = ?o)
            }
            _ => debug!(node = self.me.0, event = ?o),
        }
    }
}

impl Shell for NodeShell {
    type Error = PersistError;

    async fn next(&mut self, wake_at: Option<Millis>) -> Option<(Millis, Input)> {
        if let Some((started, input, message)) = self.step_started.take() {
            let took = started.elapsed();
            if took >= SLOW_STEP {
                info!(node = self.me.0, input, message, took_ms = took.as_millis() as u64, "slow step");
            }
        }
        let next = self.next_input(wake_at).await;
        if let Some((_, input)) = &next {
            let message = match input {
                Input::Peer { msg, .. } => msg.kind(),
                _ => "",
            };
            self.step_started = Some((Instant::now(), input.kind(), message));
        }
        next
    }

    async fn persist(&mut self, records: &[Record]) -> Result<(), PersistError> {
        let started = Instant::now();
        let now = self.clock.now();
        match self.store.apply_fenced(now, records, &*self.coord).await {
            Ok(_) => {
                self.metrics.persisted(records, started.elapsed());
                if !self.health.database.ok {
                    self.health.database = Check::ok();
                    self.publish_health();
                }
                Ok(())
            }
            Err(e) => {
                error!(node = self.me.0, records = records.len(), "persist failed: {e}");
                if matches!(e, StoreError::CoordinationUnavailable(_)) {
                    // The consumption could not be fenced: until etcd answers
                    // again the rebuilt core must consume nothing, or it
                    // would fail the same way at once.
                    self.fencing_failed_at = Some(Instant::now());
                } else {
                    self.health.database = Check::failing(e.to_string());
                }
                self.publish_health();
                Err(e.into())
            }
        }
    }

    fn observe(&mut self, observations: &[Observation]) {
        self.metrics.observed(observations);
        for o in observations {
            self.log(o);
        }
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        if request.0 >= INTERNAL_REQUESTS {
            if let Reply::Status(report) = &reply {
                self.on_status(report);
            }
            return;
        }
        if let Some(waiting) = self.waiting.remove(&request) {
            // The client may have given up; the command was carried out.
            let _ = waiting.send(reply);
        }
    }

    fn send(&mut self, envelopes: Vec<Envelope>) {
        let envelopes = match &mut self.outbound {
            Some(through) => envelopes.into_iter().flat_map(through).collect(),
            None => envelopes,
        };
        for Envelope { to, msg } in envelopes {
            let kind = msg.kind();
            if let Err(e) = self.transport.send(to, msg) {
                debug!(node = self.me.0, to = to.0, kind, "not sent: {e}");
            }
        }
    }

    fn compute(&mut self, jobs: Vec<ComputeJob>) {
        self.workers.submit(jobs);
    }

    fn chain(&mut self, requests: Vec<ChainRequest>) {
        let Some(link) = &self.chain else { return };
        for request in requests {
            let Ok(permit) = link.in_flight.clone().try_acquire_owned() else {
                debug!(node = self.me.0, tx = %request.tx().short(), "bitcoind busy: chain request dropped, asked again later");
                continue;
            };
            let (rpc, answers) = (link.rpc.clone(), link.answers_tx.clone());
            tokio::spawn(async move {
                let report = crate::chain_backend::answer(&rpc, request).await;
                drop(permit);
                let _ = answers.send(report);
            });
        }
    }
}

/// What woke the shell.
enum Event {
    Input(Input),
    Shutdown(bool),
    CoordView,
    Command(CommandRequest),
    Primes(Option<SafePrimes>),
    Timer,
    Nothing,
}
