//! The reference Python bot's schema, as its SQLAlchemy models and Alembic revisions
//! emit it (`../shared/spec/reference-database.md`): the takeover tests and the takeover
//! bench build its databases from these.

/// Alembic's bookkeeping table, as Alembic creates it.
pub const ALEMBIC: &str = "CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));";

/// Revision `e9844b552bfa` ("initial schema"): the models with naive datetimes.
pub const REV1: &str = "
CREATE TABLE users (
    id BIGSERIAL NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
    PRIMARY KEY (id));
CREATE INDEX ix_users_id ON users (id);
CREATE TABLE messages (
    id UUID NOT NULL, user_id BIGINT NOT NULL, role VARCHAR NOT NULL,
    content TEXT NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
    deleted_at TIMESTAMP WITHOUT TIME ZONE,
    PRIMARY KEY (id), FOREIGN KEY(user_id) REFERENCES users (id));
CREATE TABLE user_settings (
    user_id BIGINT NOT NULL, max_history_messages INTEGER NOT NULL, system_prompt TEXT,
    created_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(),
    PRIMARY KEY (user_id), FOREIGN KEY(user_id) REFERENCES users (id));";

/// Revision `b03417887b93` ("add timezone to datetime fields"), as Alembic's
/// `alter_column(type_=DateTime(timezone=True))` emits it (no USING: the session's time
/// zone, UTC, reads the naive values).
pub const TO_REV2: &str = "
ALTER TABLE users ALTER COLUMN created_at TYPE TIMESTAMP WITH TIME ZONE;
ALTER TABLE users ALTER COLUMN updated_at TYPE TIMESTAMP WITH TIME ZONE;
ALTER TABLE messages ALTER COLUMN created_at TYPE TIMESTAMP WITH TIME ZONE;
ALTER TABLE messages ALTER COLUMN deleted_at TYPE TIMESTAMP WITH TIME ZONE;
ALTER TABLE user_settings ALTER COLUMN created_at TYPE TIMESTAMP WITH TIME ZONE;
ALTER TABLE user_settings ALTER COLUMN updated_at TYPE TIMESTAMP WITH TIME ZONE;
UPDATE alembic_version SET version_num = 'b03417887b93';";

/// The reference's example migration: `content_length` (nullable: older rows keep NULL)
/// and the history index.
pub const CONTENT_LENGTH: &str = "
ALTER TABLE messages ADD COLUMN content_length INTEGER;
CREATE INDEX ix_messages_user_deleted_created ON messages (user_id, deleted_at, created_at);
UPDATE alembic_version SET version_num = '4c2a9e7f1d35';";

/// The models' own `create_all` (the spec's DDL verbatim), `ix_users_id` too, stamped
/// at Alembic's head.
pub const CREATE_ALL: &str = "
CREATE TABLE users (
    id BIGSERIAL NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    PRIMARY KEY (id));
CREATE INDEX ix_users_id ON users (id);
CREATE TABLE messages (
    id UUID NOT NULL, user_id BIGINT NOT NULL, role VARCHAR NOT NULL,
    content TEXT NOT NULL, content_length INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    deleted_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (id), FOREIGN KEY(user_id) REFERENCES users (id));
CREATE TABLE user_settings (
    user_id BIGINT NOT NULL, max_history_messages INTEGER NOT NULL, system_prompt TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    PRIMARY KEY (user_id), FOREIGN KEY(user_id) REFERENCES users (id));
CREATE INDEX ix_messages_user_deleted_created ON messages (user_id, deleted_at, created_at);";

/// `create_all` under SQLAlchemy's common naming convention (`pk_%(table_name)s`,
/// `fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s`).
pub const CREATE_ALL_NAMED: &str = "
CREATE TABLE users (
    id BIGSERIAL NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    CONSTRAINT pk_users PRIMARY KEY (id));
CREATE TABLE messages (
    id UUID NOT NULL, user_id BIGINT NOT NULL, role VARCHAR NOT NULL,
    content TEXT NOT NULL, content_length INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    deleted_at TIMESTAMP WITH TIME ZONE,
    CONSTRAINT pk_messages PRIMARY KEY (id),
    CONSTRAINT fk_messages_user_id_users FOREIGN KEY(user_id) REFERENCES users (id));
CREATE TABLE user_settings (
    user_id BIGINT NOT NULL, max_history_messages INTEGER NOT NULL, system_prompt TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    CONSTRAINT pk_user_settings PRIMARY KEY (user_id),
    CONSTRAINT fk_user_settings_user_id_users FOREIGN KEY(user_id) REFERENCES users (id));
CREATE INDEX ix_messages_user_deleted_created ON messages (user_id, deleted_at, created_at);";
