//! `mpc-node preflight --config FILE`: everything a node needs to start,
//! checked in the order start-up needs it, before the operator starts it
//! (or after changing its host), with each problem said in words the
//! operator can act on (INFRA-001).
//!
//! The checks: the configuration itself; the vote key against the member
//! list; the TLS certificates (chain to the cluster CA, this node's id,
//! validity, the CA key kept off the host); the master key file; the
//! database (opened as start-up opens it: migrations applied, the node
//! binding and the master key proven); etcd (reachable with the configured
//! TLS and login, no other process live under this node's id); the Bitcoin
//! backend (the right chain, synced); the QUIC and API ports free; and the
//! clock (synchronised).
//!
//! A check that cannot run because one it depends on failed is reported
//! as skipped with the reason, so one mistake gives one failure, not nine.
//! Nothing here prints a secret: key files are checked by their form and
//! what they prove, never shown.

use crate::config::Config;
use mpc_io_quic::{certs, tls};
use mpc_io_store::coord::Coordinator;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// The node would start, but the operator should look.
    Warn,
    /// The node would not start, or would run wrongly.
    Fail,
    /// Not run: a check it needs failed.
    Skipped,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        })
    }
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: Check,
    pub verdict: Verdict,
    pub detail: String,
}

/// The checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Config,
    VoteKey,
    Certificates,
    MasterKey,
    Database,
    Etcd,
    Bitcoin,
    Ports,
    Clock,
}

impl Check {
    pub const ALL: [Check; 9] = [
        Check::Config,
        Check::VoteKey,
        Check::Certificates,
        Check::MasterKey,
        Check::Database,
        Check::Etcd,
        Check::Bitcoin,
        Check::Ports,
        Check::Clock,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Config => "config",
            Check::VoteKey => "vote_key",
            Check::Certificates => "certificates",
            Check::MasterKey => "master_key",
            Check::Database => "database",
            Check::Etcd => "etcd",
            Check::Bitcoin => "bitcoin",
            Check::Ports => "ports",
            Check::Clock => "clock",
        }
    }
}

/// Every check's outcome for one configuration file.
#[derive(Clone, Debug, Serialize)]
pub struct Preflight {
    pub config: PathBuf,
    pub passed: bool,
    pub findings: Vec<Finding>,
}

impl Preflight {
    pub fn finding(&self, check: Check) -> &Finding {
        self.findings.iter().find(|f| f.check == check).expect("every check reports")
    }

    fn count(&self, verdict: Verdict) -> usize {
        self.findings.iter().filter(|f| f.verdict == verdict).count()
    }
}

impl std::fmt::Display for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "preflight of {}", self.config.display())?;
        for finding in &self.findings {
            writeln!(f, "  {:<8} {:<13} {}", finding.verdict.to_string(), finding.check.name(), finding.detail)?;
        }
        let (failed, warned) = (self.count(Verdict::Fail), self.count(Verdict::Warn));
        if self.passed {
            write!(f, "preflight passed ({warned} warning(s)): this node can start")
        } else {
            let names: Vec<&str> =
                self.findings.iter().filter(|x| x.verdict == Verdict::Fail).map(|x| x.check.name()).collect();
            write!(f, "preflight FAILED: {failed} check(s) failed ({}); fix them before starting", names.join(", "))
        }
    }
}

/// Collects findings; a check whose prerequisite failed is skipped.
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, check: Check, outcome: Result<(Verdict, String), String>) -> bool {
        let (verdict, detail) = outcome.unwrap_or_else(|problem| (Verdict::Fail, problem));
        self.0.push(Finding { check, verdict, detail });
        verdict != Verdict::Fail
    }

    fn skip(&mut self, check: Check, because: Check) {
        self.0.push(Finding {
            check,
            verdict: Verdict::Skipped,
            detail: format!("needs the {} check to pass first", because.name()),
        });
    }
}

fn ok(detail: impl Into<String>) -> Result<(Verdict, String), String> {
    Ok((Verdict::Ok, detail.into()))
}

