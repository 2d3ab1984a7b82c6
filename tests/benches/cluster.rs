//! The plan's performance figures on five real `mpc-node` processes on
//! loopback (release build, SQLite, the test etcd), each next to a baseline
//! measured in the same run on the same machine, as a ratio:
//!
//! - Pool fill: presignatures per second while the pool fills from empty
//!   to `MPC_BENCH_POOL` (default 150), the time to the first 100, against
//!   raw cggmp24 presigning on the same key shares with every core busy
//!   (target >= 0.9x); and each node's presignature state with the pool
//!   full (target <= 1 MB), with its resident memory.
//! - cggmp24 0.7.0-alpha.3's multiexponentiation tables of the members'
//!   ring-Pedersen parameters: raw presigning with and without them on the
//!   same shares, the CPU they take to build and the share's size. (Its
//!   CRT precomputation is already on each member's own parameters, as
//!   cggmp24's aux info generation leaves it; the bench checks.) The
//!   cluster runs with them (`MPC_BENCH_MULTIEXP=0`: without), as a node
//!   does by default (`[node] multiexp_tables`).
//! - PERF-002: submit-to-approved and submit-to-signed p50 / p99, while the
//!   pool refills at full speed and idle (no session running), and the
//!   ratio of the two (target: refill costs signing at most 2x at p99).
//! - PERF-001: signed transactions per second with a warm pool and
//!   `MPC_BENCH_TXS` (default 40) concurrent submissions, against the
//!   in-process core (five `Node`s in one process, the simulator's cluster,
//!   started from the fixture's real presignatures) signing the same number.
//!
//! ```sh
//! cargo build --release -p mpc-node
//! eval "$(scripts/etcd.sh start /tmp/mpc-etcd)"
//! cargo bench -p mpc-tests --bench cluster
//! ```
//!
//! Latencies come from the proposer's own records (`accepted_at_ms` and the
//! state history of `GET /api/v1/transactions/{id}`), not from polling.

use mpc_core::engine::KeyShare;
use mpc_core::tx::GroupKey;
use mpc_core::{Command, NodeId, PoolConfig, Record, Reply, TxState};
use mpc_node::api::types::{PresignatureStatus, TransactionView, TxStateName};
use mpc_sim::wallet::Spend;
use mpc_tests::audit::records;
use mpc_tests::flow::{destination, dkg, parse, submit_psbt, transaction, wait_live, MINUTES};
use mpc_tests::{wait_for, LocalCluster, Options};
use rand_chacha::rand_core::SeedableRng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn spend(label: &str) -> Spend {
    Spend::simple(label, &[90_000], &destination(), 80_000, 2_000)
}

fn ready(c: &LocalCluster, node: u16) -> u64 {
    c.api(node).get("/api/v1/presignatures/status").map(|a| parse::<PresignatureStatus>(&a.body).ready).unwrap_or(0)
}

/// Submit-to-approved and submit-to-signed, in ms of the proposer's clock.
fn latencies(view: &TransactionView) -> (u64, u64) {
    let at = |s: TxStateName| {
        view.history.iter().find(|h| h.state == s).map(|h| h.at_ms).unwrap_or_else(|| panic!("no {s} in {view:?}"))
    };
    (at(TxStateName::Approved) - view.accepted_at_ms, at(TxStateName::Signed) - view.accepted_at_ms)
}

fn wait_signed(c: &LocalCluster, node: u16, tx: &str) -> TransactionView {
    wait_for(&format!("{tx} signed at node {node}"), 10 * MINUTES, || {
        let v = transaction(c, node, tx)?;
        assert!(!v.state.is_final() || v.state == TxStateName::Signed, "{tx} ended {}", v.state);
        (v.state == TxStateName::Signed).then_some(v)
    })
}

/// One transaction at a time, each waited for: latency samples. Sample
/// `first + k` is proposed to node `1 + (first + k) % 5`, so samples taken
/// one call at a time (during the fill) rotate over the proposers as the
/// idle ones do.
fn sample_latencies(c: &LocalCluster, key: &GroupKey, label: &str, first: usize, n: usize) -> Vec<(u64, u64)> {
    (first..first + n)
        .map(|k| {
            let node = 1 + (k % 5) as u16;
            let tx = submit_psbt(c, node, spend(&format!("{label}-{k}")).psbt_bytes(key));
            latencies(&wait_signed(c, node, &tx))
        })
        .collect()
}

