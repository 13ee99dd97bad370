-- 0008's schema: the same constraint, not yet validated.
ALTER TABLE request_keys DROP CONSTRAINT request_keys_user_id_fkey;

ALTER TABLE request_keys
    ADD CONSTRAINT request_keys_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL NOT VALID;
