-- mpc-custody node database, PostgreSQL (DESIGN §4). One database per node:
-- key shares never leave the node that owns them. Secret columns (named
-- `sealed*`) hold XChaCha20-Poly1305 ciphertexts bound to their row's
-- identity; see io-store/src/sealing.rs. `written` is the audit-log sequence
-- number of the record that wrote the row, so recovery can replay rows in
-- the order they were made.

-- Single values: node binding, sequence reservation, fencing epoch,
-- master-key check value, and the row every writer locks first.
CREATE TABLE meta (
    name        TEXT PRIMARY KEY,
    int_value   BIGINT,
    blob_value  BYTEA
);
INSERT INTO meta (name, int_value) VALUES ('next_seq', 0), ('epoch', 0), ('writer', 0);

CREATE TABLE safe_primes (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    sealed  BYTEA NOT NULL
);

CREATE TABLE dkg_sessions (
    origin   BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    written  BIGINT NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE aux_info (
    origin   BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    sealed   BYTEA NOT NULL,
    written  BIGINT NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE key_shares (
    origin      BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    public_key  BYTEA NOT NULL,
    sealed      BYTEA NOT NULL,
    written     BIGINT NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TABLE transactions (
    tx           BYTEA PRIMARY KEY,
    psbt         BYTEA NOT NULL,
    proposer     BIGINT NOT NULL,
    accepted_at  BIGINT NOT NULL,
    state        TEXT NOT NULL,
    failure      TEXT,
    signed_raw   BYTEA,
    written      BIGINT NOT NULL
);

-- One vote per node per transaction: the database itself refuses a second.
-- No foreign key to transactions: the core records only votes for
-- transactions it holds, but the constraint would add nothing it relies on.
CREATE TABLE votes (
    tx        BYTEA NOT NULL,
    voter     BIGINT NOT NULL,
    decision  TEXT NOT NULL,
    body      BYTEA NOT NULL,
    own_at    BIGINT,
    written   BIGINT NOT NULL,
    PRIMARY KEY (tx, voter)
);

-- Two different signed votes of one member for one transaction.
CREATE TABLE evidence (
    tx       BYTEA NOT NULL,
    voter    BIGINT NOT NULL,
    body     BYTEA NOT NULL,
    written  BIGINT NOT NULL,
    PRIMARY KEY (tx, voter)
);

-- This node's own presignature shares. States move generating -> ready ->
-- consumed | discarded and never back; the share is erased when it leaves
-- ready. `ready_epoch` and `consumed_epoch` serve restore fencing.
CREATE TABLE presignatures (
    origin          BIGINT NOT NULL,
    seq             BIGINT NOT NULL,
    signers         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('generating', 'ready', 'consumed', 'discarded')),
    sealed_share    BYTEA,
    public          BYTEA,
    ready_epoch     BIGINT,
    consumed_tx     BYTEA,
    consumed_input  BIGINT,
    message         BYTEA,
    sigma           BYTEA,
    consumed_epoch  BIGINT,
    discard_reason  TEXT,
    written         BIGINT NOT NULL,
    PRIMARY KEY (origin, seq),
    CHECK (state <> 'ready' OR sealed_share IS NOT NULL),
    CHECK (state = 'ready' OR sealed_share IS NULL),
    CHECK (state <> 'consumed' OR (consumed_tx IS NOT NULL AND message IS NOT NULL AND sigma IS NOT NULL))
);

CREATE FUNCTION presignature_consumption_is_final() RETURNS trigger AS $$
BEGIN
    IF OLD.state = 'consumed' AND NEW.state IS DISTINCT FROM 'consumed' THEN
        RAISE EXCEPTION 'presignature %-% is consumed: it can never change state again', OLD.origin, OLD.seq;
    END IF;
    IF OLD.state = 'discarded' AND NEW.state IS DISTINCT FROM 'discarded' THEN
        RAISE EXCEPTION 'presignature %-% is discarded: it can never change state again', OLD.origin, OLD.seq;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER presignatures_final_states BEFORE UPDATE ON presignatures
    FOR EACH ROW EXECUTE FUNCTION presignature_consumption_is_final();

CREATE FUNCTION presignature_rows_are_kept() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'presignature rows are never deleted (a deleted consumption could be forgotten)';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER presignatures_no_delete BEFORE DELETE ON presignatures
    FOR EACH ROW EXECUTE FUNCTION presignature_rows_are_kept();

-- Other signers' announcements that their share of a presignature is ready.
CREATE TABLE presignature_announcements (
    origin     BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    from_node  BIGINT NOT NULL,
    signers    TEXT NOT NULL,
    public     BYTEA NOT NULL,
    written    BIGINT NOT NULL,
    PRIMARY KEY (origin, seq, from_node)
);

-- Append-only, hash-chained (io-store/src/audit.rs). The triggers refuse
-- updates and deletes; `mpc-node audit verify` detects what gets past them.
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    body       BYTEA NOT NULL,
    prev_hash  BYTEA NOT NULL,
    hash       BYTEA NOT NULL
);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
