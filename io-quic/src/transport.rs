//! [`Transport`]: one node's QUIC endpoint in the cluster mesh.
//!
//! Outbound: each peer has a bounded queue and a task that keeps one
//! connection to it (dialled with the peer's certificate name, so TLS
//! proves who answers), reconnecting with jittered exponential backoff when it goes
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
//! offending stream is stopped; other streams and peers go on. Those
//! checks read the envelope's leading fields as the frame arrives; the
//! message itself is decoded when the node takes it from the [`Inbox`],
//! and one that does not decode is reported there, in its place, and the
//! connection that carried it is closed.
//!
//! What one member can cost this node is bounded in bytes, whatever it
//! sends and however many connections it opens:
//!
//! - **Queued bytes, per member id.** A frame is charged to its sender's
//!   budget ([`TransportConfig::peer_inbound_bytes`]) as soon as its length
//!   is read and before its body is buffered, and the charge is released
//!   when the node takes the message from the [`Inbox`]. When a member's
//!   budget is full its reader stops reading, so QUIC flow control pushes
//!   back on that sender alone; nothing it sent is dropped. Frames are
//!   queued still encoded and decoded by [`Inbox::recv`], so the bytes
//!   counted are the bytes held (see [`crate::frame::Frame`]).
//! - **Fair delivery.** All members' frames wait in one queue in arrival
//!   order. As no member can hold more than its budget in it, a message
//!   waits behind at most one budget's worth of each other member's traffic
//!   (plus the bounded refusal reports): a flooder slows the others by a
//!   bounded amount and can never starve them, and busy members share the
//!   node's attention roughly in proportion to bytes.
//! - **QUIC's own buffers.** An accepted connection may have one
//!   unidirectional stream open at a time and no bidirectional ones (the
//!   protocol uses one ordered stream per connection), no datagrams, and
//!   stream and connection receive windows of
//!   [`TransportConfig::receive_window`]: quinn buffers at most that much
//!   unread data per connection. Connections this node dials accept no
//!   streams at all.
//! - **One live connection per member id.** When a member's connection is
//!   authenticated, an older connection from the same id is closed ("replaced
//!   by a newer connection"): a restarted peer can reconnect at once, without
//!   waiting for its dead connection to time out, and a member opening many
//!   connections holds one receive window and one budget, not one per
//!   connection. Messages already queued from the older connection stay
//!   queued and are delivered; its stream is stopped, which frees what
//!   quinn had buffered for it at once rather than after the connection's
//!   drain period.
//!
//! So one member costs at most `peer_inbound_bytes + receive_window` of
//! buffered data, and the node `peers x (peer_inbound_bytes +
//! receive_window)` plus [`TransportConfig::refusal_queue`] reports, plus
//! what is in flight: handshakes not yet authenticated (quinn's crypto
//! buffers) and the one message being decoded. `tests/flood.rs` measures
//! it on a node's resident memory.
//!
//! Refusal reports never wait for room: when `refusal_queue` reports are
//! already waiting, further ones are counted and logged but not queued, so
//! a stranger hammering the port with bad handshakes can neither pile up
//! waiting tasks nor crowd out messages.

