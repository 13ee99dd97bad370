-- One dialogue per user AND chat, so that what a user says in private never appears
-- in, nor feeds the model in, a group, and the reverse.
--
-- chat_id is the Telegram chat the message belongs to; 0 is the user's private chat
-- with the bot (Telegram gives a private chat the user's own id; botdb stores it as 0).
-- The default 0 keeps every existing row, and every row the reference's code writes
-- (it never names this column), in the private dialogue. A constant default makes the
-- ADD COLUMN instant: no table rewrite, no backfill, however many messages there are.
ALTER TABLE messages ADD COLUMN chat_id BIGINT NOT NULL DEFAULT 0;

-- One way to say "private": 0, never the user's own id.
ALTER TABLE messages
    ADD CONSTRAINT ck_messages_chat_id CHECK (chat_id <> user_id);

-- A dialogue's live history, newest first, exactly in the order botdb reads it:
-- WHERE user_id = $1 AND chat_id = $2 AND deleted_at IS NULL
-- ORDER BY created_at DESC, seq DESC LIMIT n. Partial: soft-deleted rows leave it.
-- ix_messages_user_deleted_created stays for the reference's own query (all chats).
CREATE INDEX ix_messages_dialogue_live
    ON messages (user_id, chat_id, created_at DESC, seq DESC)
    WHERE deleted_at IS NULL;
