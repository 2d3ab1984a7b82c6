//! [`Store`]: one node's database, PostgreSQL in production and SQLite as
//! the embedded default, through one code path (sqlx's `Any` driver; the
//! SQL below is the common dialect of both, `$n` placeholders included).
//!
//! Writes: each `Step`'s `persist` list is one database transaction,
//! together with one audit-log row per record. Every writer first updates
//! the `writer` row of `meta`, which serialises writers (a row lock in
//! PostgreSQL, the write lock in SQLite) so the audit chain's next row and
//! the presignature state checks see every earlier commit.
//!
//! Reads: [`Store::recover`] rebuilds the core's `RecoveredState` from the
//! tables, not from a log. The core's replay is state-based (a transaction's
//! state is set, the sequence is a maximum, the latest key wins), so rows
//! updated in place and replayed in a fixed order give the node it had
//! before: key material (shares, confirmations, the adoption), then transactions, votes, evidence, states,
//! presignatures, signed transactions. A test checks this against replaying
//! the original records in order.

use crate::audit::{self, AuditAnchor, AuditRow, ChainError, ChainHead};
use crate::columns::{self, int, uint};
use crate::error::{redact_url, StoreError};
use crate::sealing::{MasterKey, RowId};
use mpc_core::engine::{AuxInfo, KeyShare, PresigPublic, PresigShare, SafePrimes};
use mpc_core::record::{Record, RecoveredState};
use mpc_core::vote::{Equivocation, SignedVote};
use mpc_core::{DkgId, DkgStatement, Millis, NodeId, PresigId, Secret, TxId, TxState};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};
use std::time::Duration;

/// Which database a URL names. The SQL is shared; only the migrations and
/// connection settings differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(StoreError::UnsupportedUrl { url: redact_url(url) })
        }
    }
}

/// How a connection to PostgreSQL is secured: libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    /// sqlx's and libpq's default: TLS if the server offers it, else plain
    /// text, and the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate from a trusted CA.
    VerifyCa,
    /// TLS with a certificate from a trusted CA for the URL's host: the
    /// only mode that stops an active attacker.
    VerifyFull,
}

/// The TLS settings of a PostgreSQL URL as the driver reads them: the URL's
/// `sslmode` and `sslrootcert` parameters (or the `PGSSLMODE` environment
/// variable for the mode). Name the CA that signed the server's certificate
/// with `sslrootcert=/path/ca.pem`. Unlike libpq, sqlx 0.8 trusts the
/// public web roots (webpki-roots) in addition to it: a server name no
/// public CA certifies (an internal one) keeps them out of the question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    pub mode: SslMode,
    pub root_cert: Option<std::path::PathBuf>,
}

/// The query parameters sqlx takes as the root certificate, in its words.
const ROOT_CERT_PARAMS: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];

impl PostgresTls {
    /// Parses `url` as the driver will when connecting, so what this says
    /// is what the connection does.
    pub fn of_url(url: &str) -> Result<PostgresTls, StoreError> {
        use sqlx::postgres::{PgConnectOptions, PgSslMode};
        use std::str::FromStr;
        if Backend::of_url(url)? != Backend::Postgres {
            return Err(StoreError::UnsupportedUrl { url: redact_url(url) });
        }
        let bad = |e: &dyn std::fmt::Display| StoreError::BadUrl { url: redact_url(url), reason: e.to_string() };
        let options = PgConnectOptions::from_str(url).map_err(|e| bad(&e))?;
        let mode = match options.get_ssl_mode() {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow => SslMode::Allow,
            PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require => SslMode::Require,
            PgSslMode::VerifyCa => SslMode::VerifyCa,
            PgSslMode::VerifyFull => SslMode::VerifyFull,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e))?;
        // The driver takes the last one given, as here.
        let root_cert = parsed
            .query_pairs()
            .filter(|(k, _)| ROOT_CERT_PARAMS.contains(&k.as_ref()))
            .last()
            .map(|(_, v)| std::path::PathBuf::from(v.into_owned()));
        Ok(PostgresTls { mode, root_cert })
    }

    /// Whether the server's identity is checked (`verify-full`).
    pub fn verifies_server(&self) -> bool {
        self.mode == SslMode::VerifyFull
    }
}