use crate::frame::{self, Frame, FrameDecoder, WireEnvelope};
use crate::tls::{self, NodeTls, TlsError};
use mpc_core::{NodeId, PeerMessage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// How long a connection replaced by a rotation may take to deliver what
/// was already written to it.
const DRAIN: Duration = Duration::from_secs(10);
/// How often a dialled connection pings its idle peer. Short, so that a
/// peer that crashed and came back is found out within about this long
/// even when this node has nothing to send it: the ping reaches the new
/// process, which answers with a stateless reset (see
/// [`TransportConfig::reset_secret`]).
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection that breaks sooner than this is treated like a failed dial.
const SHORT_LIVED: Duration = Duration::from_secs(1);

/// What a queued frame costs beyond its bytes: the queue entry that holds
/// it and the allocator's bookkeeping. Charging it keeps a flood of tiny
/// frames inside the byte budget too (a 10-byte frame costs far more than
/// 10 bytes to queue).
pub const QUEUE_ENTRY_BYTES: usize = 256;
const _: () = assert!(std::mem::size_of::<Queued>() + 64 <= QUEUE_ENTRY_BYTES);

/// Default budget of queued inbound bytes per member: four maximal frames
/// (4,457,472 bytes), so a peer's largest messages stream without waiting
/// for the node to take each one, while four peers cost at most about
/// 17 MiB of queued messages.
pub const DEFAULT_PEER_INBOUND_BYTES: usize = 4 * (frame::DEFAULT_MAX_FRAME + QUEUE_ENTRY_BYTES);

/// Default QUIC receive window per accepted connection (its one stream and
/// the connection as a whole): 1 MiB keeps a 100 ms path at about 10 MB/s,
/// far above what the protocol sends, and is what quinn may buffer for one
/// member on top of its queued bytes.
pub const DEFAULT_RECEIVE_WINDOW: u32 = 1 << 20;

/// Application close codes this node uses.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_REPLACED: u32 = 2;
const CLOSE_MALFORMED: u32 = 3;

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub me: NodeId,
    pub listen: SocketAddr,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The directory `mpc-cli certs init` wrote (`ca.pem`, `node-<id>.pem` and `.key`).
    pub cert_dir: PathBuf,
    /// Largest frame sent or accepted ([`frame::DEFAULT_MAX_FRAME`]).
    pub max_frame: usize,
    /// Messages queued per peer before new ones are dropped.
    pub peer_queue: usize,
    /// Bytes of messages from one member (all its connections together)
    /// that may wait for the node to take them; each message counts its
    /// frame plus [`QUEUE_ENTRY_BYTES`]. When full, this node stops reading
    /// from that member until the node takes some. At least `max_frame +
    /// QUEUE_ENTRY_BYTES`, so the largest frame always fits.
    pub peer_inbound_bytes: usize,
    /// QUIC stream and connection receive window of accepted connections:
    /// what quinn may buffer for one member beyond its queued bytes.
    pub receive_window: u32,
    /// Refusal reports waiting for the node; further ones are only counted
    /// ([`Stats::refusals_unreported`]) and logged.
    pub refusal_queue: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often the certificate files are checked for rotation.
    pub cert_poll: Duration,
    /// The secret this node's QUIC stateless-reset key and connection-id
    /// key are derived from. Give one that survives restarts (the node
    /// derives it from its master key): a peer still holding a connection
    /// to this node's previous process then has it reset by the first
    /// packet it sends to the new one (RFC 9000 §10.3) and redials at
    /// once. Without it (`None`, a random secret per start) the peer keeps
    /// writing into the dead connection, and everything it sends there is
    /// lost, until its idle timeout (30 s).
    pub reset_secret: Option<ResetSecret>,
}

/// See [`TransportConfig::reset_secret`]. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ResetSecret(pub [u8; 32]);

impl std::fmt::Debug for ResetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetSecret(<redacted>)")
    }
}

impl ResetSecret {
    /// The endpoint configuration whose resets and connection ids a later
    /// process with the same secret recognises: quinn drops a packet whose
    /// connection id its generator did not make, so the generator's key
    /// must be stable too, not only the reset key.
    fn endpoint_config(&self) -> quinn::EndpointConfig {
        use ring::digest::{digest, SHA256};
        let derive = |label: &[u8]| {
            let mut input = Vec::with_capacity(label.len() + 32);
            input.extend_from_slice(label);
            input.extend_from_slice(&self.0);
            digest(&SHA256, &input)
        };
        let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"mpc-custody/quic-reset-key/v1").as_ref());
        let cid = derive(b"mpc-custody/quic-cid-key/v1");
        let cid_key = u64::from_be_bytes(cid.as_ref()[..8].try_into().expect("a SHA-256 digest has 8 bytes"));
        let mut config = quinn::EndpointConfig::new(Arc::new(reset));
        config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        config
    }
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
            peer_inbound_bytes: DEFAULT_PEER_INBOUND_BYTES,
            receive_window: DEFAULT_RECEIVE_WINDOW,
            refusal_queue: 1024,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            cert_poll: Duration::from_secs(5),
            reset_secret: None,
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
    #[error(
        "peer_inbound_bytes = {budget} cannot hold one maximal frame: it must be between {min} (max_frame + {QUEUE_ENTRY_BYTES}) and {max}"
    )]
    Budget { budget: usize, min: usize, max: usize },
    #[error("receive_window = 0 would let no peer send anything")]
    ZeroWindow,
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
    /// Refusals logged and counted but not reported to the node because
    /// `refusal_queue` reports were already waiting.
    pub refusals_unreported: AtomicU64,
    /// Certificate rotations picked up, and rotations refused (a new
    /// certificate from another CA, expired, or unreadable).
    pub rotations: AtomicU64,
    pub rotations_refused: AtomicU64,
    /// Peers this node has an open stream to right now.
    pub connected: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// Connections closed because the same member authenticated a newer one.
    pub connections_replaced: AtomicU64,
    /// Dialled connections a peer's stateless reset ended: the peer
    /// restarted, and this node redialled it at once.
    pub peer_resets: AtomicU64,
    /// Inbound accounting per configured peer.
    pub inbound: BTreeMap<NodeId, Arc<PeerInbound>>,
}

