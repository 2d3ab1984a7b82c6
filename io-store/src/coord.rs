//! Coordination through etcd (v3 API): the cluster's public key, liveness,
//! leader election and restore fencing (DESIGN §4 "Storage").
//!
//! Every key lives under `/mpc/<cluster>/`:
//!
//! | key            | value                          | lifetime                      |
//! |----------------|--------------------------------|-------------------------------|
//! | `public_key`   | the key's bytes, lowercase hex | written once, never replaced  |
//! | `nodes/<id>`   | the node id, decimal           | bound to the node's lease     |
//! | `leader`       | the leader's node id, decimal  | bound to the leader's lease   |
//! | `epochs/<id>`  | the node's epoch, decimal      | only ever raised              |
//! | `anchors/<id>` | `<seq> <hash hex>` of the node's audit head | only ever raised (by seq) |
//!
//! A node's epoch and audit anchor are raised together, in one etcd
//! transaction ([`Coordinator::raise`]), before the database transaction of
//! a step that consumes a presignature commits (`crate::fencing`).
//! Values are text so that `etcdctl get --prefix /mpc/` is readable by an
//! operator. Nothing stored here is secret.
//!
//! # Leadership and its safety
//!
//! The view a node publishes ([`CoordView`]) feeds the core's
//! `Input::Leadership { leader }`, and leader-only work must never run on two
//! nodes at once. The election is therefore tied to an etcd lease, and each
//! node steps down *on its own clock* before its lease could have expired on
//! the server: etcd renews a lease to its full TTL when it receives a
//! keep-alive, so a keep-alive *sent* at local time `t` and answered proves the
//! lease lives until at least `t + ttl` (server time runs no faster than ours
//! by more than a tiny drift). The node trusts its leadership only until
//! `t + ttl - margin` (margin = a quarter of the TTL, see [`safety_margin`]),
//! measured with the monotonic [`tokio::time::Instant`]. Another node can only
//! take over after the server deleted the `leader` key, i.e. after `t + ttl`,
//! so the old leader reports `i_lead: false` first. A node also reports no
//! leader at all as soon as a round of etcd requests fails, because it can no
//! longer tell who leads.
//!
//! A node may also be told it is not fit to lead ([`LeadershipGate`]): the
//! node process closes the gate while it reaches too few members to run a
//! presigning session. A closed gate never claims the key and gives up a
//! key it holds at once (deleting it, so a member that does reach enough
//! peers claims it through its watch), like Raft's CheckQuorum: a lease
//! holder on the small side of a partition that etcd does not split would
//! otherwise keep the lease, and with it the refill of the pool, while the
//! side that can sign runs out of presignatures for its members.
//!
//! What this cannot cover: a process frozen (e.g. a paused VM) between reading
//! the view and acting on it. The core's own checks (signed votes, consumed
//! presignatures persisted before release) are what keep such a node harmless.
//!
//! # Transport security and errors
//!
//! [`CoordConfig::tls`] turns on TLS (`https://` endpoints, a CA of its own,
//! optionally a client certificate) and [`CoordConfig::auth`] etcd's user
//! login; neither secret is ever formatted. Errors are told apart by the
//! etcd client's error type and the gRPC status code etcd answers with
//! (`tonic::Code`), never by their text; retries after a failed round wait
//! a jittered, growing pause ([`crate::backoff`]).

use mpc_core::error_text::with_sources;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::audit::AuditAnchor;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse, WatchStream,
};
use mpc_core::NodeId;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tonic::Code;
use tracing::{debug, error, info, warn};
use zeroize::Zeroizing;

/// How many times [`Coordinator::advance_epoch`] retries a lost
/// compare-and-set before giving up. Only the node itself writes its epoch, so
/// contention is rare; the bound just keeps a misbehaving peer from spinning us
/// forever.
const MAX_CAS_ATTEMPTS: u32 = 64;

/// Where and how to reach etcd, and who this node is.
#[derive(Clone, Debug)]
pub struct CoordConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The cluster's name: the keys live under `/mpc/<cluster>/`.
    pub cluster: String,
    /// This node's number (1..=n).
    pub node: NodeId,
    /// The lease TTL in seconds: how long after its last keep-alive a silent
    /// node still counts as live (and may still hold the leadership). etcd's
    /// minimum is about 2 s; it grants more if asked for less.
    pub lease_ttl_secs: i64,
    /// Bound on establishing a connection (and on the probe in
    /// [`Coordinator::connect`]).
    pub dial_timeout: Duration,
    /// Bound on every single etcd request; an unanswered request counts as
    /// etcd being unreachable.
    pub request_timeout: Duration,
    /// TLS to etcd: required with `https://` endpoints, refused with plain
    /// ones.
    pub tls: Option<EtcdTls>,
    /// etcd's own authentication (`etcdctl auth enable`): the client logs
    /// in as this user and sends its token with every request.
    pub auth: Option<EtcdAuth>,
}

/// How the client verifies etcd, and proves itself to it.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM: the CA certificate(s) etcd's server certificates chain to. Only
    /// these are trusted (no system roots).
    pub ca_pem: Vec<u8>,
    /// For etcd's `--client-cert-auth`: this node's certificate and key.
    pub client: Option<ClientIdentity>,
    /// The name etcd's certificate must carry, when it is not the
    /// endpoints' host (e.g. endpoints given as IP addresses).
    pub server_name: Option<String>,
}

/// A client certificate and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Zeroizing<Vec<u8>>,
}

/// etcd user and password. The password is never formatted.
#[derive(Clone)]
pub struct EtcdAuth {
    pub user: String,
    pub password: Zeroizing<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("client", &self.client)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAuth").field("user", &self.user).field("password", &format_args!("<redacted>")).finish()
    }
}

/// Whether an endpoint asks for TLS. etcd-client also takes `host:port`
/// without a scheme; that is plain unless TLS is configured, so this module
/// insists on a scheme whenever TLS is in play.
fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

impl CoordConfig {
    /// A configuration with production defaults: 10 s lease, 5 s dial and
    /// 3 s request timeouts, plain text and no login.
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>, node: NodeId) -> Self {
        CoordConfig {
            endpoints,
            cluster: cluster.into(),
            node,
            lease_ttl_secs: 10,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            tls: None,
            auth: None,
        }
    }

    fn validate(&self) -> Result<(), CoordError> {
        let bad = |why: String| Err(CoordError::Config(why));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoint given".into());
        }
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return bad(format!("cluster name {:?} must be non-empty and contain no '/'", self.cluster));
        }
        if self.node.0 == 0 {
            return bad("node ids start at 1".into());
        }
        if self.lease_ttl_secs < 1 {
            return bad(format!("lease TTL must be at least 1 s, got {}", self.lease_ttl_secs));
        }
        if self.dial_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("dial and request timeouts must be non-zero".into());
        }
        match &self.tls {
            Some(tls) => {
                if let Some(plain) = self.endpoints.iter().find(|e| !is_https(e)) {
                    return bad(format!("TLS to etcd is configured, so endpoint {plain:?} must be https://"));
                }
                if tls.ca_pem.is_empty() {
                    return bad("TLS to etcd needs the CA certificate that signed etcd's certificates".into());
                }
                if tls.server_name.as_ref().is_some_and(|n| n.is_empty()) {
                    return bad("the TLS server name for etcd is empty".into());
                }
            }
            None => {
                if let Some(tls_endpoint) = self.endpoints.iter().find(|e| is_https(e)) {
                    return bad(format!(
                        "endpoint {tls_endpoint:?} is https:// but no CA certificate is configured to verify etcd with"
                    ));
                }
            }
        }
        if let Some(auth) = &self.auth {
            if auth.user.is_empty() || auth.password.is_empty() {
                return bad("etcd authentication needs a non-empty user and password".into());
            }
        }
        Ok(())
    }

    /// The client options: timeouts, TLS and credentials.
    fn connect_options(&self) -> ConnectOptions {
        // require_leader: an etcd member cut off from its cluster's leader
        // refuses our requests at once (UNAVAILABLE) instead of serving
        // stale watches, so a partition shows up as "unreachable".
        let mut opts = ConnectOptions::new().with_connect_timeout(self.dial_timeout).with_require_leader(true);
        if let Some(tls) = &self.tls {
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some(id) = &tls.client {
                t = t.identity(Identity::from_pem(&id.cert_pem, &*id.key_pem));
            }
            if let Some(name) = &tls.server_name {
                t = t.domain_name(name.clone());
            }
            opts = opts.with_tls(t);
        }
        if let Some(auth) = &self.auth {
            opts = opts.with_user(auth.user.clone(), auth.password.as_str());
        }
        opts
    }

    /// What the connection is secured with, for log lines and error hints
    /// (no secrets).
    fn security(&self) -> String {
        let tls = match &self.tls {
            Some(EtcdTls { client: Some(_), .. }) => "TLS with a client certificate",
            Some(_) => "TLS",
            None => "plain text",
        };
        match &self.auth {
            Some(a) => format!("{tls}, as etcd user {:?}", a.user),
            None => tls.to_string(),
        }
    }
}

