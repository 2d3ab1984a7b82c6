//! Persist throughput and latency for the core's hot records, on PostgreSQL
//! (MPC_TEST_POSTGRES, see scripts/postgres.sh) and SQLite, in one run.
//! Each operation is one `Store::apply` call, one database transaction with
//! its audit row, as a node makes one step durable:
//!   vote          a peer's signed vote inserted
//!   consumption   a Ready presignature moved to Consumed (conditional
//!                 update, epoch advance), unfenced (`Store::apply`)
//!   fenced        the same through `Store::apply_fenced`, as a node makes
//!                 it durable: epoch and audit anchor raised in etcd (a read
//!                 and a compare-and-set) before the commit; only with
//!                 MPC_TEST_ETCD set
//!   state change  a transaction's state updated
//! Figures: operations per second, p50 and p99 latency, and throughput as a
//! ratio of the SQLite vote figure measured in the same run; then the fenced
//! consumption's cost as a ratio of the unfenced one, per backend.
//!
//!   eval "$(scripts/postgres.sh start /tmp/mpc-pg)"; eval "$(scripts/etcd.sh start /tmp/mpc-etcd)"
//!   cargo bench -p mpc-io-store --bench persist [-- OPS]

use mpc_core::{Millis, NodeId, PresigId, Record, TxId, TxState};
use mpc_io_store::coord::{CoordConfig, Coordinator};
use mpc_io_store::{fence_at_startup, Backend, MasterKey, Store};
use mpc_sim::sweep::{run_seed_keeping_stores, SeedPlan};
use sqlx::Connection;
use std::time::{Duration, Instant};

const NODE: NodeId = NodeId(1);

struct Figures {
    backend: Backend,
    kind: &'static str,
    latencies: Vec<Duration>,
    total: Duration,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.total.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

fn main() {
    let ops: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(500);
    let admin = std::env::var("MPC_TEST_POSTGRES").unwrap_or_else(|_| {
        eprintln!("MPC_TEST_POSTGRES is not set: eval \"$(scripts/postgres.sh start /tmp/mpc-pg)\" first");
        std::process::exit(2)
    });
    let etcd = std::env::var("MPC_TEST_ETCD").ok().filter(|e| !e.is_empty());
    if etcd.is_none() {
        eprintln!("MPC_TEST_ETCD is not set: the fenced consumption is not measured");
    }
    let samples = Samples::from_simulator();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut all = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let url = runtime.block_on(fresh(backend, &admin));
        all.extend(runtime.block_on(measure(backend, &url, &samples, ops, etcd.as_deref())));
    }
    let baseline = all[0].per_second();
    println!("persist benchmark: {ops} operations per kind, one transaction each (fsync on commit)");
    println!("{:<10} {:<13} {:>10} {:>10} {:>10} {:>9}", "backend", "record", "ops/s", "p50", "p99", "ratio");
    for f in &all {
        println!(
            "{:<10} {:<13} {:>10.0} {:>10.2?} {:>10.2?} {:>8.2}x",
            format!("{:?}", f.backend),
            f.kind,
            f.per_second(),
            f.percentile(0.5),
            f.percentile(0.99),
            f.per_second() / baseline
        );
    }
    println!("ratio: throughput relative to SQLite votes in this run");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let find = |kind| all.iter().find(|f| f.backend == backend && f.kind == kind);
        if let (Some(plain), Some(fenced)) = (find("consumption"), find("fenced")) {
            println!(
                "{backend:?}: fenced consumption costs {:.2}x the unfenced one at p50 ({:.2?} more), {:.2}x at p99; \
                 throughput {:.2}x",
                fenced.percentile(0.5).as_secs_f64() / plain.percentile(0.5).as_secs_f64(),
                fenced.percentile(0.5).saturating_sub(plain.percentile(0.5)),
                fenced.percentile(0.99).as_secs_f64() / plain.percentile(0.99).as_secs_f64(),
                fenced.per_second() / plain.per_second()
            );
        }
    }
}

/// Record shapes taken from a simulated run, re-keyed for volume.
struct Samples {
    setup: Vec<Record>,
    vote: mpc_core::vote::SignedVote,
    share: Record,
    psbt: Vec<u8>,
}

impl Samples {
    fn from_simulator() -> Samples {
        let outcome = run_seed_keeping_stores(&SeedPlan::from_seed(1));
        let records = &outcome.stores[&NODE];
        let setup = records.iter().filter(|r| matches!(r.kind(), "aux_info" | "key_share")).cloned().collect();
        let vote = records.iter().find_map(|r| if let Record::Vote(v) = r { Some(v.clone()) } else { None });
        let share = records.iter().find(|r| r.kind() == "presig_ready").cloned();
        let psbt = records.iter().find_map(|r| match r {
            Record::TxAccepted { psbt, .. } => Some(psbt.clone()),
            _ => None,
        });
        Samples {
            setup,
            vote: vote.expect("a vote"),
            share: share.expect("a ready presignature"),
            psbt: psbt.expect("a transaction"),
        }
    }
}

