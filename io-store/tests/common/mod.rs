//! Shared by the storage tests: fresh databases on both backends, a test
//! master key, realistic record streams from the simulator, and etcd (the
//! shared test server, or a private one a test can stop and restart).
#![allow(dead_code)]

use mpc_core::{DurableView, Identity, Node, NodeConfig, NodeId, Record, RecoveredState};
use mpc_io_store::{Backend, MasterKey, Store};
use mpc_sim::sweep::{run_seed_keeping_stores, SeedPlan};
use mpc_sim::{fixtures, setup};
use sqlx::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// TEST ONLY master keys.
pub fn test_key() -> MasterKey {
    MasterKey::from_hex(&"5a".repeat(32), "test key").unwrap()
}
pub fn other_key() -> MasterKey {
    MasterKey::from_hex(&"a5".repeat(32), "other test key").unwrap()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(label: &str) -> String {
    format!("{label}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("mpc-io-store-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The throwaway PostgreSQL server's URL (scripts/postgres.sh).
pub fn postgres_admin_url() -> String {
    std::env::var("MPC_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "MPC_TEST_POSTGRES is not set. These tests need a real PostgreSQL server: run scripts/test.sh, \
             or `eval \"$(scripts/postgres.sh start /tmp/mpc-pg)\" && export MPC_TEST_POSTGRES`"
        )
    })
}

/// A URL for a new, empty database on `backend`.
pub async fn fresh_db(backend: Backend, label: &str) -> String {
    let name = unique(label);
    match backend {
        Backend::Sqlite => {
            let path = scratch_dir().join(format!("{name}.db"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}?mode=rwc", path.display())
        }
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL server");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            with_database(&admin, &name)
        }
    }
}

/// `url` pointing at database `name` instead.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("URL with a database path");
    format!("{base}/{name}")
}

pub async fn open(url: &str, node: NodeId) -> Store {
    Store::open(url, test_key(), node).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Realistic record streams: every node's records from fixture-shaped
/// simulator runs (votes, evidence, consumption, discards, signed
/// transactions), each preceded by safe primes and a DKG entry so that all
/// record kinds appear.
pub fn streams() -> &'static Vec<(u64, NodeId, Vec<Record>)> {
    static STREAMS: OnceLock<Vec<(u64, NodeId, Vec<Record>)>> = OnceLock::new();
    // The simulator runs its own runtime: off the test's runtime thread.
    STREAMS.get_or_init(|| std::thread::spawn(sample_streams).join().expect("simulator runs"))
}

fn sample_streams() -> Vec<(u64, NodeId, Vec<Record>)> {
    {
        let primes = fixtures::load_primes(5).expect("fixture primes");
        let mut out = Vec::new();
        let mut kinds = BTreeSet::new();
        for seed in 0..64u64 {
            let outcome = run_seed_keeping_stores(&SeedPlan::from_seed(seed));
            assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
            let new_kinds: BTreeSet<&str> =
                outcome.stores.values().flatten().map(|r| r.kind()).filter(|k| !kinds.contains(k)).collect();
            if new_kinds.is_empty() && !out.is_empty() {
                continue;
            }
            for (node, records) in outcome.stores {
                let mut stream = vec![
                    Record::SafePrimes(mpc_core::Secret::new(primes[&node].clone())),
                    Record::DkgJoined { dkg: fixtures::FIXTURE_DKG },
                ];
                stream.extend(with_key_confirmations(records));
                kinds.extend(stream.iter().map(|r| r.kind()));
                out.push((seed, node, stream));
            }
            if kinds.len() == ALL_KINDS.len() {
                break;
            }
        }
        out
    }
}

/// The fixture streams hold their key's adoption but not the members'
/// confirmations before it (the fixture was made before key confirmation,
/// see `sim/src/fixtures.rs`): every member's signed confirmation goes in
/// after the share, as a live DKG persists them, and an abandonment of an
/// earlier attempt too, so both claims reach the store.
fn with_key_confirmations(records: Vec<Record>) -> Vec<Record> {
    use mpc_core::{DkgClaim, DkgId, DkgStatement};
    let mut out = Vec::with_capacity(records.len() + 6);
    for r in records {
        let confirmations = match &r {
            Record::KeyShare { dkg, public_key, .. } => {
                let earlier = DkgId { origin: NodeId(2), seq: 1_000 };
                let abandoned = DkgStatement::sign(
                    earlier,
                    NodeId(3),
                    DkgClaim::Abandoned,
                    &setup::vote_key(fixtures::FIXTURE_CLUSTER_ID, NodeId(3)),
                    fixtures::FIXTURE_CLUSTER_ID,
                );
                let mut statements: Vec<Record> = (1..=5)
                    .map(|m| {
                        let claim = DkgClaim::Confirmed { public_key: public_key.clone() };
                        let key = setup::vote_key(fixtures::FIXTURE_CLUSTER_ID, NodeId(m));
                        Record::DkgStatement(DkgStatement::sign(
                            *dkg,
                            NodeId(m),
                            claim,
                            &key,
                            fixtures::FIXTURE_CLUSTER_ID,
                        ))
                    })
                    .collect();
                statements.push(Record::DkgStatement(abandoned));
                statements
            }
            _ => Vec::new(),
        };
        out.push(r);
        out.extend(confirmations);
    }
    out
}

