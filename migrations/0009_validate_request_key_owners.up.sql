-- Validates 0008's foreign key in a transaction of its own: VALIDATE CONSTRAINT takes
-- `request_keys` SHARE UPDATE EXCLUSIVE and `users` ROW SHARE, which block no insert,
-- update or delete, for the scan of a key retention's worth of rows (millions on a busy
-- bot); in 0008's transaction the same scan would have held writes to both tables.
--
-- Keys claimed for a user who no longer exists, before 0008's constraint checked new
-- rows (the race it closes, or a keyed request for a user never registered), are
-- scrubbed first, as an erasure scrubs them: owned by nobody, no outcome. Row locks
-- only.
UPDATE request_keys k
   SET user_id = NULL, outcome = '{"erased": true}'
 WHERE k.user_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id);

ALTER TABLE request_keys VALIDATE CONSTRAINT request_keys_user_id_fkey;