async fn fresh(backend: Backend, admin: &str) -> String {
    let name = format!("mpc_bench_{}", std::process::id());
    match backend {
        Backend::Sqlite => {
            let path = std::env::temp_dir().join(format!("{name}.db"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}?mode=rwc", path.display())
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            format!("{base}/{name}")
        }
    }
}

async fn measure(backend: Backend, url: &str, s: &Samples, ops: usize, etcd: Option<&str>) -> Vec<Figures> {
    let key = MasterKey::from_hex(&"5a".repeat(32), "bench key (TEST ONLY)").unwrap();
    let store = Store::open(url, key, NODE).await.unwrap();
    // As a node starts: fenced against etcd before anything is written.
    let coord = match etcd {
        Some(endpoint) => {
            let cluster = format!("bench-{}-{backend:?}", std::process::id()).to_lowercase();
            let coord =
                Coordinator::connect(CoordConfig::new(vec![endpoint.to_string()], cluster, NODE)).await.unwrap();
            fence_at_startup(&store, &coord, Millis(0)).await.unwrap();
            Some(coord)
        }
        None => None,
    };
    store.apply(Millis(0), &s.setup).await.unwrap();
    let Record::PresigReady { share, signers, .. } = &s.share else { unreachable!() };
    // The first half for the unfenced consumptions, the second for the fenced.
    let ids: Vec<PresigId> = (0..2 * ops as u64).map(|seq| PresigId { origin: NodeId(9), seq }).collect();
    let txs: Vec<TxId> = (0..ops as u64).map(|i| TxId(digest(b"tx", i))).collect();
    // Ready presignatures and transactions to work on, in bulk.
    for chunk in ids.chunks(50) {
        let mut step = Vec::new();
        for id in chunk {
            step.push(Record::PresigGenerating { id: *id, signers: signers.clone() });
            step.push(Record::PresigReady { id: *id, signers: signers.clone(), share: share.clone() });
        }
        store.apply(Millis(0), &step).await.unwrap();
    }
    for chunk in txs.chunks(50) {
        let step: Vec<Record> = chunk
            .iter()
            .map(|tx| Record::TxAccepted { tx: *tx, psbt: s.psbt.clone(), proposer: NodeId(2), at: Millis(0) })
            .collect();
        store.apply(Millis(0), &step).await.unwrap();
    }

    let mut figures = Vec::new();
    let run = |kind: &'static str, records: Vec<Record>| {
        let store = &store;
        async move {
            let mut latencies = Vec::with_capacity(records.len());
            let start = Instant::now();
            for (i, record) in records.into_iter().enumerate() {
                let t = Instant::now();
                store.apply(Millis(i as u64), std::slice::from_ref(&record)).await.unwrap();
                latencies.push(t.elapsed());
            }
            Figures { backend, kind, latencies, total: start.elapsed() }
        }
    };
    let votes = txs
        .iter()
        .map(|tx| {
            let mut v = s.vote.clone();
            v.body.tx = *tx;
            Record::Vote(v)
        })
        .collect();
    figures.push(run("vote", votes).await);
    let consumptions = |ids: &[PresigId]| -> Vec<Record> {
        ids.iter()
            .zip(&txs)
            .map(|(id, tx)| Record::PresigConsumed {
                id: *id,
                tx: *tx,
                input: 0,
                message: tx.0,
                sigma: digest(b"s", id.seq),
            })
            .collect()
    };
    figures.push(run("consumption", consumptions(&ids[..ops])).await);
    if let Some(coord) = &coord {
        let mut latencies = Vec::with_capacity(ops);
        let start = Instant::now();
        for (i, record) in consumptions(&ids[ops..]).into_iter().enumerate() {
            let t = Instant::now();
            let applied = store.apply_fenced(Millis(i as u64), std::slice::from_ref(&record), coord).await.unwrap();
            latencies.push(t.elapsed());
            assert!(applied.anchored.is_some(), "each fenced consumption anchors its audit row");
        }
        figures.push(Figures { backend, kind: "fenced", latencies, total: start.elapsed() });
        assert_eq!(coord.epoch(NODE).await.unwrap(), Some(2 * ops as u64), "etcd holds every consumption's epoch");
    }
    let states = txs.iter().map(|tx| Record::TxState { tx: *tx, state: TxState::Voting }).collect();
    figures.push(run("state change", states).await);
    store.verify_audit().await.expect("audit chain intact after the benchmark");
    store.close().await;
    figures
}

fn digest(tag: &[u8], i: u64) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new().chain_update(tag).chain_update(i.to_be_bytes()).finalize().into()
}