/// The settings a committed step's durability rests on, as the database
/// reports them on a live connection: what `check_durability` insists on.
/// SQLite: WAL and `synchronous = FULL` (2) or EXTRA (3), so a commit is
/// on disk, WAL included, when it returns. PostgreSQL: `fsync = on` (a
/// server setting we cannot change, so a server without it is refused)
/// and `synchronous_commit = on` (set per connection at connect).
async fn durability_settings(pool: &AnyPool, backend: Backend) -> Result<Vec<(&'static str, String)>, StoreError> {
    let mut conn = pool.acquire().await?;
    let queries: &[(&'static str, &str)] = match backend {
        Backend::Sqlite => &[("journal_mode", "PRAGMA journal_mode"), ("synchronous", "PRAGMA synchronous")],
        Backend::Postgres => &[("fsync", "SHOW fsync"), ("synchronous_commit", "SHOW synchronous_commit")],
    };
    let mut out = Vec::new();
    for (name, query) in queries {
        let row = sqlx::query(query).fetch_one(&mut *conn).await?;
        // PRAGMA synchronous answers an integer, the others text.
        let value = match row.try_get::<String, _>(0) {
            Ok(text) => text,
            Err(_) => row.try_get::<i64, _>(0)?.to_string(),
        };
        out.push((*name, value.to_ascii_lowercase()));
    }
    Ok(out)
}

/// Refuses a database whose settings would let a committed step vanish in
/// a power cut: a presignature's consumption must be on disk before its
/// partial signature leaves the node.
async fn check_durability(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    for (setting, value) in durability_settings(pool, backend).await? {
        let ok = match setting {
            "journal_mode" => value == "wal",
            "synchronous" => value == "2" || value == "3",
            "fsync" | "synchronous_commit" => value == "on",
            _ => true,
        };
        if !ok {
            return Err(StoreError::NotDurable { setting, value });
        }
    }
    Ok(())
}

/// What a committed step changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The fencing epoch after this step, when it consumed a presignature.
    /// After [`Store::apply_fenced`] etcd already holds it; after the
    /// unfenced [`Store::apply`] nobody published it.
    pub epoch: Option<u64>,
    /// Audit rows written.
    pub audit_rows: u64,
    /// The audit anchor this step published to etcd together with the
    /// epoch (its own last row), if it moved the anchor.
    pub anchored: Option<AuditAnchor>,
}

/// The outcome of the restore-fencing check at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fencing {
    /// The database is not behind the latest epoch known elsewhere.
    Current { epoch: u64 },
    /// The database is behind: it was restored from an older backup, so any
    /// presignature it holds may have been consumed since. All were
    /// discarded.
    Restored { database_epoch: u64, latest_epoch: u64, discarded: u64 },
}

