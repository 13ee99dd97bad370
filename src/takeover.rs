//! Taking over a database the reference Python bot made (SQLAlchemy models, Alembic),
//! and the plan `botdb migrate` follows on any database.
//!
//! A database with the bot's tables and no botdb bookkeeping (`_sqlx_migrations`) is
//! recognised from its catalog, object by object, against the schema the reference's
//! models and migrations give (Alembic revision `e9844b552bfa`, naive timestamps, or
//! `b03417887b93`, timezone-aware; with or without its `content_length` migration,
//! whose column may hold NULLs for older rows). Anything else (a column added by hand,
//! a type changed) is refused with the differences listed, and nothing is touched.
//!
//! A recognised database is taken over in four steps:
//! 1. **data repairs**, in batches of [`REPAIR_BATCH`] rows, each its own short
//!    transaction (row locks only, nothing blocks readers or the reference's writes
//!    for long; idempotent, so an interrupted takeover can be run again):
//!    `content_length` computed in characters where it is NULL or wrong, NULL
//!    timestamps filled;
//! 2. **normalisation**, one transaction, catalog changes only (no table rewrite): the
//!    users' id sequence dropped (Telegram assigns ids), `role` from `varchar` to
//!    `text` (binary-coercible), timestamps and `content_length` made `NOT NULL`, the
//!    reference's indexes created if missing: the database is then exactly botdb's
//!    schema at migration 0001, 0002 or 0003;
//! 3. those migrations are **recorded** as applied (same transaction);
//! 4. the rest are **applied** as on any database, one transaction each.
//!
//! `alembic_version` is kept, untouched: the reference bot keeps working on the
//! database during a side-by-side move (botdb's schema accepts its writes), and its
//! Alembic still finds its head. Drop it once the Python bot is retired; `botdb check`
//! ignores it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::Migrate;

use crate::catalog::{Difference, Snapshot};
use crate::config::MigrateConfig;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::migrate::{self, MIGRATOR, MigrationStatus, Migrations};

/// Rows per repair transaction.
pub const REPAIR_BATCH: i64 = 10_000;

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

/// botdb's constraints that a reference database may break, checked before anything is
/// done: (rule, query listing the rows).
const CONFLICTS: &[(&str, &str)] = &[
    (
        "messages.role is one of system, user, assistant (ck_messages_role)",
        "SELECT id, user_id, role FROM messages WHERE role NOT IN ('system', 'user', 'assistant')",
    ),
    (
        "user_settings.max_history_messages is between 1 and 1000 (ck_user_settings_max_history_messages)",
        "SELECT user_id, max_history_messages FROM user_settings WHERE max_history_messages NOT BETWEEN 1 AND 1000",
    ),
    (
        "a message's user id is not 0 (0 is the private chat's id: ck_messages_chat_id)",
        "SELECT id, user_id FROM messages WHERE user_id = 0",
    ),
];

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

/// botdb's migration whose schema a reference database has once taken over: 0003
/// (content length and history index), whatever state it was found in, so that the
/// long data changes of 0002 and 0003 (every datetime converted, every message's length
/// computed) are done the takeover's way: in short batches, and with no table rewrite.
pub const TAKEN_OVER_AT: i64 = 3;

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

/// What `botdb migrate` finds in a database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Found {
    /// No table of botdb's: every migration applies.
    Empty,
    /// botdb's own bookkeeping: the usual migrations.
    Botdb,
    /// The reference bot's schema: taken over.
    Reference(Box<Reference>),
    /// botdb's tables without botdb's bookkeeping, in no state botdb knows.
    Unknown(Vec<Difference>),
}

