-- botdb's schema made distributable by user id (Citus), changing only what Citus
-- requires; see docs/scaling.md. An application migration: botdb's own stay as they
-- are, and a database that does not apply this one is unchanged.
--
-- Citus enforces a unique key only when it includes the distribution column (each
-- shard checks its own rows). users is distributed by id, messages and user_settings
-- by user_id, co-located with users. users_pkey (id), user_settings_pkey (user_id) and
-- both foreign keys (user_id -> users.id) already include it; messages_pkey (id) does
-- not, and becomes (id, user_id). Nothing references messages (no foreign key), and
-- botdb never names messages.id in ON CONFLICT. id leads the new key, so the lookups by
-- id alone (a keyed request's replay, repo::messages::by_ids) keep an index.
--
-- request_keys (key (scope, key), looked up by key) and erasures (no user id at all)
-- stay as they are: they become a coordinator-local and a reference table, not
-- distributed ones (docs/scaling.md says why). Citus allows no foreign key from a
-- coordinator-local table into a distributed one, so request_keys_user_id_fkey
-- (botdb's 0008) goes: on such a cluster, until request_keys is distributed with the
-- users (step 2 in docs/scaling.md), a key claimed while its user is erased can outlive
-- the erasure. messages.seq (bigint identity) stays.
--
-- On a large table, build the new key's index beforehand without blocking writes:
--     CREATE UNIQUE INDEX CONCURRENTLY messages_id_user_id_key ON messages (id, user_id);
-- and this migration finds it, and only swaps the keys (a brief ACCESS EXCLUSIVE
-- lock, no scan: both columns are NOT NULL already).

DO $$
DECLARE
    ix regclass := to_regclass('messages_id_user_id_key');
BEGIN
    IF ix IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = ix AND NOT indisvalid) THEN
        RAISE EXCEPTION 'messages_id_user_id_key exists but is INVALID (a CREATE INDEX CONCURRENTLY that failed): '
            'DROP INDEX CONCURRENTLY messages_id_user_id_key; then build it again, or let this migration build it';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i
                    WHERE i.indexrelid = ix AND i.indrelid = 'messages'::regclass
                      AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                      AND i.indnatts = 2
                      AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                          WHERE attrelid = 'messages'::regclass AND attname = 'id')
                      AND i.indkey[1] = (SELECT attnum FROM pg_attribute
                                          WHERE attrelid = 'messages'::regclass AND attname = 'user_id')) THEN
        RAISE EXCEPTION 'messages_id_user_id_key exists but is not UNIQUE (id, user_id) ON messages: '
            'drop it, or rename it, and run this migration again';
    END IF;
END
$$;

CREATE UNIQUE INDEX IF NOT EXISTS messages_id_user_id_key ON messages (id, user_id);

-- One statement: the table is never without a primary key. USING INDEX renames the
-- index to messages_pkey.
ALTER TABLE messages
    DROP CONSTRAINT messages_pkey,
    ADD CONSTRAINT messages_pkey PRIMARY KEY USING INDEX messages_id_user_id_key;

-- Not allowed from a coordinator-local table into a distributed one (see above).
ALTER TABLE request_keys DROP CONSTRAINT IF EXISTS request_keys_user_id_fkey;
