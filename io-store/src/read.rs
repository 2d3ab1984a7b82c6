//! Durable reads of transactions, for the HTTP API (DESIGN §7:
//! `GET /api/v1/transactions/{id}` and `GET /api/v1/transactions`).
//!
//! They read the database, not the core's memory, so they stay correct when
//! the core forgets finished transactions. Each call reads one consistent
//! snapshot (a repeatable-read transaction on PostgreSQL, a read transaction
//! on SQLite), so a step committing meanwhile is either wholly in the answer
//! or not at all.
//!
//! The types are plain serde structs in the core's own types (`TxId`,
//! `SignedVote`, byte vectors); the API layer maps them to its JSON schema.

use crate::columns::{self, uint};
use crate::error::StoreError;
use crate::store::{Backend, Store};
use mpc_core::vote::{Equivocation, SignedVote};
use mpc_core::{Millis, NodeId, PresigId, TxId, TxState};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use std::fmt;
use std::str::FromStr;

/// A transaction's state without a failure's reason: what lists filter by.
/// Its text form is the one the database and the audit log use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxStateKind {
    Received,
    Voting,
    Approved,
    Rejected,
    Expired,
    Signing,
    Signed,
    Broadcast,
    Confirmed,
    Failed,
}

impl TxStateKind {
    pub const ALL: [TxStateKind; 10] = [
        TxStateKind::Received,
        TxStateKind::Voting,
        TxStateKind::Approved,
        TxStateKind::Rejected,
        TxStateKind::Expired,
        TxStateKind::Signing,
        TxStateKind::Signed,
        TxStateKind::Broadcast,
        TxStateKind::Confirmed,
        TxStateKind::Failed,
    ];

    pub fn of(state: &TxState) -> TxStateKind {
        match state {
            TxState::Received => TxStateKind::Received,
            TxState::Voting => TxStateKind::Voting,
            TxState::Approved => TxStateKind::Approved,
            TxState::Rejected => TxStateKind::Rejected,
            TxState::Expired => TxStateKind::Expired,
            TxState::Signing => TxStateKind::Signing,
            TxState::Signed => TxStateKind::Signed,
            TxState::Broadcast => TxStateKind::Broadcast,
            TxState::Confirmed => TxStateKind::Confirmed,
            TxState::Failed(_) => TxStateKind::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TxStateKind::Received => "received",
            TxStateKind::Voting => "voting",
            TxStateKind::Approved => "approved",
            TxStateKind::Rejected => "rejected",
            TxStateKind::Expired => "expired",
            TxStateKind::Signing => "signing",
            TxStateKind::Signed => "signed",
            TxStateKind::Broadcast => "broadcast",
            TxStateKind::Confirmed => "confirmed",
            TxStateKind::Failed => "failed",
        }
    }
}

impl fmt::Display for TxStateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`TxStateKind::ALL`] (e.g. a bad
/// `?state=` query parameter).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown transaction state {0:?}: expected one of received, voting, approved, rejected, expired, signing, signed, broadcast, confirmed, failed")]
pub struct UnknownTxState(pub String);

impl FromStr for TxStateKind {
    type Err = UnknownTxState;

    fn from_str(text: &str) -> Result<TxStateKind, UnknownTxState> {
        TxStateKind::ALL.into_iter().find(|k| k.as_str() == text).ok_or_else(|| UnknownTxState(text.to_string()))
    }
}

/// Everything this node's database holds about one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTransaction {
    pub tx: TxId,
    /// The PSBT as accepted (BIP-174 bytes).
    pub psbt: Vec<u8>,
    pub proposer: NodeId,
    /// The acceptance time the proposal carries.
    pub accepted_at: Millis,
    pub state: TxState,
    /// Every state it entered, oldest first, from `Received` on.
    pub history: Vec<StateChange>,
    /// The recorded votes (one per voter), in the order they were recorded.
    pub votes: Vec<StoredVote>,
    /// Two different signed votes of one voter: that voter's votes no longer
    /// count for this transaction.
    pub evidence: Vec<Equivocation>,
    /// The fully signed transaction (consensus encoding), once combined.
    pub signed_raw_tx: Option<Vec<u8>>,
    /// Its Bitcoin txid (display hex).
    pub txid: Option<String>,
    /// This node's presignatures consumed for it, by input.
    pub consumed: Vec<ConsumedPresignature>,
    /// What this node last recorded of it on chain (block, stall reason).
    pub chain: Option<mpc_core::ChainStatus>,
}

