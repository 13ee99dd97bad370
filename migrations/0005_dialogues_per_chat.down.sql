-- Back to one dialogue per user: group messages join the user's private history
-- (the rows are kept; only the chat they belonged to is forgotten).
DROP INDEX ix_messages_dialogue_live;
ALTER TABLE messages DROP COLUMN chat_id;
