//! The operator's database commands, run as the binary: a missing or
//! malformed master key stops with a clear message and no key bytes; the
//! right key opens and summarises; a tampered audit row is named.

use mpc_core::{DkgId, Millis, NodeId, Record};
use mpc_io_store::{MasterKey, Store};
use std::process::{Command, Output};

const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn node_bin(args: &[&str], key_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpc-node"));
    cmd.args(args).env_remove("MPC_MASTER_KEY");
    if let Some(k) = key_env {
        cmd.env("MPC_MASTER_KEY", k);
    }
    cmd.output().expect("run mpc-node")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn key_errors_are_clear_and_a_tampered_audit_row_is_named() {
    let dir = std::env::temp_dir().join(format!("mpc-node-storage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node-2.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let key = MasterKey::from_hex(KEY_HEX, "test").unwrap();
        let store = Store::open(&url, key, NodeId(2)).await.unwrap();
        let dkg = DkgId { origin: NodeId(1), seq: 0 };
        for (i, r) in [Record::SequenceReserved { next: 4 }, Record::DkgJoined { dkg }].into_iter().enumerate() {
            store.apply(Millis(i as u64), &[r]).await.unwrap();
        }
        store.close().await;
    });
    let db = ["db-check", "--db", url.as_str(), "--node", "2"];

    let out = node_bin(&db, None);
    assert!(!out.status.success());
    assert!(text(&out).contains("MPC_MASTER_KEY"), "{}", text(&out));

    let out = node_bin(&db, Some("not-a-key"));
    assert!(!out.status.success());
    assert!(text(&out).contains("malformed master key"), "{}", text(&out));

    let key_file = dir.join("master.key");
    std::fs::write(&key_file, "ab".repeat(31)).unwrap();
    let out = node_bin(&[&db[..], &["--master-key-file", key_file.to_str().unwrap()]].concat(), None);
    assert!(!out.status.success());
    assert!(text(&out).contains("master.key"), "{}", text(&out));

    let wrong = "1".repeat(64);
    let out = node_bin(&db, Some(&wrong));
    assert!(!out.status.success());
    assert!(text(&out).contains("master key") && !text(&out).contains(&wrong[..16]), "{}", text(&out));

    let out = node_bin(&["db-check", "--db", url.as_str(), "--node", "3"], Some(KEY_HEX));
    assert!(!out.status.success());
    assert!(text(&out).contains("belongs to node-2"), "{}", text(&out));

    let out = node_bin(&db, Some(KEY_HEX));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 records recovered") && text(&out).contains("audit chain intact"), "{}", text(&out));
    assert!(!text(&out).contains(KEY_HEX), "key printed");

    let audit = ["audit-verify", "--db", url.as_str()];
    let out = node_bin(&audit, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 rows"), "{}", text(&out));

    // Past the triggers, as an attacker with the file would be.
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DROP TRIGGER audit_log_no_update").execute(&mut conn).await.unwrap();
        sqlx::query("UPDATE audit_log SET at_ms = 99 WHERE seq = 1").execute(&mut conn).await.unwrap();
    });
    let out = node_bin(&audit, None);
    assert!(!out.status.success());
    assert!(text(&out).contains("audit row 1"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(dir);
}
