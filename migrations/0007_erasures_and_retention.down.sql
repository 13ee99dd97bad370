-- Without them: no record of erasures (they stay done), and the purge has no index to
-- walk (each purge batch would scan the table).
DROP INDEX IF EXISTS ix_messages_deleted;
DROP TABLE erasures;
