-- The reference's initial revision: users, messages, user_settings.
-- Datetimes are naive here, as they were in the reference; 0002 makes them
-- timezone-aware.

CREATE TABLE users (
    id         BIGINT    NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    updated_at TIMESTAMP NOT NULL DEFAULT now(),
    CONSTRAINT users_pkey PRIMARY KEY (id)
);

-- Redundant with the primary key; the reference's model declares it (index=True).
CREATE INDEX ix_users_id ON users (id);

CREATE TABLE messages (
    id         UUID      NOT NULL,
    user_id    BIGINT    NOT NULL,
    role       TEXT      NOT NULL,
    content    TEXT      NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    deleted_at TIMESTAMP,
    CONSTRAINT messages_pkey PRIMARY KEY (id),
    CONSTRAINT messages_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)
);

CREATE TABLE user_settings (
    user_id              BIGINT    NOT NULL,
    max_history_messages INTEGER   NOT NULL,
    system_prompt        TEXT,
    created_at           TIMESTAMP NOT NULL DEFAULT now(),
    updated_at           TIMESTAMP NOT NULL DEFAULT now(),
    CONSTRAINT user_settings_pkey PRIMARY KEY (user_id),
    CONSTRAINT user_settings_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)
);
