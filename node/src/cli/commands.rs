//! The commands that talk to nodes: `dkg`, `presig`, `tx`, `cluster status`.
//! Each prints a human table by default and the API's JSON with `--json`.

use super::client::{CliError, NodeClient};
use super::cluster_file::Cluster;
use super::table::{self, short};
use base64::Engine;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mpc_node::api::types::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Output mode and polling, shared by every command.
pub struct Out {
    pub json: bool,
}

impl Out {
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> Result<(), CliError> {
        if self.json {
            let text =
                serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(format!("cannot print JSON: {e}")))?;
            println!("{text}");
        } else {
            print!("{}", human());
        }
        Ok(())
    }
}

/// How often and how long to poll.
#[derive(Clone, Copy, Debug)]
pub struct Polling {
    pub interval: Duration,
    /// `None`: poll until the answer comes.
    pub timeout: Option<Duration>,
}

fn stage_text(stage: DkgStageName) -> &'static str {
    match stage {
        DkgStageName::NotStarted => "not started",
        DkgStageName::WaitingForPrimes => "waiting for primes",
        DkgStageName::AuxInfo => "aux info",
        DkgStageName::Keygen => "keygen",
        DkgStageName::Confirming => "confirming the key",
        DkgStageName::Done => "done",
    }
}

// ---- dkg ----

pub fn dkg_status(node: &NodeClient, out: &Out) -> Result<(), CliError> {
    let s: DkgStatus = node.get("/api/v1/dkg/status")?;
    out.print(&s, || {
        let mut text = format!("node {}: {}\n", s.node, stage_text(s.stage));
        if let Some(dkg) = &s.dkg_id {
            text += &format!("  dkg:        {dkg}\n");
        }
        text += &format!("  public key: {}\n", s.public_key_hex.as_deref().unwrap_or("-"));
        text += &format!("  address:    {} ({})\n", s.address.as_deref().unwrap_or("-"), s.network);
        text += &format!("  primes:     {}\n", if s.primes_ready { "ready" } else { "not ready" });
        text
    })
}

/// The key the done nodes agree on, `None` while some listed node is not
/// done yet; an error when two nodes report different keys.
pub fn agreed_key(statuses: &BTreeMap<u16, DkgStatus>, listed: &[u16]) -> Result<Option<DkgStatus>, CliError> {
    let mut agreed: Option<&DkgStatus> = None;
    for (id, s) in statuses {
        if s.stage != DkgStageName::Done {
            continue;
        }
        match agreed {
            None => agreed = Some(s),
            Some(first) if first.public_key_hex != s.public_key_hex || first.address != s.address => {
                return Err(CliError::Failed(format!(
                    "nodes disagree on the key: node {} reports {}, node {id} reports {}",
                    first.node,
                    first.public_key_hex.as_deref().unwrap_or("none"),
                    s.public_key_hex.as_deref().unwrap_or("none"),
                )));
            }
            Some(_) => {}
        }
    }
    let all_done = listed.iter().all(|id| statuses.get(id).is_some_and(|s| s.stage == DkgStageName::Done));
    Ok(if all_done { agreed.cloned() } else { None })
}

#[derive(Serialize)]
struct DkgRunResult {
    dkg_id: Option<String>,
    public_key_hex: Option<String>,
    address: Option<String>,
    nodes: Vec<u16>,
}

