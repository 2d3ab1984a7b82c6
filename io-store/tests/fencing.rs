//! Restore fencing with real backups and restores, on both backends, against
//! a real etcd (the shared test server, or a private one a test stops and
//! restarts):
//!
//! - a consuming step's epoch is in etcd before its transaction commits,
//!   observed at the moment in between;
//! - while etcd is unreachable a consuming step fails with a typed error and
//!   leaves nothing durable, and a backup taken during the outage is still
//!   fenced when restored;
//! - a raise whose commit never happened fences the next start (safe);
//! - steps that consume nothing never touch etcd;
//! - a database that has consumed refuses to start when etcd has no epoch
//!   for it;
//! - a restored backup is fenced, and its lost audit tail shows against the
//!   anchor until the node has written past it.

mod common;

use common::*;
use mpc_core::{DurableView, Millis, NodeId, PresigId, Record, TxId};
use mpc_io_store::coord::{CoordError, Coordinator};
use mpc_io_store::{
    fence_at_startup, Anchoring, AuditAnchor, Backend, ChainError, FenceError, FenceState, Fencing, FencingAuthority,
    Store, StoreError,
};
use sqlx::{Connection, Row};
use std::sync::Mutex;

const NODE: NodeId = NodeId(1);

fn consume(id: PresigId, byte: u8) -> Record {
    Record::PresigConsumed { id, tx: TxId([byte; 32]), input: 0, message: [byte; 32], sigma: [byte; 32] }
}

fn own_state(view: &DurableView, id: PresigId) -> String {
    view.own_presigs.iter().find(|(p, _)| *p == id).map(|(_, s)| s.clone()).unwrap_or_default()
}

/// Key material and Ready presignatures of `NODE`, from a simulated run.
fn setup() -> (Vec<Record>, Vec<PresigId>) {
    let (_, _, records) = streams().iter().find(|(_, n, _)| *n == NODE).unwrap();
    let setup: Vec<Record> = records
        .iter()
        .filter(|r| matches!(r.kind(), "aux_info" | "key_share" | "presig_generating" | "presig_ready"))
        .cloned()
        .collect();
    let ready: Vec<PresigId> =
        setup.iter().filter_map(|r| if let Record::PresigReady { id, .. } = r { Some(*id) } else { None }).collect();
    assert!(ready.len() >= 4, "enough Ready presignatures to consume some and fence the rest");
    (setup, ready)
}

/// A backup of the database at `url`, as an operator takes one: SQLite's
/// files copied, PostgreSQL's database copied server-side. The store must
/// be closed (a template copy needs the source idle, and closing SQLite's
/// last connection folds the WAL into the main file).
async fn backup(backend: Backend, url: &str) -> String {
    let copy = fresh_db(backend, "backup").await;
    match backend {
        Backend::Sqlite => {
            let path = |u: &str| u.trim_start_matches("sqlite://").trim_end_matches("?mode=rwc").to_string();
            let (from, to) = (path(url), path(&copy));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{to}{suffix}"));
                if std::path::Path::new(&format!("{from}{suffix}")).exists() {
                    std::fs::copy(format!("{from}{suffix}"), format!("{to}{suffix}")).unwrap();
                }
            }
            copy
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await.unwrap();
            let (_, source) = url.rsplit_once('/').unwrap();
            let (_, target) = copy.rsplit_once('/').unwrap();
            sqlx::query(&format!("DROP DATABASE {target}")).execute(&mut conn).await.unwrap();
            // The store is closed, yet sqlx's closed pool can leave a
            // PostgreSQL session idle on it for a while, and a template copy
            // needs the source without sessions: end them, as an operator
            // would before copying.
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(source)
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(&format!("CREATE DATABASE {target} TEMPLATE {source}")).execute(&mut conn).await.unwrap();
            copy
        }
    }
}

/// What a restart would build from the database.
async fn view(store: &Store) -> DurableView {
    view_of(NODE, store.recover().await.unwrap().records)
}

