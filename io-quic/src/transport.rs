//! [`Transport`]: one node's QUIC endpoint in the cluster mesh.
//!
//! Outbound: each peer has a bounded queue and a task that keeps one
//! connection to it (dialled with the peer's certificate name, so TLS
//! proves who answers), reconnecting with exponential backoff when it goes
//! away. Messages to one peer travel in order on one unidirectional stream
//! per connection. A full queue (a dead or slow peer) drops the new message
//! and counts it: memory stays bounded, and the core's own retries and sync
//! cover the loss.
//!
//! Inbound: every accepted connection's peer is the node id in its
//! certificate; every envelope must name that sender, this node as
//! recipient, and the next sequence number of its stream. Anything else
//! (another sender, garbage, an oversized or truncated frame, an unknown
//! version) is refused as [`Inbound::Refused`] naming the peer, and the
//! offending stream is stopped; other streams and peers go on. Delivered
//! messages wait in a bounded channel, so a slow core pushes back on the
//! senders through QUIC flow control rather than growing memory. Refusal
//! reports never wait for room: when the inbox is full they are counted and
//! logged but not queued, so a stranger hammering the port with bad
//! handshakes can neither pile up waiting tasks nor crowd out messages.

use crate::frame::{self, FrameDecoder, WireEnvelope};
use crate::tls::{self, NodeTls, TlsError};
use mpc_core::{NodeId, PeerMessage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a connection replaced by a rotation may take to deliver what
/// was already written to it.
const DRAIN: Duration = Duration::from_secs(10);
/// A connection that breaks sooner than this is treated like a failed dial.
const SHORT_LIVED: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub me: NodeId,
    pub listen: SocketAddr,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The directory `mpc-cli certs init` wrote (ca.pem, node-<id>.pem/.key).
    pub cert_dir: PathBuf,
    pub max_frame: usize,
    /// Messages queued per peer before new ones are dropped.
    pub peer_queue: usize,
    /// Delivered messages waiting for the node before senders are slowed.
    pub inbox: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often the certificate files are checked for rotation.
    pub cert_poll: Duration,
}

impl TransportConfig {
    pub fn new(me: NodeId, listen: SocketAddr, cert_dir: PathBuf) -> Self {
        TransportConfig {
            me,
            listen,
            peers: BTreeMap::new(),
            cert_dir,
            max_frame: frame::DEFAULT_MAX_FRAME,
            peer_queue: 1024,
            inbox: 4096,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            cert_poll: Duration::from_secs(5),
        }
    }
}

/// What the transport hands the node.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A message from `from`, the node id in the peer's certificate.
    Message { from: NodeId, msg: PeerMessage },
    /// Something a peer sent, or tried, was refused. `peer` is the node id
    /// from its certificate when the handshake got that far.
    Refused { peer: Option<NodeId>, addr: SocketAddr, reason: String },
}

impl Inbound {
    /// What the node hands its core: a delivered message as a peer input
    /// (the sender as the certificate names it), a refusal as the core's
    /// transport-refusal input, which it records as an observation.
    pub fn into_input(self) -> mpc_core::Input {
        match self {
            Inbound::Message { from, msg } => mpc_core::Input::Peer { from, msg },
            Inbound::Refused { peer, addr, reason } => {
                mpc_core::Input::TransportRefused { peer, reason: format!("{reason} (from {addr})") }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("{0} is not a configured peer")]
    UnknownPeer(NodeId),
    #[error("the queue to {0} is full: message dropped")]
    QueueFull(NodeId),
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub dropped_full: AtomicU64,
    pub reconnects: AtomicU64,
    pub refused: AtomicU64,
    /// Refusals logged and counted but not reported to the node because its
    /// inbox was full.
    pub refusals_unreported: AtomicU64,
    /// Certificate rotations picked up, and rotations refused (a new
    /// certificate from another CA, expired, or unreadable).
    pub rotations: AtomicU64,
    pub rotations_refused: AtomicU64,
    /// Peers this node has an open stream to right now.
    pub connected: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
}

pub struct Transport {
    me: NodeId,
    endpoint: quinn::Endpoint,
    queues: BTreeMap<NodeId, mpsc::Sender<PeerMessage>>,
    tls: Arc<Rotating>,
    pub stats: Arc<Stats>,
    /// Dropped with the transport: ends the certificate watcher.
    _stop: mpsc::Sender<()>,
}

/// The node's current TLS configuration and its generation, bumped by each
/// rotation so senders move their traffic to fresh connections.
struct Rotating {
    me: NodeId,
    dir: PathBuf,
    current: RwLock<NodeTls>,
    generation: AtomicU64,
}

impl Rotating {
    fn client(&self) -> (quinn::ClientConfig, u64) {
        let tls = self.current.read().unwrap_or_else(|p| p.into_inner());
        (tls.client.clone(), self.generation.load(Ordering::SeqCst))
    }

    /// Loads the files; on success new handshakes, in and out, use them.
    fn reload(&self, endpoint: &quinn::Endpoint) -> Result<(), TlsError> {
        let fresh = tls::load(&self.dir, self.me)?;
        endpoint.set_server_config(Some(fresh.server.clone()));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// A digest of the files a rotation replaces.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for path in [
            crate::certs::ca_cert_path(&self.dir),
            crate::certs::node_cert_path(&self.dir, self.me),
            crate::certs::node_key_path(&self.dir, self.me),
        ] {
            std::fs::read(path).ok().hash(&mut h);
        }
        h.finish()
    }
}

/// Polls the certificate files and applies a changed set. A set that does
/// not load (another CA, expired, a key that does not match, a half-written
/// file) is refused and the old certificate stays in use; the next change
/// is tried again.
async fn watch_certificates(
    tls: Arc<Rotating>,
    endpoint: quinn::Endpoint,
    poll: Duration,
    stats: Arc<Stats>,
    mut stop: mpsc::Receiver<()>,
) {
    let mut last = tls.fingerprint();
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let now = tls.fingerprint();
        if now == last {
            continue;
        }
        last = now;
        match tls.reload(&endpoint) {
            Ok(()) => {
                stats.rotations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = tls.me.0, "new certificates picked up; existing connections drain");
            }
            Err(e) => {
                stats.rotations_refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(node = tls.me.0, "new certificate files refused, keeping the current ones: {e}");
            }
        }
    }
}

