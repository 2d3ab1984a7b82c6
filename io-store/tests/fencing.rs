//! Restore fencing with a real backup and restore, on both backends, against
//! a real etcd: presignatures consumed after the backup was taken come back
//! Ready in the restored database, and the start-up check discards them (and
//! every other usable one), says so in the audit log, and leaves a database
//! that was not restored alone.

mod common;

use common::*;
use mpc_core::{Millis, NodeId, PresigId, Record, TxId};
use mpc_io_store::coord::{CoordConfig, Coordinator};
use mpc_io_store::{fence_at_startup, Backend, Fencing};
use sqlx::Connection;

fn etcd() -> String {
    std::env::var("MPC_TEST_ETCD").unwrap_or_else(|_| {
        panic!("MPC_TEST_ETCD is not set: run scripts/test.sh, or `eval \"$(scripts/etcd.sh start)\"`")
    })
}

fn consume(id: PresigId, byte: u8) -> Record {
    Record::PresigConsumed { id, tx: TxId([byte; 32]), input: 0, message: [byte; 32], sigma: [byte; 32] }
}

fn own_state(view: &mpc_core::DurableView, id: PresigId) -> String {
    view.own_presigs.iter().find(|(p, _)| *p == id).map(|(_, s)| s.clone()).unwrap_or_default()
}

/// A consistent copy of the live database, as an operator's backup would be.
async fn backup(backend: Backend, url: &str) -> String {
    let copy = fresh_db(backend, "backup").await;
    match backend {
        Backend::Sqlite => {
            let path = copy.trim_start_matches("sqlite://").trim_end_matches("?mode=rwc").to_string();
            std::fs::remove_file(&path).ok();
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query(&format!("VACUUM INTO '{path}'")).execute(&mut conn).await.unwrap();
            copy
        }
        Backend::Postgres => {
            // A template copy needs the source idle: the caller closed it.
            let admin = postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            let (_, source) = url.rsplit_once('/').unwrap();
            let (_, target) = copy.rsplit_once('/').unwrap();
            sqlx::query(&format!("DROP DATABASE {target}")).execute(&mut conn).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {target} TEMPLATE {source}")).execute(&mut conn).await.unwrap();
            copy
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_never_brings_back_a_consumed_presignature() {
    let node = NodeId(1);
    let (_, _, records) = streams().iter().find(|(_, n, _)| *n == node).unwrap();
    let setup: Vec<Record> = records
        .iter()
        .filter(|r| matches!(r.kind(), "aux_info" | "key_share" | "presig_generating" | "presig_ready"))
        .cloned()
        .collect();
    let ready: Vec<PresigId> =
        setup.iter().filter_map(|r| if let Record::PresigReady { id, .. } = r { Some(*id) } else { None }).collect();
    assert!(ready.len() >= 4);
    for backend in BACKENDS {
        let cluster = format!("fencing-{backend:?}-{}", std::process::id()).to_lowercase();
        let coord = Coordinator::connect(CoordConfig::new(vec![etcd()], cluster, node)).await.unwrap();
        let live = fresh_db(backend, "live").await;
        let store = open(&live, node).await;
        assert_eq!(fence_at_startup(&store, &coord, Millis(0)).await.unwrap(), Fencing::Current { epoch: 0 });
        store.apply(Millis(1), &setup).await.unwrap();
        for (i, id) in ready[..2].iter().enumerate() {
            let applied = store.apply(Millis(2), &[consume(*id, i as u8)]).await.unwrap();
            // The shell publishes each new epoch after the commit.
            coord.advance_epoch(applied.epoch.expect("a consumption advances the epoch")).await.unwrap();
        }
        store.close().await;
        let saved = backup(backend, &live).await;

        // After the backup: one more presignature is consumed and published.
        let store = open(&live, node).await;
        let later = ready[2];
        let applied = store.apply(Millis(3), &[consume(later, 9)]).await.unwrap();
        assert_eq!(applied.epoch, Some(3));
        coord.advance_epoch(3).await.unwrap();
        // A normal restart of the live database discards nothing.
        assert_eq!(fence_at_startup(&store, &coord, Millis(4)).await.unwrap(), Fencing::Current { epoch: 3 });
        store.close().await;

        // The operator restores the backup. Unfenced, it would offer the
        // presignature consumed since as Ready: the hazard.
        let restored = open(&saved, node).await;
        let unfenced = view_of(node, restored.recover().await.unwrap().records);
        assert!(own_state(&unfenced, later).starts_with("ready"), "{backend:?}: the backup predates the consumption");

        let outcome = fence_at_startup(&restored, &coord, Millis(5)).await.unwrap();
        let held = (ready.len() - 2) as u64;
        assert_eq!(
            outcome,
            Fencing::Restored { database_epoch: 2, latest_epoch: 3, discarded: held },
            "{backend:?}: every presignature the restored database held as usable is discarded"
        );
        let fenced = view_of(node, restored.recover().await.unwrap().records);
        assert_eq!(own_state(&fenced, later), "discarded", "{backend:?}");
        assert!(fenced.own_presigs.iter().all(|(_, s)| !s.starts_with("ready")), "{backend:?}: a Ready share survived");
        assert_eq!(restored.epoch().await.unwrap(), 3, "the restored database is brought level");
        assert_eq!(coord.epoch(node).await.unwrap(), Some(3), "etcd never goes back");
        let audit = restored.audit_rows().await.unwrap();
        let last = audit.last().unwrap();
        assert_eq!(last.kind, "restore_fencing");
        assert!(String::from_utf8_lossy(&last.body).contains("restored from an older backup"));
        restored.verify_audit().await.unwrap();
        // Fenced once, the restored database is current from then on.
        assert_eq!(fence_at_startup(&restored, &coord, Millis(6)).await.unwrap(), Fencing::Current { epoch: 3 });
        restored.close().await;
    }
}