/// Everything that can go wrong talking to etcd, each with a message an
/// operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The configuration is unusable.
    #[error("invalid coordination config: {0}")]
    Config(String),
    /// etcd did not answer (connection refused, timed out, unavailable).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// Another public key is already registered for this cluster. Never
    /// overwritten: two keys for one cluster means two DKGs, and funds sent
    /// to the wrong one would be lost.
    #[error(
        "public key conflict in cluster {cluster:?}: etcd already holds public key {existing_hex}, \
         refusing to replace it with {offered_hex}"
    )]
    PublicKeyConflict { cluster: String, existing_hex: String, offered_hex: String },
    /// A key under `/mpc/<cluster>/` holds something this module never writes.
    #[error("etcd key {key} holds an unreadable value: {reason}")]
    Corrupt { key: String, reason: String },
    /// etcd refused our credentials (gRPC UNAUTHENTICATED or
    /// PERMISSION_DENIED): the user, password or its roles need fixing.
    #[error("etcd denied the request: {0}")]
    Denied(String),
    /// etcd says the thing asked about does not exist (gRPC NOT_FOUND, e.g.
    /// an expired lease).
    #[error("not found in etcd: {0}")]
    NotFound(String),
    /// Repeatedly lost a compare-and-set race.
    #[error("gave up on {key} after losing {attempts} compare-and-set races in a row")]
    Contention { key: String, attempts: u32 },
    /// [`Coordinator::start`] was called twice: one node runs one lease.
    #[error("the coordination task of node {0} is already running")]
    AlreadyStarted(NodeId),
    /// etcd answered with an error.
    #[error("etcd error: {0}")]
    Etcd(String),
}

/// Outcome of [`Coordinator::publish_public_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// This call stored the key.
    Created,
    /// The very same key was already stored (e.g. by another node).
    AlreadyThere,
}

/// Whether this node can rely on the coordination layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Leader-only work is paused; `reason` says why, for the operator.
    Degraded {
        reason: String,
    },
}

/// What the node knows about coordination right now. `leader` is what the
/// core receives as `Input::Leadership { leader }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordView {
    /// The node that leads, as far as this node can vouch for it: `None`
    /// while etcd is unreachable, while this node has no valid lease, or
    /// while nobody holds the `leader` key.
    pub leader: Option<NodeId>,
    /// This node holds the `leader` key under a lease it knows to be valid.
    pub i_lead: bool,
    /// The lease term last seen: the create revision of the `leader` key,
    /// which grows with every new holder (0 before any was read). The core
    /// fences presigning sessions by it.
    pub term: u64,
    /// The last round of etcd requests got answers.
    pub etcd_reachable: bool,
    pub health: Health,
}

impl CoordView {
    /// The core's leadership input for this view: the shell hands it to
    /// `Node::handle` whenever the view changes.
    pub fn leadership_input(&self) -> mpc_core::Input {
        mpc_core::Input::Leadership { leader: self.leader, term: self.term }
    }
}

/// The keys of one cluster.
#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(cluster: &str) -> Self {
        Keys { prefix: format!("/mpc/{cluster}/") }
    }
    fn public_key(&self) -> String {
        format!("{}public_key", self.prefix)
    }
    fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.prefix)
    }
    fn node(&self, node: NodeId) -> String {
        format!("{}nodes/{}", self.prefix, node.0)
    }
    fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    fn epoch(&self, node: NodeId) -> String {
        format!("{}epochs/{}", self.prefix, node.0)
    }
    fn anchor(&self, node: NodeId) -> String {
        format!("{}anchors/{}", self.prefix, node.0)
    }
}

/// This node's restore-fencing keys as read from etcd: its epoch and its
/// audit anchor, with the revisions a following [`Coordinator::raise`] is
/// conditioned on (so that a raise computed from a stale read is refused,
/// not applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceState {
    /// `epochs/<id>`; `None` when the key does not exist.
    pub epoch: Option<u64>,
    /// `anchors/<id>`; `None` when the key does not exist.
    pub anchor: Option<AuditAnchor>,
    /// `mod_revision` of each key when read, 0 when absent.
    epoch_revision: i64,
    anchor_revision: i64,
}

/// The margin by which a node steps down before its lease could expire on
/// the server: a quarter of the TTL. It absorbs clock-rate differences and
/// the time between our deadline firing and the core seeing the view; with
/// keep-alives every quarter TTL it still leaves two retries before stepping
/// down.
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 4
}

/// A connection to etcd for one node of one cluster.
pub struct Coordinator {
    client: Client,
    cfg: CoordConfig,
    keys: Keys,
    started: Arc<AtomicBool>,
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("endpoints", &self.cfg.endpoints)
            .field("cluster", &self.cfg.cluster)
            .field("node", &self.cfg.node)
            .finish()
    }
}

/// Runs one etcd request with a deadline, turning transport failures and
/// silence into [`CoordError::Unreachable`]. Every request goes through here:
/// the client library's own connection handling may otherwise wait for an
/// endpoint indefinitely.
async fn request<T>(
    limit: Duration,
    what: &str,
    endpoints: &[String],
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CoordError> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e, what, endpoints)),
        Err(_) => Err(CoordError::Unreachable(format!(
            "{what}: no answer from etcd at {} within {limit:?}",
            endpoints.join(",")
        ))),
    }
}

/// What an etcd client error means here, decided by its type and gRPC code,
/// never by its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The request did not get through (or its answer did not come back).
    Unreachable,
    /// etcd refused the credentials.
    Denied,
    /// etcd answered NOT_FOUND.
    NotFound,
    /// etcd answered with another error.
    Refused,
}

