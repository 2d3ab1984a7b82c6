//! History: does a cluster that has signed many transactions cost more, in
//! memory or per input, than one that has signed a few? Runs 10,000
//! one-input transactions through one five-node cluster and prints, after
//! 1,000 and after 10,000 signed: live heap bytes, what each node retains
//! ([`mpc_core::Retained`]), and the time spent inside `Node::handle` per
//! signed input over the last tenth of the run before each mark. Flat is
//! the goal: final transactions and spent presignatures leave memory.
//!
//! `cargo bench -p mpc-sim --bench history`; `MPC_BENCH_TXS=N` runs N
//! transactions instead (the first mark is then N/10).
//!
//! Pacing: a final transaction stays whole in node memory for a retention
//! period (`retain_final_ms`, set here to the gossip window, 600 s) and
//! only then leaves, so memory can only be flat between marks that both
//! come after it. The client therefore paces its submissions so the first
//! mark falls after one retention (for 10,000 transactions: one per
//! simulated second; idle simulated time costs little).
//! `MPC_BENCH_PACE_MS` overrides the pace.
//!
//! TEST-ONLY presignatures: real presigning costs seconds of CPU per
//! presignature, so each node's engine is a [`DealingEngine`], which deals
//! insecure presignatures of the same shape at once (the fixture's real
//! presignatures are used first). Everything else is the real core: votes,
//! certificates, the pool's refill logic, signing, partial-signature
//! checks, Bitcoin Core's script check of every signed transaction.
//!
//! The harness is one thread and a virtual clock, no runtime: a queue of
//! events ordered by (time, sequence) holds messages in flight, engine
//! results and the client's next submission; each node's wake-up time is
//! kept beside it. Each step is performed in the core driver's order
//! (records, observations, replies, sends, compute jobs). Records are
//! counted and dropped: nothing restarts here.

