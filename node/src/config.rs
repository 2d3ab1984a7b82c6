//! `mpc-node run --config FILE`: the node's TOML configuration.
//!
//! Every table refuses unknown fields, so a misspelt option is an error
//! rather than a silently ignored default. Loading checks the whole file
//! before the node starts: syntax and types (the error names the file, the
//! field's dotted path and the line), then meaning: the quorum rules of
//! DESIGN §3 (an unsafe quorum is refused), that this node is a member,
//! addresses, tokens and policy. Paths in the file are relative to the
//! file's directory, so a generated cluster directory can move as a whole.
//!
//! A complete example is in the README ("Configuration").

use mpc_core::{ClusterConfig, ConfigError, MemberInfo, NodeConfig, NodeId, PolicyConfig, PoolConfig, Timeouts};
use mpc_io_store::coord::{ClientIdentity, EtcdAuth, EtcdTls};
use mpc_io_store::PostgresTls;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The whole file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    pub policy: PolicyConfig,
    pub transport: TransportSection,
    pub etcd: EtcdSection,
    pub api: ApiSection,
    /// The Bitcoin backend the node broadcasts through and follows the
    /// chain with. Without it the node signs but broadcasts nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitcoin: Option<BitcoinSection>,
}

/// Bitcoin Core's (or Knots') JSON-RPC. Log in with the node's cookie file
/// (`cookie_file`), or with `rpc_user` and `rpc_password_file` (one line,
/// owner-only): the password is never in this file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitcoinSection {
    /// `http://host:port` of bitcoind's RPC.
    pub rpc_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_password_file: Option<PathBuf>,
    /// How long one RPC may take.
    #[serde(default = "default_rpc_timeout")]
    pub timeout_secs: u64,
    /// How often the node asks bitcoind how things stand: its own health,
    /// and each signed transaction it follows.
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// Blocks deep a transaction must be to count as Confirmed; default 1
    /// on regtest, 6 elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<u64>,
    /// A signed transaction bitcoind has not held (mempool or chain) for
    /// this long is marked stalled, with bitcoind's last answer as the
    /// reason; it is still rebroadcast.
    #[serde(default = "default_broadcast_timeout")]
    pub broadcast_timeout_secs: u64,
    /// The wait before the first rebroadcast, doubling up to
    /// `rebroadcast_max_secs`.
    #[serde(default = "default_rebroadcast")]
    pub rebroadcast_secs: u64,
    #[serde(default = "default_rebroadcast_max")]
    pub rebroadcast_max_secs: u64,
}

fn default_broadcast_timeout() -> u64 {
    600
}

fn default_rebroadcast() -> u64 {
    10
}

fn default_rebroadcast_max() -> u64 {
    300
}

impl BitcoinSection {
    /// The core's chain settings from this section.
    fn chain_config(&self, network: bitcoin::Network) -> mpc_core::ChainConfig {
        let defaults = mpc_core::ChainConfig::for_network(network);
        let ms = |secs: u64| secs.saturating_mul(1_000);
        mpc_core::ChainConfig {
            confirmations: self.confirmations.unwrap_or(defaults.confirmations),
            check_ms: ms(self.poll_secs),
            rebroadcast_ms: ms(self.rebroadcast_secs),
            rebroadcast_max_ms: ms(self.rebroadcast_max_secs),
            broadcast_timeout_ms: ms(self.broadcast_timeout_secs),
        }
    }
}

impl BitcoinSection {
    /// A section for `rpc_url` with every other setting at its default;
    /// set a login before use.
    pub fn new(rpc_url: String) -> BitcoinSection {
        BitcoinSection {
            rpc_url,
            cookie_file: None,
            rpc_user: None,
            rpc_password_file: None,
            timeout_secs: default_rpc_timeout(),
            poll_secs: default_poll(),
            confirmations: None,
            broadcast_timeout_secs: default_broadcast_timeout(),
            rebroadcast_secs: default_rebroadcast(),
            rebroadcast_max_secs: default_rebroadcast_max(),
        }
    }
}

fn default_rpc_timeout() -> u64 {
    10
}

fn default_poll() -> u64 {
    5
}

/// How to reach the Bitcoin backend, checked but with no file read yet
/// (see [`Config::bitcoin_backend`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitcoinBackend {
    pub rpc_url: url::Url,
    pub login: BitcoinLogin,
    pub timeout: std::time::Duration,
    pub poll: std::time::Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitcoinLogin {
    Cookie(PathBuf),
    User { user: String, password_file: PathBuf },
}

/// Who this node is and where it keeps its state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's member id (1..=n).
    pub id: u16,
    /// Directory for the node's own state (the SQLite database by default).
    pub state_dir: PathBuf,
    /// The Ed25519 key this node signs votes with: 64 hex digits, owner-only.
    pub vote_key_file: PathBuf,
    /// The master key sealing secrets at rest: 64 hex digits, owner-only.
    pub master_key_file: PathBuf,
    /// `postgres://…` or `sqlite://…`. Default: SQLite at
    /// `<state_dir>/node.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Safe primes made ahead with `mpc-cli primes generate`. Without it
    /// the node generates them in the background on first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_primes_file: Option<PathBuf>,
    /// Threads for protocol computations; 0 means one per core.
    #[serde(default)]
    pub compute_workers: usize,
    /// cggmp24's multiexponentiation tables, built with this node's aux
    /// info (see `mpc_core::NodeConfig::multiexp_tables`). Default true.
    #[serde(default = "yes")]
    pub multiexp_tables: bool,
}

