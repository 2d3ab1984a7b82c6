//! `mpc-node run --config FILE`: one cluster member, started in the order
//! of DESIGN §7.
//!
//! 1. Read and check the configuration (exit 2 naming the file, the field
//!    and the problem).
//! 2. Open the database: migrations, the node binding and the master-key
//!    check (the key files must be owner-only).
//! 3. Connect to etcd and fence against it (DESIGN §4): a database restored
//!    from a backup discards every presignature it holds.
//! 4. Rebuild the core's `RecoveredState` from the database.
//! 5. Draw a fresh 32-byte seed from the OS (never one used before, never
//!    printed) and build the `Node`.
//! 6. Start the QUIC transport, etcd's lease and liveness, the compute
//!    workers and the HTTP API; hand in safe primes (from the database, a
//!    file, or generated in the background).
//! 7. Run the core's driver until SIGTERM or SIGINT; then let the last step
//!    finish and persist, tell peers the sessions in flight are abandoned,
//!    close the connections and exit 0.
//!
//! A persist that fails (database gone, etcd unreachable while fencing a
//! consumption) ends the driver: the core's memory is then ahead of its
//! records. The node rebuilds the core from the database and drives it
//! again, keeping the transport and the API up; the API answers 503 for
//! the moment in between.

use crate::compute::Workers;
use crate::config::{read_key_file, Config, ConfigFileError};
use crate::control::{Check, Control, PrimesState};
use crate::metrics::Metrics;
use crate::shell::{Clock, NodeShell, TimedNode};
use mpc_core::{Identity, Node};
use mpc_io_quic::{Transport, TransportConfig};
use mpc_io_store::coord::{CoordConfig, CoordError, Coordinator};
use mpc_io_store::{backoff, fence_at_startup, Fencing, MasterKey, PostgresTls, Store, StoreError};
use rand_core::{OsRng, RngCore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

/// Why the node did not start (or stopped), with the exit code for each.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration, or a file it names, is wrong: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The environment failed (database or etcd unreachable): exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => 2,
            RunError::Runtime(_) => 1,
        }
    }
}

fn runtime(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Runtime(format!("{what}: {e}"))
}

/// The master key; `MasterKey::from_file` refuses a file others may read
/// (the key unseals every secret).
pub fn master_key(config: &Config) -> Result<MasterKey, ConfigFileError> {
    MasterKey::from_file(&config.master_key_file).map_err(|e| config.file_error("node.master_key_file", e))
}

/// A warning when the cluster CA's private key sits in the node's
/// certificate directory (start-up logs it, preflight reports it).
pub fn ca_key_on_host(config: &Config) -> Option<String> {
    mpc_io_quic::certs::ca_key_path(&config.cert_dir).exists().then(|| {
        format!(
            "{} holds the cluster CA's private key: a node never needs it, and whoever reads it can mint a \
             certificate for any member; move it offline",
            config.cert_dir.display()
        )
    })
}

/// This node's identity from its vote key file, which must be the key
/// the member list names for it.
pub fn identity(config: &Config) -> Result<Identity, ConfigFileError> {
    let secret = read_key_file(&config.vote_key_file).map_err(|e| config.file_error("node.vote_key_file", e))?;
    let vote_key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let listed = config.core.cluster.members.get(&config.me).map(|m| m.vote_key);
    if listed != Some(vote_key.verifying_key().to_bytes()) {
        return Err(config.file_error(
            "node.vote_key_file",
            format!(
                "{}: this key's public half is not the one cluster.members lists for node {}: peers would refuse \
                 every vote this node signs (give the node its own key file, or the member list its public key)",
                config.vote_key_file.display(),
                config.me.0
            ),
        ));
    }
    Ok(Identity { id: config.me, vote_key })
}

/// Opens the node's database as start-up does. Errors that the operator
/// fixes in the configuration (a wrong master key, another node's
/// database, a bad URL) are configuration errors.
pub async fn open_store(config: &Config) -> Result<Store, RunError> {
    if config.raw.node.database_url.is_none() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .map_err(|e| config.file_error("node.state_dir", format!("{}: {e}", config.state_dir.display())))?;
    }
    config.check_database_tls()?;
    if let Ok(tls) = PostgresTls::of_url(&config.database_url) {
        if !tls.verifies_server() {
            warn!(
                node = config.me.0,
                sslmode = ?tls.mode,
                "PostgreSQL without sslmode=verify-full: the connection is not protected against an active \
                 attacker (fine on loopback only)"
            );
        }
    }
    let key = master_key(config)?;
    match Store::open(&config.database_url, key, config.me).await {
        Ok(store) => Ok(store),
        Err(
            e @ (StoreError::Seal(_)
            | StoreError::WrongNode { .. }
            | StoreError::UnsupportedUrl { .. }
            | StoreError::BadUrl { .. }),
        ) => Err(config.file_error("node.database_url", e).into()),
        Err(e) => Err(runtime("opening the database", e)),
    }
}