/// One member's inbound budget and its accounting: bytes of its messages
/// queued for the node, shared by all its connections.
#[derive(Debug)]
pub struct PeerInbound {
    /// The configured budget, [`TransportConfig::peer_inbound_bytes`].
    pub budget: u64,
    /// Bytes charged now: frames queued or being received.
    pub queued: AtomicU64,
    /// The most ever charged at once.
    pub high_water: AtomicU64,
    /// Times a reader found the budget full and stopped reading from the
    /// member until the node took some of its messages.
    pub waits: AtomicU64,
    permits: Arc<Semaphore>,
}

impl PeerInbound {
    fn new(budget: usize) -> Self {
        PeerInbound {
            budget: budget as u64,
            queued: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(budget)),
        }
    }

    /// Charges a frame of `len` bytes if the budget has room now.
    fn try_reserve(self: &Arc<Self>, len: usize) -> Option<Charge> {
        let bytes = len + QUEUE_ENTRY_BYTES;
        // `start` checked that the budget fits in a u32 and holds the largest frame.
        let permit = self.permits.clone().try_acquire_many_owned(bytes as u32).ok()?;
        Some(self.charged(bytes, permit))
    }

    /// Charges a frame of `len` bytes, waiting until the node has taken
    /// enough of this member's messages. The wait is what stops the reader,
    /// and with it QUIC's flow-control credit to the sender.
    async fn reserve(self: &Arc<Self>, len: usize) -> Charge {
        let bytes = len + QUEUE_ENTRY_BYTES;
        self.waits.fetch_add(1, Ordering::Relaxed);
        let permit =
            self.permits.clone().acquire_many_owned(bytes as u32).await.expect("the semaphore is never closed");
        self.charged(bytes, permit)
    }

    fn charged(self: &Arc<Self>, bytes: usize, permit: OwnedSemaphorePermit) -> Charge {
        let now = self.queued.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        self.high_water.fetch_max(now, Ordering::Relaxed);
        Charge { inbound: self.clone(), bytes: bytes as u64, _permit: permit }
    }
}

/// Bytes of a member's budget held by one frame; released when dropped.
#[derive(Debug)]
struct Charge {
    inbound: Arc<PeerInbound>,
    bytes: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.inbound.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A place in the refusal queue; freed when the node takes the report.
#[derive(Debug)]
struct ReportSlot(Arc<AtomicUsize>);

impl Drop for ReportSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What waits in the inbox.
#[derive(Debug)]
enum Queued {
    /// A frame whose header checked out, decoded when the node takes it.
    Frame {
        peer: NodeId,
        addr: SocketAddr,
        conn: usize,
        frame: Frame,
        /// When its last byte was read, for [`Inbox::last_wait`].
        arrived: std::time::Instant,
        _charge: Charge,
    },
    Report {
        report: Inbound,
        _slot: ReportSlot,
    },
}

/// The receiving side of a [`Transport`]: messages and refusal reports in
/// arrival order (see the module docs for why that is fair).
///
/// A message's bytes count against its sender's budget until it is taken
/// here, so a node that stops calling [`Inbox::recv`] stops reading from
/// its peers rather than growing its memory.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Queued>,
    /// How long the message taken last waited here (see [`Inbox::last_wait`]).
    last_wait: Option<Duration>,
    max_frame: usize,
    me: NodeId,
    live: Arc<LiveConnections>,
    stats: Arc<Stats>,
}

