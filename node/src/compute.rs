//! Compute workers: the core's engine jobs (cggmp24 aux info, keygen and
//! presigning rounds) on worker threads, so the driver never waits for
//! cryptography (DESIGN §7, "Compute").
//!
//! cggmp24's state machines are not `Send`, so each session lives on one
//! worker for its whole life: a session's `Start` goes to the worker with
//! the fewest running sessions, and every later job of that session goes to
//! the same worker. As many workers as cores by default, so a node's
//! parallel presigning sessions use every core.
//!
//! The workers run at a lower priority than the rest of the node (nice
//! [`WORKER_NICENESS`] under `SCHED_IDLE`): while the pool refills,
//! presigning keeps every core busy, and the driver (which answers signing
//! requests, votes and the API), the transport and the database's thread
//! must not wait behind it for a time slice. Measured by the cluster
//! bench's PERF-002: at nice 10 alone a refill made signing 3.3x to 3.6x
//! slower at p99 than idle; under `SCHED_IDLE`, 1.36x (0.93x in a shorter
//! run), with the pool filling as fast as before.
//!
//! Each batch of jobs carries the generation of the core that asked for it.
//! When the core is rebuilt (after a failed persist) the workers drop every
//! session and results of the old generation are discarded, since the new
//! core knows nothing of those sessions.

use mpc_core::engine::{ComputeJob, Engine};
use mpc_core::{ComputeResult, SessionId};
use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use tokio::sync::mpsc;

/// The nice value of the worker threads (the rest of the node keeps its
/// own, normally 0). Under `SCHED_IDLE` the policy decides who runs; the
/// nice value still orders the workers against other idle-policy threads
/// and is what `top` shows.
pub const WORKER_NICENESS: i32 = 10;