/// One recorded vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVote {
    /// The vote as signed: transaction, voter, decision, Ed25519 signature.
    pub vote: SignedVote,
    /// `Some` for this node's own vote: when it was cast.
    pub own_at: Option<Millis>,
}

/// A state a transaction entered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: TxState,
    /// The node's clock when the step that recorded it was applied.
    pub at: Millis,
    /// The audit-log row of that record.
    pub audit_seq: u64,
}

/// A presignature of this node consumed for one input of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumedPresignature {
    pub id: PresigId,
    pub input: u32,
    /// The message signed (SHA-256 of the input's BIP-143 preimage).
    pub message: [u8; 32],
    /// This node's partial signature, as released.
    pub partial_signature: [u8; 32],
    /// The fencing epoch the consumption advanced the database to.
    pub epoch: u64,
}

/// One line of a transaction list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionSummary {
    pub tx: TxId,
    pub proposer: NodeId,
    pub accepted_at: Millis,
    pub state: TxState,
    pub approve_votes: u64,
    pub reject_votes: u64,
    /// The signed transaction's txid, once combined.
    pub txid: Option<String>,
}

impl Store {
    /// One transaction with its votes, evidence, state history, signed
    /// transaction and the presignatures consumed for it; `None` if this
    /// node never accepted it.
    pub async fn transaction(&self, tx: TxId) -> Result<Option<StoredTransaction>, StoreError> {
        let mut conn = self.snapshot().await?;
        let key = tx.0.to_vec();
        let name = format!("transactions[{}]", tx.short());
        let Some(row) = sqlx::query(
            "SELECT psbt, proposer, accepted_at, state, failure, signed_raw, chain FROM transactions WHERE tx = $1",
        )
        .bind(key.clone())
        .fetch_optional(&mut *conn)
        .await?
        else {
            conn.commit().await?;
            return Ok(None);
        };
        let signed_raw_tx: Option<Vec<u8>> = row.try_get(5)?;
        let mut found = StoredTransaction {
            tx,
            psbt: row.try_get(0)?,
            proposer: columns::node(row.try_get(1)?, &name)?,
            accepted_at: Millis(uint(row.try_get(2)?, &name)?),
            state: columns::state_parse(&row.try_get::<String, _>(3)?, row.try_get(4)?, &name)?,
            history: Vec::new(),
            votes: Vec::new(),
            evidence: Vec::new(),
            txid: signed_raw_tx.as_deref().map(|raw| txid(raw, &name)).transpose()?,
            signed_raw_tx,
            consumed: Vec::new(),
            chain: row.try_get::<Option<Vec<u8>>, _>(6)?.map(|c| columns::decode(&c, &name)).transpose()?,
        };
        for row in
            sqlx::query("SELECT state, failure, at_ms, written FROM transaction_history WHERE tx = $1 ORDER BY written")
                .bind(key.clone())
                .fetch_all(&mut *conn)
                .await?
        {
            let name = format!("transaction_history[{}]", tx.short());
            found.history.push(StateChange {
                state: columns::state_parse(&row.try_get::<String, _>(0)?, row.try_get(1)?, &name)?,
                at: Millis(uint(row.try_get(2)?, &name)?),
                audit_seq: uint(row.try_get(3)?, &name)?,
            });
        }
        for row in sqlx::query("SELECT body, own_at FROM votes WHERE tx = $1 ORDER BY written")
            .bind(key.clone())
            .fetch_all(&mut *conn)
            .await?
        {
            found.votes.push(StoredVote {
                vote: columns::decode(&row.try_get::<Vec<u8>, _>(0)?, "votes")?,
                own_at: row.try_get::<Option<i64>, _>(1)?.map(|at| uint(at, "votes.own_at")).transpose()?.map(Millis),
            });
        }
        for row in sqlx::query("SELECT body FROM evidence WHERE tx = $1 ORDER BY written")
            .bind(key.clone())
            .fetch_all(&mut *conn)
            .await?
        {
            found.evidence.push(columns::decode(&row.try_get::<Vec<u8>, _>(0)?, "evidence")?);
        }
        for row in sqlx::query(
            "SELECT origin, seq, consumed_input, message, sigma, consumed_epoch FROM presignatures \
             WHERE consumed_tx = $1 AND state = 'consumed' ORDER BY consumed_input, written",
        )
        .bind(key)
        .fetch_all(&mut *conn)
        .await?
        {
            found.consumed.push(consumed(&row)?);
        }
        conn.commit().await?;
        Ok(Some(found))
    }

