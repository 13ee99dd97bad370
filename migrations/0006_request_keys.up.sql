-- Requests that must happen at most once: each Telegram update a bot handled (Telegram
-- redelivers an update whenever its 200 was late or lost, possibly to another
-- instance), and each request an application sends with an idempotency key. The key is
-- recorded in the SAME transaction as what the request did, and the primary key makes
-- the database refuse a second record, across processes and machines: a copy finds the
-- key and answers with the recorded outcome instead of doing the work again.
--
-- scope: whose keys (`tg:<bot>` for a bot's updates, an application's own namespace);
-- key: the update id or the caller's key; user_id: whose request it was (keys are
-- removed with the user's data); outcome: what the request answered (message ids, a
-- count, settings), enough to answer a copy the same way.
CREATE TABLE request_keys (
    scope      TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    user_id    BIGINT      NOT NULL,
    outcome    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT request_keys_pkey PRIMARY KEY (scope, key),
    CONSTRAINT ck_request_keys_scope CHECK (char_length(scope) BETWEEN 1 AND 100),
    CONSTRAINT ck_request_keys_key CHECK (char_length(key) BETWEEN 1 AND 200)
);

-- The retention purge removes the oldest first, in small batches.
CREATE INDEX ix_request_keys_created ON request_keys (created_at);