fn warn(detail: impl Into<String>) -> Result<(Verdict, String), String> {
    Ok((Verdict::Warn, detail.into()))
}

/// Runs every check on the configuration at `path`. Needs a tokio runtime
/// (the database, etcd and bitcoind are asked over the network).
pub async fn preflight(path: &Path) -> Preflight {
    let mut found = Findings(Vec::new());
    match Config::load(path) {
        Err(e) => {
            found.add(Check::Config, Err(format!("{e}")));
            for check in &Check::ALL[1..] {
                found.skip(*check, Check::Config);
            }
        }
        Ok(config) => {
            found.add(Check::Config, ok(describe(&config)));
            run_checks(&config, &mut found).await;
        }
    }
    let findings = found.0;
    Preflight { config: path.to_path_buf(), passed: findings.iter().all(|f| f.verdict != Verdict::Fail), findings }
}

fn describe(config: &Config) -> String {
    let c = &config.core.cluster;
    format!(
        "node {} of cluster {:?}: {}-of-{} on {}, {} peer address(es), database {}",
        config.me.0,
        c.cluster_id,
        c.threshold,
        c.members.len(),
        c.network,
        config.peers.len(),
        mpc_io_store::Backend::of_url(&config.database_url).map(|b| format!("{b:?}")).unwrap_or_default()
    )
}

async fn run_checks(config: &Config, found: &mut Findings) {
    found.add(Check::VoteKey, vote_key(config));
    found.add(Check::Certificates, certificates(config));
    if found.add(Check::MasterKey, master_key(config)) {
        found.add(Check::Database, database(config).await);
    } else {
        found.skip(Check::Database, Check::MasterKey);
    }
    found.add(Check::Etcd, etcd(config).await);
    found.add(Check::Bitcoin, bitcoin(config).await);
    found.add(Check::Ports, ports(config));
    found.add(Check::Clock, clock());
}

fn vote_key(config: &Config) -> Result<(Verdict, String), String> {
    crate::run::identity(config).map_err(|e| e.to_string())?;
    ok(format!("{} matches member {}'s public key", config.vote_key_file.display(), config.me.0))
}

fn certificates(config: &Config) -> Result<(Verdict, String), String> {
    let dir = &config.cert_dir;
    tls::load(dir, config.me).map_err(|e| format!("{e} (certificates are read from {})", dir.display()))?;
    if let Some(warning) = crate::run::ca_key_on_host(config) {
        return warn(warning);
    }
    let (_, not_after) = tls::own_validity(dir, config.me).map_err(|e| e.to_string())?;
    let days_left = (not_after - unix_now()) / 86_400;
    let cert = certs::node_cert_path(dir, config.me);
    if days_left < 30 {
        return warn(format!(
            "{} expires in {days_left} day(s): issue a new one (`mpc-cli certs issue`)",
            cert.display()
        ));
    }
    ok(format!("{} is node {}'s, signed by the cluster CA, valid {days_left} more days", cert.display(), config.me.0))
}

fn master_key(config: &Config) -> Result<(Verdict, String), String> {
    crate::run::master_key(config).map_err(|e| e.to_string())?;
    ok(format!("{} is owner-only and holds a 256-bit key", config.master_key_file.display()))
}

/// How long the database, etcd or bitcoind may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