fn yes() -> bool {
    true
}

/// What every member must agree on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Binds execution ids, vote signatures and the etcd keys to this cluster.
    pub id: String,
    /// `bitcoin`, `testnet`, `signet` or `regtest`.
    pub network: bitcoin::Network,
    pub threshold: u16,
    pub approve_quorum: u16,
    pub reject_quorum: u16,
    pub byzantine_tolerance: u16,
    pub members: Vec<MemberSection>,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub id: u16,
    /// The member's Ed25519 vote key (public), 64 hex digits.
    pub vote_key: String,
    /// Where the member's QUIC transport listens.
    pub peer_address: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    /// Where this node's QUIC transport listens.
    pub listen: SocketAddr,
    /// `ca.pem`, `node-<id>.pem` and `node-<id>.key` (`mpc-cli certs init`).
    pub cert_dir: PathBuf,
}

/// Where etcd is and how to reach it safely. `https://` endpoints need
/// `ca_file`; `cert_file` and `key_file` (both or neither) add a client
/// certificate for etcd's `--client-cert-auth`; `user` with `password_file`
/// logs in (etcd's `auth enable`). The password is never in this file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Vec<String>,
    /// Liveness and leadership lease; a silent node loses both after it.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: i64,
    /// PEM: the CA that signed etcd's server certificates (only it is
    /// trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM: this node's client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM: the client certificate's private key, owner-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name etcd's certificate must carry, if not the endpoints' host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// etcd user to log in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file holding the user's password (one line), owner-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

fn default_lease_ttl() -> i64 {
    10
}

impl EtcdSection {
    /// Plain `endpoints`, the default lease, no TLS and no login.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdSection {
            endpoints,
            lease_ttl_secs: default_lease_ttl(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            user: None,
            password_file: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// The HTTP API's address. Loopback unless an operator decides otherwise.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted (a PSBT is at most 1 MiB binary, a
    /// third more as base64).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Who may call the API. Tokens are stored as SHA-256 digests only.
    pub operators: Vec<OperatorSection>,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body() -> usize {
    2 << 20
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    /// Recorded in the audit trail with every mutating request.
    pub name: String,
    /// SHA-256 of the bearer token, 64 hex digits (`mpc-cli cluster init`
    /// writes both). Tokens are random 256-bit values, so a plain digest
    /// suffices: there is nothing to brute-force.
    pub token_sha256: String,
}

/// A configuration problem, named as an operator reads it: the file, the
/// field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct ConfigFileError {
    pub file: PathBuf,
    /// Dotted path of the field (`cluster.members[2].vote_key`), or `(file)`.
    pub field: String,
    pub problem: String,
}

/// A loaded and checked configuration, with paths resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub raw: FileConfig,
    pub me: NodeId,
    pub core: NodeConfig,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub database_url: String,
    pub state_dir: PathBuf,
    pub vote_key_file: PathBuf,
    pub master_key_file: PathBuf,
    pub safe_primes_file: Option<PathBuf>,
    pub cert_dir: PathBuf,
    pub operators: Vec<Operator>,
    /// The `[etcd]` files, resolved; read at start-up by
    /// [`Config::etcd_security`].
    pub etcd_files: EtcdFiles,
    /// The `[bitcoin]` section, checked, paths resolved.
    pub bitcoin: Option<BitcoinBackend>,
}

/// The files the `[etcd]` section names, with paths resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdFiles {
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
    pub password_file: Option<PathBuf>,
}

/// An operator allowed to use the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub token_sha256: [u8; 32],
}

