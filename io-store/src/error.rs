//! What can go wrong with a node's database. Messages name rows, tables and
//! ids, never secret bytes (sealed values are opaque, key material is never
//! formatted).

use crate::audit::ChainError;
use crate::coord::CoordError;
use crate::sealing::SealError;
use mpc_core::{NodeId, PresigId, TxId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {url}: use postgres://… (production) or sqlite://… (embedded)")]
    UnsupportedUrl { url: String },
    #[error("database URL {url} does not parse: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot open the database at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error(
        "the database's {setting} is {value}: a committed step could be lost in a power cut, so it is refused \
         (SQLite needs WAL and synchronous FULL, PostgreSQL fsync and synchronous_commit on)"
    )]
    NotDurable { setting: &'static str, value: String },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("this database belongs to {found}, not to {expected}: refusing to open it")]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("the database refused a second vote of {voter} for transaction {tx}")]
    DuplicateVote { tx: TxId, voter: NodeId },
    #[error("transaction {tx} is already recorded")]
    DuplicateTransaction { tx: TxId },
    #[error("presignature {id} cannot become {to}: it is {from} in the database")]
    PresigTransition { id: PresigId, from: String, to: &'static str },
    #[error("{what} names transaction {tx}, which the database does not hold")]
    UnknownTransaction { what: &'static str, tx: TxId },
    #[error("stored row {row} is malformed: {reason}")]
    Corrupt { row: String, reason: String },
    #[error("value out of range for the database: {0}")]
    OutOfRange(String),
    #[error("audit log: {0}")]
    Audit(#[from] ChainError),
    /// etcd could not be asked or did not answer, so a step that consumes
    /// a presignature was rolled back: nothing of it is durable
    /// ([`crate::Store::apply_fenced`]). Retryable once etcd answers.
    #[error("coordination unavailable, so restore fencing cannot proceed: {0}")]
    CoordinationUnavailable(#[source] CoordError),
    /// etcd holds a higher epoch for this node than its database: the
    /// database was restored from a backup (or an earlier consuming step's
    /// raise reached etcd and its commit did not). Its presignatures may
    /// have been used since; nothing more may be consumed from it before
    /// start-up fencing ([`crate::fence_at_startup`]) discards them all.
    #[error(
        "restore fencing required: etcd holds epoch {published_epoch} for this node, its database only \
         {database_epoch}; the step was rolled back. Restart the node: start-up fencing discards every \
         presignature the database holds"
    )]
    FencingRequired { database_epoch: u64, published_epoch: u64 },
    /// etcd holds no epoch for this node although its database consumed
    /// presignatures before: etcd lost its data, or is another cluster's.
    #[error(
        "etcd holds no restore-fencing epoch for this node although its database has consumed presignatures \
         (epoch {database_epoch}): etcd's data was lost or wiped, or this database belongs to another \
         cluster; the step was rolled back"
    )]
    EpochMissing { database_epoch: u64 },
}

impl StoreError {
    pub(crate) fn corrupt(row: impl Into<String>, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { row: row.into(), reason: reason.to_string() }
    }

    /// Whether this is the database refusing a duplicate key.
    pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
    }
}

/// Query parameters whose values are secrets (libpq's and sqlx's names).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile", "sslkey"];

/// The URL with any password replaced, for messages and logs: the one in
/// the user-info part (parsed by the `url` crate, so a password holding
/// `@` or `:` is hidden whole) and secret query parameters. A URL that does
/// not parse is shown only by its scheme, since where its password starts
/// is unknown.
pub(crate) fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw
            .split_once(':')
            .map(|(s, _)| s)
            .filter(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)));
        return format!("{}:<unparseable URL>", scheme.unwrap_or("?"));
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(k, _)| SECRET_PARAMS.contains(&k.as_ref())) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_ref()) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("postgres://mpc:hunter2@127.0.0.1:5432/n1"), "postgres://mpc:***@127.0.0.1:5432/n1");
        assert_eq!(redact_url("postgres://mpc@127.0.0.1/n1"), "postgres://mpc@127.0.0.1/n1");
        assert_eq!(redact_url("sqlite:///var/lib/mpc/n1.db"), "sqlite:///var/lib/mpc/n1.db");
    }

    /// The cases the hand-rolled splitter got wrong: an `@` inside the
    /// password, and a password passed as a query parameter.
    #[test]
    fn awkward_passwords_are_hidden_whole() {
        let shown = redact_url("postgres://mpc:hun@ter2@db.example:5432/n1");
        assert!(!shown.contains("hun") && !shown.contains("ter2"), "{shown}");
        assert!(shown.contains("db.example:5432/n1"), "{shown}");
        let shown = redact_url("postgres://mpc@db.example/n1?sslmode=verify-full&password=hunter2");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sslmode=verify-full"), "{shown}");
        let shown = redact_url("postgres://mpc:hunter2@[not a host/n1");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.starts_with("postgres:"), "{shown}");
    }
}