/// `dkg run --nodes ...`: starts key generation on the first listed node
/// (a key that exists or a run in progress is fine: then it only waits),
/// then polls every listed node until all report the same key.
pub fn dkg_run(cluster: &Cluster, listed: &[u16], polling: Polling, out: &Out) -> Result<(), CliError> {
    if listed.is_empty() {
        return Err(CliError::Usage("--nodes lists no node".into()));
    }
    let clients: Vec<NodeClient> = listed.iter().map(|id| cluster.client(*id)).collect::<Result<_, _>>()?;
    let first = &clients[0];
    match first.post_empty::<DkgInitiated>("/api/v1/dkg/initiate") {
        Ok(started) => eprintln!("started {} on node {}", started.dkg_id, first.id),
        // A pending key may still be confirmed (its missing members come
        // up and confirm, or abandon it): waiting is the right thing too.
        Err(CliError::Refused { code, message, .. })
            if code == "dkg_exists" || code == "dkg_running" || code == "dkg_unconfirmed" =>
        {
            eprintln!("node {}: {message}; waiting for every listed node to report the key", first.id)
        }
        Err(e) => return Err(e),
    }
    let bar = ProgressBar::with_draw_target(Some(clients.len() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {bar:20} {pos}/{len} nodes done  {msg}") {
        bar.set_style(style);
    }
    let started = Instant::now();
    let mut statuses: BTreeMap<u16, DkgStatus> = BTreeMap::new();
    let mut last_errors: BTreeMap<u16, CliError> = BTreeMap::new();
    loop {
        for c in &clients {
            match c.get::<DkgStatus>("/api/v1/dkg/status") {
                Ok(s) => {
                    last_errors.remove(&c.id);
                    statuses.insert(c.id, s);
                }
                // A node restarting or still starting up: keep asking.
                Err(e @ (CliError::Unavailable(_) | CliError::Failed(_))) => {
                    last_errors.insert(c.id, e);
                }
                Err(e) => {
                    bar.finish_and_clear();
                    return Err(e);
                }
            }
        }
        let done = statuses.values().filter(|s| s.stage == DkgStageName::Done).count();
        bar.set_position(done as u64);
        bar.set_message(
            listed
                .iter()
                .map(|id| match (statuses.get(id), last_errors.contains_key(id)) {
                    (_, true) => format!("{id}: unreachable"),
                    (Some(s), _) => format!("{id}: {}", stage_text(s.stage)),
                    (None, _) => format!("{id}: ?"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
        match agreed_key(&statuses, listed) {
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
            Ok(Some(key)) if last_errors.is_empty() => {
                bar.finish_and_clear();
                let result = DkgRunResult {
                    dkg_id: key.dkg_id.clone(),
                    public_key_hex: key.public_key_hex.clone(),
                    address: key.address.clone(),
                    nodes: listed.to_vec(),
                };
                return out.print(&result, || {
                    format!(
                        "all {} nodes report the same key{}\npublic key: {}\naddress:    {}\n",
                        listed.len(),
                        key.dkg_id.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
                        key.public_key_hex.as_deref().unwrap_or("-"),
                        key.address.as_deref().unwrap_or("-"),
                    )
                });
            }
            Ok(_) => {}
        }
        if polling.timeout.is_some_and(|t| started.elapsed() >= t) {
            bar.finish_and_clear();
            if let Some((_, e)) = last_errors.into_iter().next() {
                return Err(e);
            }
            let pending: Vec<String> = listed
                .iter()
                .filter(|id| statuses.get(id).is_none_or(|s| s.stage != DkgStageName::Done))
                .map(|id| format!("node {id}: {}", statuses.get(id).map_or("?", |s| stage_text(s.stage))))
                .collect();
            return Err(CliError::Failed(format!("key generation not done in time: {}", pending.join(", "))));
        }
        std::thread::sleep(polling.interval);
    }
}

// ---- presig ----

pub fn presig_status(nodes: &[NodeClient], out: &Out) -> Result<(), CliError> {
    let mut results: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut human = String::new();
    let mut first_error: Option<CliError> = None;
    for c in nodes {
        match c.get::<PresignatureStatus>("/api/v1/presignatures/status") {
            Ok(s) => {
                human += &format!(
                    "node {}: {} ready (own {}), {} generating, {} consumed, {} discarded; low water {}, target {}, \
                     max {}; fill rate {:.1}/min\n",
                    s.node,
                    s.ready,
                    s.own_ready,
                    s.generating,
                    s.consumed,
                    s.discarded,
                    s.low_water,
                    s.target,
                    s.max,
                    s.fill_rate.per_minute
                );
                let rows: Vec<Vec<String>> = s
                    .signer_sets
                    .iter()
                    .map(|set| {
                        vec![
                            set.signers.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
                            set.ready.to_string(),
                            set.generating.to_string(),
                            set.spent.to_string(),
                        ]
                    })
                    .collect();
                human += &table::render(&["SIGNERS", "READY", "GENERATING", "SPENT"], &rows);
                human += "\n";
                results.insert(c.id.to_string(), to_value(&s)?);
            }
            Err(e) => {
                human += &format!("node {}: {e}\n\n", c.id);
                results.insert(c.id.to_string(), serde_json::json!({ "error": e.to_string() }));
                first_error.get_or_insert(e);
            }
        }
    }
    out.print(&results, || human)?;
    first_error.map_or(Ok(()), Err)
}

/// `presig wait --ready N`: polls one node's pool with a progress bar.
pub fn presig_wait(node: &NodeClient, ready: u64, polling: Polling, out: &Out) -> Result<(), CliError> {
    let bar = ProgressBar::with_draw_target(Some(ready), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:20} {pos}/{len} presignatures ready  {msg}")
    {
        bar.set_style(style);
    }
    let started = Instant::now();
    loop {
        match node.get::<PresignatureStatus>("/api/v1/presignatures/status") {
            Ok(s) => {
                bar.set_position(s.ready.min(ready));
                bar.set_message(format!("{} generating, {:.1}/min", s.generating, s.fill_rate.per_minute));
                if s.ready >= ready {
                    bar.finish_and_clear();
                    return out.print(&s, || format!("node {}: {} presignatures ready\n", s.node, s.ready));
                }
            }
            Err(CliError::Unavailable(_) | CliError::Failed(_)) => bar.set_message("node unreachable"),
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        }
        if polling.timeout.is_some_and(|t| started.elapsed() >= t) {
            bar.finish_and_clear();
            return Err(CliError::Failed(format!("fewer than {ready} presignatures ready in time")));
        }
        std::thread::sleep(polling.interval);
    }
}

fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value, CliError> {
    serde_json::to_value(v).map_err(|e| CliError::Failed(format!("cannot print JSON: {e}")))
}

// ---- tx ----

/// A PSBT from a file (or stdin for `-`): its bytes, or base64 text.
pub fn read_psbt(source: &Path) -> Result<Vec<u8>, CliError> {
    let name = source.display().to_string();
    let bytes = if name == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| CliError::Local(format!("reading stdin: {e}")))?;
        buf
    } else {
        std::fs::read(source).map_err(|e| CliError::Local(format!("cannot read {name}: {e}")))?
    };
    decode_psbt(&bytes).ok_or_else(|| {
        CliError::Local(format!("{name} holds neither a binary PSBT nor a base64 one ({} bytes)", bytes.len()))
    })
}

/// Binary PSBTs start with `psbt\xff`; anything else is tried as base64.
pub fn decode_psbt(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.starts_with(b"psbt\xff") {
        return Some(bytes.to_vec());
    }
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let decoded = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    decoded.starts_with(b"psbt\xff").then_some(decoded)
}

pub fn tx_submit(node: &NodeClient, source: &Path, out: &Out) -> Result<(), CliError> {
    let psbt = read_psbt(source)?;
    let accepted: SubmitAccepted = node.post_bytes("/api/v1/transactions", psbt)?;
    out.print(&accepted, || format!("{}\n", accepted.tx_id))
}

fn check_tx_id(id: &str) -> Result<(), CliError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(CliError::Usage(format!("{id:?} is not a transaction id (64 hex digits)")))
    }
}

fn state_text(state: TxStateName, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{state}: {r}"),
        None => state.to_string(),
    }
}

