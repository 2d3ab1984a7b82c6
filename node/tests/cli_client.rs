//! `mpc-cli`'s client commands, run as the binary against real nodes (the
//! API tests' harness: a real core, database and API server per node), and
//! a cluster file that also names a node nobody listens for. Checks the
//! human output, the `--json` output, and the exit codes a script branches
//! on: 0 success, 2 usage or local files, 3 not found, 4 refused, 5
//! unavailable, 6 `tx wait` ended other than signed.

mod api_harness;

use api_harness::*;
use base64::Engine;
use mpc_node::api::types::{DkgStatus, PresignatureStatus, TransactionList, TransactionView, TxStateName};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Nodes, a cluster file listing them (and node 9 on a closed port), and a
/// scratch directory for PSBT files.
struct Setup {
    /// Kept for their lifetime: dropping one stops its node.
    _nodes: Vec<TestNode>,
    dir: PathBuf,
    cluster_file: PathBuf,
}

const CLOSED: u16 = 9;

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Setup {
    fn start(options: &[Options]) -> Setup {
        let nodes: Vec<TestNode> = options.iter().map(|o| TestNode::start(*o)).collect();
        let dir = std::env::temp_dir().join(format!(
            "mpc-cli-client-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("operator.token"), format!("{ALICE_TOKEN}\n")).unwrap();
        // A port that was free a moment ago: nobody listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut text = "token_file = \"operator.token\"\n[nodes]\n".to_string();
        for n in &nodes {
            text += &format!("{} = \"http://{}\"\n", n.id.0, n.addr);
        }
        text += &format!("{CLOSED} = \"http://{closed}\"\n");
        let cluster_file = dir.join("mpc-cli.toml");
        std::fs::write(&cluster_file, text).unwrap();
        Setup { _nodes: nodes, dir, cluster_file }
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    fn cli_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mpc-cli"))
            .arg("--cluster")
            .arg(&self.cluster_file)
            .args(args)
            .env_remove("MPC_TOKEN")
            .env_remove("MPC_CLI_CLUSTER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mpc-cli");
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code, with the output in the message when it is not `want`.
fn expect_code(o: &Output, want: i32, what: &str) {
    assert_eq!(o.status.code(), Some(want), "{what}\nstdout: {}\nstderr: {}", stdout(o), stderr(o));
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn tx_submit_status_and_list_through_the_cli() {
    let s = Setup::start(&[Options::keyed(1)]);
    let binary = s.file("one.psbt", &good_psbt(1));
    let out = s.cli(&["tx", "submit", path(&binary)]);
    expect_code(&out, 0, "submit a binary PSBT");
    let id = stdout(&out).trim().to_string();
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");

    // Base64 from stdin, as JSON.
    let text = base64::engine::general_purpose::STANDARD.encode(good_psbt(2));
    let out = s.cli_with_stdin(&["tx", "submit", "-", "--json"], Some(format!("{text}\n").as_bytes()));
    expect_code(&out, 0, "submit base64 from stdin");
    let second = json(&out)["tx_id"].as_str().unwrap().to_string();
    assert_ne!(second, id);

    let out = s.cli(&["tx", "status", &id, "--json"]);
    expect_code(&out, 0, "tx status --json");
    let t: TransactionView = serde_json::from_slice(&out.stdout).expect("the API's transaction JSON");
    assert_eq!((t.tx_id.as_str(), t.state, t.votes.len()), (id.as_str(), TxStateName::Voting, 1));
    let out = s.cli(&["tx", "status", &id]);
    expect_code(&out, 0, "tx status");
    let human = stdout(&out);
    assert!(human.contains(&format!("transaction {id}")) && human.contains("state:     voting"), "{human}");
    assert!(human.contains("VOTER") && human.contains("approve"), "{human}");
    // Not signed yet: no signed PSBT to write, and no file written.
    let target = s.file("signed.psbt", b"");
    std::fs::remove_file(&target).unwrap();
    let out = s.cli(&["tx", "status", &id, "--signed-psbt", path(&target)]);
    expect_code(&out, 3, "tx status --signed-psbt before signing");
    assert!(stderr(&out).contains("voting: no signed PSBT"), "{}", stderr(&out));
    assert!(!target.exists(), "a file was written for an unsigned transaction");

    let out = s.cli(&["tx", "list", "--json"]);
    expect_code(&out, 0, "tx list --json");
    let list: TransactionList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.total, 2);
    let out = s.cli(&["tx", "list", "--state", "signed", "--json"]);
    let list: TransactionList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.total, 0);
    let out = s.cli(&["tx", "list", "--state", "voting", "--limit", "1"]);
    expect_code(&out, 0, "tx list");
    let human = stdout(&out);
    assert!(human.starts_with("TX ID") && human.contains("1 of 2 (offset 0)"), "{human}");
}

#[test]
fn exit_codes_say_not_found_refused_unavailable_and_usage() {
    let s = Setup::start(&[Options::keyed(1)]);
    let unknown = "cd".repeat(32);
    let out = s.cli(&["tx", "status", &unknown]);
    expect_code(&out, 3, "an unknown transaction is not found");

    let good = good_psbt(1);
    let cut = s.file("cut.psbt", &good[..good.len() - 7]);
    let out = s.cli(&["tx", "submit", path(&cut)]);
    expect_code(&out, 4, "a truncated PSBT is refused");
    assert!(stderr(&out).contains("invalid_psbt") && stderr(&out).contains("truncated"), "{}", stderr(&out));
    let foreign = s.file("foreign.psbt", &psbt(&foreign_script(), 100_000, 90_000, 3));
    let out = s.cli(&["tx", "submit", path(&foreign)]);
    expect_code(&out, 4, "a foreign PSBT is refused");
    assert!(stderr(&out).contains("foreign_input"), "{}", stderr(&out));
    let out = s.cli(&["dkg", "status", "--token-file", path(&s.file("wrong.token", b"wrong"))]);
    expect_code(&out, 4, "a wrong token is refused");
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    let out = s.cli(&["dkg", "status", "--node", &CLOSED.to_string()]);
    expect_code(&out, 5, "a closed port is unavailable");
    assert!(stderr(&out).contains("unavailable"), "{}", stderr(&out));

    for (what, args) in [
        ("a node not in the file", vec!["dkg", "status", "--node", "4"]),
        ("not a transaction id", vec!["tx", "status", "zz"]),
        ("a missing PSBT file", vec!["tx", "submit", "/nonexistent/x.psbt"]),
        ("no such subcommand", vec!["tx", "frobnicate"]),
    ] {
        expect_code(&s.cli(&args), 2, what);
    }
    let out = s.cli(&["tx", "submit", path(&s.file("text.txt", b"hello, I am not a PSBT"))]);
    expect_code(&out, 2, "a file that holds no PSBT");
    let out = Command::new(env!("CARGO_BIN_EXE_mpc-cli"))
        .args(["--cluster", "/nonexistent/mpc-cli.toml", "dkg", "status"])
        .output()
        .unwrap();
    expect_code(&out, 2, "a missing cluster file");
    // The token can come from the environment instead of the file.
    let out = Command::new(env!("CARGO_BIN_EXE_mpc-cli"))
        .args(["--cluster", path(&s.cluster_file), "dkg", "status"])
        .env("MPC_TOKEN", BOB_TOKEN)
        .output()
        .unwrap();
    expect_code(&out, 0, "MPC_TOKEN");
}

#[test]
fn dkg_status_and_dkg_run_report_the_key_every_node_agrees_on() {
    let s = Setup::start(&[Options::keyed(1), Options::keyed(2)]);
    let key = fixture_group_key();
    let out = s.cli(&["dkg", "status", "--node", "2", "--json"]);
    expect_code(&out, 0, "dkg status --json");
    let status: DkgStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((status.node, status.public_key_hex.as_deref()), (2, Some(key.hex().as_str())));
    let out = s.cli(&["dkg", "status"]);
    expect_code(&out, 0, "dkg status");
    assert!(stdout(&out).starts_with("node 1: done"), "{}", stdout(&out));

    // Both nodes are keyed already: run waits for nothing and reports.
    let out = s.cli(&["dkg", "run", "--nodes", "1,2", "--json"]);
    expect_code(&out, 0, "dkg run");
    let result = json(&out);
    assert_eq!(result["public_key_hex"], key.hex().as_str());
    assert_eq!(result["address"], key.address(NETWORK).to_string().as_str());
    assert!(stderr(&out).contains("already has a key"), "{}", stderr(&out));
    let out = s.cli(&["dkg", "run", "--nodes", "2,1"]);
    expect_code(&out, 0, "dkg run, human");
    assert!(stdout(&out).contains(&format!("public key: {}", key.hex())), "{}", stdout(&out));

    // A listed node that never answers: the run gives up at its timeout
    // with "unavailable".
    let out = s.cli(&["dkg", "run", "--nodes", &format!("1,{CLOSED}"), "--timeout-secs", "1", "--interval-ms", "50"]);
    expect_code(&out, 5, "dkg run with an unreachable node");
}

#[test]
fn dkg_run_waits_on_an_unconfirmed_key_and_times_out_naming_the_stage() {
    // Node 1 holds a share no member confirmed yet (`dkg_unconfirmed`);
    // node 2 has the key. `dkg run` must not fail on the refusal: it
    // waits, and at its timeout says which node is where.
    let s = Setup::start(&[Options::pending(1), Options::keyed(2)]);
    let out = s.cli(&["dkg", "status", "--node", "1"]);
    expect_code(&out, 0, "dkg status of the pending node");
    assert!(stdout(&out).starts_with("node 1: confirming the key"), "{}", stdout(&out));
    let out = s.cli(&["dkg", "run", "--nodes", "1,2", "--timeout-secs", "1", "--interval-ms", "50"]);
    expect_code(&out, 1, "dkg run on an unconfirmed key");
    let err = stderr(&out);
    assert!(err.contains("waiting for every listed node"), "the refusal is waited on: {err}");
    assert!(err.contains("not yet confirmed"), "the refusal's reason is shown: {err}");
    assert!(
        err.contains("key generation not done in time: node 1: confirming the key"),
        "the timeout names the stage of the node not done: {err}"
    );
    assert!(!err.contains("node 2:"), "node 2 is done and not listed as pending: {err}");
}

#[test]
fn presig_and_cluster_status_show_every_node() {
    let s = Setup::start(&[Options::keyed(1), Options::unkeyed(2)]);
    let out = s.cli(&["presig", "status", "--node", "1", "--json"]);
    expect_code(&out, 0, "presig status --node 1");
    let map = json(&out);
    let one: PresignatureStatus = serde_json::from_value(map["1"].clone()).unwrap();
    assert_eq!(one.own_ready, 24);
    assert!(!one.signer_sets.is_empty());

    // Every node of the file: node 9 is down, so the exit code says so,
    // and the others are still printed.
    let out = s.cli(&["presig", "status"]);
    expect_code(&out, 5, "presig status with a node down");
    let human = stdout(&out);
    assert!(human.contains("node 1: ") && human.contains("SIGNERS") && human.contains("node 2: 0 ready"), "{human}");
    assert!(human.contains(&format!("node {CLOSED}: node {CLOSED} at")), "{human}");

    let out = s.cli(&["cluster", "status", "--json"]);
    expect_code(&out, 5, "cluster status --json with a node down");
    let map = json(&out);
    assert_eq!(map["1"]["health"]["key_present"], true);
    assert_eq!(map["1"]["dkg"]["public_key_hex"], fixture_group_key().hex().as_str());
    assert_eq!(map["2"]["health"]["key_present"], false);
    assert!(map[CLOSED.to_string()]["error"].as_str().unwrap().contains("unavailable"), "{map}");
    assert!(map[CLOSED.to_string()]["health"].is_null());

    let out = s.cli(&["cluster", "status"]);
    let human = stdout(&out);
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].starts_with("NODE") && lines[0].contains("LEADER") && lines[0].contains("PEERS"), "{human}");
    assert!(lines[1].starts_with("1 ") && lines[1].contains("0/4") && lines[1].contains("not ready: etcd"), "{human}");
    assert!(lines[2].starts_with("2 ") && lines[2].contains("not started"), "{human}");
    assert!(lines[3].starts_with(&format!("{CLOSED} ")) && lines[3].contains("unreachable"), "{human}");
    let out = s.cli(&["cluster", "status", "--node", "1"]);
    expect_code(&out, 0, "cluster status of a live node");
}

#[test]
fn tx_wait_ends_with_6_when_the_transaction_expires() {
    // Nobody else votes, and the vote deadline is short: the transaction
    // expires, and the wait says so with its exit code.
    let s = Setup::start(&[Options { vote_ms: Some(500), ..Options::keyed(1) }]);
    let out = s.cli(&["tx", "submit", path(&s.file("a.psbt", &good_psbt(1)))]);
    expect_code(&out, 0, "submit");
    let id = stdout(&out).trim().to_string();
    let out = s.cli(&["tx", "wait", &id, "--interval-ms", "50", "--timeout-secs", "120", "--json"]);
    expect_code(&out, 6, "tx wait on an expiring transaction");
    let t: TransactionView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t.state, TxStateName::Expired);
    assert!(stderr(&out).contains("ended expired"), "{}", stderr(&out));
    expect_code(&s.cli(&["tx", "wait", &"ee".repeat(32)]), 3, "waiting for an unknown transaction");
}
