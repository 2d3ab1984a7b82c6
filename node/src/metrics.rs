//! The node's Prometheus metrics (DESIGN §7), on a registry of their own.
//!
//! Operators look at buffers and latencies first, so the families are named
//! for what one alerts on: the presignature pool against its low-water mark,
//! how long submissions take to be approved and signed, how long a step's
//! persist and the core's `handle` take, and every Byzantine signal the core
//! reports (equivocations, forged votes, bad partial signatures, transport
//! refusals).
//!
//! The shell feeds it: [`Metrics::persisted`] after every durable step,
//! [`Metrics::observed`] with the step's observations, [`Metrics::handled`]
//! around each `Node::handle`, [`Metrics::status`] with status reports and
//! [`Metrics::peers_connected`] when the transport's view changes. The HTTP
//! API refreshes the status gauges at each scrape, so they are current even
//! if the shell never asks for a report.
//!
//! Label values come from fixed sets only (input kinds, decision, reason
//! classes, states), so no client and no peer can grow the number of series.
//! Timers started by a record and stopped by an observation live in bounded
//! maps: a transaction or presignature that never finishes is dropped when
//! the map is full or its timer is older than any plausible completion.

use mpc_core::{DkgStage, Input, NodeId, Observation, PresigId, Record, StatusReport, TxId, TxState};
use mpc_io_store::TxStateKind;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Input kinds `Node::handle` is timed by ([`input_kind`]); any other
/// string handed to [`Metrics::handled`] is counted as `other`.
pub const INPUT_KINDS: [&str; 10] = [
    "peer",
    "tick",
    "command",
    "leadership",
    "compute",
    "safe_primes",
    "transport_refused",
    "coordination",
    "chain",
    "shut_down",
];

/// Classes of presignature discard reasons (the core's reasons are free
/// text; see [`discard_class`]).
pub const DISCARD_CLASSES: [&str; 5] = ["timeout", "abandoned", "restart", "shutdown", "other"];

/// Every DKG stage, in the order a key generation goes through them: one
/// `mpc_dkg_state` series each (see [`dkg_stage_name`]).
const DKG_STAGES: [DkgStage; 6] = [
    DkgStage::NotStarted,
    DkgStage::WaitingForPrimes,
    DkgStage::AuxInfo,
    DkgStage::Keygen,
    DkgStage::Confirming,
    DkgStage::Done,
];

/// Presigning sessions whose start time is kept, at most. The pool's max is
/// 150 per cluster; this leaves room for many abandoned sessions.
const MAX_PRESIG_TIMERS: usize = 4096;
/// A presigning timer older than this is dropped when the map is full
/// (sessions time out after minutes).
const PRESIG_TIMER_MAX_AGE: Duration = Duration::from_secs(3600);
/// Transactions whose submission time is kept, at most.
const MAX_TX_TIMERS: usize = 16_384;
/// A transaction timer older than this is dropped when the map is full
/// (votes expire after minutes, signing gives up after a few more).
const TX_TIMER_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The fill rate is measured over this window of presignature-ready events.
pub const FILL_WINDOW: Duration = Duration::from_secs(600);
/// Ready events kept for the fill rate, at most (a cap, whatever the rate).
const MAX_READY_EVENTS: usize = 10_000;

/// The input kind label of `input`, one of [`INPUT_KINDS`].
pub fn input_kind(input: &Input) -> &'static str {
    input.kind()
}

/// The class of a presignature discard reason, one of [`DISCARD_CLASSES`].
/// The core words its reasons for people ("session deadline passed",
/// "abandoned by node-3", "session lost in a restart", "node shut down",
/// or a protocol error); the metric needs a fixed set.
pub fn discard_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("deadline") || r.contains("timeout") || r.contains("timed out") {
        "timeout"
    } else if r.starts_with("abandoned") {
        "abandoned"
    } else if r.contains("restart") {
        "restart"
    } else if r.contains("shut down") || r.contains("shutdown") {
        "shutdown"
    } else {
        "other"
    }
}

/// The DKG stage's label value.
pub fn dkg_stage_name(stage: DkgStage) -> &'static str {
    match stage {
        DkgStage::NotStarted => "not_started",
        DkgStage::WaitingForPrimes => "waiting_for_primes",
        DkgStage::AuxInfo => "aux_info",
        DkgStage::Keygen => "keygen",
        DkgStage::Confirming => "confirming",
        DkgStage::Done => "done",
    }
}

/// Presignatures that became ready over the recent window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FillRate {
    /// Ready events per minute over the window (or over the time since the
    /// first event, if that is shorter).
    pub per_minute: f64,
    /// Ready events counted.
    pub ready_in_window: usize,
    /// The window's length.
    pub window: Duration,
}

/// Start times keyed by the thing timed, bounded in size and age.
struct Timers<K> {
    started: BTreeMap<K, Instant>,
    cap: usize,
    max_age: Duration,
}

impl<K: Ord + Copy> Timers<K> {
    fn new(cap: usize, max_age: Duration) -> Self {
        Timers { started: BTreeMap::new(), cap, max_age }
    }

    /// Starts a timer unless one runs already (the first start counts).
    /// When full: drops timers past their age, then the oldest one.
    fn start(&mut self, key: K, now: Instant) {
        if self.started.contains_key(&key) {
            return;
        }
        if self.started.len() >= self.cap {
            let max_age = self.max_age;
            self.started.retain(|_, t| now.saturating_duration_since(*t) < max_age);
        }
        if self.started.len() >= self.cap {
            if let Some(oldest) = self.started.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                self.started.remove(&oldest);
            }
        }
        self.started.insert(key, now);
    }

    fn elapsed(&self, key: &K, now: Instant) -> Option<Duration> {
        self.started.get(key).map(|t| now.saturating_duration_since(*t))
    }

    fn stop(&mut self, key: &K, now: Instant) -> Option<Duration> {
        self.started.remove(key).map(|t| now.saturating_duration_since(t))
    }

    fn len(&self) -> usize {
        self.started.len()
    }
}

