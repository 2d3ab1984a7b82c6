//! The audit anchor in etcd catches what the hash chain alone cannot, on
//! both backends: rows cut off the end of the log (deleted behind the
//! triggers' back), and a cut-off tail grown again by the node itself. The
//! node neither blocks consumption on it nor launders it by anchoring the
//! new tail. (A restored backup's lost tail: tests/fencing.rs.)

mod common;

use common::*;
use mpc_core::{Millis, NodeId, PresigId, Record, TxId};
use mpc_io_store::{fence_at_startup, Anchoring, Backend, ChainError, Store, StoreError};
use sqlx::Connection;

const NODE: NodeId = NodeId(2);

fn consume(id: PresigId, byte: u8) -> Record {
    Record::PresigConsumed { id, tx: TxId([byte; 32]), input: 0, message: [byte; 32], sigma: [byte; 32] }
}

fn tail_error(err: &StoreError) -> Option<&ChainError> {
    match err {
        StoreError::Audit(e @ (ChainError::TruncatedTail { .. } | ChainError::RewrittenTail { .. })) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_or_regrown_audit_tail_is_caught_against_the_anchor() {
    let (_, _, records) = streams().iter().find(|(_, n, _)| *n == NODE).unwrap();
    let setup: Vec<Record> = records
        .iter()
        .filter(|r| matches!(r.kind(), "aux_info" | "key_share" | "presig_generating" | "presig_ready"))
        .cloned()
        .collect();
    let ready: Vec<PresigId> =
        setup.iter().filter_map(|r| if let Record::PresigReady { id, .. } = r { Some(*id) } else { None }).collect();
    for backend in BACKENDS {
        let coord = coordinator(&etcd_endpoint(), &unique_cluster("anchor"), NODE).await;
        let url = fresh_db(backend, "anchor").await;
        let store = open(&url, NODE).await;
        fence_at_startup(&store, &coord, Millis(0)).await.unwrap();
        store.apply_fenced(Millis(1), &setup, &coord).await.unwrap();
        let consumed = store.apply_fenced(Millis(2), &[consume(ready[0], 1)], &coord).await.unwrap();
        assert_eq!(coord.anchor(NODE).await.unwrap(), consumed.anchored, "anchored with the epoch");
        for i in 0..3 {
            store.apply_fenced(Millis(3), &[Record::SequenceReserved { next: 100 + i }], &coord).await.unwrap();
        }
        // Steps that consumed nothing are anchored by the periodic call.
        let head = store.verify_audit().await.unwrap();
        let anchor = head.anchor().unwrap();
        assert!(anchor.seq > consumed.anchored.unwrap().seq);
        assert_eq!(store.anchor_audit_head(&coord).await.unwrap(), Anchoring::Published(anchor));
        assert_eq!(store.anchor_audit_head(&coord).await.unwrap(), Anchoring::Unchanged(anchor));
        assert_eq!(coord.anchor(NODE).await.unwrap(), Some(anchor));
        assert_eq!(store.verify_audit_against(Some(&anchor)).await.unwrap(), head);
        assert_eq!(Store::verify_audit_at(&url, Some(&anchor)).await.unwrap().0, head);

        // Cut the last two rows off, behind the triggers' back.
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        let drop = match backend {
            Backend::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
            Backend::Sqlite => "DROP TRIGGER audit_log_no_delete",
        };
        sqlx::query(drop).execute(&mut conn).await.unwrap();
        sqlx::query("DELETE FROM audit_log WHERE seq >= $1")
            .bind(anchor.seq as i64 - 1)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();

        // The chain alone still verifies: nothing in it is out of place.
        store.verify_audit().await.expect("a cut tail leaves a valid chain");
        let expected = ChainError::TruncatedTail { anchor, rows: anchor.seq - 1 };
        for err in [
            store.verify_audit_against(Some(&anchor)).await.unwrap_err(),
            Store::verify_audit_at(&url, Some(&anchor)).await.unwrap_err(),
        ] {
            assert_eq!(tail_error(&err), Some(&expected), "{backend:?}: {err}");
            assert!(err.to_string().contains(&hex::encode(anchor.hash)), "names the anchor: {err}");
        }
        // The node refuses to anchor the cut chain...
        let err = store.anchor_audit_head(&coord).await.unwrap_err();
        assert_eq!(tail_error(&err), Some(&expected), "{backend:?}: {err}");
        // ...and keeps consuming (the epoch guards presignatures), without
        // moving the anchor.
        let applied = store.apply_fenced(Millis(4), &[consume(ready[1], 2)], &coord).await.unwrap();
        assert_eq!((applied.epoch, applied.anchored), (Some(2), None), "{backend:?}");
        assert_eq!(coord.epoch(NODE).await.unwrap(), Some(2));
        assert_eq!(coord.anchor(NODE).await.unwrap(), Some(anchor), "{backend:?}: the anchor moved");

        // The node's own later steps grow the chain past the anchor again:
        // a valid chain whose row at the anchor is another one.
        for i in 0..2 {
            store.apply_fenced(Millis(5), &[Record::SequenceReserved { next: 200 + i }], &coord).await.unwrap();
        }
        let regrown = store.verify_audit().await.expect("the regrown chain is valid on its own");
        assert!(regrown.next_seq > anchor.seq + 1);
        let found = store.audit_rows().await.unwrap()[anchor.seq as usize].hash;
        let expected = ChainError::RewrittenTail { anchor, found };
        let err = store.verify_audit_against(Some(&anchor)).await.unwrap_err();
        assert_eq!(tail_error(&err), Some(&expected), "{backend:?}: {err}");
        let err = Store::verify_audit_at(&url, Some(&anchor)).await.unwrap_err();
        assert_eq!(tail_error(&err), Some(&expected), "{backend:?}: {err}");
        let err = store.anchor_audit_head(&coord).await.unwrap_err();
        assert_eq!(tail_error(&err), Some(&expected), "{backend:?}: laundered by anchoring the new tail");
        assert_eq!(coord.anchor(NODE).await.unwrap(), Some(anchor));
        store.close().await;
    }
}