fn cause(e: &etcd_client::Error) -> Cause {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => Cause::Unreachable,
        E::GRpcStatus(s) => match s.code() {
            // UNKNOWN is what a connection lost mid-stream surfaces as;
            // the others say the request did not get through, as opposed to
            // etcd refusing it.
            Code::Cancelled | Code::Unknown | Code::DeadlineExceeded | Code::Unavailable => Cause::Unreachable,
            Code::Unauthenticated | Code::PermissionDenied => Cause::Denied,
            Code::NotFound => Cause::NotFound,
            _ => Cause::Refused,
        },
        // The client's request stream (its local channel) closed under it:
        // the connection is gone. (A keep-alive stream opened for a lease
        // etcd no longer has is turned into NOT_FOUND by `lease_not_found`
        // before it gets here.)
        E::LeaseKeepAliveError(_) | E::WatchError(_) => Cause::Unreachable,
        _ => Cause::Refused,
    }
}

fn classify(e: etcd_client::Error, what: &str, endpoints: &[String]) -> CoordError {
    match cause(&e) {
        Cause::Unreachable => CoordError::Unreachable(format!("{what}: etcd at {}: {e}", endpoints.join(","))),
        Cause::Denied => CoordError::Denied(format!("{what}: {e}")),
        Cause::NotFound => CoordError::NotFound(format!("{what}: {e}")),
        Cause::Refused => CoordError::Etcd(format!("{what}: {e}")),
    }
}

/// etcd answers a keep-alive for a lease it does not have with TTL 0, and
/// etcd-client turns that answer into a `LeaseKeepAliveError` when it opens
/// the keep-alive stream; nothing else raises that error there (the request
/// goes into a channel the call itself just made). So, for the opening call
/// only, it is etcd's "lease not found", given here the gRPC code etcd uses
/// for it everywhere else (NOT_FOUND).
fn lease_not_found(e: etcd_client::Error) -> etcd_client::Error {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => etcd_client::Error::GRpcStatus(tonic::Status::not_found(m)),
        other => other,
    }
}

/// What to check when etcd cannot be reached over TLS.
const TLS_HINT: &str =
    "does etcd serve TLS at these endpoints, with a certificate from the configured CA for that name?";

/// The kvs of the first `Get` among a transaction's responses.
fn txn_get_kvs(resp: &etcd_client::TxnResponse) -> Vec<KeyValue> {
    resp.op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        })
        .unwrap_or_default()
}

fn parse_decimal<T: std::str::FromStr>(key: &str, value: &[u8]) -> Result<T, CoordError> {
    std::str::from_utf8(value).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| CoordError::Corrupt {
        key: key.to_string(),
        reason: format!("expected a decimal number, found {:?}", String::from_utf8_lossy(value)),
    })
}

fn parse_anchor(key: &str, value: &[u8]) -> Result<AuditAnchor, CoordError> {
    std::str::from_utf8(value)
        .map_err(|_| "not UTF-8".to_string())
        .and_then(str::parse)
        .map_err(|reason| CoordError::Corrupt { key: key.to_string(), reason })
}

impl Coordinator {
    /// Connects and checks that etcd answers: [`CoordError::Unreachable`]
    /// (naming the endpoints) if it does not within `dial_timeout`, so a
    /// misconfigured node fails at start-up rather than running without
    /// coordination.
    pub async fn connect(cfg: CoordConfig) -> Result<Coordinator, CoordError> {
        cfg.validate()?;
        if cfg.auth.is_some() && cfg.tls.is_none() {
            warn!(node = cfg.node.0, "the etcd password is sent without TLS: configure TLS to etcd");
        }
        let security = cfg.security();
        // With a user configured, connecting logs in (etcd's Authenticate),
        // so a refusal here is about the credentials.
        let connecting = Client::connect(&cfg.endpoints, Some(cfg.connect_options()));
        let client = match timeout(cfg.dial_timeout, connecting).await {
            Ok(Ok(client)) => client,
            // The channel connects lazily, and a call's transport failure
            // comes back as a gRPC status: these come from building the
            // endpoints (their URLs, the TLS settings) before any byte is
            // sent, so they are configuration errors.
            Ok(Err(
                e @ (etcd_client::Error::TransportError(_)
                | etcd_client::Error::InvalidArgs(_)
                | etcd_client::Error::InvalidUri(_)),
            )) => {
                // etcd-client's error has no `source`: reach into it.
                let why = match &e {
                    etcd_client::Error::TransportError(t) => with_sources(t),
                    other => other.to_string(),
                };
                return Err(CoordError::Config(format!("etcd endpoints or TLS settings ({security}) unusable: {why}")));
            }
            Ok(Err(e)) => {
                return Err(match classify(e, "connecting", &cfg.endpoints) {
                    CoordError::Etcd(m) if cfg.auth.is_some() => CoordError::Denied(format!(
                        "{m} (connecting with {security}: check the user and password, and that etcd has \
                             authentication enabled)"
                    )),
                    CoordError::Etcd(m) => CoordError::Config(format!("bad etcd endpoint: {m}")),
                    CoordError::Unreachable(m) if cfg.tls.is_some() => {
                        CoordError::Unreachable(format!("{m} (connecting with {security}: {TLS_HINT})"))
                    }
                    other => other,
                })
            }
            Err(_) => {
                return Err(CoordError::Unreachable(format!(
                    "connecting: no answer from etcd at {} within {:?} ({security})",
                    cfg.endpoints.join(","),
                    cfg.dial_timeout
                )))
            }
        };
        let keys = Keys::new(&cfg.cluster);
        let mut probe = client.clone();
        request(
            cfg.dial_timeout,
            "probing",
            &cfg.endpoints,
            probe.get(keys.public_key(), Some(GetOptions::new().with_count_only())),
        )
        .await
        .map_err(|e| match e {
            CoordError::Unreachable(m) if cfg.tls.is_some() => CoordError::Unreachable(format!(
                "cannot reach etcd for cluster {:?} (node {}) with {security}: {m} ({TLS_HINT})",
                cfg.cluster, cfg.node
            )),
            CoordError::Unreachable(m) => CoordError::Unreachable(format!(
                "cannot reach etcd for cluster {:?} (node {}): {m}",
                cfg.cluster, cfg.node
            )),
            other => other,
        })?;
        info!(
            cluster = %cfg.cluster, node = cfg.node.0, endpoints = ?cfg.endpoints, security = %security,
            "connected to etcd"
        );
        Ok(Coordinator { client, cfg, keys, started: Arc::new(AtomicBool::new(false)) })
    }

    /// The configuration this coordinator runs with.
    pub fn config(&self) -> &CoordConfig {
        &self.cfg
    }

    async fn req<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CoordError> {
        request(self.cfg.request_timeout, what, &self.cfg.endpoints, fut).await
    }

