//! Carrying a plan out: `botdb migrate` on any database ([`migrate`],
//! [`migrate_with`]), the takeover's steps first when the plan has them.
//!
//! With the migrator's lock held throughout: the repairs, each batch its own short
//! transaction (retried when rows are locked), the reference's missing indexes built
//! concurrently, then one transaction that normalises the schema and records botdb's
//! migrations 0001-0003 as applied (its table locks taken in the bot's order, never
//! waiting while holding one), then the pending migrations as on any botdb database.
//! Each step can be run again after a failure: a repair only sets derived values, and
//! the normalising transaction leaves nothing of itself when it fails.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::Migrate;

use super::plan::{
    ADD_CONTENT_LENGTH, HISTORY_INDEX, Plan, REPAIR_BATCH, USERS_ID_INDEX, concurrently, plan_with,
};
use super::recognise::Found;
use super::reference::{ContentLength, Reference};
use crate::config::MigrateConfig;
use crate::error::{Error, Result};
use crate::migrate::{MIGRATOR, MigrationStatus, Migrations, lock, unlock};

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
    lock(conn, policy).await?;
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
    unlock(conn, result).await
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
