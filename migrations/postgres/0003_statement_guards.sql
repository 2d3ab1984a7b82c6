-- Guards the row triggers of 0001 left open (found by an outside review):
--
-- * TRUNCATE fires no row trigger, so `TRUNCATE audit_log` or
--   `TRUNCATE presignatures` emptied the tables the database must never
--   lose rows of. Statement-level triggers refuse it.
-- * A consumed or discarded presignature row could still have its other
--   columns rewritten (the message and sigma of a consumption, which the
--   two-messages check and the restore-fencing read rely on). Such a row is
--   now frozen whole: the store never updates one.

CREATE FUNCTION table_is_never_truncated() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is never truncated (its rows are the node''s memory of what it did)', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION table_is_never_truncated();
CREATE TRIGGER presignatures_no_truncate BEFORE TRUNCATE ON presignatures
    FOR EACH STATEMENT EXECUTE FUNCTION table_is_never_truncated();
CREATE TRIGGER votes_no_truncate BEFORE TRUNCATE ON votes
    FOR EACH STATEMENT EXECUTE FUNCTION table_is_never_truncated();
CREATE TRIGGER meta_no_truncate BEFORE TRUNCATE ON meta
    FOR EACH STATEMENT EXECUTE FUNCTION table_is_never_truncated();

CREATE FUNCTION final_presignature_rows_are_frozen() RETURNS trigger AS $$
BEGIN
    IF OLD.state IN ('consumed', 'discarded') THEN
        RAISE EXCEPTION 'presignature %-% is %: its row can never change again', OLD.origin, OLD.seq, OLD.state;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER presignatures_final_rows_frozen BEFORE UPDATE ON presignatures
    FOR EACH ROW EXECUTE FUNCTION final_presignature_rows_are_frozen();
