//! A real node behind a real API server, in-process, for the API and CLI
//! tests: an `mpc_core::Node` run by `mpc_core::drive` over a minimal
//! shell (commands from the control plane, records into a real SQLite
//! `Store`, messages to peers dropped: the peers are not there), and the
//! API's axum router on a loopback port.
//!
//! A keyed node is rebuilt from the database after the TEST-ONLY fixture
//! records of one member (key share, aux info, presignatures) were written
//! into it, so it starts as a restarted member of the fixture cluster. The
//! cluster's configuration (members' vote keys, policy) is this file's own.
#![allow(dead_code)]

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{
    Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use ed25519_dalek::SigningKey;
use mpc_core::tx::GroupKey;
use mpc_core::{
    ClusterConfig, ComputeJob, Envelope, Identity, Input, MemberInfo, Millis, Node, NodeConfig, NodeId, Observation,
    PolicyConfig, PoolConfig, Record, RecoveredState, Reply, RequestId, Shell, Timeouts,
};
use mpc_io_store::{MasterKey, Store, StoreError};
use mpc_node::api::{self, ApiState};
use mpc_node::config::Operator;
use mpc_node::control::{Check, CommandRequest, Control, Health, PrimesState};
use mpc_node::metrics::Metrics;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

pub const CLUSTER_ID: &str = "api-test-cluster";
pub const NETWORK: Network = Network::Regtest;
/// TEST ONLY operator tokens.
pub const ALICE_TOKEN: &str = "test-only-token-alice-0123456789abcdef";
pub const BOB_TOKEN: &str = "test-only-token-bob-fedcba9876543210";
/// Bodies above this are refused (small, so the test can exceed it cheaply).
pub const MAX_BODY: usize = 64 * 1024;

/// TEST ONLY vote keys of this file's cluster.
pub fn vote_key(id: NodeId) -> SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("api-test vote key {}", id.0)).into();
    SigningKey::from_bytes(&seed)
}

fn p2wpkh(secret: u8) -> (ScriptBuf, Address) {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[secret; 32]).expect("valid test secret");
    let pk = CompressedPublicKey(bitcoin::secp256k1::PublicKey::from_secret_key(&secp, &sk));
    let address = Address::p2wpkh(&pk, NETWORK);
    (address.script_pubkey(), address)
}

/// Where test payments go (allowed by the policy, so the node approves).
pub fn destination() -> (ScriptBuf, Address) {
    p2wpkh(7)
}

/// Somebody else's P2WPKH output: what a foreign input spends.
pub fn foreign_script() -> ScriptBuf {
    p2wpkh(8).0
}

/// The cluster's configuration; `vote_ms` overrides the vote deadline.
pub fn node_config(vote_ms: Option<u64>) -> NodeConfig {
    let members = (1..=5u16)
        .map(|i| (NodeId(i), MemberInfo { vote_key: vote_key(NodeId(i)).verifying_key().to_bytes() }))
        .collect();
    NodeConfig {
        cluster: ClusterConfig {
            cluster_id: CLUSTER_ID.into(),
            members,
            threshold: 3,
            approve_quorum: 3,
            reject_quorum: 4,
            byzantine_tolerance: 1,
            network: NETWORK,
            pool: PoolConfig::default(),
            timeouts: Timeouts { vote_ms: vote_ms.unwrap_or(Timeouts::default().vote_ms), ..Timeouts::default() },
        },
        policy: PolicyConfig {
            max_amount_sat: 100_000_000,
            allowed_destinations: vec![destination().1.to_string()],
            max_fee_rate_sat_vb: 1_000,
            daily_cap_sat: 1_000_000_000,
        },
        chain: None,
        multiexp_tables: false,
    }
}

pub fn operators() -> Vec<Operator> {
    [("alice", ALICE_TOKEN), ("bob", BOB_TOKEN)]
        .into_iter()
        .map(|(name, token)| Operator { name: name.into(), token_sha256: Sha256::digest(token.as_bytes()).into() })
        .collect()
}

/// The TEST-ONLY fixture cluster's records, by node (read once).
pub fn fixture_records() -> &'static BTreeMap<NodeId, Vec<Record>> {
    static RECORDS: OnceLock<BTreeMap<NodeId, Vec<Record>>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/fixtures/test-only-cluster-5.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("fixture records parse as mpc_core records")
    })
}

/// The fixture cluster's group key.
pub fn fixture_group_key() -> GroupKey {
    let public_key = fixture_records()[&NodeId(1)]
        .iter()
        .find_map(|r| match r {
            Record::KeyShare { public_key, .. } => Some(public_key.clone()),
            _ => None,
        })
        .expect("the fixture has a key share");
    GroupKey::from_compressed(public_key.try_into().expect("33 bytes")).expect("a valid group key")
}

