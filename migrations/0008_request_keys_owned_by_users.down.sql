-- Back to a bare owner number, 0 for an erased user's keys. The outcomes stripped of
-- their content stay so (a copy of a settings change answers with the settings as they
-- are, which the older botdb reads from `{"settings": true}` as a mismatch: it answers
-- such a copy Conflict, and changes nothing).
ALTER TABLE request_keys DROP CONSTRAINT request_keys_user_id_fkey;

UPDATE request_keys SET user_id = 0 WHERE user_id IS NULL;

ALTER TABLE request_keys ALTER COLUMN user_id SET NOT NULL;