    /// Publishes the cluster's public key, compare-and-set: the key is
    /// created only if absent (one transaction, `create_revision == 0`), so
    /// concurrent DKG finishers cannot overwrite each other. The same bytes
    /// already stored is fine ([`Published::AlreadyThere`]); different bytes
    /// are refused loudly with [`CoordError::PublicKeyConflict`].
    pub async fn publish_public_key(&self, key: &[u8]) -> Result<Published, CoordError> {
        if key.is_empty() {
            return Err(CoordError::Config("refusing to publish an empty public key".into()));
        }
        let k = self.keys.public_key();
        let offered_hex = hex::encode(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), offered_hex.clone(), None)])
            .or_else([TxnOp::get(k.clone(), None)]);
        let mut c = self.client.clone();
        let resp = self.req("publishing the public key", c.txn(txn)).await?;
        if resp.succeeded() {
            info!(cluster = %self.cfg.cluster, public_key = %offered_hex, "published the cluster's public key");
            return Ok(Published::Created);
        }
        let kvs = txn_get_kvs(&resp);
        let Some(kv) = kvs.first() else {
            return Err(CoordError::Etcd(format!(
                "{k}: the create-if-absent transaction failed yet the key is absent"
            )));
        };
        let existing = self.decode_public_key(&k, kv.value())?;
        if existing == key {
            debug!(cluster = %self.cfg.cluster, "the same public key was already published");
            return Ok(Published::AlreadyThere);
        }
        let err = CoordError::PublicKeyConflict {
            cluster: self.cfg.cluster.clone(),
            existing_hex: hex::encode(&existing),
            offered_hex,
        };
        error!(node = self.cfg.node.0, "{err}");
        Err(err)
    }

    fn decode_public_key(&self, k: &str, stored: &[u8]) -> Result<Vec<u8>, CoordError> {
        hex::decode(stored)
            .map_err(|e| CoordError::Corrupt { key: k.to_string(), reason: format!("expected hex: {e}") })
    }

    /// The cluster's public key, if published.
    pub async fn public_key(&self) -> Result<Option<Vec<u8>>, CoordError> {
        let k = self.keys.public_key();
        let mut c = self.client.clone();
        let resp = self.req("reading the public key", c.get(k.clone(), None)).await?;
        resp.kvs().first().map(|kv| self.decode_public_key(&k, kv.value())).transpose()
    }

    /// Restore fencing: the epoch etcd records for `node`, if any.
    pub async fn epoch(&self, node: NodeId) -> Result<Option<u64>, CoordError> {
        let k = self.keys.epoch(node);
        let mut c = self.client.clone();
        let resp = self.req("reading an epoch", c.get(k.clone(), None)).await?;
        resp.kvs().first().map(|kv| parse_decimal(&k, kv.value())).transpose()
    }

    /// Raises this node's epoch in etcd to at least `epoch` and returns the
    /// value now stored (which is larger if etcd already had a larger one).
    /// Never lowers it: each write is a transaction conditioned on the key
    /// being unchanged since it was read (`mod_revision`, or absence), retried
    /// when another writer got there first.
    pub async fn advance_epoch(&self, epoch: u64) -> Result<u64, CoordError> {
        let k = self.keys.epoch(self.cfg.node);
        let mut c = self.client.clone();
        // Between lost races: a short jittered pause, so two writers that
        // keep colliding fall out of step.
        let mut pauses = crate::backoff::jittered(Duration::from_millis(5), Duration::from_millis(500));
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(pauses.next().unwrap_or(Duration::from_millis(500))).await;
            }
            let resp = self.req("reading an epoch", c.get(k.clone(), None)).await?;
            let guard = match resp.kvs().first() {
                None => Compare::create_revision(k.clone(), CompareOp::Equal, 0),
                Some(kv) => {
                    let stored: u64 = parse_decimal(&k, kv.value())?;
                    if stored >= epoch {
                        return Ok(stored);
                    }
                    Compare::mod_revision(k.clone(), CompareOp::Equal, kv.mod_revision())
                }
            };
            let txn = Txn::new().when([guard]).and_then([TxnOp::put(k.clone(), epoch.to_string(), None)]);
            if self.req("advancing an epoch", c.txn(txn)).await?.succeeded() {
                info!(cluster = %self.cfg.cluster, node = self.cfg.node.0, epoch, "advanced the restore-fencing epoch");
                return Ok(epoch);
            }
            debug!(key = %k, "epoch changed under us; retrying");
        }
        Err(CoordError::Contention { key: k, attempts: MAX_CAS_ATTEMPTS })
    }

    /// The etcd key holding `node`'s epoch (for messages an operator acts on).
    pub fn epoch_key(&self, node: NodeId) -> String {
        self.keys.epoch(node)
    }

    /// The etcd key holding `node`'s audit anchor.
    pub fn anchor_key(&self, node: NodeId) -> String {
        self.keys.anchor(node)
    }

    /// The audit anchor etcd records for `node`, if any: what `audit-verify`
    /// checks a database's chain against.
    pub async fn anchor(&self, node: NodeId) -> Result<Option<AuditAnchor>, CoordError> {
        let k = self.keys.anchor(node);
        let mut c = self.client.clone();
        let resp = self.req("reading an audit anchor", c.get(k.clone(), None)).await?;
        resp.kvs().first().map(|kv| parse_anchor(&k, kv.value())).transpose()
    }

    /// This node's epoch and audit anchor, read together (one request).
    pub async fn fence_state(&self) -> Result<FenceState, CoordError> {
        let (ek, ak) = (self.keys.epoch(self.cfg.node), self.keys.anchor(self.cfg.node));
        let txn = Txn::new().and_then([TxnOp::get(ek.clone(), None), TxnOp::get(ak.clone(), None)]);
        let mut c = self.client.clone();
        let resp = self.req("reading the fencing epoch and audit anchor", c.txn(txn)).await?;
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().cloned()),
            _ => None,
        });
        let (epoch_kv, anchor_kv) = (gets.next().flatten(), gets.next().flatten());
        Ok(FenceState {
            epoch: epoch_kv.as_ref().map(|kv| parse_decimal(&ek, kv.value())).transpose()?,
            anchor: anchor_kv.as_ref().map(|kv| parse_anchor(&ak, kv.value())).transpose()?,
            epoch_revision: epoch_kv.map_or(0, |kv| kv.mod_revision()),
            anchor_revision: anchor_kv.map_or(0, |kv| kv.mod_revision()),
        })
    }

    /// Raises this node's epoch to `epoch` and its audit anchor to `anchor`
    /// in one etcd transaction, conditioned on both keys being exactly as
    /// `seen` read them. Neither ever goes down: a value not above the one
    /// `seen` holds (by epoch, by anchored sequence number) is left out.
    /// `Ok(false)`: a key changed since `seen` and nothing was written; read
    /// again and decide again. `Ok(true)`: etcd now holds what was asked.
    ///
    /// An error leaves the outcome unknown (the request may have been
    /// applied and only its answer lost): the caller must act as if the
    /// raise had happened, which for restore fencing is the safe side.
    pub async fn raise(
        &self,
        seen: &FenceState,
        epoch: Option<u64>,
        anchor: Option<AuditAnchor>,
    ) -> Result<bool, CoordError> {
        let (ek, ak) = (self.keys.epoch(self.cfg.node), self.keys.anchor(self.cfg.node));
        let epoch = epoch.filter(|e| seen.epoch.is_none_or(|s| *e > s));
        let anchor = anchor.filter(|a| seen.anchor.is_none_or(|s| a.seq > s.seq));
        if epoch.is_none() && anchor.is_none() {
            return Ok(true);
        }
        let unchanged = |key: &str, revision: i64| match revision {
            0 => Compare::create_revision(key.to_string(), CompareOp::Equal, 0),
            r => Compare::mod_revision(key.to_string(), CompareOp::Equal, r),
        };
        let mut puts = Vec::new();
        if let Some(e) = epoch {
            puts.push(TxnOp::put(ek.clone(), e.to_string(), None));
        }
        if let Some(a) = anchor {
            puts.push(TxnOp::put(ak.clone(), a.to_string(), None));
        }
        let txn =
            Txn::new().when([unchanged(&ek, seen.epoch_revision), unchanged(&ak, seen.anchor_revision)]).and_then(puts);
        let mut c = self.client.clone();
        let won = self.req("raising the fencing epoch and audit anchor", c.txn(txn)).await?.succeeded();
        if won {
            info!(
                cluster = %self.cfg.cluster, node = self.cfg.node.0, epoch = ?epoch,
                anchor = ?anchor.map(|a| a.seq), "raised the restore-fencing epoch and audit anchor"
            );
        } else {
            debug!(node = self.cfg.node.0, "fencing keys changed since read; not raised");
        }
        Ok(won)
    }

    /// The nodes whose liveness key exists, i.e. whose lease has not expired,
    /// in ascending order.
    pub async fn live_nodes(&self) -> Result<Vec<NodeId>, CoordError> {
        let prefix = self.keys.nodes_prefix();
        let mut c = self.client.clone();
        let resp = self
            .req("listing live nodes", c.get(prefix.clone(), Some(GetOptions::new().with_prefix().with_keys_only())))
            .await?;
        let mut nodes = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let id = &key[prefix.len()..];
            nodes.push(NodeId(parse_decimal::<u16>(&key, id.as_bytes())?));
        }
        nodes.sort_unstable();
        nodes.dedup();
        Ok(nodes)
    }

    /// Starts the background task that keeps this node registered as live,
    /// campaigns for the leadership and observes who leads, publishing a
    /// [`CoordView`] on every change. Must be called inside a tokio runtime;
    /// one task per coordinator at a time ([`CoordError::AlreadyStarted`]
    /// otherwise; it may be started again after [`CoordHandle::shutdown`]).
    ///
    /// # The election
    ///
    /// Hand-rolled on the single key `leader` rather than etcd's Election
    /// API: a node claims it with one transaction "create `leader` = my id,
    /// bound to my lease, if it does not exist" (`create_revision == 0`);
    /// otherwise the same transaction returns the current holder. The key
    /// disappears when its holder's lease expires or is revoked, which a
    /// watch on the key reports at once, and every follower retries the
    /// claim. A node leads exactly while the key holds its id *and its
    /// current lease id*, so a key left over from an earlier lease of the
    /// same node (a restart) is never mistaken for its own leadership; it
    /// simply expires. Compared with the Election API this keeps the key
    /// layout of DESIGN §4, needs no blocking `Campaign` call to cancel on
    /// network loss, and observing is a plain get or watch. There is no
    /// queue of candidates, which is not needed: any node may lead.
    ///
    /// # Liveness
    ///
    /// The task grants a lease of `lease_ttl_secs`, puts `nodes/<id>` bound
    /// to it and sends a keep-alive every quarter TTL. If the lease is lost
    /// (etcd says it expired, or the local deadline passed while etcd was
    /// unreachable) it revokes the old one (best effort), grants a new one,
    /// re-registers and campaigns again.
    pub fn start(&self) -> Result<CoordHandle, CoordError> {
        self.start_gated(true)
    }

    /// [`Coordinator::start`] with the leadership gate (see
    /// [`CoordHandle::gate`]) open or closed from the first round on.
    pub fn start_gated(&self, fit_to_lead: bool) -> Result<CoordHandle, CoordError> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(CoordError::AlreadyStarted(self.cfg.node));
        }
        let initial = CoordView {
            leader: None,
            i_lead: false,
            term: 0,
            etcd_reachable: true,
            health: Health::Degraded { reason: STARTING.to_string() },
        };
        let (tx, rx) = watch::channel(initial);
        let publisher = Arc::new(Publisher { node: self.cfg.node, tx, facts: Mutex::new(Facts::default()) });
        let freeze = Arc::new(AtomicBool::new(false));
        let gate = LeadershipGate::new(fit_to_lead);
        let (stop_tx, stop_rx) = oneshot::channel();
        let ttl = Duration::from_secs(self.cfg.lease_ttl_secs as u64);
        let runner = Runner {
            client: self.client.clone(),
            keys: self.keys.clone(),
            cfg: self.cfg.clone(),
            publisher,
            freeze: freeze.clone(),
            gate: gate.clone(),
            lease: None,
            ttl,
            watch: None,
            stale_leases: Vec::new(),
            started: self.started.clone(),
            retry: None,
        };
        let task = tokio::spawn(runner.run(stop_rx));
        Ok(CoordHandle { view: rx, stop: Some(stop_tx), task: Some(task), freeze, gate })
    }
}

