-- Key confirmation (issue 11, item 8): members' signed statements about a
-- key generation attempt (a confirmation of the group key it gave them, or
-- an abandonment: "I hold no share of it and never will confirm it"), and
-- the adoption of a key once every member confirmed it. The store only
-- ever inserts these rows: deleting an adoption would turn the cluster key
-- back into a pending share, and deleting this node's own abandonment
-- would let it confirm an attempt it promised never to. Row triggers
-- refuse UPDATE and DELETE, statement triggers TRUNCATE.

CREATE TABLE dkg_statements (
    origin   BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    member   BIGINT NOT NULL,
    claim    TEXT NOT NULL CHECK (claim IN ('confirmed', 'abandoned')),
    body     BYTEA NOT NULL,
    written  BIGINT NOT NULL,
    PRIMARY KEY (origin, seq, member, claim)
);

CREATE TABLE key_adopted (
    origin   BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    written  BIGINT NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE FUNCTION key_confirmation_rows_are_kept() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% rows are signed facts: they can never change or be deleted', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER dkg_statements_kept BEFORE UPDATE OR DELETE ON dkg_statements
    FOR EACH ROW EXECUTE FUNCTION key_confirmation_rows_are_kept();
CREATE TRIGGER key_adopted_kept BEFORE UPDATE OR DELETE ON key_adopted
    FOR EACH ROW EXECUTE FUNCTION key_confirmation_rows_are_kept();
CREATE TRIGGER dkg_statements_no_truncate BEFORE TRUNCATE ON dkg_statements
    FOR EACH STATEMENT EXECUTE FUNCTION table_is_never_truncated();
CREATE TRIGGER key_adopted_no_truncate BEFORE TRUNCATE ON key_adopted
    FOR EACH STATEMENT EXECUTE FUNCTION table_is_never_truncated();
