-- Key confirmation (issue 11, item 8): members' signed statements about a
-- key generation attempt (a confirmation of the group key it gave them, or
-- an abandonment: "I hold no share of it and never will confirm it"), and
-- the adoption of a key once every member confirmed it. The store only
-- ever inserts these rows: deleting an adoption would turn the cluster key
-- back into a pending share, and deleting this node's own abandonment
-- would let it confirm an attempt it promised never to.

CREATE TABLE dkg_statements (
    origin   INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    member   INTEGER NOT NULL,
    claim    TEXT NOT NULL CHECK (claim IN ('confirmed', 'abandoned')),
    body     BLOB NOT NULL,
    written  INTEGER NOT NULL,
    PRIMARY KEY (origin, seq, member, claim)
);

CREATE TABLE key_adopted (
    origin   INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    written  INTEGER NOT NULL,
    PRIMARY KEY (origin, seq)
);

CREATE TRIGGER dkg_statements_no_update BEFORE UPDATE ON dkg_statements
BEGIN
    SELECT RAISE(ABORT, 'dkg statements are signed facts: a row can never change');
END;
CREATE TRIGGER dkg_statements_no_delete BEFORE DELETE ON dkg_statements
BEGIN
    SELECT RAISE(ABORT, 'dkg statements are signed facts: a row can never be deleted');
END;
CREATE TRIGGER key_adopted_no_update BEFORE UPDATE ON key_adopted
BEGIN
    SELECT RAISE(ABORT, 'a key adoption can never change');
END;
CREATE TRIGGER key_adopted_no_delete BEFORE DELETE ON key_adopted
BEGIN
    SELECT RAISE(ABORT, 'a key adoption can never be deleted');
END;