/// Whether this node may hold the leadership (see the module docs): open,
/// it campaigns as usual; closed, it never claims the `leader` key and
/// deletes the key if it holds it. Cheap to clone; every clone is the same
/// gate. Changing it wakes the coordination task for a round at once.
#[derive(Clone, Debug)]
pub struct LeadershipGate {
    inner: Arc<GateState>,
}

#[derive(Debug)]
struct GateState {
    open: AtomicBool,
    changed: Notify,
}

impl LeadershipGate {
    fn new(open: bool) -> Self {
        LeadershipGate { inner: Arc::new(GateState { open: AtomicBool::new(open), changed: Notify::new() }) }
    }

    /// Opens or closes the gate; a change wakes the coordination task.
    pub fn set(&self, open: bool) {
        if self.inner.open.swap(open, Ordering::SeqCst) != open {
            self.inner.changed.notify_one();
        }
    }

    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::SeqCst)
    }
}

const PAUSED: &str = "leader-only work paused, approved signing continues";
const STARTING: &str = "starting: not yet registered with etcd; leader-only work paused, approved signing continues";

/// The running coordination task of one node. Dropping it stops the task
/// the same way as [`CoordHandle::shutdown`] (without waiting for it).
#[derive(Debug)]
pub struct CoordHandle {
    view: watch::Receiver<CoordView>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    freeze: Arc<AtomicBool>,
    gate: LeadershipGate,
}

impl CoordHandle {
    /// The gate through which the node says whether it is fit to lead.
    pub fn gate(&self) -> LeadershipGate {
        self.gate.clone()
    }

    /// A receiver of the view; it is marked changed whenever the view does.
    pub fn view(&self) -> watch::Receiver<CoordView> {
        self.view.clone()
    }

    /// The view as of now.
    pub fn current(&self) -> CoordView {
        self.view.borrow().clone()
    }

    /// Steps down (the view reports no leader), revokes the lease — which
    /// deletes `nodes/<id>` and, if held, `leader`, so another node can take
    /// over at once instead of after a TTL — and waits for the task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!("the coordination task ended abnormally: {e}");
            }
        }
    }

    /// Fault injection for tests: simulates a hung or partitioned leader.
    /// The task stops sending keep-alives, granting leases and campaigning
    /// (it still reads who leads), without resigning or revoking anything,
    /// so its lease runs out on the server as if the process had hung.
    #[doc(hidden)]
    pub fn freeze_lease_for_tests(&self) {
        warn!("fault injection: keep-alives stopped");
        self.freeze.store(true, Ordering::SeqCst);
    }
}

impl Drop for CoordHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which steps down and revokes.
        self.stop.take();
    }
}

/// What the background task has learnt; the view is derived from it *and
/// the current time*, so that leadership lapses exactly at the deadline.
#[derive(Default)]
struct Facts {
    /// Set when a round of requests failed, cleared when one succeeds.
    failure: Option<Failure>,
    /// Local deadline until which our lease is known to be valid.
    lease_valid_until: Option<Instant>,
    /// The `leader` key held our id under our current lease when last read.
    holds_leader: bool,
    /// The id in the `leader` key when last read.
    observed_leader: Option<NodeId>,
    /// The `leader` key's create revision when last read (see
    /// [`CoordView::term`]); kept when the key is gone.
    observed_term: u64,
    /// Shut down: never lead again.
    stopped: bool,
}

struct Failure {
    since: SystemTime,
    message: String,
    unreachable: bool,
}

