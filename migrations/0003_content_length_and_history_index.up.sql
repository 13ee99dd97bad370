-- The reference's example migration: content_length, and the composite index that
-- serves "this user's live history, newest first".

ALTER TABLE messages ADD COLUMN content_length INTEGER;
UPDATE messages SET content_length = char_length(content);
ALTER TABLE messages ALTER COLUMN content_length SET NOT NULL;

CREATE INDEX ix_messages_user_deleted_created ON messages (user_id, deleted_at, created_at);