pub const ALL_KINDS: [&str; 19] = [
    "safe_primes",
    "sequence",
    "dkg_joined",
    "aux_info",
    "key_share",
    "dkg_statement",
    "key_adopted",
    "tx_accepted",
    "own_vote",
    "vote",
    "evidence",
    "tx_state",
    "presig_generating",
    "presig_ready",
    "presig_announced",
    "presig_consumed",
    "presig_discarded",
    "signed_tx",
    "chain",
];

/// The fixture cluster's node configs and identities, as the runs used.
pub fn node_setup(node: NodeId) -> (NodeConfig, Identity) {
    static NODES: OnceLock<BTreeMap<NodeId, (NodeConfig, Identity)>> = OnceLock::new();
    NODES
        .get_or_init(|| {
            // As the sweep runs them: following the simulated chain.
            let mut nodes = setup::node_configs(&setup::cluster_config(fixtures::FIXTURE_CLUSTER_ID, 5, 3));
            for (config, _) in nodes.values_mut() {
                config.chain = Some(mpc_sim::sweep::sweep_chain_config());
            }
            nodes
        })
        .get(&node)
        .cloned()
        .expect("fixture member")
}

/// The node a restart builds from `records`, as a comparable view.
pub fn view_of(node: NodeId, records: Vec<Record>) -> DurableView {
    let (config, identity) = node_setup(node);
    Node::new(config, identity, [7; 32], RecoveredState { records })
        .unwrap_or_else(|e| panic!("{node} does not start from its records: {e}"))
        .durable_view()
}

/// Applies `records` in steps of 1, 2, 3, … records (cycling), as a shell
/// would apply each step's persist list.
pub async fn apply_in_steps(store: &Store, records: &[Record]) {
    let mut at = 0;
    let mut size = 1;
    while at < records.len() {
        let end = (at + size).min(records.len());
        store
            .apply(mpc_core::Millis(at as u64), &records[at..end])
            .await
            .unwrap_or_else(|e| panic!("records {at}..{end} ({:?}): {e}", kinds(&records[at..end])));
        at = end;
        size = size % 4 + 1;
    }
}

pub fn kinds(records: &[Record]) -> Vec<&'static str> {
    records.iter().map(|r| r.kind()).collect()
}

/// The shared throwaway etcd's URL (scripts/etcd.sh).
pub fn etcd_endpoint() -> String {
    match std::env::var("MPC_TEST_ETCD") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "MPC_TEST_ETCD is not set: these tests need a real etcd. Run scripts/test.sh, or start a throwaway \
             one with `eval \"$(scripts/etcd.sh start /tmp/mpc-etcd)\"` (installs Debian's etcd-server if \
             needed and exports MPC_TEST_ETCD), rerun, then `scripts/etcd.sh stop /tmp/mpc-etcd`"
        ),
    }
}

/// A cluster name no other test (or earlier run) uses.
pub fn unique_cluster(label: &str) -> String {
    unique(label).replace('_', "-")
}

/// A coordinator for `node` of `cluster` with short timeouts, so that an
/// unreachable etcd fails a request quickly.
pub async fn coordinator(endpoint: &str, cluster: &str, node: NodeId) -> mpc_io_store::coord::Coordinator {
    use mpc_io_store::coord::{CoordConfig, Coordinator};
    let mut cfg = CoordConfig::new(vec![endpoint.to_string()], cluster, node);
    cfg.dial_timeout = Duration::from_secs(3);
    cfg.request_timeout = Duration::from_secs(2);
    // A private etcd may still be starting: patience, bounded.
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Coordinator::connect(cfg.clone()).await {
            Ok(c) => return c,
            Err(e) => assert!(std::time::Instant::now() < give_up, "etcd at {endpoint} never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private etcd (Debian's `etcd` binary) a test can kill and restart
/// while the shared one stays up. Killed when dropped, also on a panic.
pub struct OwnEtcd {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
}

impl OwnEtcd {
    /// Starts one on free loopback ports with its data in a fresh directory.
    pub fn start(label: &str) -> OwnEtcd {
        let dir = std::env::temp_dir().join(unique(label));
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = OwnEtcd { child: None, dir, client: free_port(), peer: free_port() };
        etcd.spawn();
        etcd
    }

    /// Starts (or restarts, on the same ports and data) the server.
    pub fn spawn(&mut self) {
        self.kill();
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "own", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &url(self.client)])
            .args(["--advertise-client-urls", &url(self.client)])
            .args(["--listen-peer-urls", &url(self.peer)])
            .args(["--initial-advertise-peer-urls", &url(self.peer)])
            .args(["--initial-cluster", &format!("own={}", url(self.peer))])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the `etcd` binary ({e}); install it with \
                     `scripts/etcd.sh start /tmp/mpc-etcd` (Debian etcd-server)"
                )
            });
        self.child = Some(child);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// SIGKILL: etcd vanishes without a goodbye, as in a crash or partition.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
