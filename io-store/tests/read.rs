//! The read API the HTTP API serves from, on both backends: one transaction
//! with everything the database holds about it, compared with what the
//! simulator's records say; lists paged newest first and filtered by state;
//! and the state history rebuilt from the audit log for databases made
//! before the history table existed.

mod common;

use common::*;
use mpc_core::vote::{Decision, Equivocation, SignedVote, VoteBody};
use mpc_core::{Millis, NodeId, Record, TxId, TxState};
use mpc_io_store::{
    ConsumedPresignature, StateChange, Store, StoredTransaction, StoredVote, TransactionSummary, TxStateKind,
};
use sqlx::Connection;
use std::collections::BTreeMap;

/// Applies `records` in steps of 1, 2, 3, 4 records (cycling) at times
/// 1000 + the step's first index; returns each record's step time.
async fn apply_timed(store: &Store, records: &[Record]) -> Vec<Millis> {
    let mut times = Vec::new();
    let (mut at, mut size) = (0, 1);
    while at < records.len() {
        let end = (at + size).min(records.len());
        let now = Millis(1_000 + at as u64);
        store.apply(now, &records[at..end]).await.unwrap_or_else(|e| panic!("records {at}..{end}: {e}"));
        times.extend(std::iter::repeat_n(now, end - at));
        at = end;
        size = size % 4 + 1;
    }
    times
}

/// What the records say about each transaction, in the read API's terms.
/// Audit sequence numbers are record indexes: one row per record from 0.
fn expected(records: &[Record], times: &[Millis]) -> BTreeMap<TxId, StoredTransaction> {
    let mut txs: BTreeMap<TxId, StoredTransaction> = BTreeMap::new();
    let mut votes: BTreeMap<TxId, Vec<StoredVote>> = BTreeMap::new();
    let mut evidence: BTreeMap<TxId, Vec<Equivocation>> = BTreeMap::new();
    let mut consumed: BTreeMap<TxId, Vec<(usize, ConsumedPresignature)>> = BTreeMap::new();
    let mut epoch = 0;
    for (i, record) in records.iter().enumerate() {
        let change = |state: TxState| StateChange { state, at: times[i], audit_seq: i as u64 };
        match record {
            Record::TxAccepted { tx, psbt, proposer, at } => {
                txs.insert(
                    *tx,
                    StoredTransaction {
                        tx: *tx,
                        psbt: psbt.clone(),
                        proposer: *proposer,
                        accepted_at: *at,
                        state: TxState::Received,
                        history: vec![change(TxState::Received)],
                        votes: Vec::new(),
                        evidence: Vec::new(),
                        signed_raw_tx: None,
                        txid: None,
                        consumed: Vec::new(),
                        chain: None,
                    },
                );
            }
            Record::TxState { tx, state } => {
                let entry = txs.get_mut(tx).expect("a state change of an accepted transaction");
                entry.state = state.clone();
                entry.history.push(change(state.clone()));
            }
            Record::OwnVote { vote, at } => {
                votes.entry(vote.body.tx).or_default().push(StoredVote { vote: vote.clone(), own_at: Some(*at) })
            }
            Record::Vote(vote) => {
                votes.entry(vote.body.tx).or_default().push(StoredVote { vote: vote.clone(), own_at: None })
            }
            Record::Evidence(e) => {
                let list = evidence.entry(e.tx).or_default();
                if !list.iter().any(|k| k.voter == e.voter) {
                    list.push(e.clone());
                }
            }
            Record::SignedTx { tx, raw_tx, .. } => {
                let entry = txs.get_mut(tx).expect("a signed transaction that was accepted");
                let parsed: bitcoin::Transaction = bitcoin::consensus::deserialize(raw_tx).unwrap();
                entry.txid = Some(parsed.compute_txid().to_string());
                entry.signed_raw_tx = Some(raw_tx.clone());
            }
            Record::Chain { tx, status } => {
                txs.get_mut(tx).expect("a chain status of an accepted transaction").chain = Some(status.clone());
            }
            Record::PresigConsumed { id, tx, input, message, sigma } => {
                epoch += 1;
                consumed.entry(*tx).or_default().push((
                    i,
                    ConsumedPresignature {
                        id: *id,
                        input: *input,
                        message: *message,
                        partial_signature: *sigma,
                        epoch,
                    },
                ));
            }
            _ => {}
        }
    }
    for (tx, entry) in txs.iter_mut() {
        entry.votes = votes.remove(tx).unwrap_or_default();
        entry.evidence = evidence.remove(tx).unwrap_or_default();
        let mut mine = consumed.remove(tx).unwrap_or_default();
        mine.sort_by_key(|(i, c)| (c.input, *i));
        entry.consumed = mine.into_iter().map(|(_, c)| c).collect();
    }
    txs
}