impl Inbox {
    /// The next message or refusal report; `None` once the transport has
    /// shut down and everything queued was taken. Cancel-safe: a `recv`
    /// dropped before it completes takes nothing.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let queued = self.rx.recv().await?;
        Some(self.open(queued))
    }

    /// Like [`Inbox::recv`], without waiting: `None` if nothing is queued.
    pub fn try_recv(&mut self) -> Option<Inbound> {
        let queued = self.rx.try_recv().ok()?;
        Some(self.open(queued))
    }

    /// Whether nothing is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// How long the message taken last waited between the transport
    /// reading it and the node taking it (`None` after a refusal report):
    /// the queueing delay in front of the node's loop.
    pub fn last_wait(&self) -> Option<Duration> {
        self.last_wait
    }

    fn open(&mut self, queued: Queued) -> Inbound {
        self.last_wait = None;
        match queued {
            Queued::Report { report, .. } => report,
            Queued::Frame { peer, addr, conn, frame, arrived, _charge } => {
                self.last_wait = Some(arrived.elapsed());
                let decoded = frame.decode(self.max_frame);
                // The node holds the message now: its bytes leave the budget.
                drop((frame, _charge));
                match decoded {
                    Ok(envelope) => Inbound::Message { from: peer, msg: envelope.msg },
                    Err(e) => {
                        // The stream that carried it is no longer trustworthy.
                        self.live.close_if_current(peer, conn, CLOSE_MALFORMED, b"malformed envelope");
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = self.me.0, peer = peer.0, %addr, "refused: {e}");
                        Inbound::Refused { peer: Some(peer), addr, reason: e.to_string() }
                    }
                }
            }
        }
    }
}

/// The live accepted connection of each member (see the module docs).
#[derive(Debug, Default)]
struct LiveConnections {
    by_peer: Mutex<BTreeMap<NodeId, quinn::Connection>>,
}

impl LiveConnections {
    /// Makes `conn` the member's live connection; returns the one it replaces.
    fn admit(&self, peer: NodeId, conn: &quinn::Connection) -> Option<quinn::Connection> {
        self.lock().insert(peer, conn.clone())
    }

    /// Forgets `conn` if it is still the member's live connection.
    fn retire(&self, peer: NodeId, conn: usize) {
        let mut live = self.lock();
        if live.get(&peer).is_some_and(|c| c.stable_id() == conn) {
            live.remove(&peer);
        }
    }