/// Count, mean and 99th percentile (the upper bound of its bucket, in ms)
/// of histogram `name` over all five nodes' `/metrics`, the series whose
/// labels contain `labels`: where a phase's time goes.
fn histogram_ms(c: &LocalCluster, name: &str, labels: &str) -> (u64, f64, f64) {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut count, mut sum) = (0u64, 0f64);
    for id in c.ids() {
        let text = c.api(id).get_public("/metrics").map(|(_, t)| t).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(labels)) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let value: f64 = value.parse().unwrap_or(0.0);
            if let Some(rest) = series.strip_prefix(&format!("{name}_bucket{{")) {
                let le = rest.split("le=\"").nth(1).and_then(|v| v.split('"').next()).unwrap_or("+Inf");
                let bound = if le == "+Inf" { u64::MAX } else { (le.parse::<f64>().unwrap_or(0.0) * 1e6) as u64 };
                *buckets.entry(bound).or_default() += value as u64;
            } else if series.starts_with(&format!("{name}_count")) {
                count += value as u64;
            } else if series.starts_with(&format!("{name}_sum")) {
                sum += value;
            }
        }
    }
    let wanted = (count * 99).div_ceil(100);
    let p99 = buckets.iter().find(|(_, n)| **n >= wanted).map_or(f64::NAN, |(b, _)| *b as f64 / 1e3);
    (count, if count > 0 { sum * 1e3 / count as f64 } else { 0.0 }, p99)
}

/// One line of [`histogram_ms`] figures per histogram, for one phase.
fn where_time_goes(c: &LocalCluster, phase: &str) -> Vec<String> {
    [
        ("mpc_persist_duration_seconds", "", "persist"),
        ("mpc_handle_duration_seconds", "input=\"peer\"", "handle peer"),
        ("mpc_handle_duration_seconds", "input=\"compute\"", "handle compute"),
        ("mpc_inbox_wait_seconds", "message=\"signing_request\"", "inbox sign req"),
        ("mpc_inbox_wait_seconds", "message=\"signing_response\"", "inbox sign resp"),
        ("mpc_inbox_wait_seconds", "message=\"vote\"", "inbox vote"),
        ("mpc_inbox_wait_seconds", "message=\"protocol\"", "inbox protocol"),
    ]
    .iter()
    .map(|(name, labels, what)| {
        let (n, mean, p99) = histogram_ms(c, name, labels);
        format!("  {phase:<9} {what:<15} {n:>7} times, mean {mean:>6.2} ms, p99 <= {p99} ms")
    })
    .collect()
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1)]
}

/// p50 and p99 of approved and signed latencies.
fn summary(samples: &[(u64, u64)]) -> [u64; 4] {
    let mut a: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let mut s: Vec<u64> = samples.iter().map(|s| s.1).collect();
    a.sort();
    s.sort();
    [percentile(&a, 50), percentile(&a, 99), percentile(&s, 50), percentile(&s, 99)]
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The bytes of presignature state a node holds: its own ready shares and
/// the public data of every presignature it knows ready, as serialized.
fn presignature_state_bytes(recs: &[Record]) -> (usize, usize, usize) {
    let mut own: BTreeMap<mpc_core::PresigId, usize> = BTreeMap::new();
    let mut public: BTreeMap<(mpc_core::PresigId, NodeId), usize> = BTreeMap::new();
    for r in recs {
        match r {
            Record::PresigReady { id, .. } => {
                own.insert(*id, bincode::serialize(r).unwrap().len());
            }
            Record::PresigAnnounced { id, from, .. } => {
                public.insert((*id, *from), bincode::serialize(r).unwrap().len());
            }
            Record::PresigConsumed { id, .. } | Record::PresigDiscarded { id, .. } => {
                own.remove(id);
                public.retain(|(p, _), _| p != id);
            }
            _ => {}
        }
    }
    (own.len(), own.values().sum::<usize>() + public.values().sum::<usize>(), public.len())
}

/// Raw cggmp24 presigning on `shares` (signers 0, 1, 2), `per_thread`
/// presignatures on each of `threads` threads at once: presignatures per
/// second.
fn raw_presign_rate(shares: &[KeyShare], threads: usize, per_thread: usize, tag: &str) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for k in 0..per_thread {
                    let signers: [u16; 3] = [0, 1, 2];
                    let eid = format!("bench-raw-{tag}-{t}-{k}").into_bytes();
                    round_based::sim::run(3, |j, party| {
                        let eid = eid.clone();
                        let share = &shares[j as usize];
                        async move {
                            let mut rng =
                                rand_chacha::ChaCha20Rng::seed_from_u64((t * 1000 + k * 10 + j as usize) as u64);
                            cggmp24::signing(cggmp24::ExecutionId::new(&eid), j, &signers, share)
                                .generate_presignature(&mut rng, party)
                                .await
                        }
                    })
                    .expect("simulation runs")
                    .expect_ok();
                }
            });
        }
    });
    (threads * per_thread) as f64 / started.elapsed().as_secs_f64()
}