fn tx_human(t: &TransactionView) -> String {
    let mut text = format!("transaction {}\n", t.tx_id);
    text += &format!("  state:     {}\n", state_text(t.state, t.failure_reason.as_deref()));
    text += &format!("  proposer:  node {}\n", t.proposer);
    text += &format!("  txid:      {}\n", t.txid.as_deref().unwrap_or("-"));
    if let Some(c) = t.confirmations {
        text += &format!("  confirmations: {c}\n");
    }
    text += "\nvotes\n";
    let votes: Vec<Vec<String>> = t
        .votes
        .iter()
        .map(|v| {
            vec![
                v.voter.to_string(),
                match v.decision {
                    DecisionName::Approve => "approve".into(),
                    DecisionName::Reject => format!("reject: {}", v.reject_reason.as_deref().unwrap_or("")),
                },
                short(&v.signature_hex, 16),
            ]
        })
        .collect();
    text += &table::render(&["VOTER", "DECISION", "SIGNATURE"], &votes);
    for e in &t.equivocations {
        text += &format!("  node {} equivocated: its votes do not count\n", e.voter);
    }
    text += "\nhistory\n";
    let history: Vec<Vec<String>> = t
        .history
        .iter()
        .map(|h| vec![state_text(h.state, h.failure_reason.as_deref()), h.at_ms.to_string(), h.audit_seq.to_string()])
        .collect();
    text += &table::render(&["STATE", "AT_MS", "AUDIT_ROW"], &history);
    if let Some(raw) = &t.signed_tx_hex {
        text += &format!("\nsigned transaction\n{raw}\n");
    }
    text
}