    /// A page of transactions, newest acceptance first (ties by id), and how
    /// many there are in all, optionally only those in one kind of state.
    pub async fn transactions(
        &self,
        state: Option<TxStateKind>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<TransactionSummary>, u64), StoreError> {
        let mut conn = self.snapshot().await?;
        // Placeholders numbered in the order they appear: the same SQL for
        // both backends.
        let (filter, paging) = match state {
            Some(_) => ("WHERE t.state = $1", "LIMIT $2 OFFSET $3"),
            None => ("", "LIMIT $1 OFFSET $2"),
        };
        let page = format!(
            "SELECT t.tx, t.proposer, t.accepted_at, t.state, t.failure, t.signed_raw, \
             (SELECT COUNT(*) FROM votes v WHERE v.tx = t.tx AND v.decision = 'approve'), \
             (SELECT COUNT(*) FROM votes v WHERE v.tx = t.tx AND v.decision = 'reject') \
             FROM transactions t {filter} ORDER BY t.accepted_at DESC, t.tx DESC {paging}"
        );
        let mut query = sqlx::query(&page);
        if let Some(kind) = state {
            query = query.bind(kind.as_str());
        }
        // Beyond i64 is "everything" for LIMIT and "nothing" for OFFSET.
        let query =
            query.bind(i64::try_from(limit).unwrap_or(i64::MAX)).bind(i64::try_from(offset).unwrap_or(i64::MAX));
        let mut summaries = Vec::new();
        for row in query.fetch_all(&mut *conn).await? {
            let tx = TxId(columns::array32(&row.try_get::<Vec<u8>, _>(0)?, "transactions.tx")?);
            let name = format!("transactions[{}]", tx.short());
            summaries.push(TransactionSummary {
                tx,
                proposer: columns::node(row.try_get(1)?, &name)?,
                accepted_at: Millis(uint(row.try_get(2)?, &name)?),
                state: columns::state_parse(&row.try_get::<String, _>(3)?, row.try_get(4)?, &name)?,
                txid: row.try_get::<Option<Vec<u8>>, _>(5)?.map(|raw| txid(&raw, &name)).transpose()?,
                approve_votes: uint(row.try_get(6)?, &name)?,
                reject_votes: uint(row.try_get(7)?, &name)?,
            });
        }
        let count = match state {
            Some(kind) => sqlx::query("SELECT COUNT(*) FROM transactions WHERE state = $1").bind(kind.as_str()),
            None => sqlx::query("SELECT COUNT(*) FROM transactions"),
        };
        let total = uint(count.fetch_one(&mut *conn).await?.try_get(0)?, "transactions count")?;
        conn.commit().await?;
        Ok((summaries, total))
    }

