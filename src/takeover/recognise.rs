//! Recognising what `botdb migrate` finds in a database ([`inspect`]): nothing of
//! botdb's, botdb's own bookkeeping, the reference bot's schema, or none of these.
//!
//! A database with the bot's tables and no botdb bookkeeping (`_sqlx_migrations`) is
//! compared with the reference's schema object by object, from the catalog, with the
//! definitions each of the reference's states may have (an object that differs from
//! all of them is a difference, listed; nothing is touched). Only the objects of the
//! reference's tables and botdb's are looked at: a table of the bot's own is not. A
//! recognised database is then counted (rows to repair, rows in conflict) so that the
//! plan can say what it will do before doing any of it.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgConnection;

use super::reference::{Conflict, ContentLength, Reference, Rename, Rows};
use crate::catalog::{Difference, Snapshot};
use crate::error::Result;
use crate::migrate::{self, MigrationStatus};

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
