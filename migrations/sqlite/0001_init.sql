-- mpc-custody node database, SQLite (the embedded default). The same tables
-- and rules as migrations/postgres/0001_init.sql, in SQLite's dialect:
-- BLOB for byte columns, triggers with RAISE(ABORT).

CREATE TABLE meta (
    name        TEXT PRIMARY KEY,
    int_value   INTEGER,
    blob_value  BLOB
);
INSERT INTO meta (name, int_value) VALUES ('next_seq', 0), ('epoch', 0), ('writer', 0);

CREATE TABLE safe_primes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    sealed  BLOB NOT NULL
);

CREATE TABLE dkg_sessions (
    origin   INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    written  INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE aux_info (
    origin   INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    sealed   BLOB NOT NULL,
    written  INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE key_shares (
    origin      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    public_key  BLOB NOT NULL,
    sealed      BLOB NOT NULL,
    written     INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE transactions (
    tx           BLOB PRIMARY KEY,
    psbt         BLOB NOT NULL,
    proposer     INTEGER NOT NULL,
    accepted_at  INTEGER NOT NULL,
    state        TEXT NOT NULL,
    failure      TEXT,
    signed_raw   BLOB,
    written      INTEGER NOT NULL
);

CREATE TABLE votes (
    tx        BLOB NOT NULL,
    voter     INTEGER NOT NULL,
    decision  TEXT NOT NULL,
    body      BLOB NOT NULL,
    own_at    INTEGER,
    written   INTEGER NOT NULL,
    PRIMARY KEY (tx, voter)
);

CREATE TABLE evidence (
    tx       BLOB NOT NULL,
    voter    INTEGER NOT NULL,
    body     BLOB NOT NULL,
    written  INTEGER NOT NULL,
    PRIMARY KEY (tx, voter)
);

CREATE TABLE presignatures (
    origin          INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    signers         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('generating', 'ready', 'consumed', 'discarded')),
    sealed_share    BLOB,
    public          BLOB,
    ready_epoch     INTEGER,
    consumed_tx     BLOB,
    consumed_input  INTEGER,
    message         BLOB,
    sigma           BLOB,
    consumed_epoch  INTEGER,
    discard_reason  TEXT,
    written         INTEGER NOT NULL,
    PRIMARY KEY (origin, seq),
    CHECK (state <> 'ready' OR sealed_share IS NOT NULL),
    CHECK (state = 'ready' OR sealed_share IS NULL),
    CHECK (state <> 'consumed' OR (consumed_tx IS NOT NULL AND message IS NOT NULL AND sigma IS NOT NULL))
);

CREATE TRIGGER presignatures_final_states BEFORE UPDATE OF state ON presignatures
    WHEN OLD.state IN ('consumed', 'discarded') AND NEW.state IS NOT OLD.state
BEGIN
    SELECT RAISE(ABORT, 'presignature is consumed or discarded: it can never change state again');
END;

CREATE TRIGGER presignatures_no_delete BEFORE DELETE ON presignatures
BEGIN
    SELECT RAISE(ABORT, 'presignature rows are never deleted (a deleted consumption could be forgotten)');
END;

CREATE TABLE presignature_announcements (
    origin     INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    from_node  INTEGER NOT NULL,
    signers    TEXT NOT NULL,
    public     BLOB NOT NULL,
    written    INTEGER NOT NULL,
    PRIMARY KEY (origin, seq, from_node)
);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    body       BLOB NOT NULL,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