impl Facts {
    fn view(&self, me: NodeId, now: Instant) -> CoordView {
        let term = self.observed_term;
        let paused = |reachable: bool, reason: String| CoordView {
            leader: None,
            i_lead: false,
            term,
            etcd_reachable: reachable,
            health: Health::Degraded { reason },
        };
        if self.stopped {
            return paused(
                self.failure.as_ref().is_none_or(|f| !f.unreachable),
                format!("coordination stopped: {PAUSED}"),
            );
        }
        if let Some(f) = &self.failure {
            let what = if f.unreachable { "etcd unreachable" } else { "etcd requests failing" };
            return paused(!f.unreachable, format!("{what} since {} ({}): {PAUSED}", format_utc(f.since), f.message));
        }
        if self.lease_valid_until.is_none_or(|d| now >= d) {
            return paused(
                true,
                format!("no valid etcd lease (not yet registered, or lost and re-registering): {PAUSED}"),
            );
        }
        let i_lead = self.holds_leader;
        let leader = if i_lead {
            Some(me)
        } else {
            // Our own id under an older lease of ours is not a leadership we
            // can vouch for: it will expire.
            self.observed_leader.filter(|&l| l != me)
        };
        CoordView { leader, i_lead, term, etcd_reachable: true, health: Health::Ok }
    }
}

/// Derives and publishes the view. Facts and publication share one lock, so
/// a view computed before the deadline can never be published after it.
struct Publisher {
    node: NodeId,
    tx: watch::Sender<CoordView>,
    facts: Mutex<Facts>,
}

impl Publisher {
    fn lock(&self) -> MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Facts)) {
        let mut facts = self.lock();
        f(&mut facts);
        self.publish_locked(&facts);
    }

    fn publish(&self) {
        let facts = self.lock();
        self.publish_locked(&facts);
    }

    fn publish_locked(&self, facts: &Facts) {
        let view = facts.view(self.node, Instant::now());
        self.tx.send_if_modified(|current| {
            if *current == view {
                return false;
            }
            match &view.health {
                Health::Ok => info!(
                    node = self.node.0,
                    leader = ?view.leader,
                    i_lead = view.i_lead,
                    "coordination view changed"
                ),
                Health::Degraded { reason } => warn!(
                    node = self.node.0,
                    leader = ?view.leader,
                    i_lead = view.i_lead,
                    etcd_reachable = view.etcd_reachable,
                    "coordination degraded: {reason}"
                ),
            }
            *current = view;
            true
        });
    }

    /// The lease deadline if it is still ahead: when the view must be
    /// recomputed even if nothing else happens.
    fn pending_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock().lease_valid_until.filter(|&d| d > now)
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn next_watch_event(w: &mut Option<WatchStream>) -> Result<Option<WatchResponse>, String> {
    match w {
        Some(stream) => stream.message().await.map_err(|e| e.to_string()),
        None => std::future::pending().await,
    }
}

struct Lease {
    id: i64,
    ttl: Duration,
    valid_until: Instant,
    /// Open keep-alive stream; dropped on any error so that a late answer
    /// to an earlier keep-alive is never taken for a fresh one.
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

struct Runner {
    client: Client,
    keys: Keys,
    cfg: CoordConfig,
    publisher: Arc<Publisher>,
    freeze: Arc<AtomicBool>,
    gate: LeadershipGate,
    lease: Option<Lease>,
    /// The TTL etcd granted last (the configured one until then).
    ttl: Duration,
    watch: Option<WatchStream>,
    /// Leases given up on but not yet revoked.
    stale_leases: Vec<i64>,
    /// Cleared when the task ends, so the coordinator can start again.
    started: Arc<AtomicBool>,
    /// Pauses before retrying after failed rounds; `None` after a round
    /// that succeeded (see [`Runner::retry_pause`]).
    retry: Option<crate::backoff::Pauses>,
}

impl Runner {
    async fn req<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CoordError> {
        request(self.cfg.request_timeout, what, &self.cfg.endpoints, fut).await
    }

    fn tick(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(200))
    }