fn summary(t: &StoredTransaction) -> TransactionSummary {
    let approving = t.votes.iter().filter(|v| v.vote.body.decision.is_approve()).count() as u64;
    TransactionSummary {
        tx: t.tx,
        proposer: t.proposer,
        accepted_at: t.accepted_at,
        state: t.state.clone(),
        approve_votes: approving,
        reject_votes: t.votes.len() as u64 - approving,
        txid: t.txid.clone(),
    }
}

/// Newest acceptance first, ties by id (descending).
fn newest_first(txs: &BTreeMap<TxId, StoredTransaction>) -> Vec<TransactionSummary> {
    let mut list: Vec<TransactionSummary> = txs.values().map(summary).collect();
    list.sort_by_key(|s| std::cmp::Reverse((s.accepted_at, s.tx)));
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_reads_back_with_its_votes_evidence_history_and_signature() {
    // Streams that together show every part of a stored transaction.
    let mut chosen = Vec::new();
    let mut shown = std::collections::BTreeSet::new();
    for (seed, node, records) in streams() {
        let kinds: std::collections::BTreeSet<&str> = records
            .iter()
            .map(|r| r.kind())
            .filter(|k| ["own_vote", "vote", "evidence", "tx_state", "signed_tx", "presig_consumed"].contains(k))
            .collect();
        if !kinds.is_subset(&shown) {
            shown.extend(kinds);
            chosen.push((*seed, *node, records));
        }
    }
    assert_eq!(shown.len(), 6, "the sample streams show every part: {shown:?}");
    for backend in BACKENDS {
        for (seed, node, records) in &chosen {
            let url = fresh_db(backend, "read").await;
            let store = open(&url, *node).await;
            let times = apply_timed(&store, records).await;
            let expected = expected(records, &times);
            assert!(!expected.is_empty(), "seed {seed}: no transaction");
            for (tx, want) in &expected {
                let got = store.transaction(*tx).await.unwrap();
                assert_eq!(got.as_ref(), Some(want), "{backend:?}, seed {seed}, {node}, {}", tx.short());
            }
            assert_eq!(store.transaction(TxId([0xee; 32])).await.unwrap(), None, "an unknown transaction");
            let (list, total) = store.transactions(None, 0, 1_000).await.unwrap();
            assert_eq!((list, total), (newest_first(&expected), expected.len() as u64), "{backend:?}, seed {seed}");
            // The JSON the API layer starts from.
            let json =
                serde_json::to_value(store.transaction(*expected.keys().next().unwrap()).await.unwrap()).unwrap();
            for field in ["psbt", "proposer", "accepted_at", "state", "history", "votes", "evidence", "consumed"] {
                assert!(json.get(field).is_some(), "{field} missing from {json}");
            }

            // A database made before the history table: the migration
            // rebuilds the history from the audit log, the same.
            forget_history(backend, &url).await;
            let reopened = open(&url, *node).await;
            for (tx, want) in &expected {
                assert_eq!(
                    reopened.transaction(*tx).await.unwrap().map(|t| t.history),
                    Some(want.history.clone()),
                    "{backend:?}, seed {seed}: history rebuilt from the audit log"
                );
            }
            reopened.close().await;
            store.close().await;
        }
    }
}

/// Takes the database back to before migration 0002.
async fn forget_history(backend: mpc_io_store::Backend, url: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    for sql in [
        "DROP TABLE transaction_history",
        "DROP INDEX transactions_by_acceptance",
        "DROP INDEX transactions_by_state",
        "DROP INDEX presignatures_by_transaction",
        "DELETE FROM _sqlx_migrations WHERE version = 2",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{backend:?}: {sql}: {e}"));
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_lists_are_paged_newest_first_and_filtered_by_state() {
    let node = NodeId(1);
    // Twelve transactions, acceptance times with ties, states of every
    // kind, some votes.
    let states = [
        TxState::Received,
        TxState::Voting,
        TxState::Approved,
        TxState::Rejected,
        TxState::Expired,
        TxState::Signing,
        TxState::Signed,
        TxState::Broadcast,
        TxState::Confirmed,
        TxState::Failed("fee rate above the cap".into()),
        TxState::Voting,
        TxState::Failed("signing timed out".into()),
    ];
    let mut records = Vec::new();
    let mut expected: BTreeMap<TxId, TransactionSummary> = BTreeMap::new();
    for (i, state) in states.iter().enumerate() {
        let tx = TxId([i as u8 * 17 + 3; 32]);
        let at = Millis(5_000 + (i as u64 % 5) * 10);
        records.push(Record::TxAccepted { tx, psbt: vec![i as u8; 40], proposer: NodeId(2), at });
        if *state != TxState::Received {
            records.push(Record::TxState { tx, state: state.clone() });
        }
        let mut approve = 0;
        for voter in 1..=(i as u16 % 4) {
            let decision = if voter % 3 == 0 { Decision::Reject("amount".into()) } else { Decision::Approve };
            approve += u64::from(decision.is_approve());
            let vote =
                SignedVote { body: VoteBody { tx, voter: NodeId(voter), decision }, signature: [voter as u8; 64] };
            records.push(Record::Vote(vote));
        }
        let voters = u64::from(i as u16 % 4);
        let summary = TransactionSummary {
            tx,
            proposer: NodeId(2),
            accepted_at: at,
            state: state.clone(),
            approve_votes: approve,
            reject_votes: voters - approve,
            txid: None,
        };
        expected.insert(tx, summary);
    }
    let mut all: Vec<TransactionSummary> = expected.values().cloned().collect();
    all.sort_by_key(|s| std::cmp::Reverse((s.accepted_at, s.tx)));
    for backend in BACKENDS {
        let url = fresh_db(backend, "list").await;
        let store = open(&url, node).await;
        apply_in_steps(&store, &records).await;
        let n = all.len() as u64;
        assert_eq!(store.transactions(None, 0, 100).await.unwrap(), (all.clone(), n), "{backend:?}");
        // Pages of five, then past the end.
        let mut paged = Vec::new();
        for offset in (0..n).step_by(5) {
            let (page, total) = store.transactions(None, offset, 5).await.unwrap();
            assert_eq!(total, n);
            assert!(page.len() <= 5);
            paged.extend(page);
        }
        assert_eq!(paged, all, "{backend:?}: pages join into the whole list");
        assert_eq!(store.transactions(None, n, 5).await.unwrap(), (vec![], n));
        assert_eq!(store.transactions(None, 0, 0).await.unwrap(), (vec![], n));
        assert_eq!(store.transactions(None, 0, u64::MAX).await.unwrap().0.len() as u64, n);
        // Filtered by every kind of state.
        for kind in TxStateKind::ALL {
            let want: Vec<TransactionSummary> =
                all.iter().filter(|s| TxStateKind::of(&s.state) == kind).cloned().collect();
            let total = want.len() as u64;
            assert_eq!(
                store.transactions(Some(kind), 0, 100).await.unwrap(),
                (want.clone(), total),
                "{backend:?}, {kind}"
            );
            assert_eq!(
                store.transactions(Some(kind), 1, 1).await.unwrap(),
                (want.into_iter().skip(1).take(1).collect(), total),
                "{backend:?}, {kind}: paged"
            );
        }
        store.close().await;
    }
}
