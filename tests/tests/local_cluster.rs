//! Five real `mpc-node` processes on loopback, through their HTTP APIs,
//! node 4 on PostgreSQL and the others on SQLite, node 1 generating its
//! safe primes in the background at its first start and node 2 loading
//! primes made by `mpc-cli primes generate` (the others use the TEST-ONLY
//! fixture primes): DKG, the pool filled, PSBTs approved and signed (checked with
//! libbitcoinconsensus), a signer killed with `kill -9` while it signs
//! (the transaction still completes, the node restarts and catches up),
//! SIGTERM and restart, `promtool` on a live node's metrics, the OpenAPI
//! document, and from the five databases: no presignature share used for
//! two messages. Timeouts only guard against hangs.

use base64::Engine;
use mpc_core::tx::GroupKey;
use mpc_core::{NodeId, PresigId, Record};
use mpc_node::api::types::{DkgStatus, TransactionView, TxStateName};
use mpc_sim::wallet::Spend;
use mpc_tests::flow::{dkg, parse, submit_psbt, transaction, wait_live, wait_pool, wait_state, wait_states, MINUTES};
use mpc_tests::{wait_for, LocalCluster, Options, Regtest};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn destination() -> bitcoin::Address {
    mpc_sim::setup::TEST_DESTINATION.parse::<bitcoin::Address<_>>().unwrap().assume_checked()
}

fn submit(c: &LocalCluster, node: u16, spend: &Spend, key: &GroupKey) -> String {
    submit_psbt(c, node, spend.psbt_bytes(key))
}

/// libbitcoinconsensus on every input, from the signed bytes and the
/// prevouts alone; and a flipped signature byte fails the same check.
fn verify_signed(view: &TransactionView, spend: &Spend, key: &GroupKey) {
    let raw = hex::decode(view.signed_tx_hex.as_ref().expect("signed transaction")).unwrap();
    let signed: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(&raw).unwrap();
    assert_eq!(view.txid.as_deref(), Some(signed.compute_txid().to_string().as_str()));
    for (i, (_, value)) in spend.inputs.iter().enumerate() {
        key.script_pubkey().verify(i, *value, &raw).unwrap_or_else(|e| panic!("input {i}: {e:?}"));
    }
    let mut bad = signed.clone();
    let mut items = bad.input[0].witness.to_vec();
    items[0][8] ^= 1;
    bad.input[0].witness = bitcoin::Witness::from_slice(&items);
    let bad_raw = bitcoin::consensus::encode::serialize(&bad);
    assert!(key.script_pubkey().verify(0, spend.inputs[0].1, &bad_raw).is_err());
    // The signed PSBT a wallet takes back extracts to the same transaction.
    let psbt = base64::engine::general_purpose::STANDARD
        .decode(view.signed_psbt_base64.as_ref().expect("a signed PSBT once signed"))
        .unwrap();
    let extracted = bitcoin::psbt::Psbt::deserialize(&psbt).unwrap().extract_tx().expect("finalized");
    assert_eq!(bitcoin::consensus::encode::serialize(&extracted), raw);
}

/// Every node's records, read from its database as a restart reads them.
fn records(c: &LocalCluster) -> BTreeMap<u16, Vec<Record>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    c.ids()
        .into_iter()
        .map(|id| {
            let recs = rt.block_on(async {
                let key = mpc_io_store::MasterKey::from_file(&c.master_key_file(id)).unwrap();
                let store = mpc_io_store::Store::open(&c.database_url(id), key, NodeId(id)).await.unwrap();
                let r = store.recover().await.unwrap();
                store.close().await;
                r.records
            });
            (id, recs)
        })
        .collect()
}

/// DESIGN §5 invariant 1, from the databases: each signer's share of a
/// presignature served at most one message.
fn assert_no_share_signed_two_messages(all: &BTreeMap<u16, Vec<Record>>) -> usize {
    let mut messages: BTreeMap<PresigId, BTreeSet<[u8; 32]>> = BTreeMap::new();
    let mut consumed = 0;
    for (node, recs) in all {
        let mut mine: BTreeMap<PresigId, [u8; 32]> = BTreeMap::new();
        for r in recs {
            if let Record::PresigConsumed { id, message, .. } = r {
                consumed += 1;
                if let Some(other) = mine.insert(*id, *message) {
                    assert_eq!(other, *message, "node {node} used its share of {id} for two messages");
                }
                messages.entry(*id).or_default().insert(*message);
            }
        }
    }
    // Different signers of one presignature answering different messages
    // (two coordinators that collided) is waste, not a leak: each share
    // still signed one message. Counted, as the simulator counts it.
    let split = messages.values().filter(|m| m.len() > 1).count();
    if split > 0 {
        eprintln!("{split} presignature(s) split between messages by colliding coordinators (wasted, safe)");
    }
    consumed
}

