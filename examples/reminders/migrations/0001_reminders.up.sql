-- The reminders bot's own table, beside botdb's (applied after botdb's migrations, in
-- its own bookkeeping table, _app_migrations).
CREATE TABLE reminders (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    chat_id    BIGINT      NOT NULL,
    due_at     TIMESTAMPTZ NOT NULL,
    text       TEXT        NOT NULL CHECK (char_length(text) BETWEEN 1 AND 500),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A user's reminders, soonest first.
CREATE INDEX ix_reminders_user_due ON reminders (user_id, due_at);
