//! The e2e suite: the product as an operator first meets it. Five real
//! `mpc-node` processes on loopback, through their HTTP APIs and the CLI,
//! node 4 on PostgreSQL and the others on SQLite; node 1 generates its safe
//! primes in the background at its first start and node 2 loads primes made
//! by `mpc-cli primes generate` (the others use the TEST-ONLY fixture
//! primes): DKG, the pool filled, a PSBT approved and signed (checked with
//! libbitcoinconsensus) and its signed PSBT written by the CLI, a spend of
//! a real regtest output broadcast and confirmed, `promtool` on a live
//! node's metrics, the OpenAPI document, SIGTERM of every node (exit 0) and
//! a restart that resumes; and from the five databases, no presignature
//! share used for two messages. Faults (frozen and killed signers, kills at
//! points of a transaction's life) are the fault_tolerance suite's.
//! Timeouts only guard against hangs.

use base64::Engine;
use mpc_core::tx::GroupKey;
use mpc_core::Record;
use mpc_node::api::types::{DkgStatus, TxStateName};
use mpc_sim::wallet::Spend;
use mpc_tests::audit::{assert_no_share_signed_two_messages, check_with_promtool, records, verify_signed};
use mpc_tests::flow::{
    destination, dkg, parse, submit_psbt, transaction, wait_live, wait_pool, wait_state, wait_states, MINUTES,
};
use mpc_tests::{wait_for, LocalCluster, Options, Regtest};
use serde_json::{json, Value};

fn submit(c: &LocalCluster, node: u16, spend: &Spend, key: &GroupKey) -> String {
    submit_psbt(c, node, spend.psbt_bytes(key))
}

#[test]
fn five_processes_dkg_sign_confirm_on_a_real_chain_shut_down_and_resume() {
    // The production default: multiexp tables built with the aux info.
    let mut options = Options { multiexp_tables: true, ..Options::default() };
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

    // On a real chain: a regtest wallet funds the
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
    // Every node took votes from its peers, and timed how long they queued.
    for id in c.ids() {
        let votes = mpc_tests::audit::metric(&c, &[id], "mpc_inbox_wait_seconds_count{message=\"vote\"}");
        assert!(votes >= 4.0, "node {id}: {votes} votes timed in the inbox");
    }

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
    // Three inputs were signed (two in the first spend, one on chain), each
    // by three signers.
    assert!(consumed >= 3 * 3, "too few consumptions recorded ({consumed}) for what was signed");
    c.start(2);
    wait_live(&c, &[2]);
    let resumed = transaction(&c, 2, &tx1).expect("node 2 serves the transaction after its restart");
    assert_eq!(resumed.state, TxStateName::Signed);
    let s: DkgStatus = parse(&c.api(2).get("/api/v1/dkg/status").unwrap().body);
    assert_eq!(s.public_key_hex.as_deref(), Some(key.hex().as_str()));
}

/// The fixture primes' path as `cluster init` wrote it into the configs.
fn fixture_primes_path() -> String {
    mpc_tests::fixture_primes().display().to_string()
}
