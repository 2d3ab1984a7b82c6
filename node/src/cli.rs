//! `mpc-cli`: the operator's tool.
//!
//! - `certs init|issue`: the cluster CA and the nodes' mutual-TLS
//!   certificates; `cluster init`: a whole cluster's files (certificates,
//!   keys, node configs, operator token, the cluster file); `primes
//!   generate`: safe primes ahead of time (no node needed).
//! - `dkg run|status`, `presig status`, `tx submit|status|wait|list`,
//!   `cluster status`: talk to the nodes' HTTP APIs, found in the cluster
//!   file (`--cluster FILE`, else `MPC_CLI_CLUSTER`, else `./mpc-cli.toml`):
//!
//!   ```toml
//!   token_file = "operator.token"   # relative to this file
//!   [nodes]
//!   1 = "http://127.0.0.1:8101"
//!   ```
//!
//!   `--token-file F` or `MPC_TOKEN` override the token. Single-node
//!   commands ask `--node N` (default: the lowest id). Output is a table for
//!   people, or the API's JSON with `--json`.
//!
//! Exit codes, for scripts to branch on ([`EXIT_CODES`], also in `--help`):
//! 0 success; 1 an error talking to a node or an unexpected answer (nodes
//! disagreeing on the key included); 2 usage or local file problems; 3 not
//! found; 4 refused by the node (a 4xx other than 404: bad PSBT, no key,
//! bad token); 5 node unavailable (connection refused, timed out, 503);
//! 6 `tx wait` ended in a state other than signed (rejected, failed,
//! expired). Multi-node commands print every node and exit with the first
//! failing node's code.

// The binary's root is this file, so its modules are named by path: they
// live in `cli/` beside it.
#[path = "cli/certs.rs"]
mod certs;
#[path = "cli/client.rs"]
mod client;
#[path = "cli/cluster_file.rs"]
mod cluster_file;
#[path = "cli/commands.rs"]
mod commands;
#[path = "cli/setup.rs"]
mod setup;
#[path = "cli/table.rs"]
mod table;

use clap::{Args, Parser, Subcommand};
use client::CliError;
use cluster_file::{Cluster, TokenSource};
use commands::{Out, Polling};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "Exit codes:
  0  success
  1  error talking to a node, or an unexpected answer (e.g. nodes disagree on the key)
  2  usage or local file problem (arguments, cluster file, token file, PSBT file)
  3  not found
  4  refused by the node (4xx other than 404: invalid PSBT, no key, bad token, ...)
  5  node unavailable (connection refused, timeout, 503)
  6  tx wait ended in a state other than signed (rejected, failed, expired)";

#[derive(Parser)]
#[command(name = "mpc-cli", version, about = "mpc-custody operator tool", after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Top,
}

#[derive(Args)]
struct Global {
    /// The cluster file: node API URLs and the token file [default: $MPC_CLI_CLUSTER, else ./mpc-cli.toml].
    #[arg(long, global = true, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// The node for single-node commands (default: the lowest id in the cluster file).
    #[arg(long, global = true, value_name = "N")]
    node: Option<u16>,
    /// The operator token's file, instead of the cluster file's (or $MPC_TOKEN).
    #[arg(long, global = true, value_name = "F")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Top {
    /// Cluster CA and node certificates for mutual TLS between nodes.
    Certs {
        #[command(subcommand)]
        command: Certs,
    },
    /// Distributed key generation.
    Dkg {
        #[command(subcommand)]
        command: Dkg,
    },
    /// The presignature pool.
    Presig {
        #[command(subcommand)]
        command: Presig,
    },
    /// Transactions: submit PSBTs, follow their votes and signing.
    Tx {
        #[command(subcommand)]
        command: Tx,
    },
    /// The cluster as a whole.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Safe primes for aux info, made ahead of time.
    Primes {
        #[command(subcommand)]
        command: Primes,
    },
}

