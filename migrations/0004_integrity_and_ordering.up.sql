-- What a careful DBA adds to the reference's schema. Everything here keeps the
-- reference's own models working unchanged: they set content_length themselves and
-- generate message ids client-side, and never name the columns added here.

-- 1. role is one of three words.
ALTER TABLE messages
    ADD CONSTRAINT ck_messages_role CHECK (role IN ('system', 'user', 'assistant'));

-- 2. content_length always equals the content's length in characters: a trigger
--    computes it on every write (whatever the client sent), and a CHECK states the
--    invariant even if triggers are disabled (session_replication_role = replica).
CREATE FUNCTION botdb_set_content_length() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.content_length := char_length(NEW.content);
    RETURN NEW;
END
$$;

CREATE TRIGGER trg_messages_content_length
    BEFORE INSERT OR UPDATE OF content, content_length ON messages
    FOR EACH ROW EXECUTE FUNCTION botdb_set_content_length();

UPDATE messages SET content_length = char_length(content)
    WHERE content_length IS DISTINCT FROM char_length(content);

ALTER TABLE messages
    ADD CONSTRAINT ck_messages_content_length CHECK (content_length = char_length(content));

-- 3. updated_at is refreshed by every UPDATE, whoever issues it.
CREATE FUNCTION botdb_touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER trg_users_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION botdb_touch_updated_at();

CREATE TRIGGER trg_user_settings_updated_at
    BEFORE UPDATE ON user_settings
    FOR EACH ROW EXECUTE FUNCTION botdb_touch_updated_at();

-- 4. A history length the bot can actually send.
ALTER TABLE user_settings
    ADD CONSTRAINT ck_user_settings_max_history_messages
    CHECK (max_history_messages BETWEEN 1 AND 1000);

-- 5. Stated ON DELETE behaviour. Messages are never physically removed, so deleting a
--    user who has any is refused (RESTRICT); settings belong to their user and go
--    with it (CASCADE).
ALTER TABLE messages
    DROP CONSTRAINT messages_user_id_fkey,
    ADD CONSTRAINT messages_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE RESTRICT;

ALTER TABLE user_settings
    DROP CONSTRAINT user_settings_user_id_fkey,
    ADD CONSTRAINT user_settings_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;

-- 6. Deterministic order: created_at is the transaction's start time, so two messages
--    written in one transaction tie. seq records insertion order and breaks the tie:
--    history is ORDER BY created_at DESC, seq DESC.
ALTER TABLE messages ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;

-- 7. Ids can also come from the server (psql, pgbench); botdb and the reference
--    generate uuid4 client-side.
ALTER TABLE messages ALTER COLUMN id SET DEFAULT gen_random_uuid();