    /// A read transaction that sees one committed state throughout: on
    /// PostgreSQL a repeatable-read, read-only transaction (its default,
    /// read committed, takes a new snapshot per statement, so a recovery
    /// reading table after table could see a step half: its presignature
    /// row before it was consumed and the transaction after it was signed);
    /// on SQLite in WAL mode a read transaction already keeps the snapshot
    /// its first read took.
    pub(crate) async fn snapshot(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut conn = self.pool.begin().await?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *conn).await?;
        }
        Ok(conn)
    }
}

fn consumed(row: &AnyRow) -> Result<ConsumedPresignature, StoreError> {
    let id = PresigId {
        origin: columns::node(row.try_get(0)?, "presignatures")?,
        seq: columns::id_seq_back(row.try_get(1)?),
    };
    let name = format!("presignatures[{id}]");
    let input = row.try_get::<i64, _>(2)?;
    Ok(ConsumedPresignature {
        id,
        input: u32::try_from(input).map_err(|_| StoreError::corrupt(&name, "input index"))?,
        message: columns::array32(&row.try_get::<Vec<u8>, _>(3)?, &name)?,
        partial_signature: columns::array32(&row.try_get::<Vec<u8>, _>(4)?, &name)?,
        epoch: uint(
            row.try_get::<Option<i64>, _>(5)?.ok_or_else(|| StoreError::corrupt(&name, "consumed without an epoch"))?,
            &name,
        )?,
    })
}

fn txid(raw: &[u8], row: &str) -> Result<String, StoreError> {
    bitcoin::consensus::deserialize::<bitcoin::Transaction>(raw)
        .map(|t| t.compute_txid().to_string())
        .map_err(|e| StoreError::corrupt(row, format!("signed transaction does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_kinds_read_back_and_match_the_stored_names() {
        for kind in TxStateKind::ALL {
            assert_eq!(kind.as_str().parse::<TxStateKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
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
            TxState::Failed("why".into()),
        ];
        for state in states {
            assert_eq!(TxStateKind::of(&state).as_str(), columns::state_columns(&state).0, "{state:?}");
        }
        let err = "Signed".parse::<TxStateKind>().unwrap_err();
        assert!(err.to_string().contains("\"Signed\""), "{err}");
    }

    /// The snapshot recovery reads through holds still: a row another
    /// connection commits between two reads is not seen by the second. On
    /// PostgreSQL this fails without the repeatable-read line (read
    /// committed re-snapshots per statement).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_does_not_see_later_commits() {
        use crate::MasterKey;
        use sqlx::Connection;
        let admin = std::env::var("MPC_TEST_POSTGRES").expect("MPC_TEST_POSTGRES (scripts/test.sh starts a server)");
        let name = format!("snapshot_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let sqlite = std::env::temp_dir().join(format!("mpc-snapshot-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", sqlite.display()));
        }
        let urls = [
            format!("{}/{name}", admin.rsplit_once('/').unwrap().0),
            format!("sqlite://{}?mode=rwc", sqlite.display()),
        ];
        for url in urls {
            let key = MasterKey::from_hex(&"5a".repeat(32), "test key").unwrap();
            let store = Store::open(&url, key, NodeId(1)).await.unwrap();
            let count = "SELECT COUNT(*) FROM audit_log";
            let mut snap = store.snapshot().await.unwrap();
            let before: i64 = sqlx::query(count).fetch_one(&mut *snap).await.unwrap().try_get(0).unwrap();
            store.audit_operator_request(Millis(1), "alice", "probe", "ok").await.unwrap();
            let inside: i64 = sqlx::query(count).fetch_one(&mut *snap).await.unwrap().try_get(0).unwrap();
            snap.commit().await.unwrap();
            let outside: i64 = sqlx::query(count).fetch_one(&store.pool).await.unwrap().try_get(0).unwrap();
            assert_eq!(inside, before, "{:?}: the snapshot saw a row committed after it began", store.backend());
            assert_eq!(outside, before + 1, "{:?}", store.backend());
            store.close().await;
        }
    }
}
