DROP INDEX ix_messages_user_deleted_created;
ALTER TABLE messages DROP COLUMN content_length;
