//! `mpc-cli cluster init`: everything a cluster needs to start, in one
//! directory: the cluster CA and node certificates, each node's Ed25519
//! vote key and master key (owner-only), each node's `node.toml`, an
//! operator token (its SHA-256 in every node's config), and `mpc-cli.toml`
//! listing the nodes' API addresses for the operator's tool.
//!
//! ```text
//! DIR/mpc-cli.toml        token_file, [nodes] id = API URL
//! DIR/operator.token      the bearer token (0600)
//! DIR/certs/              ca.pem, node-<id>.pem, node-<id>.key (nodes load these)
//! DIR/certs-ca/           ca.pem, ca.key (0700; only `certs issue` needs it: keep it offline)
//! DIR/node-<id>/node.toml vote.key, master.key (0600); the node's state
//! ```
//!
//! Quorums follow DESIGN §3 for the node count: f = (n - 1) / 3 Byzantine
//! members tolerated, qr = n - f, qa = max(t, n + f + 1 - qr); the threshold
//! defaults to a majority. Addresses default to loopback with ports
//! `peer_port_base + id` and `api_port_base + id`.

use crate::config::{
    ApiSection, BitcoinSection, ClusterSection, EtcdSection, FileConfig, MemberSection, NodeSection, OperatorSection,
    TransportSection,
};
use mpc_core::{NodeId, PolicyConfig, PoolConfig, Timeouts};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// What `cluster init` is asked to make.
#[derive(Clone, Debug)]
pub struct ClusterInit {
    pub out: PathBuf,
    pub nodes: u16,
    pub cluster_id: String,
    pub network: bitcoin::Network,
    /// Signers per signature; default a majority of `nodes`.
    pub threshold: Option<u16>,
    /// Each node's host address, in id order; default all loopback.
    pub hosts: Vec<IpAddr>,
    pub peer_port_base: u16,
    pub api_port_base: u16,
    pub etcd_endpoints: Vec<String>,
    /// TLS and login for etcd, the same for every node but for `{id}`.
    pub etcd_access: EtcdAccess,
    /// Per node id; a node without one uses SQLite in its directory.
    pub database_urls: BTreeMap<u16, String>,
    pub pool: PoolConfig,
    pub timeouts: Timeouts,
    pub policy: PolicyConfig,
    /// Given to every node as `safe_primes_file` (e.g. primes made ahead).
    pub safe_primes_file: Option<PathBuf>,
    pub operator: String,
    /// Every node's `[bitcoin]` section (one bitcoind for all, as on a
    /// local cluster); `None` leaves it out.
    pub bitcoin: Option<BitcoinSection>,
}

impl ClusterInit {
    /// Defaults for a local cluster of `nodes` on loopback.
    pub fn local(out: PathBuf, nodes: u16, etcd: Vec<String>) -> ClusterInit {
        ClusterInit {
            out,
            nodes,
            cluster_id: "local".into(),
            network: bitcoin::Network::Regtest,
            threshold: None,
            hosts: Vec::new(),
            peer_port_base: 7100,
            api_port_base: 8100,
            etcd_endpoints: etcd,
            etcd_access: EtcdAccess::default(),
            database_urls: BTreeMap::new(),
            pool: PoolConfig::default(),
            timeouts: Timeouts::default(),
            policy: PolicyConfig {
                max_amount_sat: 1_000_000_000,
                allowed_destinations: Vec::new(),
                max_fee_rate_sat_vb: 1_000,
                daily_cap_sat: 10_000_000_000,
            },
            safe_primes_file: None,
            operator: "operator".into(),
            bitcoin: None,
        }
    }
}

/// How the nodes reach a secured etcd (DESIGN §4): the CA that signed
/// etcd's certificates, a client certificate and a login per node. A path
/// or user name may hold `{id}`, replaced by each node's id, so that every
/// node gets its own certificate and etcd user (an etcd role per cluster
/// limits them to `/mpc/<cluster>/`). The paths are where the files will be
/// on each node's machine: `cluster init` writes them into the configs and
/// `mpc-node preflight` checks them there.
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// The name etcd's certificate carries, when not the endpoints' host.
    pub server_name: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
}