impl Config {
    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError {
            file: path.to_path_buf(),
            field: "(file)".into(),
            problem: format!("cannot read it: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and checks `text`, as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigFileError> {
        let err = |field: &str, problem: String| ConfigFileError {
            file: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        let deserializer = toml::Deserializer::new(text);
        let raw: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." || field.is_empty() { "(file)".to_string() } else { field };
            let inner = e.into_inner();
            let line = inner.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let problem = match line {
                Some(line) => format!("line {line}: {}", inner.message()),
                None => inner.message().to_string(),
            };
            err(&field, problem)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };

        let me = NodeId(raw.node.id);
        let c = &raw.cluster;
        let mut members = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for (i, m) in c.members.iter().enumerate() {
            let field = format!("cluster.members[{i}]");
            let key = parse_hex32(&m.vote_key).map_err(|p| err(&format!("{field}.vote_key"), p))?;
            if members.insert(NodeId(m.id), MemberInfo { vote_key: key }).is_some() {
                return Err(err(&format!("{field}.id"), format!("member {} is listed twice", m.id)));
            }
            peers.insert(NodeId(m.id), m.peer_address);
        }
        let cluster = ClusterConfig {
            cluster_id: c.id.clone(),
            members,
            threshold: c.threshold,
            approve_quorum: c.approve_quorum,
            reject_quorum: c.reject_quorum,
            byzantine_tolerance: c.byzantine_tolerance,
            network: c.network,
            pool: c.pool.clone(),
            timeouts: c.timeouts.clone(),
        };
        let chain = raw.bitcoin.as_ref().map(|b| b.chain_config(c.network));
        let core = NodeConfig { cluster, policy: raw.policy.clone(), chain, multiexp_tables: raw.node.multiexp_tables };
        // Before the core's checks, which cannot name the section's fields.
        let bitcoin =
            raw.bitcoin.as_ref().map(|b| bitcoin_backend(b, &resolve)).transpose().map_err(|(f, p)| err(f, p))?;
        core.validate(me).map_err(|e| err(config_error_field(&e), e.to_string()))?;
        if !c.id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            return Err(err("cluster.id", format!("{:?} may hold only letters, digits, '-' and '_'", c.id)));
        }
        peers.remove(&me);
        if raw.etcd.endpoints.is_empty() {
            return Err(err("etcd.endpoints", "at least one etcd endpoint is needed".into()));
        }
        let mut schemes = Vec::new();
        for (i, e) in raw.etcd.endpoints.iter().enumerate() {
            let parsed = url::Url::parse(e).map_err(|x| err(&format!("etcd.endpoints[{i}]"), format!("{e:?}: {x}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(err(&format!("etcd.endpoints[{i}]"), format!("{e:?}: use http:// or https://")));
            }
            if schemes.first().is_some_and(|first| *first != parsed.scheme()) {
                return Err(err(
                    &format!("etcd.endpoints[{i}]"),
                    format!("{e:?}: use https:// for every endpoint or none"),
                ));
            }
            schemes.push(parsed.scheme().to_string());
        }
        if raw.etcd.lease_ttl_secs < 2 {
            return Err(err("etcd.lease_ttl_secs", "must be at least 2 seconds".into()));
        }
        let etcd_files = etcd_files(&raw.etcd, schemes[0] == "https", &resolve).map_err(|(f, p)| err(f, p))?;
        if raw.api.operators.is_empty() {
            return Err(err("api.operators", "at least one operator is needed, or nobody could use the API".into()));
        }
        let mut operators = Vec::new();
        for (i, o) in raw.api.operators.iter().enumerate() {
            if o.name.is_empty() {
                return Err(err(&format!("api.operators[{i}].name"), "must not be empty".into()));
            }
            let digest =
                parse_hex32(&o.token_sha256).map_err(|p| err(&format!("api.operators[{i}].token_sha256"), p))?;
            if operators.iter().any(|x: &Operator| x.name == o.name) {
                return Err(err(&format!("api.operators[{i}].name"), format!("{:?} is listed twice", o.name)));
            }
            operators.push(Operator { name: o.name.clone(), token_sha256: digest });
        }
        if raw.api.max_body_bytes < 1024 {
            return Err(err("api.max_body_bytes", "must be at least 1024".into()));
        }
        let state_dir = resolve(&raw.node.state_dir);
        let database_url = match &raw.node.database_url {
            Some(url) => {
                mpc_io_store::Backend::of_url(url).map_err(|e| err("node.database_url", e.to_string()))?;
                if url.starts_with("sqlite:") {
                    url.clone()
                } else {
                    PostgresTls::of_url(url).map_err(|e| err("node.database_url", e.to_string()))?;
                    resolve_root_cert(url, &resolve)
                }
            }
            None => format!("sqlite://{}?mode=rwc", state_dir.join("node.db").display()),
        };
        Ok(Config {
            file: path.to_path_buf(),
            me,
            core,
            peers,
            database_url,
            vote_key_file: resolve(&raw.node.vote_key_file),
            master_key_file: resolve(&raw.node.master_key_file),
            safe_primes_file: raw.node.safe_primes_file.as_deref().map(resolve),
            cert_dir: resolve(&raw.transport.cert_dir),
            state_dir,
            operators,
            etcd_files,
            bitcoin,
            raw,
        })
    }

    /// Worker threads for protocol computations.
    pub fn compute_workers(&self) -> usize {
        match self.raw.node.compute_workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    /// A problem with a file the configuration names, as a config error.
    pub fn file_error(&self, field: &str, problem: impl std::fmt::Display) -> ConfigFileError {
        ConfigFileError { file: self.file.clone(), field: field.to_string(), problem: problem.to_string() }
    }
}

/// The PostgreSQL URL with a relative `sslrootcert` resolved like every
/// other path in the file (the driver would take it relative to the working
/// directory).
fn resolve_root_cert(raw: &str, resolve: &dyn Fn(&Path) -> PathBuf) -> String {
    let Ok(mut url) = url::Url::parse(raw) else { return raw.to_string() };
    let is_root_cert = |k: &str| matches!(k, "sslrootcert" | "ssl-root-cert" | "ssl-ca");
    if !url.query_pairs().any(|(k, v)| is_root_cert(&k) && Path::new(v.as_ref()).is_relative()) {
        return raw.to_string();
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v =
                if is_root_cert(&k) { resolve(Path::new(v.as_ref())).display().to_string() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

/// Checks the `[bitcoin]` section (without reading any file);
/// `Err((field, problem))`.
fn bitcoin_backend(
    b: &BitcoinSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<BitcoinBackend, (&'static str, String)> {
    let rpc_url = url::Url::parse(&b.rpc_url).map_err(|e| ("bitcoin.rpc_url", format!("{:?}: {e}", b.rpc_url)))?;
    if !matches!(rpc_url.scheme(), "http" | "https") || rpc_url.host().is_none() {
        return Err(("bitcoin.rpc_url", format!("{:?}: use http://host:port", b.rpc_url)));
    }
    if !rpc_url.username().is_empty() || rpc_url.password().is_some() {
        return Err((
            "bitcoin.rpc_url",
            "holds credentials: use cookie_file, or rpc_user with rpc_password_file".into(),
        ));
    }
    let login = match (&b.cookie_file, &b.rpc_user, &b.rpc_password_file) {
        (Some(cookie), None, None) => BitcoinLogin::Cookie(resolve(cookie)),
        (None, Some(user), Some(file)) if !user.is_empty() => {
            BitcoinLogin::User { user: user.clone(), password_file: resolve(file) }
        }
        (None, Some(_), Some(_)) => return Err(("bitcoin.rpc_user", "must not be empty".into())),
        (None, Some(_), None) => return Err(("bitcoin.rpc_password_file", "rpc_user needs a password file".into())),
        (None, None, Some(_)) => return Err(("bitcoin.rpc_user", "rpc_password_file needs a user".into())),
        (Some(_), _, _) => {
            return Err(("bitcoin.cookie_file", "name a cookie file or a user and password file, not both".into()))
        }
        (None, None, None) => return Err(("bitcoin", "name cookie_file, or rpc_user with rpc_password_file".into())),
    };
    if b.confirmations == Some(0) {
        return Err(("bitcoin.confirmations", "must be at least 1".into()));
    }
    if b.rebroadcast_max_secs < b.rebroadcast_secs {
        return Err(("bitcoin.rebroadcast_max_secs", "must be at least rebroadcast_secs".into()));
    }
    for (field, secs) in [
        ("bitcoin.timeout_secs", b.timeout_secs),
        ("bitcoin.poll_secs", b.poll_secs),
        ("bitcoin.broadcast_timeout_secs", b.broadcast_timeout_secs),
        ("bitcoin.rebroadcast_secs", b.rebroadcast_secs),
    ] {
        if secs == 0 {
            return Err((field, "must be at least 1 second".into()));
        }
    }
    Ok(BitcoinBackend {
        rpc_url,
        login,
        timeout: std::time::Duration::from_secs(b.timeout_secs),
        poll: std::time::Duration::from_secs(b.poll_secs),
    })
}

/// Checks the `[etcd]` security fields against each other and the endpoints'
/// scheme (without reading any file); `Err((field, problem))`.
fn etcd_files(
    e: &EtcdSection,
    https: bool,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<EtcdFiles, (&'static str, String)> {
    if https && e.ca_file.is_none() {
        return Err((
            "etcd.ca_file",
            "the endpoints are https://: name the CA certificate (PEM) that signed etcd's certificates".into(),
        ));
    }
    if !https {
        let tls_only = [
            ("etcd.ca_file", e.ca_file.is_some()),
            ("etcd.cert_file", e.cert_file.is_some()),
            ("etcd.key_file", e.key_file.is_some()),
            ("etcd.server_name", e.server_name.is_some()),
        ];
        if let Some((field, _)) = tls_only.iter().find(|(_, set)| *set) {
            return Err((field, "is a TLS setting, but the endpoints are http://: use https:// endpoints".into()));
        }
    }
    let client = match (&e.cert_file, &e.key_file) {
        (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
        (None, None) => None,
        (Some(_), None) => return Err(("etcd.key_file", "a client certificate needs its key".into())),
        (None, Some(_)) => return Err(("etcd.cert_file", "a client key needs its certificate".into())),
    };
    if e.server_name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(("etcd.server_name", "must not be empty".into()));
    }
    match (&e.user, &e.password_file) {
        (Some(u), _) if u.is_empty() => return Err(("etcd.user", "must not be empty".into())),
        (Some(_), None) => {
            return Err(("etcd.password_file", "etcd.user needs the file holding its password".into()));
        }
        (None, Some(_)) => return Err(("etcd.user", "etcd.password_file is set but no user to log in as".into())),
        _ => {}
    }
    Ok(EtcdFiles {
        ca_file: e.ca_file.as_deref().map(resolve),
        client,
        password_file: e.password_file.as_deref().map(resolve),
    })
}

impl Config {
    /// Reads what `[etcd]` names: the CA and client certificates, the
    /// client key and the password (both owner-only). Errors name the field
    /// and the file, never the content.
    pub fn etcd_security(&self) -> Result<(Option<EtcdTls>, Option<EtcdAuth>), ConfigFileError> {
        let f = &self.etcd_files;
        let tls = match &f.ca_file {
            None => None,
            Some(ca) => {
                let ca_pem = read_pem(ca, "CERTIFICATE").map_err(|p| self.file_error("etcd.ca_file", p))?;
                let client = match &f.client {
                    None => None,
                    Some((cert, key)) => Some(ClientIdentity {
                        cert_pem: read_pem(cert, "CERTIFICATE").map_err(|p| self.file_error("etcd.cert_file", p))?,
                        key_pem: read_private_pem(key).map_err(|p| self.file_error("etcd.key_file", p))?,
                    }),
                };
                Some(EtcdTls { ca_pem, client, server_name: self.raw.etcd.server_name.clone() })
            }
        };
        let auth = match (&self.raw.etcd.user, &f.password_file) {
            (Some(user), Some(file)) => Some(EtcdAuth {
                user: user.clone(),
                password: read_password_file(file).map_err(|p| self.file_error("etcd.password_file", p))?,
            }),
            _ => None,
        };
        Ok((tls, auth))
    }

    /// The Bitcoin backend's client, its password read (owner-only
    /// file); `None` without a `[bitcoin]` section. A cookie file is read
    /// at each login instead: bitcoind writes a new one when it restarts.
    pub fn bitcoin_backend(&self) -> Result<Option<crate::bitcoin_rpc::BitcoinRpc>, ConfigFileError> {
        use crate::bitcoin_rpc::{BitcoinRpc, RpcAuth};
        let Some(b) = &self.bitcoin else { return Ok(None) };
        let auth = match &b.login {
            BitcoinLogin::Cookie(path) => RpcAuth::CookieFile(path.clone()),
            BitcoinLogin::User { user, password_file } => RpcAuth::UserPassword {
                user: user.clone(),
                password: read_password_file(password_file)
                    .map_err(|p| self.file_error("bitcoin.rpc_password_file", p))?,
            },
        };
        BitcoinRpc::new(b.rpc_url.clone(), auth, b.timeout).map(Some).map_err(|e| self.file_error("bitcoin", e))
    }

    /// Checks the database URL's TLS settings against the files they name:
    /// a root certificate that cannot be read is a configuration error here
    /// rather than a connection error later.
    pub fn check_database_tls(&self) -> Result<(), ConfigFileError> {
        let Ok(tls) = PostgresTls::of_url(&self.database_url) else { return Ok(()) };
        if let Some(root) = &tls.root_cert {
            read_pem(root, "CERTIFICATE")
                .map_err(|p| self.file_error("node.database_url", format!("sslrootcert: {p}")))?;
        }
        Ok(())
    }
}

/// Refuses a secret file that others may read: the error names the file and
/// its mode.
fn owner_only(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("{} is readable by others (mode {mode:o}); chmod 600 it", path.display()));
    }
    Ok(())
}

/// A PEM file holding at least one `-----BEGIN {label}-----` block.
fn read_pem(path: &Path, label: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&bytes).contains(&format!("-----BEGIN {label}-----")) {
        return Err(format!("{} holds no PEM {}", path.display(), label.to_lowercase()));
    }
    Ok(bytes)
}

/// An owner-only PEM private key (any of PKCS#8, PKCS#1 or SEC1).
fn read_private_pem(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    owner_only(path)?;
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?);
    if !bytes.windows(16).any(|w| w == b"PRIVATE KEY-----") {
        return Err(format!("{} holds no PEM private key", path.display()));
    }
    Ok(bytes)
}

/// An owner-only file holding a password on its first line (a trailing
/// newline is not part of it).
fn read_password_file(path: &Path) -> Result<Zeroizing<String>, String> {
    owner_only(path)?;
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
    let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if password.contains('\n') {
        return Err(format!("{} holds more than one line", path.display()));
    }
    Ok(Zeroizing::new(password.to_string()))
}

/// Which field of the file a core configuration error is about.
fn config_error_field(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::TooFewMembers(_) | ConfigError::MemberIdsNotContiguous(_) => "cluster.members",
        ConfigError::BadThreshold { .. } => "cluster.threshold",
        ConfigError::ApproveBelowThreshold { .. } => "cluster.approve_quorum",
        ConfigError::QuorumsOverlapTooLittle { .. } => "cluster.reject_quorum",
        ConfigError::QuorumUnreachable { name: "qa", .. } => "cluster.approve_quorum",
        ConfigError::QuorumUnreachable { .. } => "cluster.reject_quorum",
        ConfigError::TooManyByzantine { .. } => "cluster.byzantine_tolerance",
        ConfigError::BadPoolMarks { .. } | ConfigError::NoParallelSessions => "cluster.pool",
        ConfigError::ZeroTimeout(_) => "cluster.timeouts",
        ConfigError::Chain(_) => "bitcoin",
        ConfigError::RetainShorterThanGossip { .. } => "cluster.timeouts.retain_final_ms",
        ConfigError::EmptyClusterId => "cluster.id",
        ConfigError::BadVoteKey(_) => "cluster.members",
        ConfigError::BadDestination { .. } => "policy.allowed_destinations",
        ConfigError::ZeroFeeCap => "policy.max_fee_rate_sat_vb",
        ConfigError::NotAMember(_) => "node.id",
    }
}

/// 32 bytes from 64 hex digits.
pub fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s.trim()).map_err(|e| format!("expected 64 hex digits: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("expected 32 bytes (64 hex digits), found {}", b.len()))
}

/// Reads a secret key file: 64 hex digits, owner-only. The error names the
/// file and the problem, never the content.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!("{} is readable by others (mode {mode:o}); chmod 600 it", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_hex32(&text).map_err(|_| format!("{} does not hold 64 hex digits", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example(extra_operator: &str) -> String {
        let key = |i: u8| hex::encode(ed25519_dalek::SigningKey::from_bytes(&[i; 32]).verifying_key().to_bytes());
        let members: String = (1..=5u8)
            .map(|i| {
                format!(
                    "[[cluster.members]]\nid = {i}\nvote_key = \"{}\"\npeer_address = \"127.0.0.1:{}\"\n",
                    key(i),
                    7100 + i as u16
                )
            })
            .collect();
        format!(
            r#"[node]
id = 2
state_dir = "n2"
vote_key_file = "n2/vote.key"
master_key_file = "n2/master.key"

[cluster]
id = "test"
network = "regtest"
threshold = 3
approve_quorum = 3
reject_quorum = 4
byzantine_tolerance = 1
{members}
[policy]
max_amount_sat = 1000000
allowed_destinations = []
max_fee_rate_sat_vb = 100
daily_cap_sat = 5000000

[transport]
listen = "127.0.0.1:7102"
cert_dir = "certs"

[etcd]
endpoints = ["http://127.0.0.1:2379"]

[api]
listen = "127.0.0.1:8102"
[[api.operators]]
name = "ops"
token_sha256 = "{}"
{extra_operator}"#,
            hex::encode([9u8; 32])
        )
    }

    #[test]
    fn a_complete_file_loads_with_paths_resolved() {
        let c = Config::parse(Path::new("/etc/mpc/node.toml"), &example("")).expect("valid");
        assert_eq!(c.me, NodeId(2));
        assert_eq!(c.peers.len(), 4, "peers exclude this node");
        assert_eq!(c.vote_key_file, Path::new("/etc/mpc/n2/vote.key"));
        assert_eq!(c.database_url, "sqlite:///etc/mpc/n2/node.db?mode=rwc");
        assert_eq!(c.core.cluster.pool.target, 100, "pool defaults");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let text = example("").replace("[transport]\n", "[transport]\nlisten_adress = \"x\"\n");
        let e = Config::parse(Path::new("node.toml"), &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("node.toml: transport"), "{msg}");
        assert!(msg.contains("unknown field `listen_adress`"), "{msg}");
    }

    #[test]
    fn an_unsafe_quorum_is_refused_naming_the_field() {
        let text = example("").replace("reject_quorum = 4", "reject_quorum = 3");
        let e = Config::parse(Path::new("node.toml"), &text).unwrap_err();
        assert_eq!(e.field, "cluster.reject_quorum");
        assert!(e.problem.contains("conflicting outcomes"), "{}", e.problem);
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let text = example("").replace("threshold = 3", "threshold = \"three\"");
        let e = Config::parse(Path::new("node.toml"), &text).unwrap_err();
        assert_eq!(e.field, "cluster.threshold");
    }

    /// The README's complete example is a valid configuration.
    #[test]
    fn the_readme_example_loads() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
        let example = section.split("```toml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a toml block");
        let c = Config::parse(Path::new("/etc/mpc-custody/node.toml"), example).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.core.cluster.members.len(), 5);
        assert_eq!(c.operators.len(), 1);
        assert!(c.database_url.starts_with("postgres://"));
    }

    fn with_etcd(endpoints: &str, extra: &str) -> String {
        example("").replace(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
            &format!("[etcd]\nendpoints = {endpoints}\n{extra}"),
        )
    }

    fn refused(text: &str) -> ConfigFileError {
        assert!(text.contains("[etcd]\nendpoints"), "the edit did not apply");
        Config::parse(Path::new("/etc/mpc/node.toml"), text).unwrap_err()
    }

    #[test]
    fn etcd_tls_and_credentials_are_checked_against_each_other() {
        let https = r#"["https://etcd1:2379", "https://etcd2:2379"]"#;
        let e = refused(&with_etcd(https, ""));
        assert_eq!(e.field, "etcd.ca_file");
        assert!(e.problem.contains("https://"), "{e}");

        let e = refused(&with_etcd(r#"["https://etcd1:2379", "http://etcd2:2379"]"#, "ca_file = \"ca.pem\"\n"));
        assert_eq!(e.field, "etcd.endpoints[1]");
        assert!(e.problem.contains("every endpoint or none"), "{e}");

        for (field, line) in [
            ("etcd.ca_file", "ca_file = \"ca.pem\""),
            ("etcd.server_name", "server_name = \"etcd.internal\""),
            ("etcd.cert_file", "cert_file = \"c.pem\"\nkey_file = \"c.key\""),
        ] {
            let e = refused(&with_etcd(r#"["http://etcd1:2379"]"#, &format!("{line}\n")));
            assert_eq!(e.field, field);
            assert!(e.problem.contains("TLS setting"), "{e}");
        }

        let tls = "ca_file = \"etcd/ca.pem\"\n";
        let e = refused(&with_etcd(https, &format!("{tls}cert_file = \"etcd/node.pem\"\n")));
        assert_eq!(e.field, "etcd.key_file");
        let e = refused(&with_etcd(https, &format!("{tls}user = \"node-2\"\n")));
        assert_eq!(e.field, "etcd.password_file");
        let e = refused(&with_etcd(https, &format!("{tls}password_file = \"etcd/pw\"\n")));
        assert_eq!(e.field, "etcd.user");
        let e = refused(&with_etcd(https, &format!("{tls}password = \"hunter2\"\n")));
        assert!(e.problem.contains("unknown field `password`"), "a password in the file is refused: {e}");

        let full = format!(
            "{tls}cert_file = \"etcd/node.pem\"\nkey_file = \"/secrets/node.key\"\nserver_name = \"etcd.internal\"\n\
             user = \"node-2\"\npassword_file = \"etcd/pw\"\n"
        );
        let c =
            Config::parse(Path::new("/etc/mpc/node.toml"), &with_etcd(https, &full)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.etcd_files,
            EtcdFiles {
                ca_file: Some("/etc/mpc/etcd/ca.pem".into()),
                client: Some(("/etc/mpc/etcd/node.pem".into(), "/secrets/node.key".into())),
                password_file: Some("/etc/mpc/etcd/pw".into()),
            },
            "paths are resolved against the file's directory"
        );
    }

    /// A scratch directory of files with the given modes.
    fn files(tag: &str, entries: &[(&str, &str, u32)]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mpc-node-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text, mode) in entries {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";
    const FULL: &str = "ca_file = \"ca.pem\"\ncert_file = \"node.pem\"\nkey_file = \"node.key\"\n\
                        server_name = \"etcd.internal\"\nuser = \"node-2\"\npassword_file = \"pw\"\n";

    #[test]
    fn etcd_files_are_read_at_start_and_secrets_stay_hidden() {
        let dir = files(
            "etcd-ok",
            &[
                ("ca.pem", CERT, 0o644),
                ("node.pem", CERT, 0o644),
                ("node.key", KEY, 0o600),
                ("pw", "s3cr3t-pw\n", 0o600),
            ],
        );
        let text = with_etcd(r#"["https://etcd1:2379"]"#, FULL);
        let c = Config::parse(&dir.join("node.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let (tls, auth) = c.etcd_security().unwrap_or_else(|e| panic!("{e}"));
        let (tls, auth) = (tls.expect("TLS"), auth.expect("credentials"));
        assert_eq!(tls.ca_pem, CERT.as_bytes());
        assert_eq!(tls.server_name.as_deref(), Some("etcd.internal"));
        let client = tls.client.as_ref().expect("client certificate");
        assert_eq!((client.cert_pem.as_slice(), client.key_pem.as_slice()), (CERT.as_bytes(), KEY.as_bytes()));
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("node-2", "s3cr3t-pw"),
            "the newline is not part of it"
        );
        let shown = format!("{c:?} {tls:?} {auth:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("MIGH"), "{shown}");
    }

    fn with_bitcoin(section: &str) -> String {
        format!("{}\n[bitcoin]\n{section}", example(""))
    }

    #[test]
    fn the_bitcoin_backend_is_checked_and_its_password_read_from_an_owner_only_file() {
        let dir = files("bitcoin", &[("btc.pw", "rpc-s3cret\n", 0o600), ("open.pw", "x\n", 0o644)]);
        let text =
            with_bitcoin("rpc_url = \"http://127.0.0.1:18443\"\nrpc_user = \"mpc\"\nrpc_password_file = \"btc.pw\"\n");
        let c = Config::parse(&dir.join("node.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let b = c.bitcoin.as_ref().expect("a backend");
        assert_eq!(b.login, BitcoinLogin::User { user: "mpc".into(), password_file: dir.join("btc.pw") });
        assert_eq!((b.timeout.as_secs(), b.poll.as_secs()), (10, 5), "defaults");
        let rpc = c.bitcoin_backend().unwrap_or_else(|e| panic!("{e}")).expect("a client");
        assert!(!format!("{rpc:?} {c:?}").contains("rpc-s3cret"), "the password never shows");
        let open = text.replace("btc.pw", "open.pw");
        let e = Config::parse(&dir.join("node.toml"), &open).unwrap().bitcoin_backend().unwrap_err();
        assert_eq!(e.field, "bitcoin.rpc_password_file");
        assert!(e.problem.contains("readable by others"), "{e}");
        let cookie =
            with_bitcoin("rpc_url = \"http://127.0.0.1:18443\"\ncookie_file = \"/var/lib/bitcoind/.cookie\"\n");
        let c = Config::parse(&dir.join("node.toml"), &cookie).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.bitcoin.clone().unwrap().login, BitcoinLogin::Cookie("/var/lib/bitcoind/.cookie".into()));
        let plain = Config::parse(&dir.join("node.toml"), &example("")).unwrap();
        assert!(plain.bitcoin.is_none() && plain.core.chain.is_none(), "optional: no chain is followed");
        // The section is the core's chain settings: defaults by network,
        // each one overridable.
        let chain = c.core.chain.as_ref().expect("followed on chain");
        let defaults = mpc_core::ChainConfig::for_network(c.core.cluster.network);
        assert_eq!(chain.confirmations, defaults.confirmations);
        assert_eq!((chain.check_ms, chain.broadcast_timeout_ms), (5_000, 600_000));
        let tuned = cookie.clone() + "confirmations = 3\nbroadcast_timeout_secs = 60\nrebroadcast_secs = 2\n";
        let chain = Config::parse(&dir.join("node.toml"), &tuned).unwrap_or_else(|e| panic!("{e}")).core.chain.unwrap();
        assert_eq!((chain.confirmations, chain.broadcast_timeout_ms, chain.rebroadcast_ms), (3, 60_000, 2_000));
    }

    #[test]
    fn a_bad_bitcoin_section_is_refused_naming_the_field() {
        let url = "rpc_url = \"http://127.0.0.1:18443\"\n";
        for (section, field, words) in [
            (url.to_string(), "bitcoin", "name cookie_file"),
            (format!("{url}rpc_user = \"mpc\"\n"), "bitcoin.rpc_password_file", "needs a password file"),
            (format!("{url}rpc_password_file = \"pw\"\n"), "bitcoin.rpc_user", "needs a user"),
            (
                format!("{url}cookie_file = \"c\"\nrpc_user = \"mpc\"\nrpc_password_file = \"pw\"\n"),
                "bitcoin.cookie_file",
                "not both",
            ),
            (
                "rpc_url = \"http://u:p@127.0.0.1:1\"\ncookie_file = \"c\"\n".to_string(),
                "bitcoin.rpc_url",
                "credentials",
            ),
            ("rpc_url = \"ftp://127.0.0.1:1\"\ncookie_file = \"c\"\n".to_string(), "bitcoin.rpc_url", "http://"),
            ("rpc_url = \"not a url\"\ncookie_file = \"c\"\n".to_string(), "bitcoin.rpc_url", "not a url"),
            (format!("{url}cookie_file = \"c\"\npoll_secs = 0\n"), "bitcoin.poll_secs", "at least 1"),
            (format!("{url}cookie_file = \"c\"\nconfirmations = 0\n"), "bitcoin.confirmations", "at least 1"),
            (
                format!("{url}cookie_file = \"c\"\nbroadcast_timeout_secs = 0\n"),
                "bitcoin.broadcast_timeout_secs",
                "at least 1",
            ),
            (
                format!("{url}cookie_file = \"c\"\nrebroadcast_secs = 60\nrebroadcast_max_secs = 30\n"),
                "bitcoin.rebroadcast_max_secs",
                "at least rebroadcast_secs",
            ),
        ] {
            let e = Config::parse(Path::new("/etc/mpc/node.toml"), &with_bitcoin(&section)).unwrap_err();
            assert_eq!(e.field, field, "{section}: {e}");
            assert!(e.problem.contains(words), "{section}: {e}");
        }
    }

    #[test]
    fn unusable_etcd_files_are_named_with_their_field() {
        let text = with_etcd(r#"["https://etcd1:2379"]"#, FULL);
        let load = |tag: &str, entries: &[(&str, &str, u32)]| {
            let dir = files(tag, entries);
            Config::parse(&dir.join("node.toml"), &text).unwrap().etcd_security().unwrap_err()
        };
        let ok = [("ca.pem", CERT, 0o644), ("node.pem", CERT, 0o644), ("node.key", KEY, 0o600), ("pw", "pw\n", 0o600)];
        let without = |name: &str| ok.iter().copied().filter(|(n, ..)| *n != name).collect::<Vec<_>>();
        let replaced = |name: &'static str, text: &'static str, mode: u32| {
            ok.iter().map(|e| if e.0 == name { (name, text, mode) } else { *e }).collect::<Vec<_>>()
        };

        let e = load("no-ca", &without("ca.pem"));
        assert_eq!(e.field, "etcd.ca_file");
        assert!(e.problem.contains("ca.pem") && e.problem.contains("No such file"), "{e}");
        let e = load("bad-ca", &replaced("ca.pem", "not a certificate", 0o644));
        assert_eq!(e.field, "etcd.ca_file");
        assert!(e.problem.contains("holds no PEM certificate"), "{e}");
        let e = load("open-key", &replaced("node.key", KEY, 0o644));
        assert_eq!(e.field, "etcd.key_file");
        assert!(e.problem.contains("readable by others"), "{e}");
        let e = load("open-pw", &replaced("pw", "hunter2\n", 0o640));
        assert_eq!(e.field, "etcd.password_file");
        assert!(e.problem.contains("readable by others") && !e.problem.contains("hunter2"), "{e}");
        let e = load("two-line-pw", &replaced("pw", "hunter2\nhunter3\n", 0o600));
        assert!(e.problem.contains("more than one line") && !e.problem.contains("hunter"), "{e}");
        let e = load("empty-pw", &replaced("pw", "\n", 0o600));
        assert!(e.problem.contains("is empty"), "{e}");
    }

    #[test]
    fn the_database_root_certificate_is_resolved_and_checked() {
        let dir = files("pg", &[("pg-ca.pem", CERT, 0o644)]);
        let with_url = |url: &str| {
            example("").replace(
                "master_key_file = \"n2/master.key\"\n",
                &format!("master_key_file = \"n2/master.key\"\ndatabase_url = \"{url}\"\n"),
            )
        };
        let c = Config::parse(
            &dir.join("node.toml"),
            &with_url("postgres://mpc@db.internal/n2?sslmode=verify-full&sslrootcert=pg-ca.pem"),
        )
        .unwrap();
        let tls = PostgresTls::of_url(&c.database_url).unwrap();
        assert_eq!(tls.root_cert, Some(dir.join("pg-ca.pem")), "{}", c.database_url);
        assert_eq!(tls.mode, mpc_io_store::SslMode::VerifyFull);
        c.check_database_tls().unwrap_or_else(|e| panic!("{e}"));

        let c = Config::parse(
            &dir.join("node.toml"),
            &with_url("postgres://mpc@db.internal/n2?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        )
        .unwrap();
        let e = c.check_database_tls().unwrap_err();
        assert_eq!(e.field, "node.database_url");
        assert!(e.problem.contains("sslrootcert") && e.problem.contains("/nonexistent/ca.pem"), "{e}");

        let e = Config::parse(&dir.join("node.toml"), &with_url("postgres://mpc@db/n2?sslmode=sometimes")).unwrap_err();
        assert_eq!(e.field, "node.database_url");
    }

    #[test]
    fn a_bad_token_digest_and_a_duplicate_operator_are_refused() {
        let dup = format!("[[api.operators]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\n", hex::encode([1u8; 32]));
        let e = Config::parse(Path::new("n.toml"), &example(&dup)).unwrap_err();
        assert_eq!(e.field, "api.operators[1].name");
        let bad = "[[api.operators]]\nname = \"x\"\ntoken_sha256 = \"abc\"\n";
        let e = Config::parse(Path::new("n.toml"), &example(bad)).unwrap_err();
        assert_eq!(e.field, "api.operators[1].token_sha256");
    }
}