/// A presignature's state and the database's epoch, read on a connection
/// of its own (what a concurrent reader, or a backup, would see).
async fn seen_from_outside(url: &str, id: PresigId) -> (String, i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let state: String = sqlx::query("SELECT state FROM presignatures WHERE origin = $1 AND seq = $2")
        .bind(i64::from(id.origin.0))
        .bind(id.seq as i64)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let epoch: i64 =
        sqlx::query("SELECT int_value FROM meta WHERE name = 'epoch'").fetch_one(&mut conn).await.unwrap().get(0);
    conn.close().await.unwrap();
    (state, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_never_brings_back_a_consumed_presignature() {
    let (setup, ready) = setup();
    for backend in BACKENDS {
        let coord = coordinator(&etcd_endpoint(), &unique_cluster("fence-restore"), NODE).await;
        let live = fresh_db(backend, "live").await;
        let store = open(&live, NODE).await;
        assert_eq!(fence_at_startup(&store, &coord, Millis(0)).await.unwrap(), Fencing::Current { epoch: 0 });
        store.apply_fenced(Millis(1), &setup, &coord).await.unwrap();
        for (i, id) in ready[..2].iter().enumerate() {
            let applied = store.apply_fenced(Millis(2), &[consume(*id, i as u8)], &coord).await.unwrap();
            assert_eq!(applied.epoch, Some(i as u64 + 1));
            assert_eq!(coord.epoch(NODE).await.unwrap(), applied.epoch, "{backend:?}: etcd holds the epoch");
        }
        store.close().await;
        let saved = backup(backend, &live).await;

        // After the backup: one more presignature is consumed.
        let store = open(&live, NODE).await;
        let later = ready[2];
        let applied = store.apply_fenced(Millis(3), &[consume(later, 9)], &coord).await.unwrap();
        assert_eq!(applied.epoch, Some(3));
        let anchor = applied.anchored.expect("a consuming step anchors its last audit row");
        assert_eq!(coord.anchor(NODE).await.unwrap(), Some(anchor));
        // A normal restart of the live database discards nothing.
        assert_eq!(fence_at_startup(&store, &coord, Millis(4)).await.unwrap(), Fencing::Current { epoch: 3 });
        store.close().await;

        // The operator restores the backup. Unfenced, it would offer the
        // presignature consumed since as Ready: the hazard.
        let restored = open(&saved, NODE).await;
        assert!(own_state(&view(&restored).await, later).starts_with("ready"), "{backend:?}: backup predates it");
        // Its audit log verifies on its own; against the anchor its lost
        // tail shows.
        restored.verify_audit().await.unwrap();
        let err = restored.verify_audit_against(Some(&anchor)).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Audit(ChainError::TruncatedTail { anchor: a, .. }) if *a == anchor),
            "{err}"
        );
        assert!(err.to_string().contains(&hex::encode(anchor.hash)), "the report names the anchor: {err}");

        let outcome = fence_at_startup(&restored, &coord, Millis(5)).await.unwrap();
        let held = (ready.len() - 2) as u64;
        assert_eq!(
            outcome,
            Fencing::Restored { database_epoch: 2, latest_epoch: 3, discarded: held },
            "{backend:?}: every presignature the restored database held as usable is discarded"
        );
        let fenced = view(&restored).await;
        assert_eq!(own_state(&fenced, later), "discarded", "{backend:?}");
        assert!(fenced.own_presigs.iter().all(|(_, s)| !s.starts_with("ready")), "{backend:?}: a Ready share survived");
        assert_eq!(restored.epoch().await.unwrap(), 3, "the restored database is brought level");
        assert_eq!(coord.epoch(NODE).await.unwrap(), Some(3), "etcd never goes back");
        let audit = restored.audit_rows().await.unwrap();
        let last = audit.last().unwrap();
        assert_eq!(last.kind, "restore_fencing");
        let body = String::from_utf8_lossy(&last.body);
        assert!(body.contains("restored from an older backup"), "{body}");
        assert!(body.contains(&anchor.to_string()), "the lost tail's anchor is recorded as superseded: {body}");
        restored.verify_audit().await.unwrap();

        // The anchor is never lowered: it stays until the restored chain
        // has grown past it, then moves on from the restore record.
        assert_eq!(coord.anchor(NODE).await.unwrap(), Some(anchor));
        assert_eq!(restored.anchor_audit_head(&coord).await.unwrap(), Anchoring::Unchanged(anchor));
        restored.apply_fenced(Millis(6), &[Record::SequenceReserved { next: 1 << 20 }], &coord).await.unwrap();
        let head = restored.verify_audit().await.unwrap().anchor().unwrap();
        assert!(head.seq > anchor.seq);
        assert_eq!(restored.anchor_audit_head(&coord).await.unwrap(), Anchoring::Published(head));
        restored.verify_audit_against(Some(&head)).await.unwrap();
        // Fenced once, the restored database is current from then on.
        assert_eq!(fence_at_startup(&restored, &coord, Millis(7)).await.unwrap(), Fencing::Current { epoch: 3 });
        restored.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_an_etcd_outage_is_still_fenced() {
    let (setup, ready) = setup();
    for backend in BACKENDS {
        let mut etcd = OwnEtcd::start("fence-outage-etcd");
        let coord = coordinator(&etcd.endpoint(), &unique_cluster("fence-outage"), NODE).await;
        let live = fresh_db(backend, "outage").await;
        let store = open(&live, NODE).await;
        fence_at_startup(&store, &coord, Millis(0)).await.unwrap();
        store.apply_fenced(Millis(1), &setup, &coord).await.unwrap();
        let applied = store.apply_fenced(Millis(2), &[consume(ready[0], 1)], &coord).await.unwrap();
        assert_eq!(applied.epoch, Some(1));
        assert_eq!(coord.epoch(NODE).await.unwrap(), Some(1));

        // etcd goes away; meanwhile the operator's backup runs.
        etcd.kill();
        store.close().await;
        let saved = backup(backend, &live).await;
        let store = open(&live, NODE).await;

        // No consumption while etcd is unreachable, and nothing of the
        // refused step is durable.
        let before = (view(&store).await, store.audit_rows().await.unwrap().len());
        let step = [Record::SequenceReserved { next: 1 << 20 }, consume(ready[1], 2)];
        let err = store.apply_fenced(Millis(3), &step, &coord).await.unwrap_err();
        assert!(matches!(&err, StoreError::CoordinationUnavailable(CoordError::Unreachable(_))), "{backend:?}: {err}");
        assert!(err.to_string().contains("coordination unavailable"), "{err}");
        assert_eq!((view(&store).await, store.audit_rows().await.unwrap().len()), before, "{backend:?}: half a step");
        assert_eq!(store.epoch().await.unwrap(), 1);
        assert_eq!(seen_from_outside(&live, ready[1]).await, ("ready".to_string(), 1));
        // Steps that consume nothing go on without etcd.
        store.apply_fenced(Millis(3), &[Record::SequenceReserved { next: 1 << 21 }], &coord).await.unwrap();

        // etcd is back: the consumption goes through, epoch 2 first in etcd.
        etcd.spawn();
        let applied = loop {
            match store.apply_fenced(Millis(4), &[consume(ready[1], 2)], &coord).await {
                Ok(applied) => break applied,
                Err(StoreError::CoordinationUnavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("{backend:?}: {e}"),
            }
        };
        assert_eq!(applied.epoch, Some(2));
        assert_eq!(coord.epoch(NODE).await.unwrap(), Some(2));
        store.close().await;

        // The backup from the outage is restored: fenced, although it was
        // taken while etcd could not be told anything.
        let restored = open(&saved, NODE).await;
        assert!(own_state(&view(&restored).await, ready[1]).starts_with("ready"));
        let outcome = fence_at_startup(&restored, &coord, Millis(5)).await.unwrap();
        assert_eq!(
            outcome,
            Fencing::Restored { database_epoch: 1, latest_epoch: 2, discarded: (ready.len() - 1) as u64 },
            "{backend:?}"
        );
        let fenced = view(&restored).await;
        assert_eq!(own_state(&fenced, ready[1]), "discarded", "{backend:?}: the presignature used since comes back");
        assert!(fenced.own_presigs.iter().all(|(_, s)| !s.starts_with("ready")), "{backend:?}");
        restored.close().await;
    }
}

/// A fencing authority that, right after etcd confirmed a raise and before
/// the step can commit, looks at etcd and at the database from outside.
struct Probe<'a> {
    etcd: &'a Coordinator,
    observer: Coordinator,
    db: String,
    watched: PresigId,
    seen: Mutex<Vec<Observed>>,
}

#[derive(Debug)]
struct Observed {
    etcd_epoch: Option<u64>,
    etcd_anchor: Option<AuditAnchor>,
    database: (String, i64),
}

impl FencingAuthority for Probe<'_> {
    async fn fence_state(&self) -> Result<FenceState, CoordError> {
        self.etcd.fence_state().await
    }

    async fn raise(
        &self,
        seen: &FenceState,
        epoch: Option<u64>,
        anchor: Option<AuditAnchor>,
    ) -> Result<bool, CoordError> {
        let raised = self.etcd.raise(seen, epoch, anchor).await?;
        let observed = Observed {
            etcd_epoch: self.observer.epoch(NODE).await.unwrap(),
            etcd_anchor: self.observer.anchor(NODE).await.unwrap(),
            database: seen_from_outside(&self.db, self.watched).await,
        };
        self.seen.lock().unwrap().push(observed);
        Ok(raised)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_is_in_etcd_before_the_consuming_step_commits() {
    let (setup, ready) = setup();
    for backend in BACKENDS {
        let cluster = unique_cluster("fence-order");
        let coord = coordinator(&etcd_endpoint(), &cluster, NODE).await;
        let url = fresh_db(backend, "order").await;
        let store = open(&url, NODE).await;
        fence_at_startup(&store, &coord, Millis(0)).await.unwrap();
        store.apply_fenced(Millis(1), &setup, &coord).await.unwrap();
        for (i, id) in ready[..2].iter().enumerate() {
            let probe = Probe {
                etcd: &coord,
                observer: coordinator(&etcd_endpoint(), &cluster, NodeId(9)).await,
                db: url.clone(),
                watched: *id,
                seen: Mutex::new(Vec::new()),
            };
            let epoch = i as u64 + 1;
            let applied = store.apply_fenced(Millis(2), &[consume(*id, 1)], &probe).await.unwrap();
            let seen = probe.seen.into_inner().unwrap();
            let [at_raise] = &seen[..] else { panic!("{backend:?}: one raise per consuming step, got {seen:?}") };
            // Between raise and commit: etcd has the new epoch and the
            // step's anchor, while the database does not show the step yet.
            assert_eq!(at_raise.etcd_epoch, Some(epoch), "{backend:?}: etcd lacks the epoch before the commit");
            assert_eq!(at_raise.etcd_anchor, applied.anchored, "{backend:?}");
            assert_eq!(
                at_raise.database,
                ("ready".to_string(), epoch as i64 - 1),
                "{backend:?}: the consumption committed before etcd held its epoch"
            );
            assert_eq!(applied.epoch, Some(epoch));
            assert_eq!(applied.anchored, store.verify_audit().await.unwrap().anchor(), "the step's last row");
            assert_eq!(seen_from_outside(&url, *id).await, ("consumed".to_string(), epoch as i64));
        }
        store.close().await;
    }
}

/// etcd applies the raise but its answer is lost: the outcome a crash
/// between raise and commit also leaves.
struct AnswerLost<'a>(&'a Coordinator);

impl FencingAuthority for AnswerLost<'_> {
    async fn fence_state(&self) -> Result<FenceState, CoordError> {
        self.0.fence_state().await
    }

    async fn raise(
        &self,
        seen: &FenceState,
        epoch: Option<u64>,
        anchor: Option<AuditAnchor>,
    ) -> Result<bool, CoordError> {
        assert!(self.0.raise(seen, epoch, anchor).await?, "uncontended");
        Err(CoordError::Unreachable("the answer was lost (test)".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_whose_commit_never_happened_fences_the_next_start() {
    let (setup, ready) = setup();
    for backend in BACKENDS {
        let coord = coordinator(&etcd_endpoint(), &unique_cluster("fence-lost"), NODE).await;
        let url = fresh_db(backend, "lost").await;
        let store = open(&url, NODE).await;
        fence_at_startup(&store, &coord, Millis(0)).await.unwrap();
        store.apply_fenced(Millis(1), &setup, &coord).await.unwrap();
        store.apply_fenced(Millis(2), &[consume(ready[0], 1)], &coord).await.unwrap();

        let before = (view(&store).await, store.audit_rows().await.unwrap().len());
        let err = store.apply_fenced(Millis(3), &[consume(ready[1], 2)], &AnswerLost(&coord)).await.unwrap_err();
        assert!(matches!(err, StoreError::CoordinationUnavailable(_)), "{backend:?}: {err}");
        assert_eq!((view(&store).await, store.audit_rows().await.unwrap().len()), before, "{backend:?}: durable");
        assert_eq!((store.epoch().await.unwrap(), coord.epoch(NODE).await.unwrap()), (1, Some(2)), "etcd is ahead");

        // Nothing more is consumed from a database etcd is ahead of...
        let err = store.apply_fenced(Millis(4), &[consume(ready[2], 3)], &coord).await.unwrap_err();
        assert!(
            matches!(err, StoreError::FencingRequired { database_epoch: 1, published_epoch: 2 }),
            "{backend:?}: {err}"
        );
        assert!(err.to_string().contains("Restart the node"), "{err}");
        assert_eq!(view(&store).await, before.0, "{backend:?}");

        // ...and the next start discards every presignature it holds.
        let outcome = fence_at_startup(&store, &coord, Millis(5)).await.unwrap();
        assert_eq!(
            outcome,
            Fencing::Restored { database_epoch: 1, latest_epoch: 2, discarded: (ready.len() - 1) as u64 },
            "{backend:?}"
        );
        assert!(view(&store).await.own_presigs.iter().all(|(_, s)| !s.starts_with("ready")), "{backend:?}");
        store.close().await;
    }
}

/// Fails the test if asked anything.
struct Untouchable;

impl FencingAuthority for Untouchable {
    async fn fence_state(&self) -> Result<FenceState, CoordError> {
        panic!("a step that consumes nothing asked etcd for the fencing state")
    }

    async fn raise(&self, _: &FenceState, _: Option<u64>, _: Option<AuditAnchor>) -> Result<bool, CoordError> {
        panic!("a step that consumes nothing raised the epoch")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_consume_nothing_never_touch_etcd() {
    let (setup, ready) = setup();
    for backend in BACKENDS {
        let url = fresh_db(backend, "untouched").await;
        let store = open(&url, NODE).await;
        let applied = store.apply_fenced(Millis(1), &setup, &Untouchable).await.unwrap();
        assert_eq!((applied.epoch, applied.anchored, applied.audit_rows), (None, None, setup.len() as u64));
        let discard = Record::PresigDiscarded { id: ready[0], reason: "test".into() };
        store.apply_fenced(Millis(2), &[discard], &Untouchable).await.unwrap();
        assert_eq!(store.epoch().await.unwrap(), 0);
        assert_eq!(own_state(&view(&store).await, ready[0]), "discarded");
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_has_consumed_refuses_to_start_without_its_epoch_in_etcd() {
    let (setup, ready) = setup();
    for backend in BACKENDS {
        let url = fresh_db(backend, "missing").await;
        let store = open(&url, NODE).await;
        // A fresh database and no key: a first start.
        let first = coordinator(&etcd_endpoint(), &unique_cluster("fence-first"), NODE).await;
        assert_eq!(fence_at_startup(&store, &first, Millis(0)).await.unwrap(), Fencing::Current { epoch: 0 });
        store.apply_fenced(Millis(1), &setup, &first).await.unwrap();
        store.apply_fenced(Millis(2), &[consume(ready[0], 1)], &first).await.unwrap();

        // The same database against an etcd that holds nothing for it (etcd
        // wiped, or another cluster's).
        let wiped_cluster = unique_cluster("fence-wiped");
        let wiped = coordinator(&etcd_endpoint(), &wiped_cluster, NODE).await;
        let before = view(&store).await;
        let err = fence_at_startup(&store, &wiped, Millis(3)).await.unwrap_err();
        let key = format!("/mpc/{wiped_cluster}/epochs/1");
        assert!(
            matches!(&err, FenceError::MissingEpoch { node: NODE, key: k, database_epoch: 1 } if *k == key),
            "{backend:?}: {err}"
        );
        let text = err.to_string();
        for expected in [key.as_str(), "wiped", "another cluster", "does not start", &format!("etcdctl put {key} 2")] {
            assert!(text.contains(expected), "{backend:?}: {expected:?} missing from: {text}");
        }
        assert_eq!(wiped.epoch(NODE).await.unwrap(), None, "the refusal publishes nothing");
        assert_eq!(view(&store).await, before, "the refusal changes nothing");
        // A running node whose etcd lost the key consumes nothing either.
        let err = store.apply_fenced(Millis(4), &[consume(ready[1], 2)], &wiped).await.unwrap_err();
        assert!(matches!(err, StoreError::EpochMissing { database_epoch: 1 }), "{backend:?}: {err}");
        assert_eq!(view(&store).await, before);
        store.close().await;
    }
}