/// The shares without multiexponentiation tables, as cggmp24 makes them
/// by default.
fn without_tables(shares: &[KeyShare]) -> Vec<KeyShare> {
    shares
        .iter()
        .map(|s| {
            let mut dirty = s.clone().into_inner();
            dirty.aux.pedersen_params.iter_mut().for_each(|p| p.multiexp = None);
            cggmp24::key_share::Validate::validate(dirty).map_err(|e| e.into_error()).expect("still a valid share")
        })
        .collect()
}

/// The shares with cggmp24's multiexponentiation tables built, and the
/// CPU seconds that took per share.
fn with_tables(shares: &[KeyShare]) -> (Vec<KeyShare>, f64) {
    let started = Instant::now();
    let out = shares
        .iter()
        .map(|s| {
            let mut dirty = s.clone().into_inner();
            dirty.aux.precompute_multiexp_tables().expect("multiexp tables");
            cggmp24::key_share::Validate::validate(dirty).map_err(|e| e.into_error()).expect("still a valid share")
        })
        .collect();
    (out, started.elapsed().as_secs_f64() / shares.len() as f64)
}

/// Whether a share carries CRT data on its own parameters (cggmp24's aux
/// info generation leaves it there) and multiexponentiation tables.
fn precomputations(share: &KeyShare) -> (bool, bool) {
    let own = usize::from(share.core.i);
    (share.aux.pedersen_params[own].crt.is_some(), share.aux.pedersen_params.iter().all(|p| p.multiexp.is_some()))
}