/// Per-node database handle. Cheap to share behind an `Arc`.
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    key: MasterKey,
    node: NodeId,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?}, {})", self.backend, self.node)
    }
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Store {
    /// Connects, runs the migrations, binds an empty database to `node` and
    /// `key` (or checks that an existing one belongs to them). A wrong master
    /// key is refused here, before any secret is read.
    pub async fn open(url: &str, key: MasterKey, node: NodeId) -> Result<Store, StoreError> {
        let backend = Backend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let options = AnyPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(30));
        let options = match backend {
            // Durable at commit (FULL also syncs the WAL), concurrent readers,
            // and writers that wait for each other rather than fail at once.
            Backend::Sqlite => options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    Ok(())
                })
            }),
            // Commits wait for the WAL flush, whatever the role's or the
            // database's default says.
            Backend::Postgres => options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET synchronous_commit = on").await?;
                    Ok(())
                })
            }),
        };
        let pool = options.connect(url).await.map_err(|source| StoreError::Connect { url: redact_url(url), source })?;
        check_durability(&pool, backend).await?;
        match backend {
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
        }
        let store = Store { pool, backend, key, node };
        store.bind_identity().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The durability settings in force on this database's connections,
    /// read back from it (see `durability_settings`); `open` refused the
    /// database unless they are the safe ones.
    pub async fn durability(&self) -> Result<Vec<(&'static str, String)>, StoreError> {
        durability_settings(&self.pool, self.backend).await
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// First open: records the node and the key-check value. Later opens:
    /// refuses another node's database or another master key.
    async fn bind_identity(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let stored_node: Option<i64> = sqlx::query("SELECT int_value FROM meta WHERE name = 'node'")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        match stored_node {
            Some(found) => {
                let found = columns::node(found, "meta[node]")?;
                if found != self.node {
                    return Err(StoreError::WrongNode { expected: self.node, found });
                }
            }
            None => {
                sqlx::query("INSERT INTO meta (name, int_value) VALUES ('node', $1)")
                    .bind(i64::from(self.node.0))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let check: Option<Vec<u8>> = sqlx::query("SELECT blob_value FROM meta WHERE name = 'key_check'")
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        match check {
            Some(check) => self.key.verify_key_check(&check)?,
            None => {
                sqlx::query("INSERT INTO meta (name, blob_value) VALUES ('key_check', $1)")
                    .bind(self.key.key_check())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction that holds the writer lock from its first
    /// statement on.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE meta SET int_value = int_value + 1 WHERE name = 'writer'").execute(&mut *tx).await?;
        Ok(tx)
    }

    /// Makes one step's records durable, atomically, with their audit rows.
    /// Nothing of the step is written if any record is refused.
    ///
    /// Unfenced: a consumption commits without its epoch being in etcd. A
    /// node that runs with etcd makes every step durable with
    /// [`Store::apply_fenced`] instead; this is for what runs without etcd
    /// (the in-process demo, tools, tests).
    pub async fn apply(&self, now: Millis, records: &[Record]) -> Result<Applied, StoreError> {
        if records.is_empty() {
            return Ok(Applied::default());
        }
        let mut tx = self.begin_write().await?;
        let (applied, _) = self.write_step(&mut tx, now, records).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Writes a step's records and their audit rows into `tx` (not
    /// committed); returns what changed and the audit chain's new head.
    pub(crate) async fn write_step(
        &self,
        tx: &mut Transaction<'static, Any>,
        now: Millis,
        records: &[Record],
    ) -> Result<(Applied, ChainHead), StoreError> {
        let mut head = load_head(tx).await?;
        let mut applied = Applied::default();
        for record in records {
            let row = head.append(now.0, record.kind(), columns::audit_body(record));
            self.write(tx, record, int(row.seq, "audit seq")?, int(now.0, "step time")?, &mut applied).await?;
            insert_audit(tx, &row).await?;
            applied.audit_rows += 1;
        }
        Ok((applied, head))
    }

    fn seal(&self, table: &str, key: &str, plaintext: &[u8]) -> Vec<u8> {
        self.key.seal(RowId { table, key }, plaintext)
    }

    fn open_sealed<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        let plain = self.key.open(RowId { table, key }, sealed)?;
        columns::decode_secret(&plain, &format!("{table}[{key}]"))
    }

    async fn write(
        &self,
        tx: &mut Transaction<'static, Any>,
        record: &Record,
        written: i64,
        at_ms: i64,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let me = self.node;
        match record {
            Record::SafePrimes(primes) => {
                let sealed = self.seal("safe_primes", &me.to_string(), &columns::encode_secret(primes.expose()));
                sqlx::query(
                    "INSERT INTO safe_primes (id, sealed) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed",
                )
                .bind(sealed)
                .execute(&mut **tx)
                .await?;
            }
            Record::SequenceReserved { next } => {
                sqlx::query(
                    "UPDATE meta SET int_value = CASE WHEN int_value < $1 THEN $1 ELSE int_value END \
                     WHERE name = 'next_seq'",
                )
                .bind(int(*next, "next sequence")?)
                .execute(&mut **tx)
                .await?;
            }
            Record::DkgJoined { dkg } => {
                sqlx::query(
                    "INSERT INTO dkg_sessions (origin, seq, written) VALUES ($1, $2, $3) \
                     ON CONFLICT (origin, seq) DO NOTHING",
                )
                .bind(i64::from(dkg.origin.0))
                .bind(columns::id_seq(dkg.seq))
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::AuxInfo { dkg, aux } => {
                let sealed = self.seal("aux_info", &columns::dkg_key(me, *dkg), &columns::encode_secret(aux.expose()));
                sqlx::query(
                    "INSERT INTO aux_info (origin, seq, sealed, written) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (origin, seq) DO UPDATE SET sealed = excluded.sealed, written = excluded.written",
                )
                .bind(i64::from(dkg.origin.0))
                .bind(columns::id_seq(dkg.seq))
                .bind(sealed)
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::KeyShare { dkg, share, public_key } => {
                let sealed =
                    self.seal("key_shares", &columns::dkg_key(me, *dkg), &columns::encode_secret(share.expose()));
                sqlx::query(
                    "INSERT INTO key_shares (origin, seq, public_key, sealed, written) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (origin, seq) DO UPDATE SET public_key = excluded.public_key, \
                     sealed = excluded.sealed, written = excluded.written",
                )
                .bind(i64::from(dkg.origin.0))
                .bind(columns::id_seq(dkg.seq))
                .bind(public_key.clone())
                .bind(sealed)
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::DkgStatement(statement) => {
                let claim = if statement.is_abandon() { "abandoned" } else { "confirmed" };
                sqlx::query(
                    "INSERT INTO dkg_statements (origin, seq, member, claim, body, written) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (origin, seq, member, claim) DO NOTHING",
                )
                .bind(i64::from(statement.dkg.origin.0))
                .bind(columns::id_seq(statement.dkg.seq))
                .bind(i64::from(statement.member.0))
                .bind(claim)
                .bind(columns::encode(statement))
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::KeyAdopted { dkg } => {
                sqlx::query(
                    "INSERT INTO key_adopted (origin, seq, written) VALUES ($1, $2, $3) \
                     ON CONFLICT (origin, seq) DO NOTHING",
                )
                .bind(i64::from(dkg.origin.0))
                .bind(columns::id_seq(dkg.seq))
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::TxAccepted { tx: id, psbt, proposer, at } => {
                let result = sqlx::query(
                    "INSERT INTO transactions (tx, psbt, proposer, accepted_at, state, written) \
                     VALUES ($1, $2, $3, $4, 'received', $5)",
                )
                .bind(id.0.to_vec())
                .bind(psbt.clone())
                .bind(i64::from(proposer.0))
                .bind(int(at.0, "accepted at")?)
                .bind(written)
                .execute(&mut **tx)
                .await;
                match result {
                    Err(e) if StoreError::is_unique_violation(&e) => {
                        return Err(StoreError::DuplicateTransaction { tx: *id })
                    }
                    other => other?,
                };
                insert_history(tx, *id, &TxState::Received, written, at_ms).await?;
            }
            Record::OwnVote { vote, at } => insert_vote(tx, vote, Some(int(at.0, "vote time")?), written).await?,
            Record::Vote(vote) => insert_vote(tx, vote, None, written).await?,
            Record::Evidence(evidence) => {
                sqlx::query(
                    "INSERT INTO evidence (tx, voter, body, written) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tx, voter) DO NOTHING",
                )
                .bind(evidence.tx.0.to_vec())
                .bind(i64::from(evidence.voter.0))
                .bind(columns::encode(evidence))
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::TxState { tx: id, state } => {
                let (name, failure) = columns::state_columns(state);
                let done = sqlx::query("UPDATE transactions SET state = $1, failure = $2 WHERE tx = $3")
                    .bind(name)
                    .bind(failure.map(str::to_string))
                    .bind(id.0.to_vec())
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::UnknownTransaction { what: "a state change", tx: *id });
                }
                insert_history(tx, *id, state, written, at_ms).await?;
            }
            Record::SignedTx { tx: id, raw_tx, presigs } => {
                let done = sqlx::query("UPDATE transactions SET signed_raw = $1, signed_presigs = $2 WHERE tx = $3")
                    .bind(raw_tx.clone())
                    .bind(columns::encode(presigs))
                    .bind(id.0.to_vec())
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::UnknownTransaction { what: "a signed transaction", tx: *id });
                }
            }
            Record::Chain { tx: id, status } => {
                let done = sqlx::query("UPDATE transactions SET chain = $1 WHERE tx = $2")
                    .bind(columns::encode(status))
                    .bind(id.0.to_vec())
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::UnknownTransaction { what: "a chain status", tx: *id });
                }
            }
            Record::PresigGenerating { id, signers } => {
                let result = sqlx::query(
                    "INSERT INTO presignatures (origin, seq, signers, state, written) \
                     VALUES ($1, $2, $3, 'generating', $4)",
                )
                .bind(i64::from(id.origin.0))
                .bind(columns::id_seq(id.seq))
                .bind(columns::signers_text(signers))
                .bind(written)
                .execute(&mut **tx)
                .await;
                match result {
                    Err(e) if StoreError::is_unique_violation(&e) => {
                        let from = presig_state(tx, *id).await?.unwrap_or_default();
                        return Err(StoreError::PresigTransition { id: *id, from, to: "generating" });
                    }
                    other => other?,
                };
            }
            Record::PresigReady { id, share, .. } => {
                let sealed =
                    self.seal("presignatures", &columns::presig_key(me, *id), &columns::encode_secret(share.expose()));
                let done = sqlx::query(
                    "UPDATE presignatures SET state = 'ready', sealed_share = $1, public = $2, \
                     ready_epoch = (SELECT int_value FROM meta WHERE name = 'epoch'), written = $3 \
                     WHERE origin = $4 AND seq = $5 AND state = 'generating'",
                )
                .bind(sealed)
                .bind(columns::encode(&share.expose().public))
                .bind(written)
                .bind(i64::from(id.origin.0))
                .bind(columns::id_seq(id.seq))
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(transition_refused(tx, *id, "ready").await);
                }
            }
            Record::PresigAnnounced { id, signers, from, public } => {
                sqlx::query(
                    "INSERT INTO presignature_announcements (origin, seq, from_node, signers, public, written) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (origin, seq, from_node) DO NOTHING",
                )
                .bind(i64::from(id.origin.0))
                .bind(columns::id_seq(id.seq))
                .bind(i64::from(from.0))
                .bind(columns::signers_text(signers))
                .bind(columns::encode(public))
                .bind(written)
                .execute(&mut **tx)
                .await?;
            }
            Record::PresigConsumed { id, tx: for_tx, input, message, sigma } => {
                // Every consumption advances the fencing epoch, in the same
                // transaction: a backup taken before it is behind forever.
                let epoch: i64 =
                    sqlx::query("UPDATE meta SET int_value = int_value + 1 WHERE name = 'epoch' RETURNING int_value")
                        .fetch_one(&mut **tx)
                        .await?
                        .try_get(0)?;
                // The one way to Consumed: from Ready, in a conditional update.
                // Of two racing consumers exactly one changes the row.
                let done = sqlx::query(
                    "UPDATE presignatures SET state = 'consumed', sealed_share = NULL, consumed_tx = $1, \
                     consumed_input = $2, message = $3, sigma = $4, consumed_epoch = $5, written = $6 \
                     WHERE origin = $7 AND seq = $8 AND state = 'ready'",
                )
                .bind(for_tx.0.to_vec())
                .bind(i64::from(*input))
                .bind(message.to_vec())
                .bind(sigma.to_vec())
                .bind(epoch)
                .bind(written)
                .bind(i64::from(id.origin.0))
                .bind(columns::id_seq(id.seq))
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(transition_refused(tx, *id, "consumed").await);
                }
                applied.epoch = Some(uint(epoch, "meta[epoch]")?);
            }
            Record::PresigDiscarded { id, reason } => {
                let done = sqlx::query(
                    "UPDATE presignatures SET state = 'discarded', sealed_share = NULL, discard_reason = $1, \
                     written = $2 WHERE origin = $3 AND seq = $4 AND state IN ('generating', 'ready')",
                )
                .bind(reason.clone())
                .bind(written)
                .bind(i64::from(id.origin.0))
                .bind(columns::id_seq(id.seq))
                .execute(&mut **tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(transition_refused(tx, *id, "discarded").await);
                }
            }
        }
        Ok(())
    }

    /// The records a restarted node replays, rebuilt from the tables in the
    /// order the module docs give. Opens every sealed value: a wrong key or
    /// a corrupted or moved ciphertext stops here with the row's name.
    pub async fn recover(&self) -> Result<RecoveredState, StoreError> {
        let me = self.node;
        let mut conn = self.snapshot().await?;
        let mut records = Vec::new();

        let next: i64 = sqlx::query("SELECT int_value FROM meta WHERE name = 'next_seq'")
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if next > 0 {
            records.push(Record::SequenceReserved { next: uint(next, "meta[next_seq]")? });
        }
        if let Some(row) = sqlx::query("SELECT sealed FROM safe_primes WHERE id = 1").fetch_optional(&mut *conn).await?
        {
            let primes: SafePrimes =
                self.open_sealed("safe_primes", &me.to_string(), &row.try_get::<Vec<u8>, _>(0)?)?;
            records.push(Record::SafePrimes(Secret::new(primes)));
        }
        for row in sqlx::query("SELECT origin, seq FROM dkg_sessions ORDER BY written").fetch_all(&mut *conn).await? {
            records.push(Record::DkgJoined { dkg: dkg_id(&row, "dkg_sessions")? });
        }
        for row in
            sqlx::query("SELECT origin, seq, sealed FROM aux_info ORDER BY written").fetch_all(&mut *conn).await?
        {
            let dkg = dkg_id(&row, "aux_info")?;
            let aux: AuxInfo =
                self.open_sealed("aux_info", &columns::dkg_key(me, dkg), &row.try_get::<Vec<u8>, _>(2)?)?;
            records.push(Record::AuxInfo { dkg, aux: Secret::new(aux) });
        }
        for row in sqlx::query("SELECT origin, seq, public_key, sealed FROM key_shares ORDER BY written")
            .fetch_all(&mut *conn)
            .await?
        {
            let dkg = dkg_id(&row, "key_shares")?;
            let share: KeyShare =
                self.open_sealed("key_shares", &columns::dkg_key(me, dkg), &row.try_get::<Vec<u8>, _>(3)?)?;
            records.push(Record::KeyShare { dkg, share: Secret::new(share), public_key: row.try_get(2)? });
        }
        // Statements after the shares they confirm, the adoption after both,
        // and all of it before any transaction (replaying one needs the key).
        for row in sqlx::query("SELECT body FROM dkg_statements ORDER BY written").fetch_all(&mut *conn).await? {
            let statement: DkgStatement = columns::decode(&row.try_get::<Vec<u8>, _>(0)?, "dkg_statements")?;
            records.push(Record::DkgStatement(statement));
        }
        for row in sqlx::query("SELECT origin, seq FROM key_adopted ORDER BY written").fetch_all(&mut *conn).await? {
            records.push(Record::KeyAdopted { dkg: dkg_id(&row, "key_adopted")? });
        }

        let txs = sqlx::query(
            "SELECT tx, psbt, proposer, accepted_at, state, failure, signed_raw, chain, signed_presigs FROM transactions ORDER BY written",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut states = Vec::new();
        let mut signed = Vec::new();
        for row in &txs {
            let tx = TxId(columns::array32(&row.try_get::<Vec<u8>, _>(0)?, "transactions.tx")?);
            let name = format!("transactions[{}]", tx.short());
            records.push(Record::TxAccepted {
                tx,
                psbt: row.try_get(1)?,
                proposer: columns::node(row.try_get(2)?, &name)?,
                at: Millis(uint(row.try_get(3)?, &name)?),
            });
            let state = columns::state_parse(&row.try_get::<String, _>(4)?, row.try_get(5)?, &name)?;
            if state != TxState::Received {
                states.push(Record::TxState { tx, state });
            }
            if let Some(raw_tx) = row.try_get::<Option<Vec<u8>>, _>(6)? {
                // NULL in rows signed before the column existed.
                let presigs = match row.try_get::<Option<Vec<u8>>, _>(8)? {
                    Some(bytes) => columns::decode(&bytes, &name)?,
                    None => Vec::new(),
                };
                signed.push(Record::SignedTx { tx, raw_tx, presigs });
            }
            if let Some(status) = row.try_get::<Option<Vec<u8>>, _>(7)? {
                signed.push(Record::Chain { tx, status: columns::decode(&status, &name)? });
            }
        }
        for row in sqlx::query("SELECT body, own_at FROM votes ORDER BY written").fetch_all(&mut *conn).await? {
            let vote: SignedVote = columns::decode(&row.try_get::<Vec<u8>, _>(0)?, "votes")?;
            match row.try_get::<Option<i64>, _>(1)? {
                Some(at) => records.push(Record::OwnVote { vote, at: Millis(uint(at, "votes.own_at")?) }),
                None => records.push(Record::Vote(vote)),
            }
        }
        for row in sqlx::query("SELECT body FROM evidence ORDER BY written").fetch_all(&mut *conn).await? {
            let evidence: Equivocation = columns::decode(&row.try_get::<Vec<u8>, _>(0)?, "evidence")?;
            records.push(Record::Evidence(evidence));
        }
        records.append(&mut states);

        for row in sqlx::query(
            "SELECT origin, seq, from_node, signers, public FROM presignature_announcements ORDER BY written",
        )
        .fetch_all(&mut *conn)
        .await?
        {
            let id = presig_id(&row, "presignature_announcements")?;
            let name = format!("presignature_announcements[{id}]");
            records.push(Record::PresigAnnounced {
                id,
                from: columns::node(row.try_get(2)?, &name)?,
                signers: columns::signers_parse(&row.try_get::<String, _>(3)?, &name)?,
                public: columns::decode(&row.try_get::<Vec<u8>, _>(4)?, &name)?,
            });
        }
        for row in sqlx::query(
            "SELECT origin, seq, signers, state, sealed_share, public, consumed_tx, consumed_input, message, sigma, \
             discard_reason FROM presignatures ORDER BY written",
        )
        .fetch_all(&mut *conn)
        .await?
        {
            self.recover_presig(&row, &mut records)?;
        }
        records.append(&mut signed);
        conn.commit().await?;
        Ok(RecoveredState { records })
    }

    /// One own presignature as the records that leave the core where the
    /// original ones did. A used share's pool entry is rebuilt from its
    /// public part (the share itself was erased when it left Ready).
    fn recover_presig(&self, row: &AnyRow, records: &mut Vec<Record>) -> Result<(), StoreError> {
        let id = presig_id(row, "presignatures")?;
        let name = format!("presignatures[{id}]");
        let signers = columns::signers_parse(&row.try_get::<String, _>(2)?, &name)?;
        let state: String = row.try_get(3)?;
        let public: Option<PresigPublic> =
            row.try_get::<Option<Vec<u8>>, _>(5)?.map(|b| columns::decode(&b, &name)).transpose()?;
        let announce_own = |records: &mut Vec<Record>, public: Option<PresigPublic>| {
            if let Some(public) = public {
                records.push(Record::PresigAnnounced { id, signers: signers.clone(), from: self.node, public });
            }
        };
        match state.as_str() {
            "generating" => records.push(Record::PresigGenerating { id, signers: signers.clone() }),
            "ready" => {
                let sealed: Vec<u8> = row
                    .try_get::<Option<Vec<u8>>, _>(4)?
                    .ok_or_else(|| StoreError::corrupt(&name, "ready without a share"))?;
                let share: PresigShare =
                    self.open_sealed("presignatures", &columns::presig_key(self.node, id), &sealed)?;
                records.push(Record::PresigReady { id, signers: signers.clone(), share: Secret::new(share) });
            }
            "consumed" => {
                announce_own(records, public);
                let missing = || StoreError::corrupt(&name, "consumed without its message");
                let tx = TxId(columns::array32(&row.try_get::<Option<Vec<u8>>, _>(6)?.ok_or_else(missing)?, &name)?);
                let input = row.try_get::<Option<i64>, _>(7)?.ok_or_else(missing)?;
                let message = columns::array32(&row.try_get::<Option<Vec<u8>>, _>(8)?.ok_or_else(missing)?, &name)?;
                let sigma = columns::array32(&row.try_get::<Option<Vec<u8>>, _>(9)?.ok_or_else(missing)?, &name)?;
                let input = u32::try_from(input).map_err(|_| StoreError::corrupt(&name, "input index"))?;
                records.push(Record::PresigConsumed { id, tx, input, message, sigma });
            }
            "discarded" => {
                announce_own(records, public);
                let reason: Option<String> = row.try_get(10)?;
                records.push(Record::PresigDiscarded { id, reason: reason.unwrap_or_default() });
            }
            other => return Err(StoreError::corrupt(&name, format!("unknown state {other:?}"))),
        }
        Ok(())
    }

    /// The fencing epoch this database has reached.
    pub async fn epoch(&self) -> Result<u64, StoreError> {
        let epoch: i64 =
            sqlx::query("SELECT int_value FROM meta WHERE name = 'epoch'").fetch_one(&self.pool).await?.try_get(0)?;
        uint(epoch, "meta[epoch]")
    }

    /// Restore fencing at start-up (DESIGN §4). `latest` is the newest epoch
    /// this node published elsewhere (etcd). A database behind it was
    /// restored from a backup older than some consumption, so every
    /// presignature it still holds as usable is discarded, the epoch is
    /// brought level, and the audit log says so.
    ///
    /// `anchor` is the audit anchor published with `latest`. A restored
    /// database usually lacks the anchored row (its tail was lost with the
    /// restore); the audit row written here then names that anchor as
    /// superseded, which is what later lets the node move the anchor past
    /// the lost tail (see `crate::fencing`) while `audit-verify` still
    /// reports the loss until it has.
    pub async fn fence(&self, now: Millis, latest: u64, anchor: Option<AuditAnchor>) -> Result<Fencing, StoreError> {
        let mut tx = self.begin_write().await?;
        let database_epoch = read_epoch(&mut tx).await?;
        if database_epoch >= latest {
            tx.rollback().await?;
            return Ok(Fencing::Current { epoch: database_epoch });
        }
        let superseded = match anchor {
            Some(a) => match anchor_standing(&mut tx, &a).await? {
                AnchorStanding::Broken(_) => Some(a),
                AnchorStanding::Holds | AnchorStanding::Superseded { .. } => None,
            },
            None => None,
        };
        let reason = format!(
            "restore fencing: database epoch {database_epoch} is behind the published epoch {latest}; \
             the database was restored from an older backup (or a consuming step's epoch reached etcd and \
             its commit did not)"
        );
        let discarded = sqlx::query(
            "UPDATE presignatures SET state = 'discarded', sealed_share = NULL, discard_reason = $1 \
             WHERE state IN ('generating', 'ready')",
        )
        .bind(reason.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE meta SET int_value = $1 WHERE name = 'epoch'")
            .bind(int(latest, "epoch")?)
            .execute(&mut *tx)
            .await?;
        let mut head = load_head(&mut tx).await?;
        let body = serde_json::json!({
            "database_epoch": database_epoch, "latest_epoch": latest, "discarded": discarded, "reason": reason,
            SUPERSEDED_ANCHOR: superseded.map(|a| a.to_string()),
        });
        let row = head.append(now.0, "restore_fencing", body.to_string().into_bytes());
        insert_audit(&mut tx, &row).await?;
        tx.commit().await?;
        tracing::warn!(
            database_epoch,
            latest,
            discarded,
            superseded_anchor = ?superseded.map(|a| a.seq),
            "{reason}: discarded every presignature it held"
        );
        Ok(Fencing::Restored { database_epoch, latest_epoch: latest, discarded })
    }

    /// Every audit row, in sequence order.
    pub async fn audit_rows(&self) -> Result<Vec<AuditRow>, StoreError> {
        read_audit(&self.pool).await
    }

    /// Checks the whole audit chain; the error names the first bad row.
    pub async fn verify_audit(&self) -> Result<ChainHead, StoreError> {
        let rows = self.audit_rows().await?;
        Ok(audit::verify(&rows)?)
    }

    /// Checks the whole audit chain and, given the anchor published in etcd
    /// ([`crate::coord::Coordinator::anchor`]), that the chain still reaches
    /// it: a tail cut off or rewritten after the anchor was taken verifies
    /// on its own, and only the anchor shows it. `None` checks the chain
    /// alone.
    pub async fn verify_audit_against(&self, anchor: Option<&AuditAnchor>) -> Result<ChainHead, StoreError> {
        let rows = self.audit_rows().await?;
        Ok(match anchor {
            Some(anchor) => audit::verify_against(&rows, anchor)?,
            None => audit::verify(&rows)?,
        })
    }

    /// Checks the audit chain of the database at `url` without its master
    /// key and without changing anything (no migrations, no binding): what
    /// an auditor runs against a copy. With `anchor`, also that the chain
    /// reaches it (see [`Store::verify_audit_against`]).
    pub async fn verify_audit_at(url: &str, anchor: Option<&AuditAnchor>) -> Result<(ChainHead, u64), StoreError> {
        Backend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect { url: redact_url(url), source })?;
        let rows = read_audit(&pool).await;
        pool.close().await;
        let rows = rows?;
        let head = match anchor {
            Some(anchor) => audit::verify_against(&rows, anchor)?,
            None => audit::verify(&rows)?,
        };
        Ok((head, rows.len() as u64))
    }
}

/// The `restore_fencing` audit body's field naming an anchor the restored
/// database could not reach.
const SUPERSEDED_ANCHOR: &str = "superseded_anchor";

/// Whether the database's audit chain reaches a published anchor.
#[derive(Debug)]
pub(crate) enum AnchorStanding {
    /// The anchored row is there with the anchored hash.
    Holds,
    /// It is not, but restore fencing recorded (audit row `restore_row`)
    /// that this database was restored from before the anchor.
    Superseded { restore_row: u64 },
    /// It is not, and nothing explains it: truncated or rewritten.
    Broken(ChainError),
}

pub(crate) async fn anchor_standing(
    conn: &mut AnyConnection,
    anchor: &AuditAnchor,
) -> Result<AnchorStanding, StoreError> {
    let found: Option<Vec<u8>> = sqlx::query("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(int(anchor.seq, "anchored seq")?)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    if found.as_deref() == Some(&anchor.hash[..]) {
        return Ok(AnchorStanding::Holds);
    }
    let text = anchor.to_string();
    for row in sqlx::query("SELECT seq, body FROM audit_log WHERE kind = 'restore_fencing' ORDER BY seq")
        .fetch_all(&mut *conn)
        .await?
    {
        let seq = uint(row.try_get(0)?, "audit_log.seq")?;
        let body: serde_json::Value = serde_json::from_slice(&row.try_get::<Vec<u8>, _>(1)?)
            .map_err(|e| StoreError::corrupt(format!("audit_log[{seq}]"), e))?;
        if body.get(SUPERSEDED_ANCHOR).and_then(|v| v.as_str()) == Some(text.as_str()) {
            return Ok(AnchorStanding::Superseded { restore_row: seq });
        }
    }
    Ok(AnchorStanding::Broken(match found {
        Some(found) => {
            ChainError::RewrittenTail { anchor: *anchor, found: columns::array32(&found, "audit_log.hash")? }
        }
        None => {
            let rows: i64 = sqlx::query("SELECT COUNT(*) FROM audit_log").fetch_one(&mut *conn).await?.try_get(0)?;
            ChainError::TruncatedTail { anchor: *anchor, rows: uint(rows, "audit_log count")? }
        }
    }))
}

pub(crate) async fn read_epoch(conn: &mut AnyConnection) -> Result<u64, StoreError> {
    let epoch: i64 =
        sqlx::query("SELECT int_value FROM meta WHERE name = 'epoch'").fetch_one(&mut *conn).await?.try_get(0)?;
    uint(epoch, "meta[epoch]")
}

async fn read_audit(pool: &AnyPool) -> Result<Vec<AuditRow>, StoreError> {
    let rows = sqlx::query("SELECT seq, at_ms, kind, body, prev_hash, hash FROM audit_log ORDER BY seq")
        .fetch_all(pool)
        .await?;
    rows.iter().map(audit_row).collect()
}

async fn insert_vote(
    tx: &mut Transaction<'static, Any>,
    vote: &SignedVote,
    own_at: Option<i64>,
    written: i64,
) -> Result<(), StoreError> {
    let decision = if vote.body.decision.is_approve() { "approve" } else { "reject" };
    let result =
        sqlx::query("INSERT INTO votes (tx, voter, decision, body, own_at, written) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(vote.body.tx.0.to_vec())
            .bind(i64::from(vote.body.voter.0))
            .bind(decision)
            .bind(columns::encode(vote))
            .bind(own_at)
            .bind(written)
            .execute(&mut **tx)
            .await;
    match result {
        Err(e) if StoreError::is_unique_violation(&e) => {
            Err(StoreError::DuplicateVote { tx: vote.body.tx, voter: vote.body.voter })
        }
        other => other.map(|_| ()).map_err(StoreError::from),
    }
}

/// A state the transaction entered, for its history (`crate::read`).
async fn insert_history(
    tx: &mut Transaction<'static, Any>,
    id: TxId,
    state: &TxState,
    written: i64,
    at_ms: i64,
) -> Result<(), StoreError> {
    let (name, failure) = columns::state_columns(state);
    sqlx::query("INSERT INTO transaction_history (tx, written, state, failure, at_ms) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.0.to_vec())
        .bind(written)
        .bind(name)
        .bind(failure.map(str::to_string))
        .bind(at_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn presig_state(tx: &mut Transaction<'static, Any>, id: PresigId) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query("SELECT state FROM presignatures WHERE origin = $1 AND seq = $2")
        .bind(i64::from(id.origin.0))
        .bind(columns::id_seq(id.seq))
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get(0)))
}

/// The error for a refused state change, naming the state the row is in.
async fn transition_refused(tx: &mut Transaction<'static, Any>, id: PresigId, to: &'static str) -> StoreError {
    match presig_state(tx, id).await {
        Ok(state) => StoreError::PresigTransition { id, from: state.unwrap_or_else(|| "absent".into()), to },
        Err(e) => e,
    }
}

pub(crate) async fn load_head(conn: &mut AnyConnection) -> Result<ChainHead, StoreError> {
    let last = sqlx::query("SELECT seq, at_ms, kind, body, prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match last {
        Some(row) => ChainHead::after(&audit_row(&row)?),
        None => ChainHead::default(),
    })
}

pub(crate) async fn insert_audit(tx: &mut Transaction<'static, Any>, row: &AuditRow) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_log (seq, at_ms, kind, body, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(int(row.seq, "audit seq")?)
        .bind(int(row.at_ms, "audit time")?)
        .bind(row.kind.clone())
        .bind(row.body.clone())
        .bind(row.prev_hash.to_vec())
        .bind(row.hash.to_vec())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn audit_row(row: &AnyRow) -> Result<AuditRow, StoreError> {
    let seq = uint(row.try_get(0)?, "audit_log.seq")?;
    let name = format!("audit_log[{seq}]");
    Ok(AuditRow {
        seq,
        at_ms: uint(row.try_get(1)?, &name)?,
        kind: row.try_get(2)?,
        body: row.try_get(3)?,
        prev_hash: columns::array32(&row.try_get::<Vec<u8>, _>(4)?, &name)?,
        hash: columns::array32(&row.try_get::<Vec<u8>, _>(5)?, &name)?,
    })
}

fn dkg_id(row: &AnyRow, table: &str) -> Result<DkgId, StoreError> {
    Ok(DkgId { origin: columns::node(row.try_get(0)?, table)?, seq: columns::id_seq_back(row.try_get(1)?) })
}

fn presig_id(row: &AnyRow, table: &str) -> Result<PresigId, StoreError> {
    Ok(PresigId { origin: columns::node(row.try_get(0)?, table)?, seq: columns::id_seq_back(row.try_get(1)?) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_url_s_tls_parameters_are_what_the_driver_reads() {
        let url = "postgres://mpc:hunter2@db.internal:5432/n1?sslmode=verify-full&sslrootcert=/etc/mpc/pg-ca.pem";
        let tls = PostgresTls::of_url(url).unwrap();
        assert_eq!(tls, PostgresTls { mode: SslMode::VerifyFull, root_cert: Some("/etc/mpc/pg-ca.pem".into()) });
        assert!(tls.verifies_server());
        // sqlx's own options carry the same root certificate (it is not
        // exposed by a getter, so it is read from their debug form).
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        assert!(format!("{options:?}").contains("/etc/mpc/pg-ca.pem"), "{options:?}");

        let tls =
            PostgresTls::of_url("postgresql://mpc@db/n1?ssl-mode=require&ssl-ca=a.pem&sslrootcert=b.pem").unwrap();
        assert_eq!((tls.mode, tls.root_cert.as_deref()), (SslMode::Require, Some(Path::new("b.pem"))));
        assert!(!tls.verifies_server());
    }

    #[test]
    fn without_sslmode_the_driver_only_prefers_tls() {
        // Unless the environment says otherwise.
        if std::env::var_os("PGSSLMODE").is_none() {
            let tls = PostgresTls::of_url("postgres://mpc@127.0.0.1/n1").unwrap();
            assert_eq!(tls, PostgresTls { mode: SslMode::Prefer, root_cert: None });
        }
    }

    #[test]
    fn a_bad_sslmode_or_backend_is_refused_without_the_password() {
        let e = PostgresTls::of_url("postgres://mpc:hunter2@db/n1?sslmode=verify-everything").unwrap_err();
        assert!(matches!(e, StoreError::BadUrl { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(matches!(PostgresTls::of_url("sqlite:///tmp/x.db"), Err(StoreError::UnsupportedUrl { .. })));
    }
}
