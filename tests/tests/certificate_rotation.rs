//! The certificate_rotation suite: five real processes (node 3 on
//! PostgreSQL) with transactions coming in all along while `mpc-cli certs
//! issue` renews every node's certificate in turn. Each running node picks
//! up its new certificate without a restart (`mpc_certificate_rotations_total
//! {outcome="applied"}`), its peers reconnect (four each again), and every
//! transaction submitted meanwhile is signed at all five and verifies. A
//! certificate from another CA put in node 2's place is refused
//! (`outcome="refused"`): node 2 keeps its old one, stays connected and
//! signs. Afterwards no presignature share served two messages. Timeouts
//! only guard against hangs.

use mpc_core::tx::GroupKey;
use mpc_node::api::types::{HealthView, TxStateName};
use mpc_sim::wallet::Spend;
use mpc_tests::audit::{assert_no_share_signed_two_messages, metric, records, verify_signed};
use mpc_tests::flow::{destination, dkg, submit_psbt, transaction, wait_live, wait_pool, wait_state, MINUTES};
use mpc_tests::{wait_for, LocalCluster, Options};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn cli(args: &[&str]) {
    let out = Command::new(mpc_tests::workspace_binary("mpc-cli")).args(args).output().unwrap();
    assert!(out.status.success(), "mpc-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn all_connected(c: &LocalCluster) {
    for id in c.ids() {
        wait_for(&format!("node {id} to see four peers"), 3 * MINUTES, || {
            let (_, body) = c.api(id).get_public("/api/v1/health")?;
            (serde_json::from_str::<HealthView>(&body).ok()?.peers_connected == 4).then_some(())
        });
    }
}

fn rotations(c: &LocalCluster, id: u16, outcome: &str) -> f64 {
    metric(c, &[id], &format!("mpc_certificate_rotations_total{{outcome=\"{outcome}\"}}"))
}

/// Submits a transaction every second (round robin over the nodes) until
/// `stop`; what it submitted.
fn load(c: &LocalCluster, key: &GroupKey, stop: &AtomicBool) -> Vec<(String, Spend)> {
    let mut out = Vec::new();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let spend = Spend::simple(&format!("rotation-{k}"), &[40_000 + k], &destination(), 30_000, 2_000);
        let node = 1 + (k % 5) as u16;
        // A node between connections may answer 503 for a moment: that
        // submission is simply made again to the next node.
        if let Some(a) = c.api(node).post_bytes("/api/v1/transactions", spend.psbt_bytes(key)) {
            if a.status == 202 {
                out.push((a.body["tx_id"].as_str().expect("tx_id").to_string(), spend));
            }
        }
        k += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    out
}

#[test]
fn every_nodes_certificate_renewed_under_load_and_another_cas_refused() {
    let mut options = Options::default();
    options.database_urls.insert(3, mpc_tests::fresh_postgres_database("rotation"));
    let mut c = LocalCluster::new("rotation", options);
    c.start_all();
    wait_live(&c, &c.ids());
    all_connected(&c);
    let key = dkg(&c);
    wait_pool(&c, 4);
    let certs = c.dir.join("certs");
    let certs_arg = certs.display().to_string();

    let stop = AtomicBool::new(false);
    let submitted = std::thread::scope(|s| {
        let loader = s.spawn(|| load(&c, &key, &stop));
        for id in c.ids() {
            let file = certs.join(format!("node-{id}.pem"));
            let before = std::fs::read(&file).unwrap();
            cli(&["certs", "issue", "--node", &id.to_string(), "--dir", &certs_arg, "--days", "30"]);
            assert_ne!(before, std::fs::read(&file).unwrap(), "node {id}'s certificate was not renewed");
            wait_for(&format!("node {id} to pick up its new certificate"), 2 * MINUTES, || {
                (rotations(&c, id, "applied") >= 1.0).then_some(())
            });
            all_connected(&c);
            eprintln!("node {id}: renewed certificate in use, four peers");
        }
        stop.store(true, Ordering::Relaxed);
        loader.join().expect("the load thread")
    });
    assert!(submitted.len() >= 5, "only {} transactions submitted during the rotations", submitted.len());
    for (tx, spend) in &submitted {
        wait_state(&c, &c.ids(), tx, TxStateName::Signed, 10 * MINUTES);
        for id in c.ids() {
            verify_signed(&transaction(&c, id, tx).unwrap(), spend, &key);
        }
    }
    eprintln!("{} transactions submitted during the rotations, all signed", submitted.len());

    // Another CA's certificate in node 2's place: refused, the old one kept.
    let foreign = c.dir.join("foreign-certs");
    cli(&["certs", "init", "--nodes", "5", "--out", &foreign.display().to_string()]);
    for ext in ["pem", "key"] {
        std::fs::copy(foreign.join(format!("node-2.{ext}")), certs.join(format!("node-2.{ext}"))).unwrap();
    }
    wait_for("node 2 to refuse the foreign certificate", 2 * MINUTES, || {
        (rotations(&c, 2, "refused") >= 1.0).then_some(())
    });
    assert_eq!(rotations(&c, 2, "applied"), 1.0, "node 2 applied the foreign certificate");
    all_connected(&c);
    let spend = Spend::simple("rotation-after-refusal", &[45_000], &destination(), 35_000, 2_000);
    let tx = submit_psbt(&c, 2, spend.psbt_bytes(&key));
    wait_state(&c, &c.ids(), &tx, TxStateName::Signed, 5 * MINUTES);
    verify_signed(&transaction(&c, 2, &tx).unwrap(), &spend, &key);
    assert_no_share_signed_two_messages(&records(&c));
}