/// The in-process core: five `Node`s of the simulator's cluster from the
/// fixture's records (real presignatures), `n` submissions at once, until
/// every one is Signed at its proposer. Signed per wall second.
fn in_process_rate(n: usize) -> (f64, usize) {
    let mut config = mpc_sim::setup::cluster_config(mpc_sim::fixtures::FIXTURE_CLUSTER_ID, 5, 3);
    config.pool.low_water = 0;
    config.pool.target = 0;
    config.pool.max = 40;
    let records = mpc_sim::fixtures::load_cluster(5).expect("fixture cluster");
    let mut cluster = mpc_sim::Cluster::new(7, mpc_sim::setup::node_configs(&config), records).unwrap();
    cluster.run_for(2_000);
    let key = cluster.node(NodeId(1)).group_key().expect("fixture key").clone();
    let n = n.min(36); // the fixture holds 40 presignatures
    let psbts: Vec<Vec<u8>> = (0..n).map(|k| spend(&format!("in-process-{k}")).psbt_bytes(&key)).collect();
    let started = Instant::now();
    let requests: Vec<_> = psbts
        .into_iter()
        .enumerate()
        .map(|(k, psbt)| {
            let node = NodeId(1 + (k % 5) as u16);
            (node, cluster.command(node, Command::SubmitPsbt { psbt }))
        })
        .collect();
    let done = cluster.run_until(3_600_000, |c| {
        requests.iter().all(|(node, r)| match c.reply(*r) {
            Some(Reply::Submitted(Ok(tx))) => mpc_sim::scenario::state_at(c, *node, *tx) == Some(TxState::Signed),
            _ => false,
        })
    });
    assert!(done, "the in-process cluster did not sign all {n}");
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

fn main() {
    let pool = env_usize("MPC_BENCH_POOL", 150);
    let txs = env_usize("MPC_BENCH_TXS", 40);
    let samples = env_usize("MPC_BENCH_LATENCY", 50);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let idle_low_water = pool.saturating_sub(samples + txs + 10).max(1);
    println!(
        "five mpc-node processes on loopback, {cores} cores; pool {pool}, {txs} concurrent, {samples} latency samples"
    );

    let multiexp = env_usize("MPC_BENCH_MULTIEXP", 1) == 1;
    let options = Options {
        multiexp_tables: multiexp,
        pool: PoolConfig { low_water: pool, target: pool, max: pool, parallel_sessions: 5 },
        log_filter: std::env::var("MPC_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        ..Options::default()
    };
    let mut c = LocalCluster::new("bench", options);
    c.start_all();
    wait_live(&c, &c.ids());
    let key = dkg(&c);

    // The fill, from empty; latency samples while it runs at full speed.
    let fill_started = Instant::now();
    let mut filled_100 = None;
    let mut refill = Vec::new();
    let mut last_print = Instant::now();
    loop {
        let r = ready(&c, 1);
        if r >= 100 && filled_100.is_none() {
            filled_100 = Some(fill_started.elapsed());
        }
        if r >= pool as u64 {
            break;
        }
        if r >= 5 && refill.len() < samples && (r as usize) < pool * 9 / 10 {
            refill.extend(sample_latencies(&c, &key, "refill", refill.len(), 1));
            continue;
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!("  {:>5.0} s: {r} ready", fill_started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        assert!(fill_started.elapsed() < 120 * MINUTES, "the pool never filled");
        std::thread::sleep(Duration::from_millis(500));
    }
    let fill = fill_started.elapsed();
    let fill_time = where_time_goes(&c, "filling");
    // Presignatures made: the pool plus what the samples consumed.
    let made = pool + refill.len();
    let cluster_rate = made as f64 / fill.as_secs_f64();

    // Memory with the pool full.
    let all = records(&c);
    let mut memory = Vec::new();
    for id in c.ids() {
        let (shares, bytes, publics) = presignature_state_bytes(&all[&id]);
        memory.push((id, shares, publics, bytes, rss_kib(c.pid(id))));
    }

    // Idle: restarted with a low water mark the samples will not cross,
    // so no session runs while they are measured.
    for id in c.ids() {
        let status = c.terminate(id, MINUTES);
        assert!(status.success(), "node {id} exited {status}");
        c.edit_config(id, |t| t.replace(&format!("low_water = {pool}\n"), &format!("low_water = {idle_low_water}\n")));
    }
    c.start_all();
    wait_live(&c, &c.ids());
    // The pool it filled, seen again after the restart (above the new low
    // water, so `wait_pool` would refuse to wait for it).
    wait_for("the full pool after the restart", 10 * MINUTES, || (ready(&c, 1) + 5 >= pool as u64).then_some(()));
    // A few first, not counted: the restarted nodes' connections and lease
    // settle on them.
    sample_latencies(&c, &key, "warm-up", 0, 3);
    let idle = sample_latencies(&c, &key, "idle", 0, samples);
    let idle_time = where_time_goes(&c, "idle");

    // PERF-001: `txs` at once.
    let started = Instant::now();
    let views: Vec<TransactionView> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..txs)
            .map(|k| {
                let (c, key) = (&c, &key);
                s.spawn(move || {
                    let node = 1 + (k % 5) as u16;
                    let tx = submit_psbt(c, node, spend(&format!("throughput-{k}")).psbt_bytes(key));
                    wait_signed(c, node, &tx)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a submission thread")).collect()
    });
    let wall = started.elapsed();
    // The span the cluster itself took: first acceptance to last signature.
    let first = views.iter().map(|v| v.accepted_at_ms).min().unwrap();
    let last = views.iter().map(|v| v.accepted_at_ms + latencies(v).1).max().unwrap();
    let cluster_tps = txs as f64 / ((last - first) as f64 / 1e3);
    let concurrent: Vec<(u64, u64)> = views.iter().map(latencies).collect();

    // Raw cggmp24 on the cluster's own shares (nodes 1, 2, 3), the
    // cluster stopped so it has every core.
    let shares: Vec<KeyShare> = [1u16, 2, 3]
        .iter()
        .map(|id| {
            all[id]
                .iter()
                .rev()
                .find_map(|r| match r {
                    Record::KeyShare { share, .. } => Some(share.expose().clone()),
                    _ => None,
                })
                .expect("a key share")
        })
        .collect();
    for id in c.ids() {
        c.terminate(id, MINUTES);
    }
    // The nodes' logs, for a look at what the figures came from.
    if let Some(keep) = std::env::var_os("MPC_BENCH_KEEP_LOGS") {
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("the log directory");
        for id in c.ids() {
            std::fs::copy(c.node_dir(id).join("node.log"), keep.join(format!("node-{id}.log"))).expect("a node log");
        }
    }
    let (own_crt, cluster_tables) = precomputations(&shares[0]);
    assert_eq!(cluster_tables, multiexp, "the cluster's shares and multiexp_tables = {multiexp} disagree");
    let per_thread = env_usize("MPC_BENCH_RAW", 3);
    let plain = without_tables(&shares);
    let (tables, tables_cost) = with_tables(&plain);
    let share_bytes = |s: &KeyShare| bincode::serialize(s).map_or(0, |b| b.len());
    let (plain_bytes, tables_bytes) = (share_bytes(&plain[0]), share_bytes(&tables[0]));
    let raw_plain = raw_presign_rate(&plain, cores, per_thread, "plain");
    let raw_tables = raw_presign_rate(&tables, cores, per_thread, "tables");
    // The raw rate of the configuration the cluster ran.
    let raw_same = if multiexp { raw_tables } else { raw_plain };
    let (in_process_tps, in_process_n) = in_process_rate(txs);

    println!();
    let setting = if multiexp { "with multiexp tables" } else { "without multiexp tables" };
    println!("Pool fill ({made} presignatures, {} parallel sessions, {setting}):", 5);
    println!(
        "  cluster {cluster_rate:.3}/s (first 100 in {:.1} s, {pool} full in {:.1} s) | raw cggmp24 {setting} on {cores} threads {raw_same:.3}/s | cluster/raw {:.2}x (target >= 0.90)",
        filled_100.map_or(f64::NAN, |d| d.as_secs_f64()),
        fill.as_secs_f64(),
        cluster_rate / raw_same
    );
    println!("  memory with {pool} ready (target <= 1 MB of presignature state):");
    for (id, shares, publics, bytes, rss) in &memory {
        println!(
            "    node {id}: {shares} own shares + {publics} signers' public data = {:.1} KiB of presignature state; resident {:.1} MiB",
            *bytes as f64 / 1024.0,
            *rss as f64 / 1024.0
        );
    }
    println!("cggmp24 speed-ups, raw presigning on the cluster's shares (without tables is the baseline):");
    println!("  without tables {raw_plain:.3}/s; share {:.1} KiB", plain_bytes as f64 / 1024.0);
    println!(
        "  with tables    {raw_tables:.3}/s ({:.2}x); {tables_cost:.1} s of CPU to build per share; share {:.1} KiB",
        raw_tables / raw_plain,
        tables_bytes as f64 / 1024.0
    );
    println!(
        "  CRT on the own parameters: {} (cggmp24's aux info generation leaves it there)",
        if own_crt { "present" } else { "MISSING" }
    );
    let [ra50, ra99, rs50, rs99] = summary(&refill);
    let [ia50, ia99, is50, is99] = summary(&idle);
    println!("PERF-002 latency, ms (idle is the baseline):");
    println!("  idle        approved p50 {ia50} p99 {ia99} | signed p50 {is50} p99 {is99}  ({} samples)", idle.len());
    println!(
        "  refilling   approved p50 {ra50} p99 {ra99} | signed p50 {rs50} p99 {rs99}  ({} samples) | signed p99 {:.2}x idle (target <= 2.00)",
        refill.len(),
        rs99 as f64 / is99.max(1) as f64
    );
    println!("  where the time goes, all five nodes (the fill from empty, then idle after the restart):");
    for line in fill_time.iter().chain(&idle_time) {
        println!("{line}");
    }
    let [ca50, ca99, cs50, cs99] = summary(&concurrent);
    println!("PERF-001 throughput, {txs} concurrent submissions, warm pool:");
    println!(
        "  cluster {cluster_tps:.2} signed/s ({:.2} s wall for the clients) | in-process core {in_process_tps:.2} signed/s ({in_process_n}) | cluster/in-process {:.2}x",
        wall.as_secs_f64(),
        cluster_tps / in_process_tps
    );
    println!("  under that load: approved p50 {ca50} p99 {ca99} ms | signed p50 {cs50} p99 {cs99} ms");
}
