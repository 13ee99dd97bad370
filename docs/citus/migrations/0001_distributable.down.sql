-- Back to botdb's own key: messages_pkey (id). Refused (nothing changes) when two
-- messages share an id, which the distributable key allows across users: the error
-- names the id; give one of them a new id, then roll back.
--
-- On a large table, build the index beforehand without blocking writes:
--     CREATE UNIQUE INDEX CONCURRENTLY messages_id_key ON messages (id);
-- and this finds it, and only swaps the keys.

DO $$
DECLARE
    ix regclass := to_regclass('messages_id_key');
BEGIN
    IF ix IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = ix AND NOT indisvalid) THEN
        RAISE EXCEPTION 'messages_id_key exists but is INVALID (a CREATE INDEX CONCURRENTLY that failed): '
            'DROP INDEX CONCURRENTLY messages_id_key; then build it again, or let this migration build it';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i
                    WHERE i.indexrelid = ix AND i.indrelid = 'messages'::regclass
                      AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                      AND i.indnatts = 1
                      AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                          WHERE attrelid = 'messages'::regclass AND attname = 'id')) THEN
        RAISE EXCEPTION 'messages_id_key exists but is not UNIQUE (id) ON messages: '
            'drop it, or rename it, and run this migration again';
    END IF;
END
$$;

-- The unique index build is the check (no second scan of the table).
DO $$
DECLARE
    detail text;
BEGIN
    CREATE UNIQUE INDEX IF NOT EXISTS messages_id_key ON messages (id);
EXCEPTION WHEN unique_violation THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RAISE EXCEPTION 'two messages share an id, which botdb''s key (id) refuses (%): give one of them a new id '
        '(UPDATE messages SET id = gen_random_uuid() WHERE id = ... AND user_id = ...), then roll back again', detail;
END
$$;

ALTER TABLE messages
    DROP CONSTRAINT messages_pkey,
    ADD CONSTRAINT messages_pkey PRIMARY KEY USING INDEX messages_id_key;

-- botdb's 0008/0009 foreign key again (keys of users who went meanwhile are scrubbed
-- first, as 0009 does).
UPDATE request_keys k
   SET user_id = NULL, outcome = '{"erased": true}'
 WHERE k.user_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id);

ALTER TABLE request_keys
    ADD CONSTRAINT request_keys_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL;
