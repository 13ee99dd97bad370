-- The turn pipeline of a bot that answers through Telegram's Bot API (TELEGRAM_BOT_TOKEN):
-- the webhook's 200 means "recorded", and the work behind it is rows.
--
-- inbox: each update recorded before the webhook answers, as Telegram sent it, until
-- its turn (or command) is done; then the row goes (the turn is in `messages`, the
-- update's key in `request_keys`). A dialogue's updates run one at a time, in update
-- order, on whichever instance holds the running one's lease; a lease that expires
-- (its owner died) is taken over. `attempts` counts the claims: the fencing token of
-- the one that may finish it. `payload` is what the user sent: it is erased and
-- exported with the user. No foreign key to `users`: the user is registered when the
-- update runs, as the webhook registers them without a token.
CREATE TABLE inbox (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY,
    scope       TEXT        NOT NULL,
    update_id   BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    chat_id     BIGINT      NOT NULL,
    payload     JSONB       NOT NULL,
    state       TEXT        NOT NULL DEFAULT 'pending',
    attempts    INTEGER     NOT NULL DEFAULT 0,
    lease_owner UUID,
    lease_until TIMESTAMPTZ,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at  TIMESTAMPTZ,
    CONSTRAINT inbox_pkey PRIMARY KEY (id),
    CONSTRAINT uq_inbox_update UNIQUE (scope, update_id),
    CONSTRAINT ck_inbox_state CHECK (state IN ('pending', 'running')),
    CONSTRAINT ck_inbox_lease CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_until IS NOT NULL)),
    CONSTRAINT ck_inbox_user_id CHECK (user_id > 0)
);

-- A dialogue's open updates in order: the claim reads each dialogue's first.
CREATE INDEX ix_inbox_dialogue ON inbox (user_id, chat_id, update_id);

-- outbox: each message to send, in the transaction that decided it (a reply split at
-- Telegram's 4,096 characters is several rows), sent in `id` order per chat; what
-- Telegram answered (`tg_message_id`) or refused (`outcome`) is recorded on it.
-- `user_id` is NULL for a message whose user is erased (the erasure's own
-- confirmation); an erasure removes the user's other rows.
CREATE TABLE outbox (
    id            BIGINT      GENERATED ALWAYS AS IDENTITY,
    user_id       BIGINT,
    chat_id       BIGINT      NOT NULL,
    text          TEXT        NOT NULL,
    note          TEXT        NOT NULL DEFAULT 'reply',
    state         TEXT        NOT NULL DEFAULT 'pending',
    attempts      INTEGER     NOT NULL DEFAULT 0,
    not_before    TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner   UUID,
    lease_until   TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at       TIMESTAMPTZ,
    tg_message_id BIGINT,
    outcome       TEXT,
    CONSTRAINT outbox_pkey PRIMARY KEY (id),
    CONSTRAINT ck_outbox_state CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    CONSTRAINT ck_outbox_text CHECK (char_length(text) BETWEEN 1 AND 4096),
    CONSTRAINT ck_outbox_lease CHECK ((state = 'sending') = (lease_owner IS NOT NULL AND lease_until IS NOT NULL))
);

-- Each chat's unsent messages in order: the sender reads each chat's first.
CREATE INDEX ix_outbox_open ON outbox (chat_id, id) WHERE state IN ('pending', 'sending');
-- The user's rows, for an erasure and an export.
CREATE INDEX ix_outbox_user ON outbox (user_id) WHERE user_id IS NOT NULL;
-- Sent and failed rows are kept for the key retention, then purged oldest first.
CREATE INDEX ix_outbox_done ON outbox (created_at) WHERE state IN ('sent', 'failed');