impl Transport {
    /// Binds, starts accepting, and starts one sender task per peer.
    pub async fn start(cfg: TransportConfig) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let node_tls = tls::load(&cfg.cert_dir, cfg.me)?;
        let endpoint = quinn::Endpoint::server(node_tls.server.clone(), cfg.listen)
            .map_err(|source| TransportError::Bind { addr: cfg.listen, source })?;
        let tls = Arc::new(Rotating {
            me: cfg.me,
            dir: cfg.cert_dir.clone(),
            current: RwLock::new(node_tls),
            generation: AtomicU64::new(0),
        });
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = mpsc::channel(1);
        tokio::spawn(watch_certificates(tls.clone(), endpoint.clone(), cfg.cert_poll, stats.clone(), stopped));
        let (inbox_tx, inbox) = mpsc::channel(cfg.inbox);
        tokio::spawn(accept_loop(endpoint.clone(), cfg.clone(), inbox_tx, stats.clone()));
        let mut queues = BTreeMap::new();
        for (peer, addr) in &cfg.peers {
            if *peer == cfg.me {
                continue;
            }
            let (tx, rx) = mpsc::channel(cfg.peer_queue);
            queues.insert(*peer, tx);
            let sender = PeerSender {
                me: cfg.me,
                peer: *peer,
                addr: *addr,
                endpoint: endpoint.clone(),
                tls: tls.clone(),
                max_frame: cfg.max_frame,
                backoff: (cfg.backoff_min, cfg.backoff_max),
                stats: stats.clone(),
            };
            tokio::spawn(sender.run(rx));
        }
        Ok((Transport { me: cfg.me, endpoint, queues, tls, stats, _stop: stop }, inbox))
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint")
    }

    /// How many peers this node has an open connection to (for health and
    /// metrics).
    pub fn connected_peers(&self) -> usize {
        self.stats.connected.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Queues `msg` for `to`; never blocks.
    pub fn send(&self, to: NodeId, msg: PeerMessage) -> Result<(), SendError> {
        let queue = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        queue.try_send(msg).map_err(|_| {
            self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
            SendError::QueueFull(to)
        })
    }

    /// Re-reads the certificate files (rotation): new connections, in and
    /// out, use them; existing connections carry on until they close.
    /// The watcher does this by itself every `cert_poll`.
    pub fn reload_certificates(&self) -> Result<(), TlsError> {
        self.tls.reload(&self.endpoint)?;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes every connection, stops accepting and ends the sender tasks;
    /// the socket is released once they have all stopped.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        drop(self.queues);
        self.endpoint.wait_idle().await;
    }
}

struct PeerSender {
    me: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    tls: Arc<Rotating>,
    max_frame: usize,
    backoff: (Duration, Duration),
    stats: Arc<Stats>,
}

