//! Operator requests in the audit chain: a row of kind `operator_request`
//! naming the operator, the action and the outcome, linked into the same
//! hash chain as the steps around it, on SQLite and on PostgreSQL (the
//! server scripts/test.sh starts; without MPC_TEST_POSTGRES the test fails).

mod common;

use common::*;
use mpc_core::{DkgId, Millis, NodeId, Record};
use mpc_io_store::operator_audit::OPERATOR_REQUEST;
use mpc_io_store::{audit, Backend};

async fn operator_rows_join_the_chain(backend: Backend) {
    let url = fresh_db(backend, "operator_audit").await;
    let store = open(&url, NodeId(1)).await;
    store.apply(Millis(1_000), &[Record::SequenceReserved { next: 1 }]).await.unwrap();
    store
        .audit_operator_request(Millis(1_001), "alice", "dkg_initiate", "started dkg-1-0")
        .await
        .expect("operator row written");
    store.apply(Millis(1_002), &[Record::DkgJoined { dkg: DkgId { origin: NodeId(1), seq: 0 } }]).await.unwrap();
    store
        .audit_operator_request(Millis(1_003), "bob", "transaction_submit", "refused: invalid_psbt (truncated)")
        .await
        .unwrap();

    let rows = store.audit_rows().await.unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["sequence", OPERATOR_REQUEST, "dkg_joined", OPERATOR_REQUEST], "{backend:?}");
    let body: serde_json::Value = serde_json::from_slice(&rows[1].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"operator": "alice", "action": "dkg_initiate", "outcome": "started dkg-1-0"}),
        "{backend:?}"
    );
    assert_eq!(rows[1].at_ms, 1_001);
    let body: serde_json::Value = serde_json::from_slice(&rows[3].body).unwrap();
    assert_eq!(body["operator"], "bob");
    assert_eq!(body["outcome"], "refused: invalid_psbt (truncated)");

    // One chain: the store's verifier accepts it, and the operator row is
    // covered by it (changing its operator breaks the chain at that row).
    let head = store.verify_audit().await.expect("chain verifies");
    assert_eq!(head.next_seq, 4);
    let mut forged = rows.clone();
    forged[1].body = serde_json::to_vec(&serde_json::json!({
        "operator": "mallory", "action": "dkg_initiate", "outcome": "started dkg-1-0"
    }))
    .unwrap();
    assert_eq!(audit::verify(&forged).unwrap_err().first_bad_row(), 1);
    store.close().await;
}

#[tokio::test]
async fn operator_rows_join_the_chain_on_sqlite() {
    operator_rows_join_the_chain(Backend::Sqlite).await;
}

#[tokio::test]
async fn operator_rows_join_the_chain_on_postgres() {
    operator_rows_join_the_chain(Backend::Postgres).await;
}