pub fn tx_status(node: &NodeClient, id: &str, signed_psbt: Option<&Path>, out: &Out) -> Result<(), CliError> {
    check_tx_id(id)?;
    let t: TransactionView = node.get(&format!("/api/v1/transactions/{id}"))?;
    out.print(&t, || tx_human(&t))?;
    if let Some(path) = signed_psbt {
        let Some(psbt) = &t.signed_psbt_base64 else {
            let state = state_text(t.state, t.failure_reason.as_deref());
            return Err(CliError::NotFound(format!("transaction {id} is {state}: no signed PSBT to write")));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(psbt)
            .map_err(|e| CliError::Failed(format!("node {}: signed_psbt_base64 is not base64: {e}", node.id)))?;
        std::fs::write(path, bytes).map_err(|e| CliError::Local(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// How far along `tx wait` waits for a transaction to get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum WaitUntil {
    Signed,
    /// Held by bitcoind (mempool or chain).
    Broadcast,
    /// At the configured depth.
    Confirmed,
}

/// Where `tx wait` stops: `until` reached (or passed) is success; rejected,
/// failed and expired end the wait with exit code 6. A confirmed
/// transaction a reorg took back is Broadcast again, so waiting for
/// Confirmed goes on.
pub fn wait_verdict(state: TxStateName, until: WaitUntil) -> Option<Result<(), ()>> {
    let reached = match state {
        TxStateName::Signed => WaitUntil::Signed,
        TxStateName::Broadcast => WaitUntil::Broadcast,
        TxStateName::Confirmed => WaitUntil::Confirmed,
        TxStateName::Rejected | TxStateName::Failed | TxStateName::Expired => return Some(Err(())),
        TxStateName::Received | TxStateName::Voting | TxStateName::Approved | TxStateName::Signing => return None,
    };
    (reached >= until).then_some(Ok(()))
}

pub fn tx_wait(node: &NodeClient, id: &str, until: WaitUntil, polling: Polling, out: &Out) -> Result<(), CliError> {
    check_tx_id(id)?;
    let started = Instant::now();
    loop {
        let t: TransactionView = node.get(&format!("/api/v1/transactions/{id}"))?;
        if let Some(verdict) = wait_verdict(t.state, until) {
            out.print(&t, || format!("{}\n", state_text(t.state, t.failure_reason.as_deref())))?;
            return verdict.map_err(|()| {
                CliError::WaitEnded(format!(
                    "transaction {id} ended {}",
                    state_text(t.state, t.failure_reason.as_deref())
                ))
            });
        }
        if polling.timeout.is_some_and(|limit| started.elapsed() >= limit) {
            return Err(CliError::Failed(format!("transaction {id} is still {} after the timeout", t.state)));
        }
        std::thread::sleep(polling.interval);
    }
}

pub fn tx_list(node: &NodeClient, state: Option<&str>, offset: u64, limit: u64, out: &Out) -> Result<(), CliError> {
    let mut path = format!("/api/v1/transactions?offset={offset}&limit={limit}");
    if let Some(s) = state {
        path += &format!("&state={}", url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>());
    }
    let list: TransactionList = node.get(&path)?;
    out.print(&list, || {
        let rows: Vec<Vec<String>> = list
            .transactions
            .iter()
            .map(|t| {
                vec![
                    t.tx_id.clone(),
                    state_text(t.state, t.failure_reason.as_deref()),
                    t.proposer.to_string(),
                    t.approve_votes.to_string(),
                    t.reject_votes.to_string(),
                    t.txid.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut text = table::render(&["TX ID", "STATE", "PROPOSER", "APPROVE", "REJECT", "TXID"], &rows);
        text += &format!("{} of {} (offset {})\n", list.transactions.len(), list.total, list.offset);
        text
    })
}

// ---- cluster ----

/// One node's line of `cluster status`.
#[derive(Serialize)]
struct NodeSummary {
    node: u16,
    url: String,
    health: Option<HealthView>,
    dkg: Option<DkgStatus>,
    presignatures: Option<PresignatureStatus>,
    error: Option<String>,
}

pub fn cluster_status(nodes: &[NodeClient], out: &Out) -> Result<(), CliError> {
    let mut summaries = Vec::new();
    let mut first_error: Option<CliError> = None;
    for c in nodes {
        let mut s =
            NodeSummary { node: c.id, url: c.base.clone(), health: None, dkg: None, presignatures: None, error: None };
        let attempt = (|| -> Result<(), CliError> {
            s.health = Some(c.health()?);
            s.dkg = Some(c.get("/api/v1/dkg/status")?);
            s.presignatures = Some(c.get("/api/v1/presignatures/status")?);
            Ok(())
        })();
        if let Err(e) = attempt {
            s.error = Some(e.to_string());
            first_error.get_or_insert(e);
        }
        summaries.push(s);
    }
    let by_node: BTreeMap<String, &NodeSummary> = summaries.iter().map(|s| (s.node.to_string(), s)).collect();
    out.print(&by_node, || {
        let rows: Vec<Vec<String>> = summaries
            .iter()
            .map(|s| {
                let health = match (&s.health, &s.error) {
                    (Some(h), _) if h.ready => "ready".to_string(),
                    (Some(h), _) if h.live => format!("not ready: {}", h.reasons.join("; ")),
                    (Some(_), _) => "not live".to_string(),
                    (None, Some(e)) => format!("unreachable: {e}"),
                    (None, None) => "?".to_string(),
                };
                let leader =
                    s.health.as_ref().map_or("-".into(), |h| h.leader.map_or("none".into(), |l| l.to_string()));
                let key = s.dkg.as_ref().map_or("-".into(), |d| {
                    d.public_key_hex.as_deref().map_or_else(|| stage_text(d.stage).into(), |k| short(k, 16))
                });
                let pool = s.presignatures.as_ref().map_or("-".into(), |p| format!("{}/{}", p.ready, p.low_water));
                let peers =
                    s.health.as_ref().map_or("-".into(), |h| format!("{}/{}", h.peers_connected, h.peers_total));
                vec![s.node.to_string(), leader, key, pool, peers, health]
            })
            .collect();
        table::render(&["NODE", "LEADER", "KEY", "POOL", "PEERS", "HEALTH"], &rows)
    })?;
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node: u16, stage: DkgStageName, key: Option<&str>) -> DkgStatus {
        DkgStatus {
            node,
            stage,
            dkg_id: key.map(|_| "dkg-1-0".into()),
            public_key_hex: key.map(str::to_string),
            address: key.map(|k| format!("bcrt1q{k}")),
            network: "regtest".into(),
            primes_ready: true,
        }
    }

    #[test]
    fn the_key_is_agreed_once_every_listed_node_reports_the_same_one() {
        let mut s = BTreeMap::new();
        s.insert(1, status(1, DkgStageName::Done, Some("02aa")));
        s.insert(2, status(2, DkgStageName::Keygen, None));
        assert!(agreed_key(&s, &[1, 2]).unwrap().is_none(), "node 2 is not done");
        assert_eq!(agreed_key(&s, &[1]).unwrap().unwrap().public_key_hex.as_deref(), Some("02aa"));
        s.insert(2, status(2, DkgStageName::Done, Some("02aa")));
        assert_eq!(agreed_key(&s, &[1, 2]).unwrap().unwrap().node, 1);
        s.insert(3, status(3, DkgStageName::Done, Some("03bb")));
        let e = agreed_key(&s, &[1, 2, 3]).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("node 3 reports 03bb"), "{e}");
    }

    #[test]
    fn psbt_files_are_binary_or_base64() {
        assert_eq!(decode_psbt(b"psbt\xff\x01").unwrap(), b"psbt\xff\x01");
        assert_eq!(decode_psbt(b"cHNidP8B\n").unwrap(), b"psbt\xff\x01");
        assert_eq!(decode_psbt(b"aGVsbG8="), None, "base64, but not of a PSBT");
        assert_eq!(decode_psbt(b"not base64 at all!"), None);
    }

    #[test]
    fn tx_wait_stops_at_final_states_and_expiry() {
        use TxStateName::*;
        for s in [Signed, Broadcast, Confirmed] {
            assert_eq!(wait_verdict(s, WaitUntil::Signed), Some(Ok(())), "{s}");
        }
        assert_eq!(wait_verdict(Signed, WaitUntil::Broadcast), None);
        assert_eq!(wait_verdict(Confirmed, WaitUntil::Broadcast), Some(Ok(())));
        // A reorg takes Confirmed back to Broadcast: keep waiting.
        assert_eq!(wait_verdict(Broadcast, WaitUntil::Confirmed), None);
        assert_eq!(wait_verdict(Confirmed, WaitUntil::Confirmed), Some(Ok(())));
        for until in [WaitUntil::Signed, WaitUntil::Broadcast, WaitUntil::Confirmed] {
            for s in [Rejected, Failed, Expired] {
                assert_eq!(wait_verdict(s, until), Some(Err(())), "{s}");
            }
            for s in [Received, Voting, Approved, Signing] {
                assert_eq!(wait_verdict(s, until), None, "{s}");
            }
        }
    }
}