#[derive(Subcommand)]
enum Primes {
    /// Generate one node's safe primes into FILE (owner-only); point the
    /// node's `node.safe_primes_file` at it.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Certs {
    /// Create a cluster CA and a certificate for each of nodes 1..=N.
    Init {
        /// How many nodes.
        #[arg(long)]
        nodes: u16,
        /// Directory nodes load from: ca.pem, node-<id>.pem, node-<id>.key.
        #[arg(long)]
        out: PathBuf,
        /// Directory for the CA's certificate and private key, kept apart
        /// from what nodes load (default: OUT's sibling `<name>-ca`; keep
        /// it offline).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Cluster id, recorded in the CA's subject (`--cluster` names the
        /// cluster file of the API commands).
        #[arg(long, default_value = "mpc-custody")]
        cluster_id: String,
        /// Validity of node certificates in days (the CA gets ten times it).
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Renew the key and certificate of the node given by --node under the directory's CA.
    Issue {
        /// The nodes' certificate directory made by `certs init`.
        #[arg(long)]
        dir: PathBuf,
        /// The CA directory `certs init` wrote (default: DIR's sibling
        /// `<name>-ca`).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

/// How often and how long to poll.
#[derive(Args, Clone, Copy)]
struct PollArgs {
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Give up after this many seconds (exit 1; 5 if a node stayed unreachable). 0: never.
    #[arg(long, default_value_t = 0)]
    timeout_secs: u64,
}

impl PollArgs {
    fn polling(self) -> Polling {
        Polling {
            interval: Duration::from_millis(self.interval_ms.max(10)),
            timeout: (self.timeout_secs > 0).then(|| Duration::from_secs(self.timeout_secs)),
        }
    }
}

#[derive(Subcommand)]
enum Dkg {
    /// Start DKG on the first listed node and wait until every listed node
    /// reports the same key; print the key and the address. A key that
    /// exists or a DKG already running is waited for, not an error.
    Run {
        /// The nodes to wait for, e.g. 1,2,3,4,5.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u16>,
        #[command(flatten)]
        poll: PollArgs,
    },
    /// One node's DKG stage, public key and address.
    Status,
}

#[derive(Subcommand)]
enum Presig {
    /// The pool per node and per signer set (every node, or --node).
    Status,
    /// Wait, with a progress bar, until the selected node sees at least
    /// this many presignatures ready.
    Wait {
        #[arg(long)]
        ready: u64,
        #[command(flatten)]
        poll: PollArgs,
    },
}

#[derive(Subcommand)]
enum Tx {
    /// Submit a PSBT (binary or base64) from FILE, or stdin with `-`; prints the transaction id.
    Submit { file: PathBuf },
    /// A transaction's state, votes, history and signed transaction.
    Status {
        id: String,
        /// Also write the signed PSBT (BIP-174 binary, as wallets load
        /// `.psbt` files) to this file; exit 3 if it is not signed yet.
        #[arg(long, value_name = "FILE")]
        signed_psbt: Option<PathBuf>,
    },
    /// Poll until the transaction is signed, or as far as `--until` says
    /// (exit 0), or ends otherwise: rejected, failed or expired (exit 6).
    Wait {
        id: String,
        #[arg(long, value_enum, default_value_t = commands::WaitUntil::Signed)]
        until: commands::WaitUntil,
        #[command(flatten)]
        poll: PollArgs,
    },
    /// Transactions, newest first.
    List {
        /// Only this state: received, voting, approved, rejected, expired,
        /// signing, signed, broadcast, confirmed, failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Every node's health, leader, key, pool and peers.
    Status,
    /// Write everything a cluster needs into DIR: the CA and node
    /// certificates, each node's vote and master keys (owner-only) and
    /// node.toml, an operator token, and DIR/mpc-cli.toml for this tool.
    Init(Box<InitArgs>),
}

#[derive(Args)]
struct InitArgs {
    /// How many nodes.
    #[arg(long)]
    nodes: u16,
    /// The directory to write (refused if it holds a cluster).
    #[arg(long)]
    out: PathBuf,
    /// etcd client URLs, every node uses them (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// PEM: the CA that signed etcd's server certificates (needed with
    /// https:// endpoints). In this and the other --etcd-* paths and the
    /// user, `{id}` becomes each node's id; the paths are where the files
    /// will be on the node's machine.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<String>,
    /// PEM: the node's client certificate, for etcd's --client-cert-auth.
    #[arg(long, value_name = "FILE", requires = "etcd_client_key")]
    etcd_client_cert: Option<String>,
    /// PEM: its private key, owner-only.
    #[arg(long, value_name = "FILE", requires = "etcd_client_cert")]
    etcd_client_key: Option<String>,
    /// The name etcd's certificate carries, when not the endpoints' host.
    #[arg(long, value_name = "NAME")]
    etcd_server_name: Option<String>,
    /// The etcd user the node logs in as (etcd's `auth enable`).
    #[arg(long, value_name = "USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// The file holding that user's password (one line, owner-only); never
    /// the password itself on a command line.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<String>,
    /// Binds votes, execution ids and etcd keys to this cluster.
    #[arg(long, default_value = "local")]
    cluster_id: String,
    /// bitcoin, testnet, signet or regtest.
    #[arg(long, default_value = "regtest")]
    network: bitcoin::Network,
    /// Signers per signature (default: a majority).
    #[arg(long)]
    threshold: Option<u16>,
    /// Each node's host address, in id order (default: all 127.0.0.1).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<std::net::IpAddr>,
    /// Node N's QUIC port is this plus N.
    #[arg(long, default_value_t = 7100)]
    peer_port_base: u16,
    /// Node N's API port is this plus N.
    #[arg(long, default_value_t = 8100)]
    api_port_base: u16,
    /// A node's database, as ID=URL (postgres://...); others use SQLite in their directory.
    #[arg(long = "database-url", value_name = "ID=URL")]
    database_urls: Vec<String>,
    #[arg(long, default_value_t = 50)]
    pool_low_water: usize,
    #[arg(long, default_value_t = 100)]
    pool_target: usize,
    #[arg(long, default_value_t = 150)]
    pool_max: usize,
    #[arg(long, default_value_t = 5)]
    pool_parallel: usize,
    /// An address every node's policy allows paying (repeat).
    #[arg(long = "allow-destination", value_name = "ADDRESS")]
    allowed_destinations: Vec<String>,
    /// Safe primes every node loads (`primes generate`, or the TEST-ONLY fixtures on regtest).
    #[arg(long, value_name = "FILE")]
    safe_primes: Option<PathBuf>,
    /// The operator named in the audit trail for this token.
    #[arg(long, default_value = "operator")]
    operator: String,
    /// bitcoind's JSON-RPC (`http://host:port`): every node broadcasts
    /// through it and follows its chain. Log in with a cookie file, or a
    /// user and a password file.
    #[arg(long, value_name = "URL")]
    bitcoin_rpc_url: Option<String>,
    #[arg(long, value_name = "FILE", requires = "bitcoin_rpc_url")]
    bitcoin_cookie_file: Option<PathBuf>,
    #[arg(long, value_name = "USER", requires = "bitcoin_rpc_url")]
    bitcoin_rpc_user: Option<String>,
    /// One line, owner-only; never the password itself on a command line.
    #[arg(long, value_name = "FILE", requires = "bitcoin_rpc_user")]
    bitcoin_rpc_password_file: Option<PathBuf>,
    /// How often each node asks bitcoind how its transactions stand.
    #[arg(long, value_name = "SECS", requires = "bitcoin_rpc_url")]
    bitcoin_poll_secs: Option<u64>,
}

impl InitArgs {
    fn spec(self) -> Result<mpc_node::cluster_init::ClusterInit, CliError> {
        let mut spec = mpc_node::cluster_init::ClusterInit::local(self.out, self.nodes, self.etcd);
        spec.etcd_access = mpc_node::cluster_init::EtcdAccess {
            ca_file: self.etcd_ca,
            cert_file: self.etcd_client_cert,
            key_file: self.etcd_client_key,
            server_name: self.etcd_server_name,
            user: self.etcd_user,
            password_file: self.etcd_password_file,
        };
        spec.cluster_id = self.cluster_id;
        spec.network = self.network;
        spec.threshold = self.threshold;
        spec.hosts = self.hosts;
        spec.peer_port_base = self.peer_port_base;
        spec.api_port_base = self.api_port_base;
        for entry in self.database_urls {
            let (id, url) = entry
                .split_once('=')
                .and_then(|(id, url)| Some((id.parse::<u16>().ok()?, url.to_string())))
                .ok_or_else(|| CliError::Usage(format!("--database-url {entry:?}: expected ID=URL")))?;
            spec.database_urls.insert(id, url);
        }
        spec.pool = mpc_core::PoolConfig {
            low_water: self.pool_low_water,
            target: self.pool_target,
            max: self.pool_max,
            parallel_sessions: self.pool_parallel,
        };
        spec.policy.allowed_destinations = self.allowed_destinations;
        let absolute =
            |p: PathBuf| std::path::absolute(&p).map_err(|e| CliError::Local(format!("{}: {e}", p.display())));
        spec.safe_primes_file = self.safe_primes.map(absolute).transpose()?;
        spec.operator = self.operator;
        if let Some(url) = self.bitcoin_rpc_url {
            let mut section = mpc_node::config::BitcoinSection::new(url);
            section.cookie_file = self.bitcoin_cookie_file.map(absolute).transpose()?;
            section.rpc_user = self.bitcoin_rpc_user;
            section.rpc_password_file = self.bitcoin_rpc_password_file.map(absolute).transpose()?;
            if let Some(secs) = self.bitcoin_poll_secs {
                section.poll_secs = secs;
            }
            spec.bitcoin = Some(section);
        }
        Ok(spec)
    }
}

fn cluster(global: &Global) -> Result<Cluster, CliError> {
    let path = global
        .cluster
        .clone()
        .or_else(|| std::env::var_os("MPC_CLI_CLUSTER").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("mpc-cli.toml"));
    let token = TokenSource { token_file: global.token_file.clone(), token_env: std::env::var("MPC_TOKEN").ok() };
    Cluster::load(&path, token)
}

fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    let out = Out { json: g.json };
    match cli.command {
        Top::Certs { command: Certs::Init { nodes, out, ca_dir, cluster_id, days } } => {
            certs::init(&out, ca_dir.as_deref(), &cluster_id, nodes, days)
        }
        Top::Certs { command: Certs::Issue { dir, ca_dir, days } } => {
            let node = g.node.ok_or_else(|| CliError::Usage("certs issue needs --node N".into()))?;
            certs::issue(&dir, ca_dir.as_deref(), node, days)
        }
        Top::Dkg { command: Dkg::Run { nodes, poll } } => commands::dkg_run(&cluster(g)?, &nodes, poll.polling(), &out),
        Top::Dkg { command: Dkg::Status } => commands::dkg_status(&cluster(g)?.selected(g.node)?, &out),
        Top::Presig { command: Presig::Status } => commands::presig_status(&cluster(g)?.all_or(g.node)?, &out),
        Top::Presig { command: Presig::Wait { ready, poll } } => {
            commands::presig_wait(&cluster(g)?.selected(g.node)?, ready, poll.polling(), &out)
        }
        Top::Primes { command: Primes::Generate { out } } => setup::primes_generate(&out),
        Top::Cluster { command: ClusterCmd::Init(args) } => setup::cluster_init(&(*args).spec()?),
        Top::Tx { command } => {
            let node = cluster(g)?.selected(g.node)?;
            match command {
                Tx::Submit { file } => commands::tx_submit(&node, &file, &out),
                Tx::Status { id, signed_psbt } => commands::tx_status(&node, &id, signed_psbt.as_deref(), &out),
                Tx::Wait { id, until, poll } => commands::tx_wait(&node, &id, until, poll.polling(), &out),
                Tx::List { state, offset, limit } => commands::tx_list(&node, state.as_deref(), offset, limit, &out),
            }
        }
        Top::Cluster { command: ClusterCmd::Status } => commands::cluster_status(&cluster(g)?.all_or(g.node)?, &out),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed_and_documents_the_exit_codes() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for code in 0..=6 {
            assert!(help.contains(&format!("\n  {code}  ")), "exit code {code} missing from --help:\n{help}");
        }
    }

    #[test]
    fn certs_issue_takes_the_global_node_and_init_its_own_cluster_id() {
        let cli = Cli::try_parse_from(["mpc-cli", "certs", "issue", "--node", "4", "--dir", "d"]).unwrap();
        assert_eq!(cli.global.node, Some(4));
        let cli = Cli::try_parse_from(["mpc-cli", "certs", "init", "--nodes", "5", "--out", "d", "--cluster-id", "c"]);
        assert!(
            matches!(cli.unwrap().command, Top::Certs { command: Certs::Init { cluster_id, .. } } if cluster_id == "c")
        );
    }

    #[test]
    fn dkg_run_takes_a_comma_separated_node_list() {
        let cli = Cli::try_parse_from(["mpc-cli", "dkg", "run", "--nodes", "1,2,3,4,5", "--json"]).unwrap();
        match cli.command {
            Top::Dkg { command: Dkg::Run { nodes, .. } } => assert_eq!(nodes, [1, 2, 3, 4, 5]),
            _ => panic!("parsed as another command"),
        }
        assert!(cli.global.json);
        assert!(Cli::try_parse_from(["mpc-cli", "dkg", "run"]).is_err(), "--nodes is required");
    }
}