struct Clocks {
    presigning: Timers<PresigId>,
    submitted: Timers<TxId>,
    ready_events: VecDeque<Instant>,
}

impl Clocks {
    fn note_ready(&mut self, now: Instant) {
        self.ready_events.push_back(now);
        while self.ready_events.len() > MAX_READY_EVENTS {
            self.ready_events.pop_front();
        }
        self.forget_ready_before(now);
    }

    fn forget_ready_before(&mut self, now: Instant) {
        while let Some(first) = self.ready_events.front() {
            if now.saturating_duration_since(*first) > FILL_WINDOW {
                self.ready_events.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Every metric the node exports. `Send + Sync`: share it as an `Arc`.
pub struct Metrics {
    registry: Registry,
    persist_duration: Histogram,
    handle_duration: HistogramVec,
    inbox_wait: HistogramVec,
    presig_generated: IntCounter,
    presig_discarded: IntCounterVec,
    presigning_duration: Histogram,
    votes: IntCounterVec,
    equivocations: IntCounterVec,
    forged_votes: IntCounterVec,
    forged_certificates: IntCounterVec,
    foreign_votes: IntCounterVec,
    bad_partial_signatures: IntCounterVec,
    transport_refusals: IntCounter,
    member_suspicions: IntCounter,
    signing_stalled: IntCounter,
    transactions_confirmed: IntCounter,
    broadcasts_stalled: IntCounter,
    chain_problems: IntCounter,
    illegal_transitions: IntCounter,
    rejected_messages: IntCounterVec,
    rejected_proposals: IntCounter,
    signing_refusals: IntCounter,
    signing_retries: IntCounter,
    protocol_failures: IntCounter,
    protocol_blame: IntCounterVec,
    signing_probes_unanswered: IntCounterVec,
    partial_signatures_released: IntCounter,
    transactions_signed: IntCounter,
    submit_to_approved: Histogram,
    submit_to_signed: Histogram,
    dkg_completed: IntCounter,
    dkg_failed: IntCounter,
    pool_size: IntGauge,
    presignatures: IntGaugeVec,
    own_presignatures: IntGaugeVec,
    pool_marks: IntGaugeVec,
    transactions: IntGaugeVec,
    dkg_state: IntGaugeVec,
    leader: IntGauge,
    is_leader: IntGauge,
    coordination_reachable: IntGauge,
    peers_connected: IntGauge,
    certificate_rotations: IntCounterVec,
    node: NodeId,
    clocks: Mutex<Clocks>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metrics({})", self.node)
    }
}

/// Registers `metric` and hands it back.
fn reg<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("metric names are unique and well-formed");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    reg(registry, IntCounter::new(name, help).expect("valid counter"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let c = reg(registry, IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter"));
    // Every series exists from the start, at 0: rate() and absent() work
    // before the first event.
    for v in values {
        c.with_label_values(&[*v]);
    }
    c
}

/// One more on `member`'s series of a counter labelled by member.
fn blame(counter: &IntCounterVec, member: NodeId) {
    counter.with_label_values(&[&member.0.to_string()]).inc();
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    reg(registry, IntGauge::new(name, help).expect("valid gauge"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str, values: &[&str]) -> IntGaugeVec {
    let g = reg(registry, IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid gauge"));
    for v in values {
        g.with_label_values(&[*v]);
    }
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    reg(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid histogram"),
    )
}

const STATE_LABELS: [&str; 4] = ["ready", "generating", "consumed", "discarded"];
const OWN_STATE_LABELS: [&str; 3] = ["ready", "consumed", "discarded"];
const MARK_LABELS: [&str; 3] = ["low_water", "target", "max"];

impl Metrics {
    pub fn new(node: NodeId) -> Metrics {
        let r = Registry::new();
        let info = gauge_vec(&r, "mpc_node_info", "Always 1; the label names this cluster member.", "node", &[]);
        info.with_label_values(&[&node.0.to_string()]).set(1);
        let tx_states: Vec<&str> = TxStateKind::ALL.iter().map(|k| k.as_str()).collect();
        let stages: Vec<&str> = DKG_STAGES.iter().map(|s| dkg_stage_name(*s)).collect();
        let mut input_kinds = INPUT_KINDS.to_vec();
        input_kinds.push("other");
        let handle_duration = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "mpc_handle_duration_seconds",
                    "Time the core took for one Node::handle call, by input kind. Alert when the p99 nears \
                     milliseconds: heavy work has reached the path that handles votes and signing.",
                )
                .buckets(vec![1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5]),
                &["input"],
            )
            .expect("valid histogram"),
        );
        for kind in &input_kinds {
            handle_duration.with_label_values(&[*kind]);
        }
        let inbox_wait = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "mpc_inbox_wait_seconds",
                    "Time a peer's message waited between the transport reading it and the node's loop taking \
                     it, by message kind. A rising p99 for signing_request or vote means signing queues behind \
                     other work.",
                )
                .buckets(vec![1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0]),
                &["message"],
            )
            .expect("valid histogram"),
        );
        Metrics {
            inbox_wait,
            persist_duration: histogram(
                &r,
                "mpc_persist_duration_seconds",
                "Time to make one step's records durable (one database transaction). Alert on a rising p99: \
                 every reply and message waits for it.",
                &[5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            handle_duration,
            presig_generated: counter(
                &r,
                "mpc_presignatures_generated_total",
                "This node's presignature shares that became ready. Alert when it stops growing while the pool \
                 is below its low-water mark.",
            ),
            presig_discarded: counter_vec(
                &r,
                "mpc_presignatures_discarded_total",
                "This node's presignature shares discarded without a signature, by reason class (timeout, \
                 abandoned, restart, shutdown, other). A rising rate against generated is wasted presigning.",
                "reason",
                &DISCARD_CLASSES,
            ),
            presigning_duration: histogram(
                &r,
                "mpc_presigning_duration_seconds",
                "From a presigning session's start to this node's share being ready. Slow sessions mean the \
                 pool refills slowly.",
                &[0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0],
            ),
            votes: counter_vec(
                &r,
                "mpc_votes_total",
                "Votes this node cast, by decision. Rejections mean proposals broke this node's policy.",
                "decision",
                &["approve", "reject"],
            ),
            equivocations: counter_vec(
                &r,
                "mpc_equivocations_total",
                "Members caught signing two different votes for one transaction (Byzantine). Alert on any.",
                "member",
                &[],
            ),
            forged_votes: counter_vec(
                &r,
                "mpc_forged_votes_total",
                "Votes received whose Ed25519 signature does not verify (Byzantine or corrupted). Alert on any.",
                "member",
                &[],
            ),
            forged_certificates: counter_vec(
                &r,
                "mpc_forged_certificates_total",
                "Signing requests carrying a certificate for another transaction (Byzantine). Alert on any.",
                "member",
                &[],
            ),
            foreign_votes: counter_vec(
                &r,
                "mpc_foreign_votes_total",
                "Votes from nodes that are not members of this cluster. Alert on any.",
                "member",
                &[],
            ),
            bad_partial_signatures: counter_vec(
                &r,
                "mpc_bad_partial_signatures_total",
                "Partial signatures that failed the check against their presignature's commitments: the \
                 signer cheated. Alert on any.",
                "member",
                &[],
            ),
            transport_refusals: counter(
                &r,
                "mpc_transport_refusals_total",
                "Connections or messages the QUIC transport refused (bad certificate, sender mismatch, \
                 garbage). Alert on a sustained rate.",
            ),
            member_suspicions: counter(
                &r,
                "mpc_member_suspicions_total",
                "Times this node started avoiding a member as a signer because it let a session or a \
                 signing request time out. A member that keeps raising it is down or withholding its part.",
            ),
            signing_stalled: counter(
                &r,
                "mpc_signing_stalled_total",
                "Inputs of approved transactions that found no signature in max_signing_attempts tries. \
                 They are still retried, less often, while the approval stands: check the signers' health.",
            ),
            transactions_confirmed: counter(
                &r,
                "mpc_transactions_confirmed_total",
                "Signed transactions this node saw reach the configured confirmation depth on its Bitcoin \
                 backend (again after a reorg counts again).",
            ),
            broadcasts_stalled: counter(
                &r,
                "mpc_broadcasts_stalled_total",
                "Signed transactions the Bitcoin backend did not hold (mempool or chain) for the broadcast \
                 timeout. They are still rebroadcast; the transaction's chain status says why.",
            ),
            chain_problems: counter(
                &r,
                "mpc_chain_problems_total",
                "Failed broadcasts and lookups on the Bitcoin backend, counted once per new reason per \
                 transaction: an unreachable backend, a refused broadcast, a conflicting spend in the mempool.",
            ),
            illegal_transitions: counter(
                &r,
                "mpc_illegal_transitions_total",
                "Transaction state changes the lifecycle refused (the state did not change). Never \
                 happens in a correct node: report it as a bug.",
            ),
            rejected_messages: counter_vec(
                &r,
                "mpc_rejected_messages_total",
                "Peer messages whose content the core could not accept.",
                "member",
                &[],
            ),
            rejected_proposals: counter(
                &r,
                "mpc_rejected_proposals_total",
                "Proposals from peers that failed structural validation here.",
            ),
            signing_refusals: counter(
                &r,
                "mpc_signing_refusals_total",
                "Signing requests this node refused (no certificate, presignature not ready, coordination \
                 unavailable, another message).",
            ),
            signing_retries: counter(
                &r,
                "mpc_signing_retries_total",
                "Signing attempts retried with another presignature (timeouts, refusals). A sustained rate \
                 means a signer is down or misbehaving.",
            ),
            protocol_failures: counter(
                &r,
                "mpc_protocol_failures_total",
                "cggmp24 sessions (aux info, keygen, presigning) that failed or timed out.",
            ),
            protocol_blame: counter_vec(
                &r,
                "mpc_protocol_blame_total",
                "Failed cggmp24 sessions pinned on a member: it sent a round message that does not decode, or \
                 cggmp24 blamed it for an invalid proof. Any rise names a member to investigate.",
                "member",
                &[],
            ),
            signing_probes_unanswered: counter_vec(
                &r,
                "mpc_signing_probes_unanswered_total",
                "Signing probes a member left unanswered for a probe window while this node coordinated: it \
                 was avoided and another signer set asked, at the cost of time, not a presignature. A member \
                 that keeps raising it is down or cut off.",
                "member",
                &[],
            ),
            partial_signatures_released: counter(
                &r,
                "mpc_partial_signatures_released_total",
                "Partial signatures this node released, each for one input of an approved transaction.",
            ),
            transactions_signed: counter(
                &r,
                "mpc_transactions_signed_total",
                "Transactions whose combined signature passed Bitcoin Core's script interpreter.",
            ),
            submit_to_approved: histogram(
                &r,
                "mpc_submit_to_approved_seconds",
                "From a transaction's acceptance at this node to its approval certificate. Alert on a rising \
                 p99: votes are slow or a node is down.",
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0],
            ),
            submit_to_signed: histogram(
                &r,
                "mpc_submit_to_signed_seconds",
                "From a transaction's acceptance at this node to its signed state. Alert on a rising p99: \
                 signing waits for presignatures or signers.",
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0],
            ),
            dkg_completed: counter(&r, "mpc_dkg_completed_total", "Key generations completed at this node."),
            dkg_failed: counter(
                &r,
                "mpc_dkg_failed_total",
                "Key generation attempts that failed here (deadline, protocol error). Alert on any.",
            ),
            pool_size: gauge(
                &r,
                "presignature_pool_size",
                "Presignatures ready cluster-wide, as this node sees them. Alert when below the low-water mark \
                 (mpc_presignature_pool_marks{mark=\"low_water\"}) for long: signing will run dry.",
            ),
            presignatures: gauge_vec(
                &r,
                "mpc_presignatures",
                "Presignatures by state: ready and generating cluster-wide as this node sees them, consumed and \
                 discarded among this node's own shares.",
                "state",
                &STATE_LABELS,
            ),
            own_presignatures: gauge_vec(
                &r,
                "mpc_own_presignatures",
                "This node's own presignature shares by state.",
                "state",
                &OWN_STATE_LABELS,
            ),
            pool_marks: gauge_vec(
                &r,
                "mpc_presignature_pool_marks",
                "The pool's configured low-water mark, target and maximum, to compare presignature_pool_size \
                 against.",
                "mark",
                &MARK_LABELS,
            ),
            transactions: gauge_vec(
                &r,
                "mpc_transactions",
                "Transactions this node's core holds, by state. Alert on transactions stuck in approved or \
                 signing.",
                "state",
                &tx_states,
            ),
            dkg_state: gauge_vec(
                &r,
                "mpc_dkg_state",
                "1 for the key generation stage this node is in, 0 for the others.",
                "stage",
                &stages,
            ),
            leader: gauge(
                &r,
                "mpc_leader",
                "The node id holding the coordination lease as this node sees it; 0: none.",
            ),
            is_leader: gauge(&r, "mpc_is_leader", "1 while this node holds the coordination lease."),
            coordination_reachable: gauge(
                &r,
                "mpc_coordination_reachable",
                "1 while the fencing store (etcd) is reachable. At 0 this node consumes no presignature and \
                 pauses leader work. Alert when 0.",
            ),
            peers_connected: gauge(
                &r,
                "mpc_peers_connected",
                "Peers with a live QUIC connection. Alert when fewer than the threshold minus one.",
            ),
            certificate_rotations: counter_vec(
                &r,
                "mpc_certificate_rotations_total",
                "Certificate files the transport picked up without a restart (applied), or refused and kept \
                 the old one for (refused: another CA, expired, unreadable). Alert on refused.",
                "outcome",
                &["applied", "refused"],
            ),
            node,
            clocks: Mutex::new(Clocks {
                presigning: Timers::new(MAX_PRESIG_TIMERS, PRESIG_TIMER_MAX_AGE),
                submitted: Timers::new(MAX_TX_TIMERS, TX_TIMER_MAX_AGE),
                ready_events: VecDeque::new(),
            }),
            registry: r,
        }
    }

    /// The node these metrics describe.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn clocks(&self) -> std::sync::MutexGuard<'_, Clocks> {
        // A panic while holding the lock cannot leave the timers in a state
        // worse than stale, so a poisoned lock is used as it is.
        self.clocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One step's records were made durable in `elapsed`.
    pub fn persisted(&self, records: &[Record], elapsed: Duration) {
        self.persisted_at(Instant::now(), records, elapsed);
    }

    fn persisted_at(&self, now: Instant, records: &[Record], elapsed: Duration) {
        self.persist_duration.observe(elapsed.as_secs_f64());
        let mut clocks = self.clocks();
        for record in records {
            match record {
                Record::PresigGenerating { id, .. } => clocks.presigning.start(*id, now),
                Record::TxAccepted { tx, .. } => clocks.submitted.start(*tx, now),
                _ => {}
            }
        }
    }

    /// A step's observations, after its records were persisted.
    pub fn observed(&self, observations: &[Observation]) {
        self.observed_at(Instant::now(), observations);
    }

    fn observed_at(&self, now: Instant, observations: &[Observation]) {
        let mut clocks = self.clocks();
        for o in observations {
            match o {
                Observation::DkgCompleted { .. } => self.dkg_completed.inc(),
                Observation::DkgFailed { .. } => self.dkg_failed.inc(),
                Observation::VoteCast { decision, .. } => {
                    let label = if decision.is_approve() { "approve" } else { "reject" };
                    self.votes.with_label_values(&[label]).inc();
                }
                Observation::TxStateChanged { tx, to, .. } => match to {
                    TxState::Approved => {
                        if let Some(d) = clocks.submitted.elapsed(tx, now) {
                            self.submit_to_approved.observe(d.as_secs_f64());
                        }
                    }
                    TxState::Signed => {
                        if let Some(d) = clocks.submitted.stop(tx, now) {
                            self.submit_to_signed.observe(d.as_secs_f64());
                        }
                    }
                    TxState::Confirmed => self.transactions_confirmed.inc(),
                    other if other.is_final() => {
                        clocks.submitted.stop(tx, now);
                    }
                    _ => {}
                },
                // The Byzantine counters name the member to blame: the
                // signer of two votes, or the authenticated sender (never a
                // member a forged message only claims to come from).
                Observation::Equivocation { voter, .. } => blame(&self.equivocations, *voter),
                Observation::ForgedVote { from, .. } => blame(&self.forged_votes, *from),
                Observation::ForgedCertificate { from, .. } => blame(&self.forged_certificates, *from),
                Observation::ForeignVote { from, .. } => blame(&self.foreign_votes, *from),
                Observation::RejectedMessage { from, .. } => blame(&self.rejected_messages, *from),
                Observation::ProposalRejected { .. } => self.rejected_proposals.inc(),
                Observation::PresigReady { id } => {
                    self.presig_generated.inc();
                    if let Some(d) = clocks.presigning.stop(id, now) {
                        self.presigning_duration.observe(d.as_secs_f64());
                    }
                    clocks.note_ready(now);
                }
                Observation::PresigDiscarded { id, reason } => {
                    self.presig_discarded.with_label_values(&[discard_class(reason)]).inc();
                    clocks.presigning.stop(id, now);
                }
                Observation::PartialSignatureReleased { .. } => self.partial_signatures_released.inc(),
                Observation::SigningRefused { .. } => self.signing_refusals.inc(),
                Observation::BadPartialSignature { signer, .. } => blame(&self.bad_partial_signatures, *signer),
                Observation::SigningRetried { .. } => self.signing_retries.inc(),
                Observation::TxSigned { .. } => self.transactions_signed.inc(),
                Observation::ProtocolFailed { blamed, .. } => {
                    self.protocol_failures.inc();
                    for member in blamed {
                        self.protocol_blame.with_label_values(&[&member.0.to_string()]).inc();
                    }
                }
                Observation::SigningProbeUnanswered { silent, .. } => {
                    for member in silent {
                        self.signing_probes_unanswered.with_label_values(&[&member.0.to_string()]).inc();
                    }
                }
                Observation::TransportRefused { .. } => self.transport_refusals.inc(),
                Observation::MemberSuspected { .. } => self.member_suspicions.inc(),
                Observation::SigningStalled { .. } => self.signing_stalled.inc(),
                Observation::BroadcastStalled { .. } => self.broadcasts_stalled.inc(),
                Observation::ChainProblem { .. } => self.chain_problems.inc(),
                Observation::IllegalTransition { .. } => self.illegal_transitions.inc(),
            }
        }
    }

    /// A peer's message of `kind` waited `waited` in the inbox.
    pub fn inbox_waited(&self, kind: &'static str, waited: Duration) {
        self.inbox_wait.with_label_values(&[kind]).observe(waited.as_secs_f64());
    }

    /// One `Node::handle` call took `elapsed`. `input_kind` should be one of
    /// [`INPUT_KINDS`] (see [`input_kind`]); anything else counts as `other`.
    pub fn handled(&self, input_kind: &'static str, elapsed: Duration) {
        let kind = if INPUT_KINDS.contains(&input_kind) { input_kind } else { "other" };
        self.handle_duration.with_label_values(&[kind]).observe(elapsed.as_secs_f64());
    }

    /// The gauges that mirror the core's status report.
    pub fn status(&self, report: &StatusReport) {
        self.pool_size.set(gauge_value(report.pool_ready));
        for (label, value) in STATE_LABELS.iter().zip([
            report.pool_ready,
            report.pool_generating,
            report.own_consumed,
            report.own_discarded,
        ]) {
            self.presignatures.with_label_values(&[*label]).set(gauge_value(value));
        }
        for (label, value) in OWN_STATE_LABELS.iter().zip([report.own_ready, report.own_consumed, report.own_discarded])
        {
            self.own_presignatures.with_label_values(&[*label]).set(gauge_value(value));
        }
        for (label, value) in MARK_LABELS.iter().zip([report.pool_low_water, report.pool_target, report.pool_max]) {
            self.pool_marks.with_label_values(&[*label]).set(gauge_value(value));
        }
        let mut by_kind: BTreeMap<TxStateKind, usize> = TxStateKind::ALL.iter().map(|k| (*k, 0)).collect();
        for (_, state) in &report.transactions {
            *by_kind.entry(TxStateKind::of(state)).or_default() += 1;
        }
        for (kind, n) in by_kind {
            self.transactions.with_label_values(&[kind.as_str()]).set(gauge_value(n));
        }
        for stage in DKG_STAGES {
            self.dkg_state.with_label_values(&[dkg_stage_name(stage)]).set(i64::from(stage == report.dkg_stage));
        }
        self.leader.set(report.leader.map_or(0, |l| i64::from(l.0)));
        self.is_leader.set(i64::from(report.leader == Some(report.node)));
        self.coordination_reachable.set(i64::from(report.coordination_reachable));
    }

    pub fn peers_connected(&self, n: usize) {
        self.peers_connected.set(gauge_value(n));
    }

    /// Every Byzantine act counted against a member: (member, kind, count),
    /// ordered by member then kind, for the health view.
    pub fn misbehaviour(&self) -> Vec<(u16, &'static str, u64)> {
        let families = [
            ("equivocation", &self.equivocations),
            ("forged_vote", &self.forged_votes),
            ("forged_certificate", &self.forged_certificates),
            ("foreign_vote", &self.foreign_votes),
            ("bad_partial_signature", &self.bad_partial_signatures),
            ("rejected_message", &self.rejected_messages),
            ("protocol_blame", &self.protocol_blame),
        ];
        let mut out = Vec::new();
        for (kind, counter) in families {
            for family in prometheus::core::Collector::collect(counter) {
                for m in family.get_metric() {
                    let member =
                        m.get_label().iter().find(|l| l.name() == "member").and_then(|l| l.value().parse().ok());
                    let count = m.get_counter().get_value() as u64;
                    if let Some(member) = member.filter(|_| count > 0) {
                        out.push((member, kind, count));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Brings the rotation counters up to the transport's own counts
    /// (`applied`, `refused`; the transport only ever raises them).
    pub fn certificate_rotations(&self, applied: u64, refused: u64) {
        for (outcome, total) in [("applied", applied), ("refused", refused)] {
            let counter = self.certificate_rotations.with_label_values(&[outcome]);
            if let Some(more) = total.checked_sub(counter.get()).filter(|m| *m > 0) {
                counter.inc_by(more);
            }
        }
    }

    /// Presignatures that became ready at this node over the last
    /// [`FILL_WINDOW`].
    pub fn fill_rate(&self) -> FillRate {
        self.fill_rate_at(Instant::now())
    }

    fn fill_rate_at(&self, now: Instant) -> FillRate {
        let mut clocks = self.clocks();
        clocks.forget_ready_before(now);
        let n = clocks.ready_events.len();
        // Over the window, or since the first event if the node has not
        // seen a whole window yet, but never less than a minute, so one
        // event just now is not reported as thousands per minute.
        let span = clocks
            .ready_events
            .front()
            .map_or(FILL_WINDOW, |first| now.saturating_duration_since(*first))
            .clamp(Duration::from_secs(60), FILL_WINDOW);
        FillRate { per_minute: n as f64 * 60.0 / span.as_secs_f64(), ready_in_window: n, window: FILL_WINDOW }
    }

    /// Timers running (presigning, submitted transactions): bounded by
    /// design; exposed for tests.
    pub fn running_timers(&self) -> (usize, usize) {
        let clocks = self.clocks();
        (clocks.presigning.len(), clocks.submitted.len())
    }

    /// Every family in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        match TextEncoder::new().encode_to_string(&self.registry.gather()) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "metrics could not be encoded");
                String::new()
            }
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpc_core::vote::Decision;
    use mpc_core::{DkgId, SignerSetPool};
    use std::collections::BTreeSet;

    fn presig(seq: u64) -> PresigId {
        PresigId { origin: NodeId(1), seq }
    }

    fn tx(b: u8) -> TxId {
        TxId([b; 32])
    }

    fn accepted(t: TxId) -> Record {
        Record::TxAccepted { tx: t, psbt: vec![], proposer: NodeId(1), at: mpc_core::Millis(0) }
    }

    fn changed(t: TxId, to: TxState) -> Observation {
        Observation::TxStateChanged { tx: t, from: TxState::Voting, to }
    }

    /// The value of the one sample line that starts with `series ` (a full
    /// series name with labels, as rendered).
    fn sample(text: &str, series: &str) -> f64 {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{series} "))).collect();
        assert_eq!(lines.len(), 1, "expected one sample of {series} in:\n{text}");
        lines[0].rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn report() -> StatusReport {
        StatusReport {
            node: NodeId(2),
            leader: Some(NodeId(2)),
            dkg: Some(DkgId { origin: NodeId(1), seq: 0 }),
            public_key_hex: Some("02ab".into()),
            address: Some("bcrt1q".into()),
            pool_ready: 42,
            pool_generating: 5,
            own_ready: 20,
            own_consumed: 3,
            own_discarded: 2,
            transactions: vec![
                (tx(1), TxState::Voting),
                (tx(2), TxState::Failed("signing gave up".into())),
                (tx(3), TxState::Failed("another reason".into())),
                (tx(4), TxState::Signed),
            ],
            dkg_stage: DkgStage::Done,
            primes_ready: true,
            pool_sets: vec![SignerSetPool {
                signers: vec![NodeId(1), NodeId(2), NodeId(3)],
                ready: 42,
                generating: 5,
                spent: 1,
            }],
            pool_low_water: 50,
            pool_target: 100,
            pool_max: 150,
            coordination_reachable: true,
        }
    }

    #[test]
    fn observations_count_into_their_families() {
        let m = Metrics::new(NodeId(2));
        let t0 = Instant::now();
        m.persisted_at(
            t0,
            &[Record::PresigGenerating { id: presig(1), signers: vec![] }, accepted(tx(9))],
            Duration::from_millis(3),
        );
        m.observed_at(
            t0 + Duration::from_secs(3),
            &[
                Observation::PresigReady { id: presig(1) },
                Observation::VoteCast { tx: tx(9), decision: Decision::Approve },
                Observation::VoteCast { tx: tx(9), decision: Decision::Reject("over the cap".into()) },
                Observation::VoteCast { tx: tx(8), decision: Decision::Reject("another rule".into()) },
                Observation::PresigDiscarded { id: presig(2), reason: "session deadline passed".into() },
                Observation::PresigDiscarded { id: presig(3), reason: "abandoned by node-3".into() },
                Observation::PresigDiscarded { id: presig(4), reason: "cggmp24: bad proof from party 2".into() },
                Observation::Equivocation { voter: NodeId(4), tx: tx(9) },
                Observation::ForgedVote { claimed_voter: NodeId(3), from: NodeId(5) },
                Observation::BadPartialSignature { signer: NodeId(5), tx: tx(9), input: 0, presig: presig(1) },
                Observation::TransportRefused { peer: None, reason: "garbage".into() },
                Observation::MemberSuspected { member: NodeId(4), strikes: 1 },
                Observation::SigningStalled { tx: tx(9), input: 0, attempts: 12 },
                Observation::BroadcastStalled { tx: tx(8), reason: "backend unreachable".into() },
                Observation::ChainProblem { tx: tx(8), reason: "backend unreachable".into() },
                changed(tx(8), TxState::Confirmed),
                Observation::SigningProbeUnanswered {
                    tx: tx(9),
                    input: 1,
                    presig: presig(5),
                    silent: vec![NodeId(3), NodeId(4)],
                },
                Observation::IllegalTransition {
                    tx: tx(9),
                    from: TxState::Rejected,
                    event: mpc_core::TxEvent::SignatureComplete,
                },
                Observation::SigningRetried {
                    tx: tx(9),
                    input: 0,
                    presig: mpc_core::PresigId { origin: NodeId(1), seq: 4 },
                    attempt: 1,
                    reason: "timeout".into(),
                },
                Observation::DkgFailed { dkg: DkgId { origin: NodeId(1), seq: 1 }, reason: "deadline passed".into() },
                Observation::ProtocolFailed {
                    session: "presign-1-7".into(),
                    reason: "party 2: undecodable protocol message".into(),
                    blamed: vec![NodeId(3)],
                },
                Observation::ProtocolFailed {
                    session: "presign-1-8".into(),
                    reason: "session deadline passed".into(),
                    blamed: vec![],
                },
                Observation::DkgCompleted {
                    dkg: DkgId { origin: NodeId(1), seq: 2 },
                    public_key_hex: "02".into(),
                    address: "bcrt1".into(),
                },
            ],
        );
        m.observed_at(t0 + Duration::from_secs(5), &[changed(tx(9), TxState::Approved)]);
        m.observed_at(
            t0 + Duration::from_secs(8),
            &[changed(tx(9), TxState::Signing), changed(tx(9), TxState::Signed)],
        );
        let text = m.render();
        assert_eq!(sample(&text, "mpc_presignatures_generated_total"), 1.0);
        assert_eq!(sample(&text, "mpc_presignatures_discarded_total{reason=\"timeout\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_presignatures_discarded_total{reason=\"abandoned\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_presignatures_discarded_total{reason=\"other\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_presignatures_discarded_total{reason=\"restart\"}"), 0.0);
        assert_eq!(sample(&text, "mpc_votes_total{decision=\"approve\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_protocol_failures_total"), 2.0);
        assert_eq!(sample(&text, "mpc_protocol_blame_total{member=\"3\"}"), 1.0, "the blamed member is named");
        for member in ["3", "4"] {
            let series = format!("mpc_signing_probes_unanswered_total{{member=\"{member}\"}}");
            assert_eq!(sample(&text, &series), 1.0, "each silent member is named");
        }
        assert_eq!(sample(&text, "mpc_votes_total{decision=\"reject\"}"), 2.0, "reasons do not become labels");
        // The Byzantine counters name who to blame: the equivocator, the
        // sender of a forged vote (not the member it claims to be), the
        // signer of a bad partial signature.
        assert_eq!(sample(&text, "mpc_equivocations_total{member=\"4\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_forged_votes_total{member=\"5\"}"), 1.0);
        assert!(!text.contains("mpc_forged_votes_total{member=\"3\"}"), "the claimed voter was blamed");
        assert_eq!(sample(&text, "mpc_bad_partial_signatures_total{member=\"5\"}"), 1.0);
        for family in [
            "mpc_transport_refusals_total",
            "mpc_member_suspicions_total",
            "mpc_signing_stalled_total",
            "mpc_broadcasts_stalled_total",
            "mpc_chain_problems_total",
            "mpc_transactions_confirmed_total",
            "mpc_illegal_transitions_total",
            "mpc_signing_retries_total",
            "mpc_dkg_failed_total",
            "mpc_dkg_completed_total",
        ] {
            assert_eq!(sample(&text, family), 1.0, "{family}");
        }
        // Presigning took 3 s: in the 3 s bucket, not the 2 s one.
        assert_eq!(sample(&text, "mpc_presigning_duration_seconds_bucket{le=\"2\"}"), 0.0);
        assert_eq!(sample(&text, "mpc_presigning_duration_seconds_bucket{le=\"3\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_presigning_duration_seconds_sum"), 3.0);
        // Accepted at t0, approved at 5 s, signed at 8 s.
        assert_eq!(sample(&text, "mpc_submit_to_approved_seconds_sum"), 5.0);
        assert_eq!(sample(&text, "mpc_submit_to_signed_seconds_sum"), 8.0);
        assert_eq!(sample(&text, "mpc_submit_to_signed_seconds_count"), 1.0);
        assert_eq!(sample(&text, "mpc_persist_duration_seconds_count"), 1.0);
        assert_eq!(m.running_timers(), (0, 0), "finished timers are dropped");
    }

    #[test]
    fn a_transaction_that_never_finishes_is_dropped_at_a_final_state_or_when_the_map_is_full() {
        let m = Metrics::new(NodeId(1));
        let t0 = Instant::now();
        m.persisted_at(t0, &[accepted(tx(1)), accepted(tx(2))], Duration::ZERO);
        m.observed_at(t0, &[changed(tx(1), TxState::Rejected)]);
        assert_eq!(m.running_timers(), (0, 1), "a rejected transaction's timer stopped");
        // Far more than the cap: the map stays at the cap.
        for i in 0..(MAX_TX_TIMERS as u64 + 100) {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&i.to_be_bytes());
            id[31] = 7;
            m.persisted_at(t0 + Duration::from_millis(i), &[accepted(TxId(id))], Duration::ZERO);
        }
        assert_eq!(m.running_timers().1, MAX_TX_TIMERS);
        for i in 0..(MAX_PRESIG_TIMERS as u64 * 2) {
            m.persisted_at(t0, &[Record::PresigGenerating { id: presig(i), signers: vec![] }], Duration::ZERO);
        }
        assert_eq!(m.running_timers().0, MAX_PRESIG_TIMERS);
    }

    #[test]
    fn a_full_timer_map_drops_aged_timers_first_then_the_oldest() {
        let mut timers = Timers::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        timers.start(1u8, t0 + Duration::from_secs(5));
        timers.start(2, t0);
        timers.start(3, t0 + Duration::from_secs(6));
        timers.start(4, t0 + Duration::from_secs(7));
        assert_eq!(timers.started.keys().copied().collect::<Vec<_>>(), [1, 3, 4], "the oldest (2) went");
        timers.start(5, t0 + Duration::from_secs(30));
        assert_eq!(timers.started.keys().copied().collect::<Vec<_>>(), [5], "all three were past their age");
    }

    #[test]
    fn status_gauges_mirror_the_report() {
        let m = Metrics::new(NodeId(2));
        m.status(&report());
        m.peers_connected(3);
        let text = m.render();
        assert_eq!(sample(&text, "presignature_pool_size"), 42.0);
        assert_eq!(sample(&text, "mpc_presignatures{state=\"ready\"}"), 42.0);
        assert_eq!(sample(&text, "mpc_presignatures{state=\"generating\"}"), 5.0);
        assert_eq!(sample(&text, "mpc_presignatures{state=\"consumed\"}"), 3.0);
        assert_eq!(sample(&text, "mpc_presignatures{state=\"discarded\"}"), 2.0);
        assert_eq!(sample(&text, "mpc_presignature_pool_marks{mark=\"low_water\"}"), 50.0);
        assert_eq!(sample(&text, "mpc_transactions{state=\"failed\"}"), 2.0, "one series whatever the reasons");
        assert_eq!(sample(&text, "mpc_transactions{state=\"voting\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_transactions{state=\"approved\"}"), 0.0);
        assert!(!text.contains("signing gave up"), "a failure reason became a label");
        assert_eq!(sample(&text, "mpc_dkg_state{stage=\"done\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_dkg_state{stage=\"keygen\"}"), 0.0);
        assert_eq!(sample(&text, "mpc_leader"), 2.0);
        assert_eq!(sample(&text, "mpc_is_leader"), 1.0);
        assert_eq!(sample(&text, "mpc_peers_connected"), 3.0);
        assert_eq!(sample(&text, "mpc_node_info{node=\"2\"}"), 1.0);
        // A later report with fewer transactions brings counts down.
        let mut later = report();
        later.transactions.clear();
        later.dkg_stage = DkgStage::Keygen;
        m.status(&later);
        let text = m.render();
        assert_eq!(sample(&text, "mpc_transactions{state=\"failed\"}"), 0.0);
        assert_eq!(sample(&text, "mpc_dkg_state{stage=\"done\"}"), 0.0);
        assert_eq!(sample(&text, "mpc_dkg_state{stage=\"keygen\"}"), 1.0);
    }

    #[test]
    fn each_dkg_stage_lights_its_own_series_and_only_it() {
        let m = Metrics::new(NodeId(2));
        let names: BTreeSet<&str> = DKG_STAGES.iter().map(|s| dkg_stage_name(*s)).collect();
        assert_eq!(names.len(), DKG_STAGES.len(), "two stages share a label");
        for stage in DKG_STAGES {
            m.status(&StatusReport { dkg_stage: stage, ..report() });
            let text = m.render();
            for other in DKG_STAGES {
                let series = format!("mpc_dkg_state{{stage=\"{}\"}}", dkg_stage_name(other));
                assert_eq!(sample(&text, &series), f64::from(u8::from(other == stage)), "{stage:?}: {series}");
            }
        }
    }

    #[test]
    fn handle_durations_are_labelled_by_a_fixed_set_of_kinds() {
        let m = Metrics::new(NodeId(1));
        m.handled(input_kind(&Input::Tick), Duration::from_micros(20));
        m.handled("something new", Duration::from_micros(20));
        let text = m.render();
        assert_eq!(sample(&text, "mpc_handle_duration_seconds_count{input=\"tick\"}"), 1.0);
        assert_eq!(sample(&text, "mpc_handle_duration_seconds_count{input=\"other\"}"), 1.0);
        assert!(!text.contains("something new"));
    }

    #[test]
    fn inbox_waits_are_labelled_by_message_kind() {
        let m = Metrics::new(NodeId(1));
        m.inbox_waited("signing_request", Duration::from_millis(30));
        m.inbox_waited("signing_request", Duration::from_micros(50));
        let text = m.render();
        assert_eq!(sample(&text, "mpc_inbox_wait_seconds_count{message=\"signing_request\"}"), 2.0);
        assert_eq!(sample(&text, "mpc_inbox_wait_seconds_bucket{message=\"signing_request\",le=\"0.0001\"}"), 1.0);
        assert!((sample(&text, "mpc_inbox_wait_seconds_sum{message=\"signing_request\"}") - 0.03005).abs() < 1e-9);
    }

    #[test]
    fn discard_reasons_fall_into_fixed_classes() {
        assert_eq!(discard_class("session deadline passed"), "timeout");
        assert_eq!(discard_class("abandoned by node-4"), "abandoned");
        assert_eq!(discard_class("session lost in a restart"), "restart");
        assert_eq!(discard_class("node shut down"), "shutdown");
        assert_eq!(discard_class("round 2: invalid proof"), "other");
    }

    #[test]
    fn the_fill_rate_counts_ready_events_in_the_window() {
        let m = Metrics::new(NodeId(1));
        let t0 = Instant::now();
        assert_eq!(m.fill_rate_at(t0).ready_in_window, 0);
        assert_eq!(m.fill_rate_at(t0).per_minute, 0.0);
        for i in 0..10u64 {
            m.observed_at(t0 + Duration::from_secs(i * 12), &[Observation::PresigReady { id: presig(i) }]);
        }
        // Ten events over two minutes: five a minute.
        let rate = m.fill_rate_at(t0 + Duration::from_secs(120));
        assert_eq!(rate.ready_in_window, 10);
        assert!((rate.per_minute - 5.0).abs() < 1e-9, "{rate:?}");
        // One event just now is one a minute, not thousands.
        let fresh = Metrics::new(NodeId(1));
        fresh.observed_at(t0, &[Observation::PresigReady { id: presig(1) }]);
        assert_eq!(fresh.fill_rate_at(t0).per_minute, 1.0);
        // Past the window, the events are forgotten.
        let later = m.fill_rate_at(t0 + FILL_WINDOW + Duration::from_secs(200));
        assert_eq!(later.ready_in_window, 0);
    }

    /// `promtool check metrics` accepts the rendered text. Skipped when
    /// promtool is not installed, unless MPC_REQUIRE_PROMTOOL=1 (CI), where
    /// a missing promtool fails the test.
    #[test]
    fn promtool_accepts_the_output() {
        let m = Metrics::new(NodeId(3));
        m.status(&report());
        m.persisted(&[accepted(tx(1))], Duration::from_millis(2));
        m.observed(&[changed(tx(1), TxState::Approved), Observation::PresigReady { id: presig(1) }]);
        m.handled("peer", Duration::from_micros(7));
        let text = m.render();
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert_ne!(
                    std::env::var("MPC_REQUIRE_PROMTOOL").as_deref(),
                    Ok("1"),
                    "MPC_REQUIRE_PROMTOOL=1 but promtool is not on PATH (Debian package `prometheus`; \
                     scripts/setup.sh --promtool installs it)"
                );
                eprintln!("promtool not on PATH: skipping (set MPC_REQUIRE_PROMTOOL=1 to require it)");
                return;
            }
            Err(e) => panic!("running promtool: {e}"),
        };
        use std::io::Write;
        child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("write to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool check metrics failed:\n{report}\n---\n{text}");
        assert!(report.trim().is_empty(), "promtool found problems (lint):\n{report}");
    }
}
