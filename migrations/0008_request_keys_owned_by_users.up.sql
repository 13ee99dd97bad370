-- A request key names a user who exists, or nobody.
--
-- Before this, `request_keys.user_id` was a bare number: a keyed write (a `/reset`, a
-- settings change) claimed its key without touching the user's row, so an erasure
-- running at the same moment could not see the uncommitted claim, scrubbed the user's
-- other keys, deleted the user, and the claim then committed a key naming the erased
-- user (with its outcome). A foreign key closes that at the root: inserting a key takes
-- the user's row `FOR KEY SHARE` (the check the database runs), as inserting a message
-- does, so a claim and an erasure's `FOR UPDATE` of the same row wait for each other;
-- the erasure scrubs what committed before it, and a claim after it finds no user. An
-- erased user's keys are owned by nobody: NULL (it was 0, which no foreign key allows).
--
-- Outcomes keep no content either: a settings change recorded the whole settings row,
-- the user's own system prompt included, for the key retention (24 h) after the user
-- changed or erased it. A copy now answers with the settings as they are.
--
-- Locks, in order: the outcome rewrite takes row locks only (the bot keeps writing);
-- then `request_keys` is held ACCESS EXCLUSIVE for the rest of this transaction, which
-- only changes the few erased keys (by index) and adds the constraint NOT VALID (no
-- scan; `users` SHARE ROW EXCLUSIVE at the very end). 0009 validates it without
-- blocking writes.
UPDATE request_keys SET outcome = '{"settings": true}' WHERE outcome ? 'settings';

ALTER TABLE request_keys ALTER COLUMN user_id DROP NOT NULL;

UPDATE request_keys SET user_id = NULL WHERE user_id = 0;

ALTER TABLE request_keys
    ADD CONSTRAINT request_keys_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL NOT VALID;
