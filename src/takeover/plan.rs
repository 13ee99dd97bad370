//! What `botdb migrate` will do on the database it found ([`plan`], [`plan_with`]),
//! and the plan's text (`botdb migrate --dry-run` prints it, `botdb migrate` follows it).
//!
//! A plan is made before anything is changed, and only from what was recognised: the
//! repairs (batched), the normalising statements (one transaction), the migrations
//! recorded rather than applied, and the migrations applied, botdb's then the
//! application's. A schema botdb does not know, or rows its constraints would refuse,
//! are refused here, with the differences or the rows listed and the way out.
//! The statements the repairs run are here too, so that the plan says exactly what
//! `carry_out` does.

use std::fmt;

use serde::Serialize;
use sqlx::PgConnection;

use super::recognise::{Found, inspect};
use super::reference::{ContentLength, Reference};
use crate::catalog::Difference;
use crate::error::{Error, Result};
use crate::migrate::{MigrationStatus, Migrations, describe_version};

/// Rows per repair transaction.
pub const REPAIR_BATCH: i64 = 10_000;

/// botdb's migration whose schema a reference database has once taken over: 0003
/// (content length and history index), whatever state it was found in, so that the
/// long data changes of 0002 and 0003 (every datetime converted, every message's length
/// computed) are done the takeover's way: in short batches, and with no table rewrite.
pub const TAKEN_OVER_AT: i64 = 3;

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
            writeln!(f, "record:    {} (already matched)", describe_version(*v))?;
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
pub(super) const ADD_CONTENT_LENGTH: &str =
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS content_length INTEGER";

/// The reference's indexes, as botdb's 0001 and 0003 create them.
pub(super) const USERS_ID_INDEX: &str = "CREATE INDEX ix_users_id ON users (id)";
pub(super) const HISTORY_INDEX: &str =
    "CREATE INDEX ix_messages_user_deleted_created ON messages (user_id, deleted_at, created_at)";

/// `index` built without blocking writes.
pub(super) fn concurrently(index: &str) -> String {
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
