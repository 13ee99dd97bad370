//! A reference database as botdb sees it once recognised: its Alembic revision, the
//! shape of each column the reference's history may have left (naive or aware
//! datetimes, `content_length` absent, nullable or not), the constraints it names its
//! own way, the rows to repair and the rows botdb's constraints would refuse.
//!
//! These are the facts the plan is made from and the report shows (`botdb migrate
//! --dry-run`, the benchmark): kept apart from how they are found (`recognise`) so
//! that reading a plan needs nothing of the catalog.

use std::fmt;

use serde::Serialize;

/// The reference's Alembic revisions botdb knows.
const ALEMBIC_REVISIONS: &[(&str, &str)] = &[
    ("e9844b552bfa", "initial schema"),
    ("b03417887b93", "add timezone to datetime fields"),
];

/// What `messages.content_length` looks like in a reference database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ContentLength {
    /// Not there: the reference's `content_length` migration never ran.
    Absent,
    /// There, nullable: rows written before it may hold NULL.
    Nullable,
    /// There, `NOT NULL` (the models' own `create_all`).
    NotNull,
}

/// A reference database, as recognised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reference {
    /// `alembic_version.version_num`, when the table exists.
    pub alembic_revision: Option<String>,
    /// Datetimes are `timestamptz` (revision 2) rather than naive (revision 1).
    pub timezone_aware: bool,
    /// The `content_length` column.
    pub content_length: ContentLength,
    /// `users.id` takes its default from `users_id_seq` (BIGSERIAL).
    pub id_sequence: bool,
    /// `messages.role` is `varchar` (as SQLAlchemy's `String` makes it).
    pub role_varchar: bool,
    /// The indexes present: `ix_users_id`, `ix_messages_user_deleted_created`.
    pub users_id_index: bool,
    /// See `users_id_index`.
    pub history_index: bool,
    /// Constraints under other names than PostgreSQL's defaults (a SQLAlchemy naming
    /// convention), renamed to botdb's.
    pub renames: Vec<Rename>,
    /// Rows counted while planning: messages whose `content_length` is NULL or wrong.
    pub content_length_to_repair: i64,
    /// Rows with a NULL `created_at` / `updated_at`, all tables together.
    pub timestamps_to_fill: i64,
    /// Rows in the three tables, for the report.
    pub rows: Rows,
    /// Rows botdb's constraints refuse and that no repair may change without changing
    /// their meaning (a role other than the three, a history length out of range): each
    /// with the query that finds them. The takeover is refused while there are any.
    pub conflicts: Vec<Conflict>,
}

/// Rows a botdb constraint refuses, found while planning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// How many rows.
    pub rows: i64,
    /// The constraint they break, in words.
    pub rule: &'static str,
    /// The query that lists them.
    pub query: &'static str,
}

/// A constraint renamed during the takeover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rename {
    /// Its table.
    pub table: String,
    /// Its name in the reference's database.
    pub from: String,
    /// botdb's name for it.
    pub to: String,
}

/// Row counts of the three tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rows {
    /// `users`.
    pub users: i64,
    /// `messages`.
    pub messages: i64,
    /// `user_settings`.
    pub user_settings: i64,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let revision = match &self.alembic_revision {
            Some(r) => match ALEMBIC_REVISIONS.iter().find(|(id, _)| id == r) {
                Some((id, name)) => format!("Alembic revision {id} ({name})"),
                None => format!(
                    "Alembic revision {r} (a revision of the reference's own; the schema is recognised)"
                ),
            },
            None => "no alembic_version table".into(),
        };
        write!(
            f,
            "the reference bot's schema: {revision}; {} datetimes; content_length {}; {} users, {} messages, {} settings",
            if self.timezone_aware {
                "timezone-aware"
            } else {
                "naive (UTC)"
            },
            match self.content_length {
                ContentLength::Absent => "absent".to_string(),
                ContentLength::Nullable =>
                    format!("nullable ({} rows to compute)", self.content_length_to_repair),
                ContentLength::NotNull => "present".to_string(),
            },
            self.rows.users,
            self.rows.messages,
            self.rows.user_settings,
        )
    }
}