/// What `botdb migrate` will do (and, with `--dry-run`, only says).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// What was found.
    pub found: Found,
    /// Data repairs, in batches, before any schema change.
    pub repairs: Vec<String>,
    /// The normalisation's statements (one transaction).
    pub normalise: Vec<String>,
    /// Migrations recorded as applied without running (the database already has them).
    pub record: Vec<i64>,
    /// Migrations that will be applied, botdb's then the application's (see
    /// [`MigrationStatus::set`]).
    pub apply: Vec<MigrationStatus>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Found::Empty => writeln!(f, "found: no botdb tables (a new database)")?,
            Found::Botdb => writeln!(f, "found: a botdb database")?,
            Found::Reference(r) => writeln!(f, "found: {r}")?,
            Found::Unknown(d) => writeln!(f, "found: an unknown schema ({} differences)", d.len())?,
        }
        for r in &self.repairs {
            writeln!(f, "repair:    {r}")?;
        }
        for s in &self.normalise {
            writeln!(f, "normalise: {s}")?;
        }
        for v in &self.record {
            writeln!(
                f,
                "record:    {} (already matched)",
                migrate::describe_version(*v)
            )?;
        }
        for s in &self.apply {
            writeln!(f, "apply:     {}", s.label())?;
        }
        if self.apply.is_empty() && self.record.is_empty() {
            writeln!(f, "nothing to do")?;
        }
        Ok(())
    }
}

/// The tables botdb's migrations create: one of them without `_sqlx_migrations` means a
/// database botdb did not make.
const BOTDB_TABLES: &[&str] = &["users", "messages", "user_settings", "request_keys", "erasures"];

/// The reference's tables, and Alembic's.
const REFERENCE_TABLES: &[&str] = &["users", "messages", "user_settings", "alembic_version"];