/// A PSBT paying `pay` sat to [`destination`] from one input of `value`
/// sat held by `input_script`; `salt` makes the outpoint (and so the
/// transaction) differ.
pub fn psbt(input_script: &ScriptBuf, value: u64, pay: u64, salt: u8) -> Vec<u8> {
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array([salt; 32]), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(pay), script_pubkey: destination().0 }],
    };
    let mut psbt = Psbt::from_unsigned_tx(tx).expect("an unsigned transaction");
    psbt.inputs[0].witness_utxo = Some(TxOut { value: Amount::from_sat(value), script_pubkey: input_script.clone() });
    psbt.serialize()
}

/// A valid PSBT spending the fixture cluster's address.
pub fn good_psbt(salt: u8) -> Vec<u8> {
    psbt(&fixture_group_key().script_pubkey(), 100_000, 90_000, salt)
}

fn unix_now() -> Millis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    Millis(since.as_millis() as u64)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn scratch_db() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join("mpc-node-api-tests");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let name = format!("node-{}-{}.db", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let url = format!("sqlite://{}?mode=rwc", path.display());
    (path, url)
}

/// TEST ONLY master key.
fn master_key() -> MasterKey {
    MasterKey::from_hex(&"3c".repeat(32), "test key").expect("valid key")
}

/// The shell of a node alone on its network: commands in, records to the
/// database, observations to the metrics, sends and compute jobs dropped.
struct LoneShell {
    commands: mpsc::Receiver<CommandRequest>,
    waiting: BTreeMap<RequestId, oneshot::Sender<Reply>>,
    next_request: u64,
    stop: oneshot::Receiver<()>,
    stopping: bool,
    store: Option<Arc<Store>>,
    metrics: Arc<Metrics>,
}

impl Shell for LoneShell {
    type Error = StoreError;

    async fn next(&mut self, wake_at: Option<Millis>) -> Option<(Millis, Input)> {
        if self.stopping {
            return None;
        }
        let now = unix_now();
        let wait = wake_at.map_or(Duration::from_secs(3600), |w| Duration::from_millis(w.0.saturating_sub(now.0)));
        tokio::select! {
            biased;
            _ = &mut self.stop => {
                self.stopping = true;
                Some((unix_now(), Input::ShutDown))
            }
            request = self.commands.recv() => {
                let request = request?;
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.waiting.insert(id, request.reply);
                Some((unix_now(), Input::Command { request: id, command: request.command }))
            }
            _ = tokio::time::sleep(wait) => Some((unix_now(), Input::Tick)),
        }
    }

    async fn persist(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let started = Instant::now();
        if let Some(store) = &self.store {
            store.apply(unix_now(), records).await?;
        }
        self.metrics.persisted(records, started.elapsed());
        Ok(())
    }

    fn observe(&mut self, observations: &[Observation]) {
        self.metrics.observed(observations);
    }

    fn reply(&mut self, request: RequestId, reply: Reply) {
        if let Some(to) = self.waiting.remove(&request) {
            let _ = to.send(reply);
        }
    }

    fn send(&mut self, _envelopes: Vec<Envelope>) {}

    fn compute(&mut self, _jobs: Vec<ComputeJob>) {}

    /// A lone node has no Bitcoin backend (its config has no chain).
    fn chain(&mut self, _requests: Vec<mpc_core::ChainRequest>) {}
}

/// The node, with each `handle` timed into the metrics as a node shell does.
struct TimedNode {
    node: Node,
    metrics: Arc<Metrics>,
}

impl mpc_core::Core for TimedNode {
    fn handle(&mut self, now: Millis, input: Input) -> mpc_core::Step {
        let kind = mpc_node::metrics::input_kind(&input);
        let started = Instant::now();
        let step = self.node.handle(now, input);
        self.metrics.handled(kind, started.elapsed());
        step
    }
}

/// How to start a [`TestNode`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub id: NodeId,
    /// Start from the fixture's key share and presignatures.
    pub keyed: bool,
    /// With `keyed`: drop the fixture's key adoption, so the node holds its
    /// share as a pending key whose confirmations it never received (a
    /// member restarted after keygen, before every member confirmed).
    pub pending: bool,
    /// Attach a database (persist and reads); without one, records are
    /// dropped and transaction reads answer 503.
    pub database: bool,
    /// The vote deadline, when not the default (10 minutes): a transaction
    /// nobody else votes on expires after it.
    pub vote_ms: Option<u64>,
}