/// Lowers the calling thread's priority: nice [`WORKER_NICENESS`] and
/// Linux's `SCHED_IDLE` policy, under which any normal thread that wakes
/// (the driver, the transport, the database's) preempts a worker at once
/// instead of waiting for the end of its time slice.
fn lower_priority() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` and `setpriority` take no pointer; the
        // `sched_param` lives for the call. On Linux, PRIO_PROCESS and
        // sched_setscheduler with a thread id act on that one thread.
        let tid = unsafe { libc::gettid() };
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICENESS) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let param = libc::sched_param { sched_priority: 0 };
        if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

enum Work {
    Run {
        generation: u64,
        job: ComputeJob,
    },
    /// Forget every session: the core that owned them is gone.
    Reset,
}

/// A finished job, tagged with the worker and the core generation it ran for.
pub struct Done {
    generation: u64,
    worker: usize,
    pub result: ComputeResult,
}

/// The worker pool, owned by the shell.
pub struct Workers {
    senders: Vec<std_mpsc::Sender<Work>>,
    /// Which worker runs each live session.
    pinned: BTreeMap<SessionId, usize>,
    /// Running sessions per worker.
    load: Vec<usize>,
    generation: u64,
    results: mpsc::UnboundedReceiver<Done>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = count.max(1);
        let (done_tx, results) = mpsc::unbounded_channel();
        let mut senders = Vec::with_capacity(count);
        for worker in 0..count {
            let (tx, rx) = std_mpsc::channel::<Work>();
            let done = done_tx.clone();
            std::thread::Builder::new().name(format!("mpc-compute-{worker}")).spawn(move || {
                if let Err(e) = lower_priority() {
                    tracing::warn!(worker, "compute worker keeps the node's priority: {e}");
                }
                let mut engine = Engine::new();
                for work in rx {
                    match work {
                        Work::Run { generation, job } => {
                            let result = engine.run(job);
                            if done.send(Done { generation, worker, result }).is_err() {
                                return;
                            }
                        }
                        Work::Reset => engine = Engine::new(),
                    }
                }
            })?;
            senders.push(tx);
        }
        Ok(Workers { senders, pinned: BTreeMap::new(), load: vec![0; count], generation: 0, results })
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Sessions running on each worker.
    pub fn load(&self) -> &[usize] {
        &self.load
    }

    /// Hands jobs to their workers; never waits.
    pub fn submit(&mut self, jobs: Vec<ComputeJob>) {
        for job in jobs {
            let session = job.session();
            let worker = match (&job, self.pinned.get(&session)) {
                (_, Some(w)) => *w,
                (ComputeJob::Start { .. }, None) => {
                    let w = (0..self.load.len()).min_by_key(|w| self.load[*w]).expect("at least one worker");
                    self.pinned.insert(session, w);
                    self.load[w] += 1;
                    w
                }
                // A delivery or abort for a session no worker runs (finished,
                // aborted, or started by an earlier core): nothing to do.
                (_, None) => continue,
            };
            if matches!(job, ComputeJob::Abort { .. }) {
                self.unpin(session);
            }
            // A worker thread only stops when the pool is dropped.
            let _ = self.senders[worker].send(Work::Run { generation: self.generation, job });
        }
    }

    fn unpin(&mut self, session: SessionId) {
        if let Some(w) = self.pinned.remove(&session) {
            self.load[w] = self.load[w].saturating_sub(1);
        }
    }

    /// The next result of the current core's jobs.
    pub async fn next(&mut self) -> Option<ComputeResult> {
        loop {
            let done = self.results.recv().await?;
            if done.generation != self.generation {
                continue;
            }
            if done.result.finished.is_some() && self.pinned.get(&done.result.session) == Some(&done.worker) {
                self.unpin(done.result.session);
            }
            return Some(done.result);
        }
    }

    /// The core was rebuilt: drop every session; late results are ignored.
    pub fn reset(&mut self) {
        self.generation += 1;
        self.pinned.clear();
        self.load.iter_mut().for_each(|l| *l = 0);
        for s in &self.senders {
            let _ = s.send(Work::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpc_core::{NodeId, PresigId};

    fn session(seq: u64) -> SessionId {
        SessionId::Presign(PresigId { origin: NodeId(1), seq })
    }

    /// Field `n` (1-based, as proc(5) numbers them) of a thread's
    /// `/proc/.../stat`: after the parenthesised name, state is field 3,
    /// nice 19 and the scheduling policy 41. `None` once the thread is gone.
    #[cfg(target_os = "linux")]
    fn stat_field(stat: &std::path::Path, n: usize) -> Option<i32> {
        let stat = std::fs::read_to_string(stat).ok()?;
        stat[stat.rfind(')')? + 2..].split(' ').nth(n - 3)?.parse().ok()
    }

    const NICE: usize = 19;
    const POLICY: usize = 41;

    /// (nice, policy) of this process's live threads named `prefix...`, by
    /// thread id. Other tests in this binary start and drop worker pools of
    /// their own at the same time, so a thread listed here may exit before
    /// its files are read: such a thread is skipped, not an error.
    #[cfg(target_os = "linux")]
    fn priorities_of_threads(prefix: &str) -> BTreeMap<u64, (i32, i32)> {
        let mut out = BTreeMap::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim().starts_with(prefix) {
                let stat = dir.join("stat");
                if let (Some(nice), Some(policy)) = (stat_field(&stat, NICE), stat_field(&stat, POLICY)) {
                    out.insert(tid, (nice, policy));
                }
            }
        }
        out
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn workers_run_below_the_node_s_priority_and_the_node_keeps_its_own() {
        let own = || {
            let stat = std::path::Path::new("/proc/thread-self/stat");
            (stat_field(stat, NICE).unwrap(), stat_field(stat, POLICY).unwrap())
        };
        let mine = own();
        // A test run already niced past the workers' value cannot raise them.
        let expected = (WORKER_NICENESS.max(mine.0), libc::SCHED_IDLE);
        let before = priorities_of_threads("mpc-compute-");
        let _w = Workers::start(2).unwrap();
        // This pool's threads are the worker threads that were not there
        // before (a pool another test starts meanwhile lowers its own too).
        let new_workers = || {
            let mut now = priorities_of_threads("mpc-compute-");
            now.retain(|tid, _| !before.contains_key(tid));
            now
        };
        let mut seen = BTreeMap::new();
        for _ in 0..500 {
            seen = new_workers();
            if seen.len() >= 2 && seen.values().all(|p| *p == expected) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(seen.len() >= 2 && seen.values().all(|p| *p == expected), "workers' (nice, policy) {seen:?}");
        // Only the workers: the calling thread (the driver's, in the node)
        // is where it was.
        assert_eq!(own(), mine, "the caller's priority changed too");
    }

    #[tokio::test]
    async fn sessions_spread_over_workers_and_stay_pinned() {
        let mut w = Workers::start(3).unwrap();
        // Aborts of sessions no worker runs are dropped, not routed.
        w.submit(vec![ComputeJob::Abort { session: session(99) }]);
        assert_eq!(w.load(), [0, 0, 0]);
        // Starting sessions needs real key material; pinning only needs the
        // bookkeeping, so pin by hand as `submit` does for a Start.
        for seq in 0..6 {
            let least = (0..3).min_by_key(|i| w.load[*i]).unwrap();
            w.pinned.insert(session(seq), least);
            w.load[least] += 1;
        }
        assert_eq!(w.load(), [2, 2, 2], "least-loaded placement");
        let before = w.pinned[&session(4)];
        w.submit(vec![ComputeJob::Deliver { session: session(4), from: 0, broadcast: true, payload: vec![1] }]);
        assert_eq!(w.pinned[&session(4)], before, "a delivery stays with its session's worker");
        // The engine answers a delivery for a session it never started with
        // an empty result, on the pinned worker.
        let result = w.next().await.unwrap();
        assert_eq!(result.session, session(4));
        w.submit(vec![ComputeJob::Abort { session: session(4) }]);
        assert!(!w.pinned.contains_key(&session(4)));
        assert_eq!(w.load().iter().sum::<usize>(), 5);
        w.reset();
        assert_eq!(w.load(), [0, 0, 0]);
    }
}