/// The live objects that belong to the reference's schema or to botdb's: those of the
/// reference's tables (columns, constraints, triggers, `indexes`), botdb's tables and
/// functions, and the users' id sequence. A table of the bot's own (another name) is
/// neither looked at nor touched.
fn relevant(live: &Snapshot, indexes: &[String]) -> BTreeMap<String, String> {
    live.objects
        .iter()
        .filter(|(key, _)| {
            let (kind, name) = key.split_once(' ').unwrap_or(("", key));
            let table = name.split_once('.').map_or(name, |(t, _)| t);
            match kind {
                "table" => BOTDB_TABLES.contains(&name) || REFERENCE_TABLES.contains(&name),
                "column" | "constraint" | "trigger" => {
                    BOTDB_TABLES.contains(&table) || REFERENCE_TABLES.contains(&table)
                }
                "index" => indexes.contains(key),
                "function" => name.starts_with("botdb_"),
                "relation" => name == "users_id_seq",
                _ => false,
            }
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Looks at the database and says what it is.
///
/// # Errors
/// Database errors while reading the catalog.
pub async fn inspect(conn: &mut PgConnection) -> Result<Found> {
    if migrate::history(conn)
        .await?
        .iter()
        .any(MigrationStatus::is_applied)
    {
        return Ok(Found::Botdb);
    }
    let live = Snapshot::read(conn).await?;
    let ours = BOTDB_TABLES
        .iter()
        .any(|t| live.objects.contains_key(&format!("table {t}")));
    if !ours {
        return Ok(Found::Empty);
    }
    // Indexes of the reference's tables (an index's key does not name its table).
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT 'index ' || indexname FROM pg_indexes
          WHERE schemaname = 'public' AND tablename = ANY($1)",
    )
    .bind(REFERENCE_TABLES)
    .fetch_all(&mut *conn)
    .await?;
    match recognise(&live, &indexes) {
        Err(differences) => Ok(Found::Unknown(differences)),
        Ok(mut reference) => {
            reference.alembic_revision = if live.objects.contains_key("table alembic_version") {
                sqlx::query_scalar("SELECT version_num FROM alembic_version LIMIT 1")
                    .fetch_optional(&mut *conn)
                    .await?
            } else {
                None
            };
            count(conn, &mut reference).await?;
            Ok(Found::Reference(Box::new(reference)))
        }
    }
}

/// One object of the reference schema: its key and the definitions accepted for it.
struct Expected {
    key: &'static str,
    accepted: Vec<String>,
    required: bool,
}

/// Recognises the reference's schema in `live`, or lists how it differs.
fn recognise(live: &Snapshot, indexes: &[String]) -> std::result::Result<Reference, Vec<Difference>> {
    let mut live = relevant(live, indexes);
    let tz = match live.get("column users.created_at").map(String::as_str) {
        Some(d) if d.starts_with("timestamp with time zone") => "timestamp with time zone",
        _ => "timestamp without time zone",
    };
    let time = |with_default: bool| -> Vec<String> {
        if with_default {
            let mut out = Vec::new();
            for null in ["NULL", "NOT NULL"] {
                for default in ["now()", "CURRENT_TIMESTAMP"] {
                    out.push(format!("{tz} {null} DEFAULT {default}"));
                }
            }
            out
        } else {
            vec![format!("{tz} NULL")]
        }
    };
    let exact = |d: &str| vec![d.to_string()];
    let req = |key, accepted| Expected {
        key,
        accepted,
        required: true,
    };
    let opt = |key, accepted| Expected {
        key,
        accepted,
        required: false,
    };
    let expected = vec![
        req("table users", exact("r")),
        req("table messages", exact("r")),
        req("table user_settings", exact("r")),
        req(
            "column users.id",
            vec![
                "bigint NOT NULL DEFAULT nextval('users_id_seq'::regclass)".into(),
                "bigint NOT NULL".into(),
            ],
        ),
        req("column users.created_at", time(true)),
        req("column users.updated_at", time(true)),
        req("column messages.id", exact("uuid NOT NULL")),
        req("column messages.user_id", exact("bigint NOT NULL")),
        req(
            "column messages.role",
            vec!["character varying NOT NULL".into(), "text NOT NULL".into()],
        ),
        req("column messages.content", exact("text NOT NULL")),
        opt(
            "column messages.content_length",
            vec!["integer NULL".into(), "integer NOT NULL".into()],
        ),
        req("column messages.created_at", time(true)),
        req("column messages.deleted_at", time(false)),
        req("column user_settings.user_id", exact("bigint NOT NULL")),
        req(
            "column user_settings.max_history_messages",
            exact("integer NOT NULL"),
        ),
        req("column user_settings.system_prompt", exact("text NULL")),
        req("column user_settings.created_at", time(true)),
        req("column user_settings.updated_at", time(true)),
        req(
            "index users_pkey",
            exact("CREATE UNIQUE INDEX users_pkey ON public.users USING btree (id)"),
        ),
        req(
            "index messages_pkey",
            exact("CREATE UNIQUE INDEX messages_pkey ON public.messages USING btree (id)"),
        ),
        req(
            "index user_settings_pkey",
            exact("CREATE UNIQUE INDEX user_settings_pkey ON public.user_settings USING btree (user_id)"),
        ),
        opt(
            "index ix_users_id",
            exact("CREATE INDEX ix_users_id ON public.users USING btree (id)"),
        ),
        opt(
            "index ix_messages_user_deleted_created",
            exact(
                "CREATE INDEX ix_messages_user_deleted_created ON public.messages USING btree (user_id, deleted_at, created_at)",
            ),
        ),
        req("constraint users.users_pkey", exact("PRIMARY KEY (id)")),
        req("constraint messages.messages_pkey", exact("PRIMARY KEY (id)")),
        req(
            "constraint messages.messages_user_id_fkey",
            exact("FOREIGN KEY (user_id) REFERENCES users(id)"),
        ),
        req(
            "constraint user_settings.user_settings_pkey",
            exact("PRIMARY KEY (user_id)"),
        ),
        req(
            "constraint user_settings.user_settings_user_id_fkey",
            exact("FOREIGN KEY (user_id) REFERENCES users(id)"),
        ),
        opt("relation users_id_seq", exact("S")),
        // Alembic's bookkeeping, kept as it is.
        opt("table alembic_version", exact("r")),
        opt(
            "column alembic_version.version_num",
            exact("character varying(32) NOT NULL"),
        ),
        opt(
            "index alembic_version_pkc",
            exact(
                "CREATE UNIQUE INDEX alembic_version_pkc ON public.alembic_version USING btree (version_num)",
            ),
        ),
        opt(
            "constraint alembic_version.alembic_version_pkc",
            exact("PRIMARY KEY (version_num)"),
        ),
    ];
    let renames = find_renames(&mut live, &expected);
    // The schema the live one would be, were it the reference's: each object as found
    // when its definition is an accepted one, as the reference has it otherwise.
    let mut shape = BTreeMap::new();
    for e in &expected {
        match live.get(e.key) {
            Some(found) if e.accepted.contains(found) => {
                shape.insert(e.key.to_string(), found.clone());
            }
            Some(_) => {
                shape.insert(e.key.to_string(), e.accepted[0].clone());
            }
            None if e.required => {
                shape.insert(e.key.to_string(), e.accepted[0].clone());
            }
            None => {}
        }
    }
    let live = Snapshot { objects: live };
    let differences = Snapshot { objects: shape }.diff(&live);
    if !differences.is_empty() {
        return Err(differences);
    }
    let has = |key: &str| live.objects.contains_key(key);
    let is = |key: &str, def: &str| live.objects.get(key).is_some_and(|d| d == def);
    Ok(Reference {
        alembic_revision: None,
        timezone_aware: tz == "timestamp with time zone",
        content_length: match live
            .objects
            .get("column messages.content_length")
            .map(String::as_str)
        {
            None => ContentLength::Absent,
            Some("integer NULL") => ContentLength::Nullable,
            Some(_) => ContentLength::NotNull,
        },
        id_sequence: is(
            "column users.id",
            "bigint NOT NULL DEFAULT nextval('users_id_seq'::regclass)",
        ),
        role_varchar: is("column messages.role", "character varying NOT NULL"),
        users_id_index: has("index ix_users_id"),
        history_index: has("index ix_messages_user_deleted_created"),
        renames,
        content_length_to_repair: 0,
        timestamps_to_fill: 0,
        rows: Rows::default(),
        conflicts: Vec::new(),
    })
}

/// Constraints the reference's schema has under PostgreSQL's default names, found in
/// `live` under another name with the same definition on the same table (a naming
/// convention): renamed in `live` (with a primary key's index) and returned.
fn find_renames(live: &mut BTreeMap<String, String>, expected: &[Expected]) -> Vec<Rename> {
    let mut out = Vec::new();
    for e in expected.iter().filter(|e| e.key.starts_with("constraint ")) {
        if live.contains_key(e.key) {
            continue;
        }
        let Some((table, name)) = e.key["constraint ".len()..].split_once('.') else {
            continue;
        };
        let prefix = format!("constraint {table}.");
        let expected_names: Vec<&str> = expected.iter().map(|x| x.key).collect();
        let candidates: Vec<String> = live
            .iter()
            .filter(|(k, d)| {
                k.starts_with(&prefix) && e.accepted.contains(d) && !expected_names.contains(&k.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect();
        let [old_key] = candidates.as_slice() else {
            continue;
        };
        let old = old_key[prefix.len()..].to_string();
        if let Some(def) = live.remove(old_key) {
            live.insert(e.key.to_string(), def);
        }
        if e.accepted[0].starts_with("PRIMARY KEY")
            && let Some(def) = live.remove(&format!("index {old}"))
        {
            live.insert(
                format!("index {name}"),
                def.replacen(&format!("INDEX {old} ON"), &format!("INDEX {name} ON"), 1),
            );
        }
        out.push(Rename {
            table: table.to_string(),
            from: old,
            to: name.to_string(),
        });
    }
    out
}

/// The repairs' row counts and the tables' sizes.
async fn count(conn: &mut PgConnection, r: &mut Reference) -> Result<()> {
    let (users, messages, settings): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM messages), (SELECT count(*) FROM user_settings)",
    )
    .fetch_one(&mut *conn)
    .await?;
    r.rows = Rows {
        users,
        messages,
        user_settings: settings,
    };
    if r.content_length == ContentLength::Absent {
        r.content_length_to_repair = messages;
    } else {
        r.content_length_to_repair = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE content_length IS DISTINCT FROM char_length(content)",
        )
        .fetch_one(&mut *conn)
        .await?;
    }
    for (rule, query) in CONFLICTS {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM ({query}) c")))
            .fetch_one(&mut *conn)
            .await?;
        if rows > 0 {
            r.conflicts.push(Conflict { rows, rule, query });
        }
    }
    r.timestamps_to_fill = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM users WHERE created_at IS NULL OR updated_at IS NULL)
              + (SELECT count(*) FROM messages WHERE created_at IS NULL)
              + (SELECT count(*) FROM user_settings WHERE created_at IS NULL OR updated_at IS NULL)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// The plan for the database `conn` is connected to, up to `target` (head for `None`),
/// for botdb's migrations alone.
///
/// # Errors
/// [`Error::Migration`] for a schema botdb does not know, listing the differences and
/// the way out; database errors.
pub async fn plan(conn: &mut PgConnection, target: Option<i64>) -> Result<Plan> {
    plan_with(conn, &Migrations::botdb(), target).await
}

/// The plan for the database `conn` is connected to, up to `target` (head for `None`):
/// botdb's part, then the application's pending migrations in `migrations` (when
/// `target` takes botdb's set to its head).
///
/// # Errors
/// As [`plan`]; and as [`Migrations::upgrade`] when the recorded migrations disagree
/// with the files (edited, unknown, out of order).
pub async fn plan_with(
    conn: &mut PgConnection,
    migrations: &Migrations,
    target: Option<i64>,
) -> Result<Plan> {
    let found = inspect(conn).await?;
    if let Found::Unknown(differences) = &found {
        return Err(unknown(differences));
    }
    if let Found::Reference(r) = &found
        && !r.conflicts.is_empty()
    {
        return Err(conflicting(r));
    }
    let mut plan = Plan {
        found: found.clone(),
        repairs: Vec::new(),
        normalise: Vec::new(),
        record: Vec::new(),
        apply: Vec::new(),
    };
    let history = migrations.history(conn).await?;
    migrations.verify(&history)?;
    let mut recorded_up_to = 0;
    if let Found::Reference(r) = &found {
        if r.content_length == ContentLength::Absent {
            plan.repairs.push(format!(
                "{ADD_CONTENT_LENGTH} (nullable first: no rewrite, a moment's lock)"
            ));
        }
        if r.content_length_to_repair > 0 {
            plan.repairs.push(format!(
                "compute content_length (characters) of {} messages where it is NULL or wrong, {REPAIR_BATCH} rows per transaction",
                r.content_length_to_repair
            ));
        }
        for (present, index) in [
            (r.users_id_index, USERS_ID_INDEX),
            (r.history_index, HISTORY_INDEX),
        ] {
            if !present {
                plan.repairs
                    .push(format!("{} (no write blocked)", concurrently(index)));
            }
        }
        if r.timestamps_to_fill > 0 {
            plan.repairs.push(format!(
                "fill {} NULL created_at / updated_at with the time of the takeover",
                r.timestamps_to_fill
            ));
        }
        plan.normalise = normalisation(r);
        recorded_up_to = TAKEN_OVER_AT;
        plan.record = (1..=recorded_up_to).collect();
    }
    plan.apply = migrations.to_apply(&history, target, recorded_up_to);
    Ok(plan)
}

fn unknown(differences: &[Difference]) -> Error {
    let listed: Vec<String> = differences.iter().map(|d| format!("  {d}")).collect();
    Error::Migration(format!(
        "this database has botdb's tables but neither botdb's bookkeeping nor the reference bot's schema \
         ({} differences from the reference's; nothing was changed):\n{}\n\
         the way out: undo the hand edits so that the schema is the reference's again, or move the data \
         into a new database (botdb migrate on an empty one, then INSERT ... SELECT the rows)",
        differences.len(),
        listed.join("\n")
    ))
}

fn conflicting(r: &Reference) -> Error {
    let listed: Vec<String> = r
        .conflicts
        .iter()
        .map(|c| {
            format!(
                "  {} row(s) break: {}\n    find them with: {}",
                c.rows, c.rule, c.query
            )
        })
        .collect();
    Error::Migration(format!(
        "found {r}, but some rows break botdb's constraints, and botdb will not change what they mean \
         (nothing was changed):\n{}\n\
         the way out: correct or remove those rows (in the reference bot's terms), then run botdb migrate again",
        listed.join("\n")
    ))
}

/// Adds the column when the reference's `content_length` migration never ran.
const ADD_CONTENT_LENGTH: &str = "ALTER TABLE messages ADD COLUMN IF NOT EXISTS content_length INTEGER";
/// The reference's indexes, as botdb's 0001 and 0003 create them.
const USERS_ID_INDEX: &str = "CREATE INDEX ix_users_id ON users (id)";
const HISTORY_INDEX: &str =
    "CREATE INDEX ix_messages_user_deleted_created ON messages (user_id, deleted_at, created_at)";

/// `index` built without blocking writes.
fn concurrently(index: &str) -> String {
    index.replacen("CREATE INDEX ", "CREATE INDEX CONCURRENTLY IF NOT EXISTS ", 1)
}

/// The statements (one transaction) that make a recognised reference schema, once
/// repaired, exactly botdb's at [`TAKEN_OVER_AT`]: catalog changes and one validating
/// scan per table, no table rewrite. Naive datetimes become `timestamptz` in the UTC
/// time zone, which PostgreSQL does without rewriting (the values were UTC: the same
/// instants as botdb's 0002 makes them).
fn normalisation(r: &Reference) -> Vec<String> {
    let mut out = vec!["SET LOCAL TimeZone = 'UTC'".to_string()];
    for rename in &r.renames {
        out.push(format!(
            "ALTER TABLE {} RENAME CONSTRAINT \"{}\" TO {}",
            rename.table,
            rename.from.replace('"', "\"\""),
            rename.to
        ));
    }
    if r.id_sequence {
        out.push("ALTER TABLE users ALTER COLUMN id DROP DEFAULT".into());
        out.push("DROP SEQUENCE IF EXISTS users_id_seq".into());
    }
    if r.content_length != ContentLength::NotNull {
        // Rows the reference wrote since the batches passed them.
        out.push(
            "UPDATE messages SET content_length = char_length(content) WHERE content_length IS NULL".into(),
        );
    }
    for (table, stamped, other) in [
        ("users", &["created_at", "updated_at"][..], &[][..]),
        ("messages", &["created_at"][..], &["deleted_at"][..]),
        ("user_settings", &["created_at", "updated_at"][..], &[][..]),
    ] {
        let mut alter = Vec::new();
        for c in stamped.iter().chain(other) {
            if !r.timezone_aware {
                alter.push(format!("ALTER COLUMN {c} TYPE timestamptz"));
            }
        }
        for c in stamped {
            alter.push(format!("ALTER COLUMN {c} SET DEFAULT now()"));
            alter.push(format!("ALTER COLUMN {c} SET NOT NULL"));
        }
        if table == "messages" {
            if r.role_varchar {
                alter.push("ALTER COLUMN role TYPE text".into());
            }
            if r.content_length != ContentLength::NotNull {
                alter.push("ALTER COLUMN content_length SET NOT NULL".into());
            }
        }
        out.push(format!("ALTER TABLE {table} {}", alter.join(", ")));
    }
    out
}

/// What [`migrate()`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Done {
    /// The plan it followed.
    pub plan: Plan,
    /// Rows whose `content_length` or timestamps the repairs set.
    pub repaired: u64,
    /// How long the repairs took (many short transactions).
    pub repair_time: Duration,
    /// How long the normalisation and record took (one transaction).
    pub normalise_time: Duration,
    /// The migrations applied afterwards (each its own transaction; see their
    /// `execution_ms`).
    pub applied: Vec<MigrationStatus>,
}

/// `botdb migrate` with botdb's migrations alone: see [`migrate_with`].
///
/// # Errors
/// As [`migrate_with`].
pub async fn migrate(conn: &mut PgConnection, target: Option<i64>, policy: &MigrateConfig) -> Result<Done> {
    migrate_with(conn, &Migrations::botdb(), target, policy).await
}

/// `botdb migrate`: takes a reference database over, then applies what is pending, up
/// to `target`: botdb's migrations, then the application's in `migrations` (when botdb's
/// set reaches its head), holding the migrator's lock throughout (a second `botdb
/// migrate` waits, then finds a botdb database). The takeover only ever concerns
/// botdb's tables: the application's migrations are applied after it, as on any botdb
/// database.
///
/// # Errors
/// As [`plan_with`] and [`Migrations::upgrade`]. A failed repair leaves the schema as it
/// was (repairs only ever set derived values, and can be run again); a failed
/// normalisation leaves nothing of itself.
pub async fn migrate_with(
    conn: &mut PgConnection,
    migrations: &Migrations,
    target: Option<i64>,
    policy: &MigrateConfig,
) -> Result<Done> {
    migrate::lock(conn, policy).await?;
    let result = async {
        let plan = plan_with(conn, migrations, target).await?;
        let mut done = Done {
            plan,
            repaired: 0,
            repair_time: Duration::ZERO,
            normalise_time: Duration::ZERO,
            applied: Vec::new(),
        };
        if let Found::Reference(r) = &done.plan.found {
            tracing::info!(found = %r, "taking over the reference bot's database");
            let started = Instant::now();
            done.repaired = repair(conn, r, policy).await?;
            build_indexes(conn, r, policy).await?;
            done.repair_time = started.elapsed();
            let started = Instant::now();
            normalise_and_record(conn, &done.plan, policy).await?;
            done.normalise_time = started.elapsed();
        }
        done.applied = migrations.upgrade_locked(conn, target, policy).await?;
        Ok(done)
    }
    .await;
    migrate::unlock(conn, result).await
}

type Statement = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs the statement `make` builds (autocommit: its own transaction), again after a
/// lock timeout, as the migrations are (up to `policy.attempts` times).
async fn retried(
    conn: &mut PgConnection,
    policy: &MigrateConfig,
    make: impl Fn() -> Statement,
) -> Result<u64> {
    let mut attempt = 1;
    loop {
        let result = make().execute(&mut *conn).await;
        match result.map_err(Error::from) {
            Ok(done) => return Ok(done.rows_affected()),
            Err(Error::Timeout { .. } | Error::Conflict(_)) if attempt < policy.attempts => {
                tracing::warn!(attempt, "taking over: rows were locked; retrying the batch");
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(6))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The data repairs, each batch its own transaction.
async fn repair(conn: &mut PgConnection, r: &Reference, policy: &MigrateConfig) -> Result<u64> {
    let mut repaired = 0;
    if r.content_length == ContentLength::Absent {
        retried(conn, policy, || sqlx::query(ADD_CONTENT_LENGTH)).await?;
    }
    if r.content_length_to_repair > 0 {
        // Walk the primary key in ranges of REPAIR_BATCH rows: each batch updates the
        // rows of its range whose length is NULL or wrong, and commits.
        let mut after: Option<uuid::Uuid> = None;
        loop {
            // The range's last id; none when fewer than a batch remain (the last range
            // is open-ended).
            let last: Option<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM messages WHERE $1::uuid IS NULL OR id > $1 ORDER BY id OFFSET $2 LIMIT 1",
            )
            .bind(after)
            .bind(REPAIR_BATCH - 1)
            .fetch_optional(&mut *conn)
            .await?;
            repaired += retried(conn, policy, move || {
                sqlx::query(
                    "UPDATE messages SET content_length = char_length(content) \
                      WHERE ($1::uuid IS NULL OR id > $1) AND ($2::uuid IS NULL OR id <= $2) \
                        AND content_length IS DISTINCT FROM char_length(content)",
                )
                .bind(after)
                .bind(last)
            })
            .await?;
            match last {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        tracing::info!(repaired, "taking over: content_length computed");
    }
    if r.timestamps_to_fill > 0 {
        for statement in [
            "UPDATE users SET created_at = COALESCE(created_at, now()), updated_at = COALESCE(updated_at, now()) \
              WHERE created_at IS NULL OR updated_at IS NULL",
            "UPDATE messages SET created_at = now() WHERE created_at IS NULL",
            "UPDATE user_settings SET created_at = COALESCE(created_at, now()), updated_at = COALESCE(updated_at, now()) \
              WHERE created_at IS NULL OR updated_at IS NULL",
        ] {
            repaired += retried(conn, policy, move || sqlx::query(statement)).await?;
        }
    }
    Ok(repaired)
}

/// The reference's indexes where missing, built concurrently (writes go on). A build
/// that failed leaves an invalid index behind: it is dropped, and the error returned.
/// The build waits for the transactions already running as long as they take (its own
/// lock blocks no reader or writer, so there is no reason to give up on it).
async fn build_indexes(conn: &mut PgConnection, r: &Reference, policy: &MigrateConfig) -> Result<()> {
    if r.users_id_index && r.history_index {
        return Ok(());
    }
    sqlx::raw_sql("SET lock_timeout = 0").execute(&mut *conn).await?;
    let result = build_missing_indexes(conn, r).await;
    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(format!("{}ms", policy.lock_timeout.as_millis().max(1)))
        .execute(&mut *conn)
        .await?;
    result
}

async fn build_missing_indexes(conn: &mut PgConnection, r: &Reference) -> Result<()> {
    for (present, index, name) in [
        (r.users_id_index, USERS_ID_INDEX, "ix_users_id"),
        (r.history_index, HISTORY_INDEX, "ix_messages_user_deleted_created"),
    ] {
        if present {
            continue;
        }
        let built = sqlx::raw_sql(sqlx::AssertSqlSafe(concurrently(index)))
            .execute(&mut *conn)
            .await;
        if let Err(e) = built {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {name}"
            )))
            .execute(&mut *conn)
            .await;
            return Err(e.into());
        }
    }
    Ok(())
}

/// The normalisation and the record of the migrations it makes true, in one
/// transaction (the bookkeeping table included: a failure leaves no trace), waiting at
/// most the lock timeout for each lock, and retried.
async fn normalise_and_record(conn: &mut PgConnection, plan: &Plan, policy: &MigrateConfig) -> Result<()> {
    use sqlx::Connection;
    let mut attempt = 1;
    loop {
        let mut tx = conn.begin().await?;
        let result: Result<()> = async {
            // The tables' locks first, in the order the bot's writes take them (a
            // message, then its user through the foreign key), and never waiting while
            // holding one: so no bot transaction can deadlock with the takeover.
            sqlx::raw_sql("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql("LOCK TABLE user_settings, users IN ACCESS EXCLUSIVE MODE NOWAIT")
                .execute(&mut *tx)
                .await?;
            tx.ensure_migrations_table(&MIGRATOR.table_name).await?;
            for statement in &plan.normalise {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut *tx)
                    .await?;
            }
            for version in &plan.record {
                let m = MIGRATOR
                    .iter()
                    .find(|m| m.version == *version && !m.migration_type.is_down_migration())
                    .ok_or_else(|| Error::Internal(format!("migration {version} is not embedded")))?;
                sqlx::query(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     VALUES ($1, $2, TRUE, $3, 0)",
                )
                .bind(m.version)
                .bind(&*m.description)
                .bind(&*m.checksum)
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(Error::Timeout { .. } | Error::Conflict(_)) if attempt < policy.attempts => {
                let _ = tx.rollback().await;
                tracing::warn!(attempt, "taking over: a table was busy; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(6))).await;
                attempt += 1;
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
    }
}

/// `Database::migrate` is here, not in `db`: it is the takeover's `migrate_with` on a
/// dedicated connection, and `db` sits below the schema layer.
impl Database {
    /// Applies every pending migration (`upgrade head`) on a dedicated connection and
    /// returns the ones this call applied (none when another process did it first):
    /// botdb's, then the application's from the directory the configuration names
    /// ([`Config::app_migrations`](crate::Config::app_migrations), `BOTDB_APP_MIGRATIONS`), if any.
    /// Each migration waits at most the configured lock timeout for its locks and is
    /// retried (see [`migrate::upgrade_with`]), so a live bot is delayed by at most that.
    /// A database the reference Python bot made is taken over first
    /// ([`takeover::migrate`](crate::takeover::migrate())).
    ///
    /// # Errors
    /// See [`migrate::upgrade`] and [`takeover::plan`](crate::takeover::plan) (a schema
    /// botdb does not know is refused, untouched); [`Error::Config`] naming
    /// `BOTDB_APP_MIGRATIONS` when the application's directory cannot be read or holds
    /// malformed files.
    pub async fn migrate(&self) -> Result<Vec<MigrationStatus>> {
        let migrations = match self.app_migrations_dir() {
            Some(dir) => Migrations::botdb().with_app_dir(dir).await?,
            None => Migrations::botdb(),
        };
        self.migrate_with(&migrations).await
    }

    /// [`migrate`](Self::migrate) with `migrations`: botdb's, and the application's as
    /// it gives them, e.g. embedded with its own `sqlx::migrate!()`
    /// ([`Migrations::with_app`]). The configuration's directory is not looked at.
    ///
    /// ```no_run
    /// # async fn f(db: botdb::Database) -> botdb::Result<()> {
    /// static APP: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
    /// let migrations = botdb::migrate::Migrations::botdb().with_app(&APP)?;
    /// db.migrate_with(&migrations).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`migrate`](Self::migrate) and [`Migrations::upgrade`].
    pub async fn migrate_with(&self, migrations: &Migrations) -> Result<Vec<MigrationStatus>> {
        let mut conn = migrate::connect(&self.pool().connect_options()).await?;
        let result = migrate_with(&mut conn, migrations, None, self.migrate_config())
            .await
            .map(|done| done.applied);
        // Closing the connection also releases the advisory lock if `upgrade` failed.
        let _ = sqlx::Connection::close(conn).await;
        // A read that needs only the floor must not reach a replica without the new
        // schema (or a data migration's rows).
        self.raise_floor().await;
        result
    }
}
