-- The audit rows are the proof that users were erased: refuse to drop them. To go back
-- anyway, move them elsewhere first (or delete them, knowingly), then roll back.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM erasures) THEN
        RAISE EXCEPTION 'erasures holds audit rows (the proof that users were erased): '
            'copy them elsewhere and empty the table before rolling back 0007';
    END IF;
END
$$;

-- Without the index the purge scans the table for each batch.
DROP INDEX IF EXISTS ix_messages_deleted;
DROP INDEX ix_request_keys_user;
DROP TABLE erasures;
