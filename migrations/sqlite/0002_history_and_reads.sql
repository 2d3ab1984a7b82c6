-- The same as migrations/postgres/0002_history_and_reads.sql, in SQLite's
-- dialect (json_extract, unhex: SQLite 3.41 or later, which sqlx bundles).

CREATE TABLE transaction_history (
    tx       BLOB NOT NULL,
    written  INTEGER NOT NULL,
    state    TEXT NOT NULL,
    failure  TEXT,
    at_ms    INTEGER NOT NULL,
    PRIMARY KEY (tx, written)
);

INSERT INTO transaction_history (tx, written, state, failure, at_ms)
SELECT unhex(json_extract(CAST(body AS TEXT), '$.tx')),
       seq,
       CASE WHEN kind = 'tx_accepted' THEN 'received' ELSE json_extract(CAST(body AS TEXT), '$.state') END,
       json_extract(CAST(body AS TEXT), '$.failure'),
       at_ms
FROM audit_log WHERE kind IN ('tx_accepted', 'tx_state');

CREATE INDEX transactions_by_acceptance ON transactions (accepted_at, tx);
CREATE INDEX transactions_by_state ON transactions (state, accepted_at, tx);
CREATE INDEX presignatures_by_transaction ON presignatures (consumed_tx);
