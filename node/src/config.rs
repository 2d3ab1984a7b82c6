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
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    pub endpoints: Vec<String>,
    /// Liveness and leadership lease; a silent node loses both after it.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: i64,
}

fn default_lease_ttl() -> i64 {
    10
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
        let core = NodeConfig { cluster, policy: raw.policy.clone() };
        core.validate(me).map_err(|e| err(config_error_field(&e), e.to_string()))?;
        if !c.id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            return Err(err("cluster.id", format!("{:?} may hold only letters, digits, '-' and '_'", c.id)));
        }
        peers.remove(&me);
        if raw.etcd.endpoints.is_empty() {
            return Err(err("etcd.endpoints", "at least one etcd endpoint is needed".into()));
        }
        for (i, e) in raw.etcd.endpoints.iter().enumerate() {
            let parsed = url::Url::parse(e).map_err(|x| err(&format!("etcd.endpoints[{i}]"), format!("{e:?}: {x}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(err(&format!("etcd.endpoints[{i}]"), format!("{e:?}: use http:// or https://")));
            }
        }
        if raw.etcd.lease_ttl_secs < 2 {
            return Err(err("etcd.lease_ttl_secs", "must be at least 2 seconds".into()));
        }
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
                url.clone()
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