impl PeerSender {
    async fn run(self, mut queue: mpsc::Receiver<PeerMessage>) {
        let name = crate::certs::node_dns_name(self.peer);
        let mut delay = self.backoff.0;
        // A message taken from the queue but not written survives a
        // reconnect; nothing else is kept for a dead peer.
        let mut pending: Option<PeerMessage> = None;
        loop {
            if pending.is_none() {
                match queue.recv().await {
                    Some(m) => pending = Some(m),
                    None => return, // transport dropped
                }
            }
            let (client, generation) = self.tls.client();
            let connected = match self.endpoint.connect_with(client, self.addr, &name) {
                Ok(connecting) => connecting.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let conn = match connected {
                Ok(conn) => conn,
                Err(reason) => {
                    tracing::debug!(
                        node = self.me.0,
                        peer = self.peer.0,
                        "dial failed: {reason}; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.1);
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            // A connection that fails soon after it opened (say the peer
            // refuses our certificate after the handshake) counts as a
            // failed dial: the backoff keeps growing instead of spinning.
            let opened = tokio::time::Instant::now();
            let mut rotated = false;
            if let Ok(mut stream) = conn.open_uni().await {
                self.stats.connected.lock().unwrap_or_else(|p| p.into_inner()).insert(self.peer);
                let mut seq = 0u64;
                loop {
                    let msg = match pending.take() {
                        Some(m) => m,
                        None => match queue.recv().await {
                            Some(m) => m,
                            None => return,
                        },
                    };
                    if self.tls.generation.load(Ordering::SeqCst) != generation {
                        // Rotated: this connection drains (the stream finishes
                        // and its data is acknowledged) before the next one,
                        // with the new certificate, carries the traffic.
                        pending = Some(msg);
                        let _ = stream.finish();
                        let _ = tokio::time::timeout(DRAIN, stream.stopped()).await;
                        conn.close(0u32.into(), b"certificate rotated");
                        rotated = true;
                        break;
                    }
                    let envelope = WireEnvelope { from: self.me, to: self.peer, seq, msg };
                    let bytes = match frame::encode(&envelope, self.max_frame) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::error!(node = self.me.0, peer = self.peer.0, "message not sent: {e}");
                            continue;
                        }
                    };
                    if stream.write_all(&bytes).await.is_err() {
                        pending = Some(envelope.msg);
                        break;
                    }
                    seq += 1;
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats.connected.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.peer);
            if rotated {
                continue;
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            if opened.elapsed() < SHORT_LIVED {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.backoff.1);
            } else {
                delay = self.backoff.0;
            }
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, cfg: TransportConfig, inbox: mpsc::Sender<Inbound>, stats: Arc<Stats>) {
    while let Some(incoming) = endpoint.accept().await {
        let (cfg, inbox, stats) = (cfg.clone(), inbox.clone(), stats.clone());
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let refuse =
                |peer: Option<NodeId>, reason: String| report_refusal(&cfg, &inbox, &stats, peer, addr, reason);
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => return refuse(None, format!("handshake failed: {e}")),
            };
            let peer = match tls::peer_node(&conn) {
                Ok(peer) if peer != cfg.me && cfg.peers.contains_key(&peer) => peer,
                Ok(peer) => {
                    conn.close(1u32.into(), b"not a peer");
                    return refuse(Some(peer), format!("{peer} is not a peer of {}", cfg.me));
                }
                Err(e) => {
                    conn.close(1u32.into(), b"bad certificate");
                    return refuse(None, e.to_string());
                }
            };
            while let Ok(stream) = conn.accept_uni().await {
                tokio::spawn(read_stream(cfg.clone(), peer, addr, stream, inbox.clone(), stats.clone()));
            }
        });
    }
}

async fn read_stream(
    cfg: TransportConfig,
    peer: NodeId,
    addr: SocketAddr,
    mut stream: quinn::RecvStream,
    inbox: mpsc::Sender<Inbound>,
    stats: Arc<Stats>,
) {
    let mut decoder = FrameDecoder::new(cfg.max_frame);
    let mut expected = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let refuse = |reason: String| report_refusal(&cfg, &inbox, &stats, Some(peer), addr, reason);
    loop {
        let want = decoder.wanted().min(buf.len());
        let n = match stream.read(&mut buf[..want]).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                if let Err(e) = decoder.finish() {
                    refuse(e.to_string());
                }
                return;
            }
            Err(_) => return, // connection gone: the peer reconnects
        };
        let mut fail = decoder.push(&buf[..n]).err();
        while fail.is_none() {
            match decoder.next_envelope() {
                Ok(Some(env)) => {
                    let problem = if env.from != peer {
                        Some(format!("envelope names sender {} but the certificate is {peer}'s", env.from))
                    } else if env.to != cfg.me {
                        Some(format!("envelope addressed to {}, not {}", env.to, cfg.me))
                    } else if env.seq != expected {
                        Some(format!("sequence {} where {expected} was next (replayed or reordered)", env.seq))
                    } else {
                        None
                    };
                    match problem {
                        // Dropped and reported; the stream goes on.
                        Some(reason) => refuse(reason),
                        None => {
                            if inbox.send(Inbound::Message { from: peer, msg: env.msg }).await.is_err() {
                                return;
                            }
                        }
                    }
                    expected = expected.max(env.seq.saturating_add(1));
                }
                Ok(None) => break,
                Err(e) => fail = Some(e),
            }
        }
        if let Some(e) = fail {
            let _ = stream.stop(1u32.into());
            refuse(e.to_string());
            return;
        }
    }
}

/// Logs and counts a refusal and hands it to the node if its inbox has
/// room; never waits (see the module docs).
fn report_refusal(
    cfg: &TransportConfig,
    inbox: &mpsc::Sender<Inbound>,
    stats: &Stats,
    peer: Option<NodeId>,
    addr: SocketAddr,
    reason: String,
) {
    stats.refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(node = cfg.me.0, peer = peer.map(|p| p.0), %addr, "refused: {reason}");
    if inbox.try_send(Inbound::Refused { peer, addr, reason }).is_err() {
        stats.refusals_unreported.fetch_add(1, Ordering::Relaxed);
    }
}
