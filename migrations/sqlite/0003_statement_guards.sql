-- Guards the triggers of 0001 left open (found by an outside review): a
-- consumed or discarded presignature row could still have its other
-- columns rewritten (0001's trigger watches `state` only), among them the
-- message and sigma of a consumption, which the two-messages check and the
-- restore-fencing read rely on. Such a row is now frozen whole: the store
-- never updates one. (SQLite has no TRUNCATE: a DELETE without WHERE runs
-- the row triggers when a table has any.)

CREATE TRIGGER presignatures_final_rows_frozen BEFORE UPDATE ON presignatures
    WHEN OLD.state IN ('consumed', 'discarded')
BEGIN
    SELECT RAISE(ABORT, 'presignature is consumed or discarded: its row can never change again');
END;
