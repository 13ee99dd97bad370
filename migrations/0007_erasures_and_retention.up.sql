-- A dialogue's end of life: users erased on request (GDPR Art. 17), and soft-deleted
-- messages removed after a retention period.
--
-- erasures: the proof that an erasure happened, without what was erased. `subject` is
-- HMAC-SHA256(BOTDB_AUDIT_KEY, the user id in decimal): whoever holds the key and a user
-- id can find that user's erasures, nobody else can tell whose they are (Telegram ids
-- are few enough to hash them all, hence a key, never a plain hash). The counts say
-- how many rows of each kind went. No content, no raw id.
CREATE TABLE erasures (
    id           BIGINT      GENERATED ALWAYS AS IDENTITY,
    subject      BYTEA       NOT NULL,
    erased_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    messages     BIGINT      NOT NULL,
    settings     BIGINT      NOT NULL,
    request_keys BIGINT      NOT NULL,
    CONSTRAINT erasures_pkey PRIMARY KEY (id),
    CONSTRAINT ck_erasures_subject CHECK (octet_length(subject) = 32),
    CONSTRAINT ck_erasures_counts CHECK (messages >= 0 AND settings >= 0 AND request_keys >= 0)
);

CREATE INDEX ix_erasures_subject ON erasures (subject);

-- An erasure scrubs the user's request keys (kept, owned by nobody, so that a copy of
-- an update handled before it does not run again): found by user, not by a scan of a
-- day of updates. One more index entry per recorded key.
CREATE INDEX ix_request_keys_user ON request_keys (user_id);

-- The retention purge walks soft-deleted messages oldest deletion first, a small batch
-- at a time. Partial: a live message (every new row) has no entry, so appends do not
-- pay for it; a soft delete adds one entry (the UPDATE already writes the other
-- indexes). IF NOT EXISTS: on a large live table, build it beforehand without blocking
-- writes (CREATE INDEX CONCURRENTLY with this definition; see docs/retention.md), and
-- this finds it done.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
                WHERE indexrelid = to_regclass('ix_messages_deleted') AND NOT indisvalid) THEN
        RAISE EXCEPTION 'ix_messages_deleted exists but is INVALID (a CREATE INDEX CONCURRENTLY that failed): '
            'DROP INDEX CONCURRENTLY ix_messages_deleted; then build it again, or let this migration build it';
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS ix_messages_deleted
    ON messages (deleted_at)
    WHERE deleted_at IS NOT NULL;