    /// The pause after a failed round: jittered exponential from a quarter
    /// tick, always below one tick. Below a tick, because the lease must be
    /// renewed before its local deadline as soon as etcd answers again;
    /// jittered, so that the nodes of a cluster do not all retry in step
    /// against an etcd that is just coming back.
    fn retry_pause(&mut self) -> Duration {
        let tick = self.tick();
        let pauses = self.retry.get_or_insert_with(|| crate::backoff::jittered(tick / 4, tick));
        pauses.next().unwrap_or(tick)
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut next_round = Instant::now();
        'outer: loop {
            tokio::select! {
                biased;
                _ = &mut stop => break 'outer,
                _ = sleep_until_opt(self.publisher.pending_deadline()) => {
                    self.publisher.publish();
                    continue 'outer;
                }
                _ = sleep_until(next_round) => {}
                // Opened or closed: campaign or step down now.
                _ = self.gate.inner.changed.notified() => {}
                ev = next_watch_event(&mut self.watch) => match ev {
                    // The leader key changed: look (and campaign) now.
                    Ok(Some(resp)) if !resp.canceled() => {
                        debug!(node = self.cfg.node.0, events = resp.events().len(), "leader key changed");
                    }
                    // Broken or cancelled: the next scheduled round
                    // re-creates it (no tight loop if it keeps breaking).
                    other => {
                        debug!(node = self.cfg.node.0, "leader watch ended: {other:?}");
                        self.watch = None;
                        continue 'outer;
                    }
                },
            }
            // One round of requests. It may take up to a few request
            // timeouts, so the lease deadline and the stop signal are
            // watched meanwhile.
            let publisher = self.publisher.clone();
            let outcome = {
                let round = self.round();
                tokio::pin!(round);
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stop => break None,
                        _ = sleep_until_opt(publisher.pending_deadline()) => publisher.publish(),
                        r = &mut round => break Some(r),
                    }
                }
            };
            let pause = match outcome {
                None => break 'outer,
                Some(Ok(())) => {
                    self.retry = None;
                    publisher.update(|f| {
                        if f.failure.take().is_some() {
                            info!(node = self.cfg.node.0, "etcd answers again");
                        }
                    });
                    self.tick()
                }
                Some(Err(e)) => {
                    self.watch = None;
                    if let Some(l) = &mut self.lease {
                        l.keeper = None;
                    }
                    warn!(node = self.cfg.node.0, "coordination round failed: {e}");
                    let (unreachable, detail) = match &e {
                        CoordError::Unreachable(m) => (true, m.clone()),
                        other => (false, other.to_string()),
                    };
                    publisher.update(|f| match &mut f.failure {
                        // Keep the first failure's time and message so the
                        // view does not churn, but let "unreachable" win.
                        Some(known) if known.unreachable || !unreachable => {}
                        Some(known) => {
                            known.unreachable = true;
                            known.message = detail;
                        }
                        None => f.failure = Some(Failure { since: SystemTime::now(), message: detail, unreachable }),
                    });
                    self.retry_pause()
                }
            };
            next_round = Instant::now() + pause;
        }
        self.stop().await;
    }

    /// Liveness, campaign, observation; any error aborts the round.
    async fn round(&mut self) -> Result<(), CoordError> {
        let frozen = self.freeze.load(Ordering::SeqCst);
        if !frozen {
            self.keep_lease().await?;
            if !self.stale_leases.is_empty() {
                self.revoke_stale_leases().await;
            }
        }
        let seen = if self.gate.is_open() { self.campaign(frozen).await? } else { self.step_down().await? };
        if self.watch.is_none() {
            // From the revision right after the one just read, so a change
            // in between is not missed.
            let mut c = self.client.clone();
            let opts = WatchOptions::new().with_start_revision(seen + 1);
            let w = self.req("watching the leader key", c.watch(self.keys.leader(), Some(opts))).await?;
            self.watch = Some(w);
        }
        Ok(())
    }

    /// Renews the lease, or replaces it when it is gone or its local
    /// deadline passed.
    async fn keep_lease(&mut self) -> Result<(), CoordError> {
        let Some(lease) = &mut self.lease else {
            return self.replace_lease().await;
        };
        // Taken before sending: the lease is valid until at least this
        // instant plus its TTL once etcd answers.
        let sent = Instant::now();
        if sent >= lease.valid_until {
            warn!(node = self.cfg.node.0, "our lease's local deadline passed; re-registering");
            return self.replace_lease().await;
        }
        let what = "keeping the lease alive";
        let endpoints = &self.cfg.endpoints;
        let mut renewed_ttl = None;
        if let Some((keeper, stream)) = lease.keeper.as_mut() {
            let fut = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match request(self.cfg.request_timeout, what, endpoints, fut).await {
                Ok(Some(resp)) => renewed_ttl = Some(resp.ttl()),
                // The stream broke (e.g. etcd restarted): open a new one
                // below. Dropping it also discards any late answer.
                Ok(None) | Err(_) => lease.keeper = None,
            }
        }
        if lease.keeper.is_none() {
            // Opening the stream sends one keep-alive and reads its answer;
            // "lease not found" means the lease expired on the server.
            let mut c = self.client.clone();
            let open = async { c.lease_keep_alive(lease.id).await.map_err(lease_not_found) };
            match request(self.cfg.request_timeout, what, endpoints, open).await {
                Ok(pair) => {
                    lease.keeper = Some(pair);
                    renewed_ttl = Some(lease.ttl.as_secs() as i64);
                }
                Err(CoordError::NotFound(_)) => renewed_ttl = Some(0),
                Err(e) => return Err(e),
            }
        }
        match renewed_ttl {
            Some(ttl) if ttl > 0 => {
                lease.ttl = Duration::from_secs(ttl as u64);
                lease.valid_until = sent + lease.ttl - safety_margin(lease.ttl);
                self.ttl = lease.ttl;
                let until = lease.valid_until;
                self.publisher.update(|f| f.lease_valid_until = Some(until));
                Ok(())
            }
            _ => {
                warn!(
                    node = self.cfg.node.0,
                    lease = %format!("{:x}", lease.id),
                    "etcd says our lease expired; re-registering"
                );
                self.replace_lease().await
            }
        }
    }

    /// Grants a fresh lease and registers `nodes/<id>` under it.
    async fn replace_lease(&mut self) -> Result<(), CoordError> {
        self.publisher.update(|f| {
            f.lease_valid_until = None;
            f.holds_leader = false;
        });
        let mut c = self.client.clone();
        if let Some(old) = self.lease.take() {
            self.stale_leases.push(old.id);
        }
        self.revoke_stale_leases().await;
        let requested = self.cfg.lease_ttl_secs;
        let sent = Instant::now();
        let granted = self.req("granting a lease", c.lease_grant(requested, None)).await?;
        if !granted.error().is_empty() {
            return Err(CoordError::Etcd(format!("granting a lease: {}", granted.error())));
        }
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        let lease = Lease { id: granted.id(), ttl, valid_until: sent + ttl - safety_margin(ttl), keeper: None };
        let id = lease.id;
        // Own the lease before registering, so a failure below still lets
        // the next round revoke it.
        self.lease = Some(lease);
        self.ttl = ttl;
        self.req(
            "registering liveness",
            c.put(self.keys.node(self.cfg.node), self.cfg.node.0.to_string(), Some(PutOptions::new().with_lease(id))),
        )
        .await?;
        let until = sent + ttl - safety_margin(ttl);
        self.publisher.update(|f| f.lease_valid_until = Some(until));
        info!(node = self.cfg.node.0, lease = %format!("{id:x}"), ttl = ?ttl, "registered as live");
        Ok(())
    }

    /// Revokes leases this node gave up on (best effort, retried in later
    /// rounds): a lost lease may still live on the server, e.g. restored by
    /// an etcd restart, and would keep a stale `leader` key of ours for a
    /// whole TTL, during which nobody can lead. We stepped down from it when
    /// its local deadline passed, so revoking it is always safe.
    async fn revoke_stale_leases(&mut self) {
        let mut c = self.client.clone();
        let mut still = Vec::new();
        for id in std::mem::take(&mut self.stale_leases) {
            match self.req("revoking an old lease", c.lease_revoke(id)).await {
                Ok(_) => {
                    debug!(node = self.cfg.node.0, lease = %format!("{id:x}"), "revoked an old lease")
                }
                // Already gone (expired): nothing left to revoke.
                Err(CoordError::NotFound(_)) => {}
                Err(e) => {
                    debug!(node = self.cfg.node.0, "revoking an old lease: {e}");
                    still.push(id);
                }
            }
        }
        // Bounded: a lease we could not revoke expires on its own anyway.
        still.truncate(8);
        self.stale_leases = still;
    }

    /// Claims `leader` if it is free (and we have a valid lease and are not
    /// frozen), and in any case records who holds it. Returns the store
    /// revision the answer reflects.
    async fn campaign(&mut self, frozen: bool) -> Result<i64, CoordError> {
        let key = self.keys.leader();
        let me = self.cfg.node;
        let now = Instant::now();
        let ours = self.lease.as_ref().filter(|l| now < l.valid_until).map(|l| l.id);
        let mut c = self.client.clone();
        let (kvs, revision) = match ours {
            Some(lease) if !frozen => {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), me.0.to_string(), Some(PutOptions::new().with_lease(lease)))])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let resp = self.req("campaigning for leader", c.txn(txn)).await?;
                let revision = resp.header().map_or(0, |h| h.revision());
                if resp.succeeded() {
                    info!(node = me.0, cluster = %self.cfg.cluster, "won the leader election");
                    self.publisher.update(|f| {
                        f.holds_leader = true;
                        f.observed_leader = Some(me);
                        // The put happened at the answer's revision: that
                        // is the key's create revision.
                        f.observed_term = f.observed_term.max(revision.max(0) as u64);
                    });
                    return Ok(revision);
                }
                (txn_get_kvs(&resp), revision)
            }
            _ => {
                let resp = self.req("reading the leader", c.get(key.clone(), None)).await?;
                let revision = resp.header().map_or(0, |h| h.revision());
                (resp.kvs().to_vec(), revision)
            }
        };
        let (observed, holds, term) = match kvs.first() {
            None => (None, false, 0),
            Some(kv) => {
                let id = NodeId(parse_decimal::<u16>(&key, kv.value())?);
                (Some(id), id == me && Some(kv.lease()) == ours, kv.create_revision().max(0) as u64)
            }
        };
        self.publisher.update(|f| {
            if f.holds_leader && !holds {
                warn!(node = me.0, "no longer holds the leader key");
            }
            f.holds_leader = holds;
            f.observed_leader = observed;
            f.observed_term = f.observed_term.max(term);
        });
        Ok(revision)
    }

    /// With the gate closed: deletes the `leader` key if it holds our id
    /// under our current lease (one transaction, so another node's key is
    /// never touched), and records who holds it otherwise. Returns the
    /// store revision the answer reflects.
    async fn step_down(&mut self) -> Result<i64, CoordError> {
        let key = self.keys.leader();
        let me = self.cfg.node;
        if let Some(lease) = self.lease.as_ref().map(|l| l.id) {
            let mine = [
                Compare::value(key.clone(), CompareOp::Equal, me.0.to_string()),
                Compare::lease(key.clone(), CompareOp::Equal, lease),
            ];
            let txn = Txn::new().when(mine).and_then([TxnOp::delete(key.clone(), None)]);
            let mut c = self.client.clone();
            let resp = self.req("stepping down", c.txn(txn)).await?;
            if resp.succeeded() {
                warn!(node = me.0, cluster = %self.cfg.cluster, "stepped down: too few members reachable to lead");
                self.publisher.update(|f| {
                    f.holds_leader = false;
                    f.observed_leader = None;
                });
                return Ok(resp.header().map_or(0, |h| h.revision()));
            }
        }
        self.campaign(true).await
    }

    /// Steps down first, then revokes the lease so that `nodes/<id>` and a
    /// held `leader` key disappear now rather than after a TTL.
    async fn stop(mut self) {
        self.publisher.update(|f| f.stopped = true);
        self.watch = None;
        if let Some(lease) = self.lease.take() {
            self.stale_leases.push(lease.id);
        }
        self.revoke_stale_leases().await;
        if self.stale_leases.is_empty() {
            info!(node = self.cfg.node.0, "resigned and deregistered");
        } else {
            warn!(node = self.cfg.node.0, "could not revoke our lease; it expires within its TTL");
        }
        self.started.store(false, Ordering::SeqCst);
    }
}