async fn database(config: &Config) -> Result<(Verdict, String), String> {
    let store = match tokio::time::timeout(ANSWER_WITHIN, crate::run::open_store(config)).await {
        Err(_) => return Err(format!("the database did not answer within {ANSWER_WITHIN:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(store)) => store,
    };
    let epoch = store.epoch().await.map_err(|e| format!("reading the fencing epoch: {e}"))?;
    let backend = store.backend();
    store.close().await;
    if let Ok(tls) = mpc_io_store::PostgresTls::of_url(&config.database_url) {
        let loopback = url::Url::parse(&config.database_url).ok().and_then(|u| u.host_str().map(is_loopback));
        if !tls.verifies_server() && loopback != Some(true) {
            return warn(format!(
                "the PostgreSQL connection uses sslmode={:?}, not verify-full: it is not protected against an \
                 active attacker on the network (add sslmode=verify-full and sslrootcert to node.database_url)",
                tls.mode
            ));
        }
    }
    ok(format!(
        "{backend:?} database opens with this master key and belongs to node {} (fencing epoch {epoch})",
        config.me.0
    ))
}

async fn etcd(config: &Config) -> Result<(Verdict, String), String> {
    let coord_config = crate::run::coord_config(config).map_err(|e| e.to_string())?;
    let endpoints = coord_config.endpoints.join(",");
    let coord = Coordinator::connect(coord_config).await.map_err(|e| e.to_string())?;
    let live = tokio::time::timeout(ANSWER_WITHIN, coord.live_nodes())
        .await
        .map_err(|_| format!("etcd at {endpoints} did not list the live nodes within {ANSWER_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
    if live.contains(&config.me) {
        return Err(format!(
            "etcd at {endpoints} shows node {} live already: another process runs with this identity (stop it \
             first; two processes of one member would fight over its presignatures)",
            config.me.0
        ));
    }
    let live: Vec<String> = live.iter().map(|n| n.0.to_string()).collect();
    ok(format!("etcd at {endpoints} answers; live members now: [{}]", live.join(", ")))
}

async fn bitcoin(config: &Config) -> Result<(Verdict, String), String> {
    let Some(rpc) = config.bitcoin_backend().map_err(|e| e.to_string())? else {
        return warn("no [bitcoin] section: signed transactions are not broadcast nor followed on chain");
    };
    let network = config.core.cluster.network;
    let info = rpc.chain_info().await.map_err(|e| e.to_string())?;
    if info.is_network(network) && info.initial_block_download {
        // The node starts and runs degraded until bitcoind has caught up.
        return warn(format!(
            "bitcoind at {} is still syncing (at block {}): broadcasts wait until it has caught up",
            rpc.url(),
            info.blocks
        ));
    }
    if let Some(reason) = crate::backend_watch::judge(&rpc, network, &info).reason {
        return Err(reason);
    }
    ok(format!("bitcoind at {} follows {network} and is synced (block {})", rpc.url(), info.blocks))
}

fn ports(config: &Config) -> Result<(Verdict, String), String> {
    let (quic, api) = (config.raw.transport.listen, config.raw.api.listen);
    let why = |what: &str, field: &str, addr: std::net::SocketAddr, e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{what} address {addr} ({field}) is in use: is this node already running, or another service on that \
             port?"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{what} address {addr} ({field}) is not an address of this host")
        }
        _ => format!("{what} address {addr} ({field}): {e}"),
    };
    std::net::UdpSocket::bind(quic).map_err(|e| why("QUIC (UDP)", "transport.listen", quic, e))?;
    std::net::TcpListener::bind(api).map_err(|e| why("API (TCP)", "api.listen", api, e))?;
    ok(format!("QUIC udp/{quic} and API tcp/{api} are free"))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The clock: synchronised, since expiry deadlines are compared between
/// nodes and certificates are judged against it (the certificates check
/// has already judged this node's own against this clock).
fn clock() -> Result<(Verdict, String), String> {
    match kernel_clock_sync() {
        Some((true, max_error_ms)) => ok(format!("synchronised (estimated error at most {max_error_ms} ms)")),
        Some((false, _)) => warn(
            "the kernel reports the clock unsynchronised: run NTP (chrony or systemd-timesyncd); expiry deadlines \
             and certificate validity are judged against it",
        ),
        None => warn("the kernel's clock state could not be read (adjtimex)"),
    }
}

/// Whether the kernel deems the clock synchronised, and its maximum error
/// in milliseconds (`adjtimex(2)` with no change requested).
fn kernel_clock_sync() -> Option<(bool, i64)> {
    // SAFETY: adjtimex with modes = 0 only reads into the zeroed struct we own.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    (state >= 0).then_some((state != libc::TIME_ERROR, t.maxerror as i64 / 1000))
}
