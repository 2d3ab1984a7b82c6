//! The node database on both backends (real PostgreSQL from
//! scripts/postgres.sh, SQLite in a file): every record kind round-trips,
//! a recovered node equals the node replayed from its original records,
//! the database itself refuses what must never happen, and errors are clear.

mod common;

use common::*;
use mpc_core::{Millis, NodeId, PresigId, Record, RecoveredState};
use mpc_io_store::{Backend, Store, StoreError};
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_kind_round_trips_and_recovery_equals_replay() {
    let streams = streams();
    let covered: BTreeSet<&str> = streams.iter().flat_map(|(_, _, s)| s.iter().map(|r| r.kind())).collect();
    assert_eq!(covered, ALL_KINDS.into_iter().collect(), "the sample streams cover every record kind");
    for backend in BACKENDS {
        for (seed, node, records) in streams {
            let url = fresh_db(backend, "roundtrip").await;
            let store = open(&url, *node).await;
            apply_in_steps(&store, records).await;
            let recovered = store.recover().await.unwrap();
            store.close().await;
            let expected = view_of(*node, records.clone());
            let got = view_of(*node, recovered.records);
            assert_eq!(got, expected, "{backend:?}, seed {seed}, {node}: recovered node differs from replay");
            // Reopened from scratch (a restart), the same again.
            let store = open(&url, *node).await;
            assert_eq!(view_of(*node, store.recover().await.unwrap().records), expected);
            store.verify_audit().await.unwrap();
            let audit = store.audit_rows().await.unwrap();
            assert_eq!(audit.len(), records.len(), "one audit row per record");
            store.close().await;
        }
    }
}

/// Ready presignatures (with their own shares) from node `node`'s stream.
fn ready_presigs(node: NodeId) -> (Vec<Record>, Vec<PresigId>) {
    let (_, _, records) = streams().iter().find(|(_, n, _)| *n == node).unwrap();
    let mut setup = Vec::new();
    let mut ready = Vec::new();
    for r in records {
        match r {
            Record::KeyShare { .. } | Record::AuxInfo { .. } | Record::PresigGenerating { .. } => setup.push(r.clone()),
            Record::PresigReady { id, .. } => {
                setup.push(r.clone());
                ready.push(*id);
            }
            _ => {}
        }
    }
    (setup, ready)
}