/// `2024-05-01T12:34:56Z` (RFC 3339, whole seconds, UTC), for the health
/// reason.
fn format_utc(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::from(t);
    let whole = t.replace_nanosecond(0).unwrap_or(t);
    whole.format(&Rfc3339).unwrap_or_else(|_| format!("{} s after the Unix epoch", whole.unix_timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661); // 2000-02-29
        assert_eq!(format_utc(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(format_utc(t), "2024-12-31T23:59:59Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_500); // whole seconds only
        assert_eq!(format_utc(t), "1970-01-01T00:00:01Z");
    }

    #[test]
    fn view_steps_down_at_the_deadline() {
        let now = Instant::now();
        let mut facts = Facts {
            lease_valid_until: Some(now + Duration::from_secs(1)),
            holds_leader: true,
            observed_leader: Some(NodeId(2)),
            observed_term: 7,
            ..Facts::default()
        };
        let v = facts.view(NodeId(2), now);
        assert_eq!((v.leader, v.i_lead, v.term, v.health), (Some(NodeId(2)), true, 7, Health::Ok));
        let v = facts.view(NodeId(2), now + Duration::from_secs(1));
        // Stepped down, the term last seen is still reported: the core
        // keeps fencing sessions of older terms.
        assert_eq!((v.leader, v.i_lead, v.term), (None, false, 7));
        assert!(matches!(v.health, Health::Degraded { .. }));
        facts.failure = Some(Failure { since: UNIX_EPOCH, message: "refused".into(), unreachable: true });
        let v = facts.view(NodeId(2), now);
        assert_eq!((v.leader, v.i_lead, v.etcd_reachable), (None, false, false));
        let Health::Degraded { reason } = v.health else { panic!("expected degraded") };
        assert!(reason.contains("etcd unreachable since 1970-01-01T00:00:00Z"));
        assert!(reason.contains("approved signing continues"));
    }

    #[test]
    fn stale_own_key_is_not_leadership() {
        let now = Instant::now();
        let facts = Facts {
            lease_valid_until: Some(now + Duration::from_secs(1)),
            holds_leader: false,
            observed_leader: Some(NodeId(3)),
            ..Facts::default()
        };
        assert_eq!(facts.view(NodeId(3), now).leader, None);
        assert_eq!(facts.view(NodeId(1), now).leader, Some(NodeId(3)));
    }

    fn status(code: Code) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, "test"))
    }

    #[test]
    fn grpc_codes_map_to_typed_errors() {
        let eps = ["http://127.0.0.1:1".to_string()];
        let of = |e| classify(e, "testing", &eps);
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled, Code::Unknown] {
            assert!(matches!(of(status(code)), CoordError::Unreachable(_)), "{code:?}");
        }
        for code in [Code::Unauthenticated, Code::PermissionDenied] {
            assert!(matches!(of(status(code)), CoordError::Denied(_)), "{code:?}");
        }
        assert!(matches!(of(status(Code::NotFound)), CoordError::NotFound(_)));
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::ResourceExhausted, Code::Internal] {
            assert!(matches!(of(status(code)), CoordError::Etcd(_)), "{code:?}");
        }
        let io = etcd_client::Error::IoError(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(of(io), CoordError::Unreachable(_)));
        let closed = etcd_client::Error::WatchError("channel closed".into());
        assert!(matches!(of(closed), CoordError::Unreachable(_)));
        // The message is kept for the operator, the decision is not taken
        // from it: "not found" text under another code stays what the code says.
        let e = of(etcd_client::Error::GRpcStatus(tonic::Status::unavailable("lease not found")));
        assert!(matches!(&e, CoordError::Unreachable(m) if m.contains("lease not found")), "{e}");
    }

    #[test]
    fn a_keep_alive_for_a_missing_lease_is_not_found() {
        // What etcd-client returns when etcd answers the first keep-alive
        // with TTL 0.
        let e = lease_not_found(etcd_client::Error::LeaseKeepAliveError("lease not found".into()));
        assert!(matches!(classify(e, "keeping", &[]), CoordError::NotFound(_)));
        // Anything else passes through unchanged.
        let e = lease_not_found(status(Code::Unavailable));
        assert!(matches!(classify(e, "keeping", &[]), CoordError::Unreachable(_)));
    }

    fn tls() -> EtcdTls {
        EtcdTls {
            ca_pem: b"-----BEGIN CERTIFICATE-----".to_vec(),
            client: Some(ClientIdentity {
                cert_pem: b"cert".to_vec(),
                key_pem: Zeroizing::new(b"PRIVATE KEY hunter2".to_vec()),
            }),
            server_name: Some("etcd.internal".into()),
        }
    }

    #[test]
    fn tls_needs_https_endpoints_and_https_needs_a_ca() {
        let mut c = CoordConfig::new(vec!["https://10.0.0.1:2379".into()], "c", NodeId(1));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("https://10.0.0.1:2379") && e.contains("no CA certificate"), "{e}");
        c.tls = Some(tls());
        assert!(c.validate().is_ok());
        c.endpoints.push("http://10.0.0.2:2379".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("\"http://10.0.0.2:2379\" must be https://"), "{e}");
        c.endpoints.truncate(1);
        c.tls.as_mut().unwrap().ca_pem.clear();
        assert!(matches!(c.validate(), Err(CoordError::Config(_))));
        c.tls = Some(tls());
        c.auth = Some(EtcdAuth { user: "node-1".into(), password: Zeroizing::new(String::new()) });
        assert!(matches!(c.validate(), Err(CoordError::Config(_))), "an empty password is refused");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let mut c = CoordConfig::new(vec!["https://10.0.0.1:2379".into()], "c", NodeId(1));
        c.tls = Some(tls());
        c.auth = Some(EtcdAuth { user: "node-1".into(), password: Zeroizing::new("hunter2".into()) });
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("node-1") && shown.contains("etcd.internal") && shown.contains("<redacted>"), "{shown}");
        assert_eq!(c.security(), "TLS with a client certificate, as etcd user \"node-1\"");
    }

    #[test]
    fn config_is_validated() {
        let ok = CoordConfig::new(vec!["http://127.0.0.1:1".into()], "c", NodeId(1));
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.cluster = "a/b".into();
        assert!(matches!(bad.validate(), Err(CoordError::Config(_))));
        let mut bad = ok.clone();
        bad.node = NodeId(0);
        assert!(matches!(bad.validate(), Err(CoordError::Config(_))));
    }
}