    fn close_if_current(&self, peer: NodeId, conn: usize, code: u32, reason: &[u8]) {
        if let Some(c) = self.lock().get(&peer).filter(|c| c.stable_id() == conn) {
            c.close(code.into(), reason);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, quinn::Connection>> {
        self.by_peer.lock().unwrap_or_else(|p| p.into_inner())
    }
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

/// QUIC limits for what the protocol needs: an accepted connection carries
/// one unidirectional stream at a time (the peer's ordered message stream)
/// and no bidirectional streams or datagrams, with `window` of receive
/// buffer for the stream and for the connection; a dialled connection
/// carries only what this node sends, so it accepts no streams at all.
fn apply_limits(tls: &mut NodeTls, window: u32) {
    let mut accepted = quinn::TransportConfig::default();
    accepted
        .max_concurrent_uni_streams(1u32.into())
        .max_concurrent_bidi_streams(0u32.into())
        .stream_receive_window(window.into())
        .receive_window(window.into())
        .datagram_receive_buffer_size(None);
    tls.server.transport_config(Arc::new(accepted));
    let mut dialled = quinn::TransportConfig::default();
    dialled
        // Keeps an idle connection open (and proves the peer alive) well
        // inside quinn's 30 s idle timeout.
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(0u32.into())
        .stream_receive_window(0u32.into())
        .receive_window(0u32.into())
        .datagram_receive_buffer_size(None);
    tls.client.transport_config(Arc::new(dialled));
}

/// The node's current TLS configuration and its generation, bumped by each
/// rotation so senders move their traffic to fresh connections.
struct Rotating {
    me: NodeId,
    dir: PathBuf,
    window: u32,
    current: RwLock<NodeTls>,
    generation: AtomicU64,
}

impl Rotating {
    fn client(&self) -> (quinn::ClientConfig, u64) {
        let tls = self.current.read().unwrap_or_else(|p| p.into_inner());
        (tls.client.clone(), self.generation.load(Ordering::SeqCst))
    }

    /// Loads the files with this transport's QUIC limits.
    fn load(&self) -> Result<NodeTls, TlsError> {
        let mut fresh = tls::load(&self.dir, self.me)?;
        apply_limits(&mut fresh, self.window);
        Ok(fresh)
    }

    /// Loads the files; on success new handshakes, in and out, use them.
    fn reload(&self, endpoint: &quinn::Endpoint) -> Result<(), TlsError> {
        let fresh = self.load()?;
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

/// The endpoint on `cfg.listen`, with a stable reset key when the config
/// has a [`ResetSecret`].
fn bind(cfg: &TransportConfig, server: quinn::ServerConfig) -> Result<quinn::Endpoint, TransportError> {
    let Some(secret) = &cfg.reset_secret else {
        return quinn::Endpoint::server(server, cfg.listen)
            .map_err(|source| TransportError::Bind { addr: cfg.listen, source });
    };
    let bind_error = |source| TransportError::Bind { addr: cfg.listen, source };
    let socket = std::net::UdpSocket::bind(cfg.listen).map_err(bind_error)?;
    let runtime = quinn::default_runtime().ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
    quinn::Endpoint::new(secret.endpoint_config(), Some(server), socket, runtime).map_err(bind_error)
}

impl Transport {
    /// Binds, starts accepting, and starts one sender task per peer.
    /// Messages from peers arrive on the returned [`Inbox`].
    pub async fn start(cfg: TransportConfig) -> Result<(Transport, Inbox), TransportError> {
        let min = cfg.max_frame + QUEUE_ENTRY_BYTES;
        let max = u32::MAX as usize;
        if !(min..=max).contains(&cfg.peer_inbound_bytes) {
            return Err(TransportError::Budget { budget: cfg.peer_inbound_bytes, min, max });
        }
        if cfg.receive_window == 0 {
            return Err(TransportError::ZeroWindow);
        }
        let tls = Rotating {
            me: cfg.me,
            dir: cfg.cert_dir.clone(),
            window: cfg.receive_window,
            current: RwLock::new(tls::load(&cfg.cert_dir, cfg.me)?),
            generation: AtomicU64::new(0),
        };
        let node_tls = tls.load()?;
        let endpoint = bind(&cfg, node_tls.server.clone())?;
        *tls.current.write().unwrap_or_else(|p| p.into_inner()) = node_tls;
        let tls = Arc::new(tls);
        let inbound = cfg
            .peers
            .keys()
            .filter(|p| **p != cfg.me)
            .map(|p| (*p, Arc::new(PeerInbound::new(cfg.peer_inbound_bytes))))
            .collect();
        let stats = Arc::new(Stats { inbound, ..Stats::default() });
        let (stop, stopped) = mpsc::channel(1);
        tokio::spawn(watch_certificates(tls.clone(), endpoint.clone(), cfg.cert_poll, stats.clone(), stopped));
        let (queue, rx) = mpsc::unbounded_channel();
        let live = Arc::new(LiveConnections::default());
        let receiving = Arc::new(Receiving {
            cfg: cfg.clone(),
            queue,
            reports: Arc::new(AtomicUsize::new(0)),
            live: live.clone(),
            stats: stats.clone(),
        });
        tokio::spawn(accept_loop(endpoint.clone(), receiving));
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
        let inbox = Inbox { rx, last_wait: None, max_frame: cfg.max_frame, me: cfg.me, live, stats: stats.clone() };
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
        self.endpoint.close(CLOSE_SHUTDOWN.into(), b"shutdown");
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
        let mut pauses = redial_pauses(self.backoff);
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
                    let delay = pauses.next().unwrap_or(self.backoff.1);
                    tracing::debug!(
                        node = self.me.0,
                        peer = self.peer.0,
                        "dial failed: {reason}; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
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
                        // An idle connection that dies (the peer is gone:
                        // keep-alives unanswered) is noticed here, so
                        // `connected_peers` never counts a dead peer.
                        None => tokio::select! {
                            m = queue.recv() => match m {
                                Some(m) => m,
                                None => return,
                            },
                            _ = conn.closed() => break,
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
            if matches!(conn.close_reason(), Some(quinn::ConnectionError::Reset)) {
                self.stats.peer_resets.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    node = self.me.0,
                    peer = self.peer.0,
                    "the peer's new process reset the connection to its previous one: redialling"
                );
            }
            if rotated {
                continue;
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            if opened.elapsed() < SHORT_LIVED {
                tokio::time::sleep(pauses.next().unwrap_or(self.backoff.1)).await;
            } else {
                pauses = redial_pauses(self.backoff);
            }
        }
    }
}

/// Pauses between dials of one peer: exponential from `min`, below `max`,
/// jittered (`backon`), so that four members redialling a restarted peer
/// spread out instead of arriving in step. The `n`-th pause is drawn from
/// `[d, 2d)` with `d = min(min * 2^n, max / 2)`.
fn redial_pauses((min, max): (Duration, Duration)) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max.max(min * 2) / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What the accepting side shares: the config, the inbox queue, the
/// refusal-report count, the live connections and the counters.
struct Receiving {
    cfg: TransportConfig,
    queue: mpsc::UnboundedSender<Queued>,
    reports: Arc<AtomicUsize>,
    live: Arc<LiveConnections>,
    stats: Arc<Stats>,
}

impl Receiving {
    /// Logs and counts a refusal and hands it to the node if fewer than
    /// `refusal_queue` reports are waiting; never waits (see the module docs).
    fn refuse(&self, peer: Option<NodeId>, addr: SocketAddr, reason: String) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = self.cfg.me.0, peer = peer.map(|p| p.0), %addr, "refused: {reason}");
        let cap = self.cfg.refusal_queue;
        if self.reports.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).is_err() {
            self.stats.refusals_unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let slot = ReportSlot(self.reports.clone());
        // A closed inbox (the node has gone) frees the slot with the report.
        let _ = self.queue.send(Queued::Report { report: Inbound::Refused { peer, addr, reason }, _slot: slot });
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, rx: Arc<Receiving>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(accept(incoming, rx.clone()));
    }
}

/// Authenticates one connection, makes it its member's live connection
/// (closing an older one) and reads its streams.
async fn accept(incoming: quinn::Incoming, rx: Arc<Receiving>) {
    let cfg = &rx.cfg;
    let addr = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => return rx.refuse(None, addr, format!("handshake failed: {e}")),
    };
    let peer = match tls::peer_node(&conn) {
        Ok(peer) if peer != cfg.me && cfg.peers.contains_key(&peer) => peer,
        Ok(peer) => {
            conn.close(CLOSE_REFUSED.into(), b"not a peer");
            return rx.refuse(Some(peer), addr, format!("{peer} is not a peer of {}", cfg.me));
        }
        Err(e) => {
            conn.close(CLOSE_REFUSED.into(), b"bad certificate");
            return rx.refuse(None, addr, e.to_string());
        }
    };
    let id = conn.stable_id();
    if let Some(old) = rx.live.admit(peer, &conn) {
        old.close(CLOSE_REPLACED.into(), b"replaced by a newer connection from the same member");
        rx.stats.connections_replaced.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            node = cfg.me.0,
            peer = peer.0,
            %addr,
            old = old.stable_id(),
            new = id,
            "a newer connection from the member replaces its older one"
        );
    }
    while let Ok(stream) = conn.accept_uni().await {
        tokio::spawn(read_stream(rx.clone(), peer, addr, conn.clone(), stream));
    }
    rx.live.retire(peer, id);
}

/// Reads one stream's frames into the inbox, then stops the stream. The
/// stop matters when the connection was closed (replaced by a newer one,
/// or shut down): quinn keeps a closed connection's state until its drain
/// period ends, unread stream data included, unless the stream is stopped.
/// Without it, a member reconnecting in a loop would leave a receive window
/// of data behind per connection for that long.
async fn read_stream(
    rx: Arc<Receiving>,
    peer: NodeId,
    addr: SocketAddr,
    conn: quinn::Connection,
    mut stream: quinn::RecvStream,
) {
    read_frames(&rx, peer, addr, &conn, &mut stream).await;
    // Already stopped, or read to its end: nothing left to discard.
    let _ = stream.stop(0u32.into());
}

/// Each frame is charged to the member's budget once its length is known
/// and before its body is read; while the budget is full this waits,
/// reading nothing.
async fn read_frames(
    rx: &Receiving,
    peer: NodeId,
    addr: SocketAddr,
    conn: &quinn::Connection,
    stream: &mut quinn::RecvStream,
) {
    let cfg = &rx.cfg;
    let Some(budget) = rx.stats.inbound.get(&peer).cloned() else {
        return; // only configured peers get this far
    };
    let mut decoder = FrameDecoder::new(cfg.max_frame);
    let mut charge: Option<Charge> = None;
    let mut expected = 0u64;
    loop {
        if let (None, Some(len)) = (&charge, decoder.declared_len()) {
            charge = match budget.try_reserve(len) {
                Some(c) => Some(c),
                None => {
                    tracing::debug!(
                        node = cfg.me.0,
                        peer = peer.0,
                        queued = budget.queued.load(Ordering::Relaxed),
                        budget = budget.budget,
                        "inbound budget full: reading from the member paused"
                    );
                    tokio::select! {
                        biased;
                        _ = conn.closed() => return,
                        c = budget.reserve(len) => Some(c),
                    }
                }
            };
        }
        let bytes = match stream.read_chunk(decoder.wanted(), true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                if let Err(e) = decoder.finish() {
                    rx.refuse(Some(peer), addr, e.to_string());
                }
                return;
            }
            Err(_) => return, // connection gone: the peer reconnects
        };
        if let Err(e) = decoder.push(&bytes) {
            let _ = stream.stop(1u32.into());
            return rx.refuse(Some(peer), addr, e.to_string());
        }
        // The reader asks for no more than the current frame: at most one completes.
        let Some(frame) = decoder.next_frame() else { continue };
        // Charged at the top of the loop once its length was known, before
        // any of its body was read.
        let charge = charge.take().expect("a frame's body is read only after it was charged");
        let header = match frame.header() {
            Ok(h) => h,
            Err(e) => {
                let _ = stream.stop(1u32.into());
                return rx.refuse(Some(peer), addr, e.to_string());
            }
        };
        let problem = if header.from != peer {
            Some(format!("envelope names sender {} but the certificate is {peer}'s", header.from))
        } else if header.to != cfg.me {
            Some(format!("envelope addressed to {}, not {}", header.to, cfg.me))
        } else if header.seq != expected {
            Some(format!("sequence {} where {expected} was next (replayed or reordered)", header.seq))
        } else {
            None
        };
        expected = expected.max(header.seq.saturating_add(1));
        match problem {
            // Dropped (its charge with it) and reported; the stream goes on.
            Some(reason) => rx.refuse(Some(peer), addr, reason),
            None => {
                let arrived = std::time::Instant::now();
                let queued = Queued::Frame { peer, addr, conn: conn.stable_id(), frame, arrived, _charge: charge };
                if rx.queue.send(queued).is_err() {
                    return; // the node has gone
                }
            }
        }
    }
}

#[cfg(test)]
mod redial_tests {
    use super::*;

    #[test]
    fn redial_pauses_grow_stay_below_the_cap_and_vary() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        let pauses: Vec<Duration> = redial_pauses((min, max)).take(100).collect();
        assert_eq!(pauses.len(), 100, "never gives up on a peer");
        for (n, p) in pauses.iter().enumerate() {
            let base = (min * 2u32.pow(n.min(20) as u32)).min(max / 2);
            assert!(*p >= base.mul_f64(0.999) && *p < base.mul_f64(2.001), "pause {n} = {p:?}, base {base:?}");
        }
        let late: std::collections::BTreeSet<Duration> = pauses[20..].iter().copied().collect();
        assert!(late.len() > 50, "capped pauses are jittered, not all equal: {late:?}");
    }
}