fn consume(id: PresigId, byte: u8) -> Record {
    Record::PresigConsumed { id, tx: mpc_core::TxId([byte; 32]), input: 0, message: [byte; 32], sigma: [byte; 32] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_consumers_never_both_win() {
    let node = NodeId(1);
    let (setup, ready) = ready_presigs(node);
    assert!(ready.len() >= 10, "enough ready presignatures to race for");
    for backend in BACKENDS {
        let url = fresh_db(backend, "race").await;
        let first = open(&url, node).await;
        first.apply(Millis(0), &setup).await.unwrap();
        // Two independent handles (two pools, as two processes would have).
        let second = open(&url, node).await;
        let race = |store: Store, byte: u8, ids: Vec<PresigId>| {
            tokio::spawn(async move {
                let mut won = Vec::new();
                for id in ids {
                    match store.apply(Millis(1), &[consume(id, byte)]).await {
                        Ok(_) => won.push(id),
                        Err(StoreError::PresigTransition { from, to: "consumed", .. }) => assert_eq!(from, "consumed"),
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (store, won)
            })
        };
        let (a, b) = (race(first, 0xaa, ready.clone()), race(second, 0xbb, ready.clone()));
        let (first, won_a) = a.await.unwrap();
        let (second, won_b) = b.await.unwrap();
        let (set_a, set_b): (BTreeSet<_>, BTreeSet<_>) = (won_a.iter().collect(), won_b.iter().collect());
        assert!(set_a.is_disjoint(&set_b), "{backend:?}: a presignature consumed by both");
        assert_eq!(set_a.len() + set_b.len(), ready.len(), "{backend:?}: each consumed exactly once");
        // What the database holds agrees with who won.
        let recovered = first.recover().await.unwrap();
        for r in &recovered.records {
            if let Record::PresigConsumed { id, message, .. } = r {
                let winner = if set_a.contains(id) { 0xaa } else { 0xbb };
                assert_eq!(*message, [winner; 32], "{backend:?}: {id} holds the loser's message");
            }
        }
        first.verify_audit().await.unwrap();
        assert_eq!(first.epoch().await.unwrap(), ready.len() as u64, "one epoch step per consumption");
        first.close().await;
        second.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_second_vote_and_rolls_back_the_whole_step() {
    let (seed, node, records) = streams().iter().find(|(_, _, s)| s.iter().any(|r| r.kind() == "vote")).unwrap();
    let upto = records.iter().position(|r| r.kind() == "vote").unwrap();
    let Record::Vote(vote) = &records[upto] else { unreachable!() };
    for backend in BACKENDS {
        let url = fresh_db(backend, "dupvote").await;
        let store = open(&url, *node).await;
        apply_in_steps(&store, &records[..=upto]).await;
        let before = store.recover().await.unwrap();
        let mut other = vote.clone();
        other.body.decision = match other.body.decision {
            mpc_core::vote::Decision::Approve => mpc_core::vote::Decision::Reject("changed my mind".into()),
            mpc_core::vote::Decision::Reject(_) => mpc_core::vote::Decision::Approve,
        };
        let step = [
            Record::SequenceReserved { next: 1_000_000 },
            Record::Vote(other),
            Record::TxState { tx: vote.body.tx, state: mpc_core::TxState::Failed("should not land".into()) },
        ];
        let err = store.apply(Millis(5), &step).await.unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateVote { voter, tx } if voter == vote.body.voter && tx == vote.body.tx),
            "{backend:?}: {err}"
        );
        assert!(err.to_string().contains("refused a second vote"), "{err}");
        let after = store.recover().await.unwrap();
        assert_eq!(view_of(*node, after.records), view_of(*node, before.records), "seed {seed}: step half-applied");
        store.verify_audit().await.unwrap();
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_is_irreversible_in_the_database_itself() {
    let node = NodeId(2);
    let (setup, ready) = ready_presigs(node);
    for backend in BACKENDS {
        let url = fresh_db(backend, "irreversible").await;
        let store = open(&url, node).await;
        store.apply(Millis(0), &setup).await.unwrap();
        store.apply(Millis(1), &[consume(ready[0], 1)]).await.unwrap();
        // Through the store: consumed again, discarded, made ready: refused.
        for record in [consume(ready[0], 2), Record::PresigDiscarded { id: ready[0], reason: "late".into() }] {
            let err = store.apply(Millis(2), &[record]).await.unwrap_err();
            assert!(matches!(&err, StoreError::PresigTransition { from, .. } if from == "consumed"), "{err}");
        }
        // Behind the store's back, with SQL: the triggers refuse it.
        let mut conn = raw(&url).await;
        let mut attacks = vec![
            "UPDATE presignatures SET state = 'ready' WHERE state = 'consumed'",
            "DELETE FROM presignatures WHERE state = 'consumed'",
        ];
        if backend == Backend::Postgres {
            // Row triggers do not fire on TRUNCATE; statement triggers do.
            attacks.extend(["TRUNCATE presignatures", "TRUNCATE audit_log", "TRUNCATE votes"]);
        }
        for sql in attacks {
            let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
            let text = err.to_string();
            assert!(text.contains("presignature") || text.contains("never truncated"), "{backend:?} {sql}: {text}");
        }
        // The consumption's message and signature share rewritten in place,
        // the state untouched: the two-messages check reads them.
        for column in ["message", "sigma", "consumed_tx"] {
            let sql = format!("UPDATE presignatures SET {column} = $1 WHERE state = 'consumed'");
            let err = sqlx::query(&sql).bind(vec![9u8; 32]).execute(&mut conn).await.unwrap_err();
            assert!(err.to_string().contains("presignature"), "{backend:?} {sql}: {err}");
        }
        let (message, sigma): (Vec<u8>, Vec<u8>) =
            sqlx::query_as("SELECT message, sigma FROM presignatures WHERE state = 'consumed'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!((message, sigma), (vec![1; 32], vec![1; 32]), "{backend:?}: the consumed row changed");
        assert!(!store.audit_rows().await.unwrap().is_empty(), "{backend:?}: the audit log lost its rows");
        store.close().await;
    }
}

/// A plain connection to the same database, for tampering.
async fn raw(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_corrupted_and_moved_ciphertexts_give_clear_errors() {
    let node = NodeId(3);
    let (setup, ready) = ready_presigs(node);
    for backend in BACKENDS {
        let url = fresh_db(backend, "sealed").await;
        let store = open(&url, node).await;
        store.apply(Millis(0), &setup).await.unwrap();
        store.close().await;

        let err = Store::open(&url, other_key(), node).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("master key"), "{backend:?}: {text}");
        assert!(!text.contains(&"a5".repeat(8)) && !text.contains(&"5a".repeat(8)), "key bytes in: {text}");

        let err = Store::open(&url, test_key(), NodeId(4)).await.unwrap_err();
        assert!(matches!(err, StoreError::WrongNode { found: NodeId(3), .. }), "{err}");

        // One flipped byte in the key share's ciphertext.
        let mut conn = raw(&url).await;
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed FROM key_shares").fetch_one(&mut conn).await.unwrap();
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        sqlx::query("UPDATE key_shares SET sealed = $1").bind(bad).execute(&mut conn).await.unwrap();
        let store = open(&url, node).await;
        let err = store.recover().await.unwrap_err();
        assert!(matches!(err, StoreError::Seal(_)) && err.to_string().contains("key_shares["), "{err}");
        sqlx::query("UPDATE key_shares SET sealed = $1").bind(sealed).execute(&mut conn).await.unwrap();
        store.recover().await.expect("restored ciphertext opens again");

        // A share copied into another presignature's row does not open there.
        let (a, b) = (ready[0], ready[1]);
        let share_a: Vec<u8> =
            sqlx::query_scalar("SELECT sealed_share FROM presignatures WHERE origin = $1 AND seq = $2")
                .bind(i64::from(a.origin.0))
                .bind(a.seq as i64)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        sqlx::query("UPDATE presignatures SET sealed_share = $1 WHERE origin = $2 AND seq = $3")
            .bind(share_a)
            .bind(i64::from(b.origin.0))
            .bind(b.seq as i64)
            .execute(&mut conn)
            .await
            .unwrap();
        let err = store.recover().await.unwrap_err();
        assert!(err.to_string().contains(&format!("presignatures[{node}/{b}]")), "{backend:?}: {err}");
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_row_is_named() {
    let (_, node, records) = &streams()[0];
    for backend in BACKENDS {
        let url = fresh_db(backend, "audit").await;
        let store = open(&url, *node).await;
        apply_in_steps(&store, records).await;
        let rows = store.audit_rows().await.unwrap();
        assert_eq!(store.verify_audit().await.unwrap().next_seq, rows.len() as u64);
        let mut conn = raw(&url).await;
        // The log refuses edits while its triggers stand...
        let err = sqlx::query("UPDATE audit_log SET body = $1 WHERE seq = 5")
            .bind(b"{}".to_vec())
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        // ...and an attacker who drops them is caught by the chain.
        let drop = match backend {
            Backend::Postgres => "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
            Backend::Sqlite => "DROP TRIGGER audit_log_no_update",
        };
        sqlx::query(drop).execute(&mut conn).await.unwrap();
        let target = rows.len() as i64 / 2;
        sqlx::query("UPDATE audit_log SET body = $1 WHERE seq = $2")
            .bind(b"{\"edited\":true}".to_vec())
            .bind(target)
            .execute(&mut conn)
            .await
            .unwrap();
        let err = store.verify_audit().await.unwrap_err();
        match err {
            StoreError::Audit(e) => assert_eq!(e.first_bad_row(), target as u64, "{backend:?}: {e}"),
            other => panic!("{other}"),
        }
        store.close().await;
    }
}

/// What the crash test cannot show (a SIGKILL leaves the page cache, so a
/// missing fsync survives it) is asserted here instead: the settings that
/// make a commit reach the disk are in force on live connections. A
/// PostgreSQL database whose own default turns `synchronous_commit` off is
/// still written with it on, since the store sets it on every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_durable_by_the_settings_in_force() {
    for backend in BACKENDS {
        let url = fresh_db(backend, "durable").await;
        if backend == Backend::Postgres {
            use sqlx::Connection;
            let name = url.rsplit_once('/').unwrap().1.to_string();
            let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await.unwrap();
            sqlx::query(&format!("ALTER DATABASE {name} SET synchronous_commit = off"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
        let store = open(&url, NodeId(1)).await;
        let settings = store.durability().await.unwrap();
        let expected: Vec<(&str, &str)> = match backend {
            Backend::Sqlite => vec![("journal_mode", "wal"), ("synchronous", "2")],
            Backend::Postgres => vec![("fsync", "on"), ("synchronous_commit", "on")],
        };
        let got: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, expected, "{backend:?}");
        store.close().await;
    }
}

/// A key's adoption and the members' statements behind it are only ever
/// inserted: rewriting or deleting them behind the store's back (which
/// would turn the key back into a pending share, or erase this node's
/// promise never to confirm an attempt) is refused by the database itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_confirmation_rows_are_never_rewritten_or_deleted() {
    let (_, node, records) = &streams()[0];
    let key_material: Vec<Record> = records
        .iter()
        .filter(|r| matches!(r.kind(), "dkg_joined" | "aux_info" | "key_share" | "dkg_statement" | "key_adopted"))
        .cloned()
        .collect();
    assert!(key_material.iter().any(|r| r.kind() == "key_adopted"));
    for backend in BACKENDS {
        let url = fresh_db(backend, "key_rows").await;
        let store = open(&url, *node).await;
        store.apply(Millis(0), &key_material).await.unwrap();
        // Applying them again changes nothing (statements arrive again).
        store.apply(Millis(1), &key_material).await.unwrap();
        let before = store.recover().await.unwrap();
        let count = |r: &RecoveredState, kind: &str| r.records.iter().filter(|x| x.kind() == kind).count();
        assert_eq!(count(&before, "dkg_statement"), 6, "{backend:?}: five confirmations and one abandonment");
        assert_eq!(count(&before, "key_adopted"), 1);
        let mut conn = raw(&url).await;
        let mut attacks = vec![
            "DELETE FROM key_adopted",
            "UPDATE key_adopted SET seq = seq + 1",
            "DELETE FROM dkg_statements WHERE claim = 'abandoned'",
            "UPDATE dkg_statements SET claim = 'abandoned' WHERE claim = 'confirmed'",
        ];
        if backend == Backend::Postgres {
            attacks.extend(["TRUNCATE key_adopted", "TRUNCATE dkg_statements"]);
        }
        for sql in attacks {
            let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("never") || text.contains("signed facts"),
                "{backend:?} {sql}: refused for the wrong reason: {text}"
            );
        }
        let after = store.recover().await.unwrap();
        assert_eq!(view_of(*node, after.records), view_of(*node, before.records), "{backend:?}");
        store.close().await;
    }
}

/// Upgrading a database written before key confirmation: its share was the
/// node's key (it adopted what its own keygen gave it), so migration 0005
/// adopts it rather than leaving the upgraded node waiting for
/// confirmations nobody will send. A share written since then comes with
/// this node's own confirmation, and stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_keeps_its_key_and_a_pending_share_stays_pending() {
    let (_, node, records) = &streams()[0];
    let pick =
        |kinds: &[&str]| -> Vec<Record> { records.iter().filter(|r| kinds.contains(&r.kind())).cloned().collect() };
    let before_confirmation = pick(&["dkg_joined", "aux_info", "key_share"]);
    let pending = pick(&["dkg_joined", "aux_info", "key_share", "dkg_statement"]);
    let shared_dkg = records
        .iter()
        .find_map(|r| match r {
            Record::KeyShare { dkg, .. } => Some(*dkg),
            _ => None,
        })
        .expect("the stream holds a key share");
    let adoptions = |r: &RecoveredState| -> Vec<mpc_core::DkgId> {
        r.records
            .iter()
            .filter_map(|x| match x {
                Record::KeyAdopted { dkg } => Some(*dkg),
                _ => None,
            })
            .collect()
    };
    for backend in BACKENDS {
        for (label, stream, adopted) in [("old", &before_confirmation, true), ("pending", &pending, false)] {
            let url = fresh_db(backend, &format!("upgrade_{label}")).await;
            let store = open(&url, *node).await;
            store.apply(Millis(0), stream).await.unwrap();
            assert!(adoptions(&store.recover().await.unwrap()).is_empty(), "{backend:?} {label}: nothing adopted yet");
            store.close().await;
            // As if the database had stopped at 0004: the next open runs 0005.
            let mut conn = raw(&url).await;
            let gone = sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 5").execute(&mut conn).await.unwrap();
            assert_eq!(gone.rows_affected(), 1, "{backend:?}: migration 0005 was applied");
            drop(conn);
            let store = open(&url, *node).await;
            let got = adoptions(&store.recover().await.unwrap());
            let want = if adopted { vec![shared_dkg] } else { Vec::new() };
            assert_eq!(got, want, "{backend:?} {label}");
            store.close().await;
        }
    }
}