impl EtcdAccess {
    /// Node `id`'s `[etcd]` section.
    pub fn section(&self, endpoints: &[String], id: u16) -> EtcdSection {
        let fill = |t: &Option<String>| t.as_ref().map(|t| t.replace("{id}", &id.to_string()));
        EtcdSection {
            ca_file: fill(&self.ca_file).map(PathBuf::from),
            cert_file: fill(&self.cert_file).map(PathBuf::from),
            key_file: fill(&self.key_file).map(PathBuf::from),
            server_name: self.server_name.clone(),
            user: fill(&self.user),
            password_file: fill(&self.password_file).map(PathBuf::from),
            ..EtcdSection::new(endpoints.to_vec())
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub configs: BTreeMap<NodeId, PathBuf>,
    pub cli_config: PathBuf,
    pub token_file: PathBuf,
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Writes the cluster directory. Refuses a directory that already holds a
/// cluster (it would replace keys that guard funds).
pub fn init(spec: &ClusterInit) -> anyhow::Result<Written> {
    let n = spec.nodes;
    anyhow::ensure!(n >= 2, "a cluster needs at least 2 nodes");
    anyhow::ensure!(
        spec.hosts.is_empty() || spec.hosts.len() == n as usize,
        "give one host address per node ({n}), or none for loopback"
    );
    anyhow::ensure!(!spec.etcd_endpoints.is_empty(), "give at least one etcd endpoint");
    let cli_config = spec.out.join("mpc-cli.toml");
    anyhow::ensure!(!cli_config.exists(), "{} already holds a cluster: refusing to overwrite it", spec.out.display());
    std::fs::create_dir_all(&spec.out)?;
    let certs = spec.out.join("certs");
    mpc_io_quic::certs::init(&certs, &mpc_io_quic::certs::default_ca_dir(&certs), &spec.cluster_id, n, 365)?;

    let f = (n - 1) / 3;
    let t = spec.threshold.unwrap_or(n / 2 + 1);
    let qr = n - f;
    let qa = t.max(n + f + 1 - qr);
    let host = |id: u16| spec.hosts.get(id as usize - 1).copied().unwrap_or(IpAddr::from([127, 0, 0, 1]));

    let mut vote_keys = BTreeMap::new();
    for id in 1..=n {
        let dir = spec.out.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        write_private(&dir.join("vote.key"), hex::encode(secret).as_bytes())?;
        secret.fill(0);
        vote_keys.insert(id, hex::encode(key.verifying_key().to_bytes()));
        write_private(&dir.join("master.key"), mpc_io_store::MasterKey::generate_hex().as_bytes())?;
    }
    let token = random_hex();
    let token_file = spec.out.join("operator.token");
    write_private(&token_file, token.as_bytes())?;
    let token_sha256 = hex::encode(Sha256::digest(token.as_bytes()));

    let members: Vec<MemberSection> = (1..=n)
        .map(|id| MemberSection {
            id,
            vote_key: vote_keys[&id].clone(),
            peer_address: SocketAddr::new(host(id), spec.peer_port_base + id),
        })
        .collect();
    let mut configs = BTreeMap::new();
    let mut cli_nodes = String::new();
    for id in 1..=n {
        let api = SocketAddr::new(host(id), spec.api_port_base + id);
        let file = FileConfig {
            node: NodeSection {
                id,
                state_dir: ".".into(),
                vote_key_file: "vote.key".into(),
                master_key_file: "master.key".into(),
                database_url: spec.database_urls.get(&id).cloned(),
                safe_primes_file: spec.safe_primes_file.clone(),
                compute_workers: 0,
                multiexp_tables: true,
            },
            cluster: ClusterSection {
                id: spec.cluster_id.clone(),
                network: spec.network,
                threshold: t,
                approve_quorum: qa,
                reject_quorum: qr,
                byzantine_tolerance: f,
                members: members.clone(),
                pool: spec.pool.clone(),
                timeouts: spec.timeouts.clone(),
            },
            policy: spec.policy.clone(),
            transport: TransportSection {
                listen: SocketAddr::new(host(id), spec.peer_port_base + id),
                cert_dir: "../certs".into(),
            },
            etcd: spec.etcd_access.section(&spec.etcd_endpoints, id),
            api: ApiSection {
                listen: api,
                max_body_bytes: 2 << 20,
                operators: vec![OperatorSection { name: spec.operator.clone(), token_sha256: token_sha256.clone() }],
            },
            bitcoin: spec.bitcoin.clone(),
        };
        let text = format!(
            "# mpc-node configuration for node {id} of cluster {:?}, written by `mpc-cli cluster init`.\n\
             # Paths are relative to this file. Reference: README, \"Configuration\".\n{}",
            spec.cluster_id,
            toml::to_string(&file)?
        );
        let path = spec.out.join(format!("node-{id}/node.toml"));
        std::fs::write(&path, text)?;
        // Checked as the node will check it.
        crate::config::Config::load(&path).map_err(|e| anyhow::anyhow!("generated config is invalid: {e}"))?;
        configs.insert(NodeId(id), path);
        cli_nodes.push_str(&format!("{id} = \"http://{api}\"\n"));
    }
    std::fs::write(&cli_config, format!("token_file = \"operator.token\"\n\n[nodes]\n{cli_nodes}"))?;
    Ok(Written { configs, cli_config, token_file })
}