/// Builds the core from what the database holds, with a fresh seed from the
/// OS. The seed lives only inside the node.
pub async fn build_node(store: &Store, config: &Config, identity: Identity) -> Result<Node, RunError> {
    let recovered = store.recover().await.map_err(|e| runtime("reading the node's records", e))?;
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let node = Node::new(config.core.clone(), identity, seed, recovered);
    seed.fill(0);
    node.map_err(|e| runtime("rebuilding the node from its records", e))
}

/// The coordination settings, with the TLS material and password the
/// `[etcd]` section names read from their files.
pub fn coord_config(config: &Config) -> Result<CoordConfig, ConfigFileError> {
    let mut c = CoordConfig::new(config.raw.etcd.endpoints.clone(), config.core.cluster.cluster_id.clone(), config.me);
    c.lease_ttl_secs = config.raw.etcd.lease_ttl_secs;
    (c.tls, c.auth) = config.etcd_security()?;
    Ok(c)
}

/// A watch that turns true on SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Runs the node until it is told to stop.
pub async fn run(config: Config) -> Result<(), RunError> {
    run_with(config, None).await
}

/// [`run`], with every outgoing message passed through `outbound` first.
/// Only the TEST-ONLY rogue member of the byzantine_scenarios suite hands
/// one in (see [`crate::shell::Outbound`]); mpc-node calls [`run`].
pub async fn run_with(config: Config, outbound: Option<crate::shell::Outbound>) -> Result<(), RunError> {
    let me = config.me;
    info!(node = me.0, config = %config.file.display(), cluster = %config.core.cluster.cluster_id, "starting");
    let identity = identity(&config)?;
    let store = Arc::new(open_store(&config).await?);
    info!(node = me.0, backend = ?store.backend(), "database open");

    let coord_config = coord_config(&config)?;
    let coord = Arc::new(Coordinator::connect(coord_config).await.map_err(|e| match e {
        // Fixed in the configuration, not by waiting: exit 2.
        e @ (CoordError::Config(_) | CoordError::Denied(_)) => RunError::Config(config.file_error("etcd", e)),
        e => runtime("etcd", e),
    })?);
    let mut clock = Clock::default();
    match fence_at_startup(&store, &coord, clock.now()).await.map_err(|e| runtime("restore fencing", e))? {
        Fencing::Current { epoch } => info!(node = me.0, epoch, "restore fencing: database is current"),
        Fencing::Restored { database_epoch, latest_epoch, discarded } => warn!(
            node = me.0,
            database_epoch,
            latest_epoch,
            discarded,
            "restore fencing: this database was restored from a backup; every presignature it held is discarded"
        ),
    }
    let node = build_node(&store, &config, identity.clone()).await?;
    let status = node.status();

    if let Some(warning) = ca_key_on_host(&config) {
        warn!(node = me.0, "{warning}");
    }
    let mut transport_cfg = TransportConfig::new(me, config.raw.transport.listen, config.cert_dir.clone());
    transport_cfg.peers = config.peers.clone();
    // Stable across restarts, so peers holding connections to this node's
    // previous process are reset by its first answer and redial at once
    // (what they send meanwhile would otherwise be lost for 30 s).
    transport_cfg.reset_secret = Some(mpc_io_quic::ResetSecret(*master_key(&config)?.derive("quic-stateless-reset")));
    let (transport, inbound) = Transport::start(transport_cfg).await.map_err(|e| config.file_error("transport", e))?;
    let transport = Arc::new(transport);
    info!(node = me.0, listen = %transport.local_addr(), "QUIC transport up");
    // Unfit to lead until the transport reaches enough peers (see
    // `crate::leadership`).
    let coord_handle = coord.start_gated(false).map_err(|e| runtime("etcd lease", e))?;
    let workers = Workers::start(config.compute_workers()).map_err(|e| runtime("compute workers", e))?;
    info!(node = me.0, workers = workers.count(), "compute workers up");

    let metrics = Arc::new(Metrics::new(me));
    let (control, commands, health_tx) = Control::new();
    let shutdown = shutdown_signal().map_err(|e| runtime("signal handlers", e))?;
    let api_state = crate::api::ApiState {
        control: control.clone(),
        store: Some(store.clone()),
        metrics: metrics.clone(),
        operators: config.operators.clone(),
        node: me,
        network: config.core.cluster.network,
        threshold: config.core.cluster.threshold,
    };
    let listener = tokio::net::TcpListener::bind(config.raw.api.listen)
        .await
        .map_err(|e| config.file_error("api.listen", format!("{}: {e}", config.raw.api.listen)))?;
    info!(node = me.0, api = %config.raw.api.listen, "HTTP API up");
    let router = crate::api::router(api_state, config.raw.api.max_body_bytes);
    let mut api_stop = shutdown.clone();
    let api = tokio::spawn(async move {
        let stop = async move {
            let _ = api_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::api::serve(listener, router, stop).await {
            error!("HTTP API stopped: {e}");
        }
    });

    let (primes, primes_since) = if status.primes_ready { (None, None) } else { start_primes(&config)? };
    let (bitcoin_health, chain) = match config.bitcoin_backend()? {
        Some(rpc) => {
            let poll = config.bitcoin.as_ref().map_or(Duration::from_secs(5), |b| b.poll);
            info!(node = me.0, backend = %rpc.url(), "bitcoin backend configured");
            let health = crate::backend_watch::spawn(rpc.clone(), config.core.cluster.network, poll, shutdown.clone());
            (Some(health), Some(crate::shell::ChainLink::new(rpc)))
        }
        None => {
            info!(node = me.0, "no [bitcoin] backend configured: signed transactions are not broadcast");
            (None, None)
        }
    };
    let mut health = control.health();
    health.peers_total = config.peers.len();
    health.database = Check::ok();
    health.primes = if status.primes_ready { PrimesState::Ready } else { PrimesState::Missing };
    let mut shell = NodeShell {
        me,
        clock,
        store: store.clone(),
        coord: coord.clone(),
        transport: transport.clone(),
        inbound,
        workers,
        commands,
        coord_view: coord_handle.view(),
        primes,
        shutdown,
        metrics: metrics.clone(),
        health_tx,
        health,
        bitcoin_health,
        waiting: Default::default(),
        next_request: 0,
        next_internal: 0,
        queued: Default::default(),
        next_status: Instant::now(),
        primes_since,
        key_published: false,
        shutting_down: false,
        fencing_failed_at: None,
        told_reachable: None,
        chain,
        outbound,
        leadership: crate::leadership::LeadershipRule::new(config.core.cluster.threshold),
        leadership_gate: coord_handle.gate(),
        step_started: None,
    };
    let anchoring = tokio::spawn(anchor_periodically(store.clone(), coord.clone()));
    shell.queue_coord_view();
    let mut core = TimedNode { node, metrics };
    info!(node = me.0, "running");
    loop {
        match mpc_core::drive(&mut core, &mut shell).await {
            Ok(()) => break,
            Err(e) => {
                error!(node = me.0, "the core stopped: {e}; rebuilding it from the database");
                shell.health.driver_running = false;
                shell.workers.reset();
                shell.waiting.clear();
                core.node = rebuild(&store, &config, &identity, &mut shell).await?;
                shell.queue_coord_view();
            }
        }
    }
    info!(node = me.0, "last step persisted; closing connections");
    drop(core);
    anchoring.abort();
    let _ = api.await;
    coord_handle.shutdown().await;
    if let Ok(transport) = Arc::try_unwrap(transport) {
        transport.shutdown().await;
    }
    store.close().await;
    info!(node = me.0, "stopped");
    Ok(())
}

/// Rebuilds the core after a failed persist, retrying with a growing,
/// jittered pause while the database stays unavailable.
async fn rebuild(store: &Store, config: &Config, identity: &Identity, shell: &mut NodeShell) -> Result<Node, RunError> {
    let mut pauses = backoff::jittered(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match build_node(store, config, identity.clone()).await {
            Ok(node) => return Ok(node),
            Err(e) => {
                let delay = pauses.next().unwrap_or(Duration::from_secs(10));
                warn!(node = config.me.0, "rebuilding the core failed, retrying in {delay:?}: {e}");
                if *shell.shutdown.borrow() {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How often the audit chain's head is anchored in etcd (DESIGN §4) besides
/// with every consumption.
const ANCHOR_EVERY: Duration = Duration::from_secs(10);

/// Anchors the audit head now and then, best effort: a failure is logged
/// (an anchor the chain no longer reaches is the tamper alarm) and retried.
async fn anchor_periodically(store: Arc<Store>, coord: Arc<Coordinator>) {
    loop {
        tokio::time::sleep(ANCHOR_EVERY).await;
        match store.anchor_audit_head(&*coord).await {
            Ok(_) => {}
            Err(e @ StoreError::Audit(_)) => {
                error!(node = store.node().0, "audit chain does not reach its anchor: {e}")
            }
            Err(e) => tracing::debug!(node = store.node().0, "anchoring the audit head waits: {e}"),
        }
    }
}

type PrimesStart = (Option<oneshot::Receiver<mpc_core::engine::SafePrimes>>, Option<Instant>);

/// Primes from the configured file, or generated in the background.
fn start_primes(config: &Config) -> Result<PrimesStart, RunError> {
    let (tx, rx) = oneshot::channel();
    if let Some(path) = &config.safe_primes_file {
        let primes = crate::primes::load(path, config.me, config.core.cluster.network)
            .map_err(|e| config.file_error("node.safe_primes_file", e))?;
        let _ = tx.send(primes);
        info!(node = config.me.0, file = %path.display(), "safe primes loaded from file");
        return Ok((Some(rx), None));
    }
    let me = config.me;
    std::thread::Builder::new()
        .name("mpc-safe-primes".into())
        .spawn(move || {
            info!(node = me.0, "generating safe primes in the background (about half a minute of one core)");
            let started = Instant::now();
            let primes = crate::primes::generate();
            info!(node = me.0, seconds = started.elapsed().as_secs(), "safe primes generated");
            let _ = tx.send(primes);
        })
        .map_err(|e| runtime("starting prime generation", e))?;
    Ok((Some(rx), Some(Instant::now())))
}