use mpc_core::tx::GroupKey;
use mpc_core::{
    Command, Input, Millis, Node, NodeId, Observation, RecoveredState, Reply, RequestId, Retained, Step, TxId, TxState,
};
use mpc_sim::dealer::DealingEngine;
use mpc_sim::wallet::Spend;
use mpc_sim::{fixtures, setup, EPOCH_MS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts the bytes the process holds on the heap right now.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; the counter only
// follows what `System` handed out and took back.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

const N: u16 = 5;
const T: u16 = 3;
const DEFAULT_TXS: usize = 10_000;
/// One-way latency of every message.
const LATENCY_MS: u64 = 5;
/// An engine job's result comes back this long after the job.
const COMPUTE_MS: u64 = 1;
/// The client submits one transaction per `pace` (at least this, see
/// [`pace_ms`]) while fewer than `MAX_IN_FLIGHT` are unfinished; otherwise
/// it retries soon.
const MIN_PACE_MS: u64 = 1_000;
const MAX_IN_FLIGHT: usize = 8;
const RETRY_MS: u64 = 100;
/// Each payment: far below the per-transaction limit, and 10,000 of them
/// stay below one day's cap of the test policy (50,000,000 sat).
const PAY_SAT: u64 = 1_000;
const INPUT_SAT: u64 = 100_000;
const FEE_SAT: u64 = 500;

/// The fixture cluster's config with a pool that refills: the fixture's 40
/// real presignatures serve first; once the ready count falls below low
/// water the lease holder refills with dealt ones, above `MAX_IN_FLIGHT`,
/// so refill never starves the client.
fn cluster_config() -> mpc_core::ClusterConfig {
    let mut config = setup::cluster_config(fixtures::FIXTURE_CLUSTER_ID, N, T);
    config.pool.low_water = 16;
    config.pool.target = 24;
    config.pool.max = 32;
    config.pool.parallel_sessions = 8;
    // Final transactions are held whole for the gossip window only (the
    // least the config allows), so steady state comes within the first
    // mark at the default pace.
    config.timeouts.retain_final_ms = config.timeouts.gossip_window_ms;
    config
}

/// (pace, retention): the simulated time between submissions, and the
/// retention it was derived from. Flat means steady state at both marks, so
/// the first mark must come after the first final transactions left memory:
/// `first_mark` submissions span 1.1 retentions (never faster than one per
/// `MIN_PACE_MS`). `MPC_BENCH_PACE_MS` overrides it.
fn pace_ms(first_mark: usize) -> (u64, u64) {
    let retention = cluster_config().timeouts.retain_final_ms;
    if let Ok(v) = std::env::var("MPC_BENCH_PACE_MS") {
        return (v.parse().expect("MPC_BENCH_PACE_MS is milliseconds"), retention);
    }
    let pace = (retention * 11 / 10).div_ceil(first_mark.max(1) as u64).div_ceil(100) * 100;
    (pace.max(MIN_PACE_MS), retention)
}

enum Event {
    /// An input for a node: a message, an engine result, a command (boxed:
    /// inputs are large, and the queue holds many).
    Input(NodeId, Box<Input>),
    /// The client's turn to submit the next transaction.
    Submit,
}

/// What the run has seen so far, by window (reset at the start of the
/// window before each mark).
#[derive(Default, Clone)]
struct Window {
    handle_time: Duration,
    handle_calls: u64,
    messages: u64,
    records: u64,
    signed: u64,
    /// Time inside `Node::handle` and calls, by input kind (peer messages
    /// by message kind): where the per-input cost goes.
    by_kind: BTreeMap<&'static str, (Duration, u64)>,
}

struct Bench {
    nodes: BTreeMap<NodeId, Node>,
    engines: BTreeMap<NodeId, DealingEngine>,
    /// When each node asked to be woken, and when its last tick fired (a
    /// node is ticked at most once per simulated millisecond).
    wake: BTreeMap<NodeId, (Option<Millis>, Millis)>,
    queue: BTreeMap<(Millis, u64), Event>,
    seq: u64,
    now: Millis,
    key: GroupKey,
    destination: bitcoin::Address,
    total: usize,
    pace: u64,
    submitted: usize,
    /// Submitted and neither signed nor failed yet.
    in_flight: BTreeSet<TxId>,
    signed: usize,
    failed: usize,
    refused: usize,
    expired_seen: u64,
    window: Window,
    run: Window,
}

impl Bench {
    fn new(total: usize, pace: u64) -> Bench {
        let config = cluster_config();
        let mut records = fixtures::load_cluster(N).expect("fixture cluster (see sim/src/fixtures.rs)");
        let mut nodes = BTreeMap::new();
        for (id, (node_config, identity)) in setup::node_configs(&config) {
            let recovered = RecoveredState { records: records.remove(&id).unwrap_or_default() };
            let node = Node::new(node_config, identity, setup::node_seed(1, id, 0), recovered)
                .expect("fixture node starts from its records");
            nodes.insert(id, node);
        }
        let key = nodes[&NodeId(1)].group_key().expect("the fixture cluster has a key").clone();
        let destination = bitcoin::Address::from_str(setup::TEST_DESTINATION)
            .expect("test destination parses")
            .require_network(bitcoin::Network::Regtest)
            .expect("test destination is regtest");
        let start = Millis(EPOCH_MS);
        let engines = nodes.keys().map(|id| (*id, DealingEngine::new())).collect();
        let wake = nodes.keys().map(|id| (*id, (None, Millis(0)))).collect();
        let mut bench = Bench {
            nodes,
            engines,
            wake,
            queue: BTreeMap::new(),
            seq: 0,
            now: start,
            key,
            destination,
            total,
            pace,
            submitted: 0,
            in_flight: BTreeSet::new(),
            signed: 0,
            failed: 0,
            refused: 0,
            expired_seen: 0,
            window: Window::default(),
            run: Window::default(),
        };
        // The lease: node 1 holds it from the start, as every node is told.
        let ids: Vec<NodeId> = bench.nodes.keys().copied().collect();
        for id in ids {
            bench.push(start, Event::Input(id, Box::new(Input::Leadership { leader: Some(NodeId(1)), term: 1 })));
        }
        bench.push(start.plus(pace), Event::Submit);
        bench
    }

    fn push(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    /// The node with the earliest due tick, and when it fires.
    fn next_tick(&self) -> Option<(Millis, NodeId)> {
        self.wake.iter().filter_map(|(id, (wake, last))| wake.map(|w| (w.max(self.now).max(last.plus(1)), *id))).min()
    }

    /// Performs the next event (or tick). False when nothing is left.
    fn step(&mut self) -> bool {
        let queued = self.queue.keys().next().map(|(at, _)| *at);
        let tick = self.next_tick();
        match (queued, tick) {
            (None, None) => false,
            (Some(at), Some((tick_at, id))) if tick_at < at => self.tick(tick_at, id),
            (None, Some((tick_at, id))) => self.tick(tick_at, id),
            (Some(_), _) => {
                let ((at, _), event) = self.queue.pop_first().expect("the queue has a first event");
                self.now = self.now.max(at);
                match event {
                    Event::Input(id, input) => self.handle(id, *input),
                    Event::Submit => self.submit(),
                }
                true
            }
        }
    }

    fn tick(&mut self, at: Millis, id: NodeId) -> bool {
        self.now = self.now.max(at);
        self.wake.insert(id, (None, self.now));
        self.handle(id, Input::Tick);
        true
    }

    /// The client: the next transaction, to the next node in turn, if
    /// fewer than `MAX_IN_FLIGHT` are unfinished.
    fn submit(&mut self) {
        if self.submitted >= self.total {
            return;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.push(self.now.plus(RETRY_MS), Event::Submit);
            return;
        }
        let k = self.submitted;
        self.submitted += 1;
        // A distinct funding outpoint per transaction, so each has its own id.
        let spend = Spend::simple(&format!("history-bench/{k}"), &[INPUT_SAT], &self.destination, PAY_SAT, FEE_SAT);
        let psbt = spend.psbt_bytes(&self.key);
        let to = NodeId(1 + (k % usize::from(N)) as u16);
        let command = Command::SubmitPsbt { psbt };
        self.push(self.now, Event::Input(to, Box::new(Input::Command { request: RequestId(k as u64), command })));
        if self.submitted < self.total {
            self.push(self.now.plus(self.pace), Event::Submit);
        }
    }

    /// One input at one node, and its step performed in the driver's order.
    fn handle(&mut self, id: NodeId, input: Input) {
        let kind = match &input {
            Input::Peer { msg, .. } => msg.kind(),
            other => other.kind(),
        };
        let node = self.nodes.get_mut(&id).expect("known node");
        let started = Instant::now();
        let step = node.handle(self.now, input);
        let took = started.elapsed();
        for w in [&mut self.window, &mut self.run] {
            w.handle_time += took;
            w.handle_calls += 1;
            w.messages += step.send.len() as u64;
            w.records += step.persist.len() as u64;
            let (time, calls) = w.by_kind.entry(kind).or_default();
            *time += took;
            *calls += 1;
        }
        let Step { persist, send, compute, replies, observations, wake_at, chain: _ } = step;
        // Records: durable "first", then dropped (no restart in this run).
        drop(persist);
        for o in &observations {
            self.observe(o);
        }
        for (_, reply) in replies {
            match reply {
                Reply::Submitted(Ok(tx)) => {
                    self.in_flight.insert(tx);
                }
                Reply::Submitted(Err(refusal)) => {
                    self.refused += 1;
                    eprintln!("submission refused: {refusal}");
                }
                _ => {}
            }
        }
        for envelope in send {
            let input = Input::Peer { from: id, msg: envelope.msg };
            self.push(self.now.plus(LATENCY_MS), Event::Input(envelope.to, Box::new(input)));
        }
        for job in compute {
            let result = self.engines.get_mut(&id).expect("an engine per node").run(job);
            self.push(self.now.plus(COMPUTE_MS), Event::Input(id, Box::new(Input::Compute(result))));
        }
        let last = self.wake[&id].1;
        self.wake.insert(id, (wake_at, last));
    }

    fn observe(&mut self, o: &Observation) {
        let (tx, signed) = match o {
            Observation::TxSigned { tx, .. } => (tx, true),
            Observation::TxStateChanged { tx, to: TxState::Failed(_) | TxState::Rejected, .. } => (tx, false),
            Observation::TxStateChanged { to: TxState::Expired, .. } => {
                self.expired_seen += 1;
                return;
            }
            _ => return,
        };
        // Only the first outcome observed for a transaction counts.
        if !self.in_flight.remove(tx) {
            return;
        }
        if signed {
            self.signed += 1;
            self.window.signed += 1;
            self.run.signed += 1;
        } else {
            self.failed += 1;
            eprintln!("{tx} did not sign: {o:?}");
        }
    }

    fn done(&self) -> usize {
        self.signed + self.failed
    }

    fn retained(&self) -> BTreeMap<NodeId, Retained> {
        self.nodes.iter().map(|(id, n)| (*id, n.retained())).collect()
    }
}

/// What one mark measured.
struct Mark {
    at: usize,
    heap: usize,
    retained: BTreeMap<NodeId, Retained>,
    window: Window,
    sim_s: f64,
}

impl Mark {
    fn per_input_us(&self) -> f64 {
        self.window.handle_time.as_secs_f64() * 1e6 / self.window.signed.max(1) as f64
    }

    fn print(&self) {
        let w = &self.window;
        let inputs = w.signed.max(1) as f64;
        println!("== after {} signed transactions ({:.0} s simulated) ==", self.at, self.sim_s);
        println!("live heap: {} bytes ({:.1} MiB)", self.heap, self.heap as f64 / (1 << 20) as f64);
        println!(
            "per input over the last {} signed: {:.1} us inside Node::handle (all nodes), {:.1} handle calls, \
             {:.1} messages, {:.1} records",
            w.signed,
            self.per_input_us(),
            w.handle_calls as f64 / inputs,
            w.messages as f64 / inputs,
            w.records as f64 / inputs,
        );
        let mut kinds: Vec<(&str, Duration, u64)> = w.by_kind.iter().map(|(k, (d, n))| (*k, *d, *n)).collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(k, d, n)| format!("{k} {:.1} us ({:.1} calls)", d.as_secs_f64() * 1e6 / inputs, *n as f64 / inputs))
            .collect();
        println!("  by input kind, per input: {}", kinds.join(", "));
        println!(
            "{:<5} {:>12} {:>8} {:>6} {:>11} {:>15} {:>12} {:>14} {:>12}",
            "node",
            "transactions",
            "settled",
            "pool",
            "own_presigs",
            "closed_sessions",
            "orphan_votes",
            "early_messages",
            "signing_jobs"
        );
        for (id, r) in &self.retained {
            println!(
                "{:<5} {:>12} {:>8} {:>6} {:>11} {:>15} {:>12} {:>14} {:>12}",
                id.to_string(),
                r.transactions,
                r.settled,
                r.pool,
                r.own_presigs,
                r.closed_sessions,
                r.orphan_votes,
                r.early_messages,
                r.signing_jobs
            );
        }
    }
}

fn main() {
    let total: usize = match std::env::var("MPC_BENCH_TXS") {
        Ok(v) => v.parse().expect("MPC_BENCH_TXS is a number of transactions"),
        Err(_) => DEFAULT_TXS,
    };
    assert!(total >= 10, "MPC_BENCH_TXS must be at least 10");
    let first_mark = total / 10;
    let window_len = first_mark;
    let wall = Instant::now();
    let heap_before = live_bytes();
    let (pace, retention) = pace_ms(first_mark);
    let mut bench = Bench::new(total, pace);
    let start = bench.now;
    let heap_start = live_bytes();
    println!(
        "history: {total} one-input transactions, one five-node cluster (t = {T}), TEST-ONLY dealt presignatures; \
         one submission per {pace} ms simulated, at most {MAX_IN_FLIGHT} in flight, {LATENCY_MS} ms latency; \
         final transactions are held whole for {retention} ms"
    );
    println!(
        "live heap after start: {heap_start} bytes ({:.1} MiB; {} bytes before the cluster was built)",
        heap_start as f64 / (1 << 20) as f64,
        heap_before
    );
    // Generous: every transaction signs within seconds of its submission.
    let limit = start.plus(total as u64 * pace * 3 + 3_600_000);
    let mut marks: Vec<Mark> = Vec::new();
    let mut next_progress = 1_000.min(total);
    let mut second_window = false;
    while bench.done() < total {
        if !second_window && !marks.is_empty() && bench.done() >= total - window_len {
            // The second window: [total - N/10, total).
            bench.window = Window::default();
            second_window = true;
        }
        if !bench.step() || bench.now > limit {
            break;
        }
        let done = bench.done();
        if done >= next_progress {
            next_progress += 1_000;
            eprintln!(
                "  {done:>6} done ({} failed) at {:>7.0} s simulated, {:>6.1} s wall, heap {:.1} MiB",
                bench.failed,
                (bench.now.0 - start.0) as f64 / 1000.0,
                wall.elapsed().as_secs_f64(),
                live_bytes() as f64 / (1 << 20) as f64
            );
        }
        let mark_due = (marks.is_empty() && done >= first_mark) || (marks.len() == 1 && done >= total);
        if mark_due {
            let mark = Mark {
                at: done,
                heap: live_bytes(),
                retained: bench.retained(),
                window: bench.window.clone(),
                sim_s: (bench.now.0 - start.0) as f64 / 1000.0,
            };
            mark.print();
            marks.push(mark);
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    println!("== run ==");
    println!(
        "signed {} of {total} ({} failed or rejected, {} refused at submission, {} still in flight); \
         {} expiries observed",
        bench.signed,
        bench.failed,
        bench.refused,
        bench.in_flight.len(),
        bench.expired_seen
    );
    let dealt: Vec<String> = bench.engines.iter().map(|(id, e)| format!("{id}: {}", e.dealt())).collect();
    println!(
        "presignature shares dealt: {}; {} handle calls, {} messages, {} records in all",
        dealt.join(", "),
        bench.run.handle_calls,
        bench.run.messages,
        bench.run.records
    );
    println!(
        "simulated {:.0} s in {wall_s:.1} s wall; {:.1} s inside Node::handle",
        (bench.now.0 - start.0) as f64 / 1000.0,
        bench.run.handle_time.as_secs_f64()
    );
    if let [first, last] = &marks[..] {
        println!("== {} / {} (flat is 1.00) ==", last.at, first.at);
        println!(
            "live heap: {:.2}x ({} / {} bytes); above the heap after start: {:.2}x ({} / {} bytes)",
            last.heap as f64 / first.heap as f64,
            last.heap,
            first.heap,
            last.heap.saturating_sub(heap_start) as f64 / first.heap.saturating_sub(heap_start).max(1) as f64,
            last.heap.saturating_sub(heap_start),
            first.heap.saturating_sub(heap_start)
        );
        println!(
            "per-input cost inside Node::handle: {:.2}x ({:.1} / {:.1} us per signed input)",
            last.per_input_us() / first.per_input_us(),
            last.per_input_us(),
            first.per_input_us()
        );
    } else {
        println!("the run ended before both marks ({} of 2 taken)", marks.len());
        std::process::exit(1);
    }
}