/// The signers of every presignature, as node `from` recorded them.
fn signer_sets(all: &BTreeMap<u16, Vec<Record>>, from: u16) -> BTreeMap<PresigId, Vec<NodeId>> {
    all[&from]
        .iter()
        .filter_map(|r| match r {
            Record::PresigAnnounced { id, signers, .. } | Record::PresigReady { id, signers, .. } => {
                Some((*id, signers.clone()))
            }
            Record::PresigGenerating { id, signers } => Some((*id, signers.clone())),
            _ => None,
        })
        .collect()
}

/// How many signing probes `member` left unanswered, summed over the
/// `coordinators`' metrics (each counts the probes it sent).
fn probes_unanswered_by(c: &LocalCluster, coordinators: &[u16], member: u16) -> f64 {
    let series = format!("mpc_signing_probes_unanswered_total{{member=\"{member}\"}} ");
    coordinators
        .iter()
        .map(|n| {
            let (status, text) = c.api(*n).get_public("/metrics").unwrap();
            assert_eq!(status, 200, "node {n} /metrics");
            text.lines()
                .filter_map(|l| l.strip_prefix(&series))
                .map(|v| v.trim().parse::<f64>().expect("a sample value"))
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn five_processes_sign_survive_a_killed_signer_and_restart() {
    let mut options = Options::default();
    options.pool.low_water = 4;
    options.pool.target = 6;
    options.pool.max = 8;
    options.pool.parallel_sessions = 3;
    // A frozen signer costs one signing timeout before another set signs.
    options.timeouts.signing_ms = 5_000;
    options.timeouts.suspect_ms = 30_000;
    options.database_urls.insert(4, mpc_tests::fresh_postgres_database("five"));
    let mut c = LocalCluster::new("five", options);
    // The real paths for safe primes: node 1 makes its own at first start,
    // node 2 loads a file `mpc-cli primes generate` wrote.
    let fixture_line = format!("safe_primes_file = \"{}\"\n", fixture_primes_path());
    c.edit_config(1, |t| t.replace(&fixture_line, ""));
    let made = c.node_dir(2).join("primes.json");
    let out = std::process::Command::new(mpc_tests::workspace_binary("mpc-cli"))
        .args(["primes", "generate", "--out"])
        .arg(&made)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.edit_config(2, |t| t.replace(&fixture_line, &format!("safe_primes_file = \"{}\"\n", made.display())));
    // Every node broadcasts through and follows the test's regtest bitcoind.
    for id in c.ids() {
        let section = Regtest::node_section(&c.node_dir(id), 1);
        c.edit_config(id, |t| t + &section);
    }
    c.start_all();
    wait_live(&c, &c.ids());
    let key = dkg(&c);
    assert!(c.log(1).contains("generating safe primes in the background"), "{}", c.log_tail(1, 40));
    assert!(c.log(1).contains("safe primes generated"), "{}", c.log_tail(1, 40));
    assert!(c.log(2).contains("safe primes loaded from file"), "{}", c.log_tail(2, 40));
    wait_pool(&c, 4);

    // A two-input PSBT submitted to node 2, signed by the cluster.
    let first = Spend::simple("local-cluster-1", &[150_000, 75_000], &destination(), 180_000, 2_500);
    let tx1 = submit(&c, 2, &first, &key);
    wait_state(&c, &c.ids(), &tx1, TxStateName::Signed, 5 * MINUTES);
    let view = transaction(&c, 4, &tx1).unwrap();
    verify_signed(&view, &first, &key);
    assert!(view.votes.iter().filter(|v| v.decision == mpc_node::api::types::DecisionName::Approve).count() >= 3);
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(&view.psbt_base64).unwrap(),
        first.psbt_bytes(&key),
        "the stored PSBT is the one submitted"
    );
    // `mpc-cli tx status --signed-psbt` writes it where a wallet loads it.
    let psbt_file = c.node_dir(4).join("signed.psbt");
    let cluster_file = c.node_dir(1).parent().unwrap().join("mpc-cli.toml");
    let out = std::process::Command::new(mpc_tests::workspace_binary("mpc-cli"))
        .arg("--cluster")
        .arg(&cluster_file)
        .args(["--node", "4", "tx", "status", &tx1, "--signed-psbt"])
        .arg(&psbt_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read(&psbt_file).unwrap();
    assert_eq!(
        Some(base64::engine::general_purpose::STANDARD.encode(&written)),
        view.signed_psbt_base64,
        "the file holds the API's signed PSBT, binary"
    );

    // `kill -9` of a signer while it signs. Node 3 is frozen (SIGSTOP) so
    // it cannot answer, the transaction is approved without it and signing
    // starts; then it is killed. A signer set with node 3 is probed first
    // (node 3 did not vote, so it was not heard lately): the probe goes
    // unanswered, node 3 is avoided and another set signs. Or the set was
    // asked to sign and timed out. Repeated until one of the two happened.
    let others = [1u16, 2, 4, 5];
    let mut asked_node_3 = false;
    for round in 0..4 {
        wait_pool(&c, 4);
        let unanswered_before = probes_unanswered_by(&c, &others, 3);
        c.signal(3, libc::SIGSTOP);
        let spend = Spend::simple(
            &format!("local-cluster-kill-{round}"),
            &[40_000, 50_000, 60_000],
            &destination(),
            120_000,
            3_000,
        );
        let tx = submit(&c, 1, &spend, &key);
        wait_states(&c, &[1], &tx, &[TxStateName::Signing, TxStateName::Signed], 2 * MINUTES);
        std::thread::sleep(Duration::from_secs(1));
        c.kill9(3);
        wait_state(&c, &[1, 2, 4, 5], &tx, TxStateName::Signed, 10 * MINUTES);
        verify_signed(&transaction(&c, 5, &tx).unwrap(), &spend, &key);
        c.start(3);
        wait_live(&c, &[3]);
        // The restarted node catches up: it learns the outcome it missed.
        wait_state(&c, &[3], &tx, TxStateName::Signed, 5 * MINUTES);
        let all = records(&c);
        let sets = signer_sets(&all, 1);
        let used: BTreeSet<PresigId> = [1u16, 2, 4, 5]
            .iter()
            .flat_map(|n| transaction(&c, *n, &tx).unwrap().presignatures_consumed)
            .map(|p| p.presignature_id.parse_presig())
            .collect();
        let signed_with_node_3 = used.iter().any(|id| sets.get(id).is_some_and(|s| s.contains(&NodeId(3))));
        let unanswered = probes_unanswered_by(&c, &others, 3) - unanswered_before;
        eprintln!(
            "kill round {round}: {} presignatures used, a set with node 3 asked to sign: {signed_with_node_3}, \
             probes node 3 left unanswered: {unanswered}",
            used.len()
        );
        asked_node_3 = signed_with_node_3 || unanswered > 0.0;
        if asked_node_3 {
            break;
        }
    }
    assert!(asked_node_3, "no signer set with node 3 was ever asked: the kill proved nothing");

    // On a real chain (the plan's ORCH-006): a regtest wallet funds the
    // cluster address; the cluster signs a spend of that output, every
    // node's shell broadcasts it (the repeats are success) and follows it:
    // Broadcast once bitcoind's mempool has it, Confirmed one block later,
    // with the block and its depth in the API.
    let chain = Regtest::connect();
    let (wallet, mine_to) = chain.funded_wallet("local-cluster");
    let address = key.address(bitcoin::Network::Regtest).to_string();
    let funding: bitcoin::Txid = parse(&wallet.call("sendtoaddress", vec![json!(address), json!(0.5)]));
    chain.mine(1, &mine_to);
    let funding_tx = chain.call("getrawtransaction", vec![json!(funding), json!(true)]);
    let vout = funding_tx["vout"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["scriptPubKey"]["address"] == json!(address))
        .expect("the cluster's output") as u32;
    let real = Spend {
        inputs: vec![(bitcoin::OutPoint { txid: funding, vout }, bitcoin::Amount::from_sat(50_000_000))],
        outputs: vec![(destination().script_pubkey(), bitcoin::Amount::from_sat(20_000_000))],
        change: Some(bitcoin::Amount::from_sat(29_990_000)),
    };
    let on_chain = submit(&c, 5, &real, &key);
    wait_states(&c, &c.ids(), &on_chain, &[TxStateName::Broadcast], 5 * MINUTES);
    let txid: bitcoin::Txid = transaction(&c, 5, &on_chain).unwrap().txid.unwrap().parse().unwrap();
    let in_mempool = chain.call("getmempoolentry", vec![json!(txid)]);
    assert!(in_mempool["vsize"].as_u64().is_some(), "bitcoind's mempool holds it: {in_mempool}");
    let block = chain.mine(1, &mine_to).remove(0);
    wait_state(&c, &c.ids(), &on_chain, TxStateName::Confirmed, 2 * MINUTES);
    for id in c.ids() {
        let view = wait_for("the API's confirmation depth", MINUTES, || {
            transaction(&c, id, &on_chain).filter(|v| v.confirmations.is_some())
        });
        assert_eq!(view.block_hash.as_deref(), Some(block.as_str()), "node {id}");
        assert_eq!(view.confirmations, Some(1), "node {id}");
        assert_eq!(view.broadcast_stalled, None, "node {id}");
        let (_, metrics) = c.api(id).get_public("/metrics").unwrap();
        assert!(metrics.lines().any(|l| l == "mpc_transactions_confirmed_total 1"), "node {id}: {metrics}");
    }
    let confirmed = chain.call("getrawtransaction", vec![json!(txid), json!(true)]);
    assert_eq!(confirmed["blockhash"], json!(block));
    // The made-up prevouts of the earlier spends are named, not mistaken
    // for a conflict: those stay Signed.
    assert_eq!(transaction(&c, 2, &tx1).unwrap().state, TxStateName::Signed);

    // promtool accepts a live node's metrics; the mission's gauge is there.
    let (status, metrics) = c.api(2).get_public("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l.starts_with("presignature_pool_size ")), "{metrics}");
    check_with_promtool(&metrics);

    // The OpenAPI document parses and lists every route of DESIGN §7.
    let (status, doc) = c.api(1).get_public("/api/v1/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).expect("OpenAPI document is JSON");
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."), "{}", doc["openapi"]);
    for (path, method) in [
        ("/api/v1/dkg/initiate", "post"),
        ("/api/v1/dkg/status", "get"),
        ("/api/v1/presignatures/status", "get"),
        ("/api/v1/transactions", "post"),
        ("/api/v1/transactions", "get"),
        ("/api/v1/transactions/{id}", "get"),
        ("/api/v1/health", "get"),
        ("/metrics", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "OpenAPI lacks {method} {path}");
    }

    // SIGTERM: every node exits 0; restarted, a node resumes where it was.
    for id in c.ids() {
        let status = c.terminate(id, MINUTES);
        assert_eq!(status.code(), Some(0), "node {id} exited {status}:\n{}", c.log_tail(id, 20));
    }
    let all = records(&c);
    let consumed = assert_no_share_signed_two_messages(&all);
    assert!(all[&1].iter().any(|r| matches!(r, Record::SafePrimes(_))), "node 1's own primes were not persisted");
    assert!(consumed >= 3 * 5, "too few consumptions recorded ({consumed}) for what was signed");
    c.start(2);
    wait_live(&c, &[2]);
    let resumed = transaction(&c, 2, &tx1).expect("node 2 serves the transaction after its restart");
    assert_eq!(resumed.state, TxStateName::Signed);
    let s: DkgStatus = parse(&c.api(2).get("/api/v1/dkg/status").unwrap().body);
    assert_eq!(s.public_key_hex.as_deref(), Some(key.hex().as_str()));
}

fn check_with_promtool(metrics: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("MPC_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "promtool is not installed (scripts/setup.sh --promtool installs Debian's prometheus)"
        );
        eprintln!("promtool not installed: metrics not checked with it");
        return;
    };
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The database check bites: a share consumed for two messages, or two
/// signers of one presignature answering different messages, is caught.
#[test]
fn the_two_messages_check_catches_a_reused_share() {
    let id = PresigId { origin: NodeId(1), seq: 7 };
    let tx = mpc_core::TxId([1; 32]);
    let consumed = |message: u8| Record::PresigConsumed { id, tx, input: 0, message: [message; 32], sigma: [0; 32] };
    let fine: BTreeMap<u16, Vec<Record>> = [(1, vec![consumed(5)]), (2, vec![consumed(5)])].into();
    assert_eq!(assert_no_share_signed_two_messages(&fine), 2);
    // Two signers answering different messages is waste, not reuse.
    let split: BTreeMap<u16, Vec<Record>> = [(1, vec![consumed(5)]), (2, vec![consumed(6)])].into();
    assert_eq!(assert_no_share_signed_two_messages(&split), 2);
    let reused = BTreeMap::from([(1u16, vec![consumed(5), consumed(6)])]);
    let caught = std::panic::catch_unwind(|| assert_no_share_signed_two_messages(&reused));
    assert!(caught.is_err(), "a share used for two messages passed the check");
}

/// The fixture primes' path as `cluster init` wrote it into the configs.
fn fixture_primes_path() -> String {
    mpc_tests::fixture_primes().display().to_string()
}

trait ParsePresig {
    fn parse_presig(&self) -> PresigId;
}

impl ParsePresig for String {
    /// `presig-<origin>-<seq>`, as `PresigId` displays.
    fn parse_presig(&self) -> PresigId {
        let mut parts = self.strip_prefix("presig-").expect("presig id").split('-');
        let origin = parts.next().unwrap().parse().unwrap();
        let seq = parts.next().unwrap().parse().unwrap();
        PresigId { origin: NodeId(origin), seq }
    }
}
