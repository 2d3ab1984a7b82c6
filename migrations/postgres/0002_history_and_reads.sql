-- Durable reads for the HTTP API (io-store/src/read.rs): every state a
-- transaction entered, indexes for listing transactions by acceptance time
-- and state, and for finding the presignatures consumed for a transaction.
-- Nothing existing changes meaning.

-- One row per state a transaction entered ('received' when accepted), with
-- the node's clock at the step that recorded it. `written` is that record's
-- audit-log sequence number, as in the other tables.
CREATE TABLE transaction_history (
    tx       BYTEA NOT NULL,
    written  BIGINT NOT NULL,
    state    TEXT NOT NULL,
    failure  TEXT,
    at_ms    BIGINT NOT NULL,
    PRIMARY KEY (tx, written)
);

-- Databases made before this table: the audit log holds every acceptance
-- and state change, with the step's time.
INSERT INTO transaction_history (tx, written, state, failure, at_ms)
SELECT decode(body ->> 'tx', 'hex'),
       seq,
       CASE WHEN kind = 'tx_accepted' THEN 'received' ELSE body ->> 'state' END,
       body ->> 'failure',
       at_ms
FROM (SELECT seq, kind, at_ms, convert_from(body, 'UTF8')::jsonb AS body
      FROM audit_log WHERE kind IN ('tx_accepted', 'tx_state')) AS changes;

CREATE INDEX transactions_by_acceptance ON transactions (accepted_at, tx);
CREATE INDEX transactions_by_state ON transactions (state, accepted_at, tx);
CREATE INDEX presignatures_by_transaction ON presignatures (consumed_tx);