impl Options {
    pub fn keyed(id: u16) -> Options {
        Options { id: NodeId(id), keyed: true, pending: false, database: true, vote_ms: None }
    }
    pub fn unkeyed(id: u16) -> Options {
        Options { id: NodeId(id), keyed: false, pending: false, database: true, vote_ms: None }
    }
    pub fn pending(id: u16) -> Options {
        Options { pending: true, ..Options::keyed(id) }
    }
}

/// A running node and its API. Dropping it shuts the node down (the
/// driver performs its shutdown step) and stops the server.
pub struct TestNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub store: Option<Arc<Store>>,
    pub db_path: PathBuf,
    pub metrics: Arc<Metrics>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_driver: Option<oneshot::Sender<()>>,
    stop_server: Option<oneshot::Sender<()>>,
    driver: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
    _health: watch::Sender<Health>,
}

impl TestNode {
    pub fn start(options: Options) -> TestNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (db_path, url) = scratch_db();
        let id = options.id;
        let (store, recovered) = runtime.block_on(async {
            let mut records = if options.keyed { fixture_records()[&id].clone() } else { Vec::new() };
            if options.pending {
                records.retain(|r| !matches!(r, Record::KeyAdopted { .. }));
            }
            if !options.database {
                return (None, RecoveredState { records });
            }
            let store = Store::open(&url, master_key(), id).await.expect("open the test database");
            if !records.is_empty() {
                store.apply(unix_now(), &records).await.expect("the fixture records are written");
            }
            let recovered = store.recover().await.expect("the database rebuilds a node");
            (Some(Arc::new(store)), recovered)
        });
        let identity = Identity { id, vote_key: vote_key(id) };
        let mut seed = [0u8; 32];
        seed[..2].copy_from_slice(&id.0.to_be_bytes());
        let node = Node::new(node_config(options.vote_ms), identity, seed, recovered).expect("the node starts");
        let status = node.status();

        let metrics = Arc::new(Metrics::new(id));
        let (control, commands, health) = Control::new();
        health.send_replace(Health {
            driver_running: true,
            database: if store.is_some() { Check::ok() } else { Check::failing("no database in this test") },
            etcd: Check::failing("no etcd in this test"),
            leader: None,
            peers_connected: 0,
            peers_total: 4,
            key_present: status.public_key_hex.is_some(),
            primes: if status.primes_ready { PrimesState::Ready } else { PrimesState::Missing },
            pool_ready: status.pool_ready,
            pool_low_water: status.pool_low_water,
            bitcoin: None,
            bitcoin_tip: None,
        });
        let (stop_driver, stop) = oneshot::channel();
        let mut shell = LoneShell {
            commands,
            waiting: BTreeMap::new(),
            next_request: 0,
            stop,
            stopping: false,
            store: store.clone(),
            metrics: metrics.clone(),
        };
        let mut node = TimedNode { node, metrics: metrics.clone() };
        let handle = runtime.handle().clone();
        let driver = std::thread::Builder::new()
            .name(format!("driver-{}", id.0))
            .spawn(move || handle.block_on(mpc_core::drive(&mut node, &mut shell)))
            .expect("driver thread");

        let state = ApiState {
            control,
            store: store.clone(),
            metrics: metrics.clone(),
            operators: operators(),
            node: id,
            network: NETWORK,
            threshold: 3,
        };
        let app = api::router(state, MAX_BODY);
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let (stop_server, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = api::serve(listener, app, shutdown).await {
                eprintln!("test API server ended: {e}");
            }
        });
        TestNode {
            id,
            addr,
            store,
            db_path,
            metrics,
            runtime: Some(runtime),
            stop_driver: Some(stop_driver),
            stop_server: Some(stop_server),
            driver: Some(driver),
            _health: health,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Runs `f` on the node's runtime (database reads in tests).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("running").block_on(f)
    }

    /// The database's `operator_request` audit rows, as JSON bodies.
    pub fn operator_audit(&self) -> Vec<serde_json::Value> {
        let store = self.store.as_ref().expect("a database");
        let rows = self.block_on(store.audit_rows()).expect("audit rows");
        rows.iter()
            .filter(|r| r.kind == "operator_request")
            .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
            .collect()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_driver.take() {
            let _ = stop.send(());
        }
        if let Some(driver) = self.driver.take() {
            match driver.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("node {} driver ended with {e}", self.id.0),
                Err(_) if std::thread::panicking() => {}
                Err(_) => panic!("node {}'s driver panicked", self.id.0),
            }
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            if let Some(store) = &self.store {
                runtime.block_on(store.close());
            }
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}
