ALTER TABLE messages ALTER COLUMN id DROP DEFAULT;

ALTER TABLE messages DROP COLUMN seq;

ALTER TABLE user_settings
    DROP CONSTRAINT user_settings_user_id_fkey,
    ADD CONSTRAINT user_settings_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id);

ALTER TABLE messages
    DROP CONSTRAINT messages_user_id_fkey,
    ADD CONSTRAINT messages_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id);

ALTER TABLE user_settings DROP CONSTRAINT ck_user_settings_max_history_messages;

DROP TRIGGER trg_user_settings_updated_at ON user_settings;
DROP TRIGGER trg_users_updated_at ON users;
DROP FUNCTION botdb_touch_updated_at();

ALTER TABLE messages DROP CONSTRAINT ck_messages_content_length;
DROP TRIGGER trg_messages_content_length ON messages;
DROP FUNCTION botdb_set_content_length();

ALTER TABLE messages DROP CONSTRAINT ck_messages_role;
