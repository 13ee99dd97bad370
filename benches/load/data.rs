//! The data set the cells run on: `--users` users with 20 messages each, and the
//! database that holds it.
//!
//! Without `--keep-data`, a scratch database (`botdb_bench_<uuid>`) is created for the
//! run and dropped after it. With `--keep-data [NAME]`, a named database on
//! `BOTDB_BENCH_DATABASE_URL`'s server is reused when it holds exactly the set asked for
//! (its comment says the build finished, and the counts agree), built (again) otherwise,
//! and kept: building 1,000,000 users takes minutes, a run of cells seconds. The build
//! is `workload/populate.sql` in chunks of users on two connections, the indexes of
//! `messages` built once at the end. Between cells, [`reset`] undoes what a cell wrote
//! (`workload/reset.sql`), so that every cell starts from the set as it was built.

use std::sync::Arc;
use std::time::Instant;

use botdb::Config;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// A kept database holds something else than the data set asked for.
#[derive(Debug)]
pub struct Rebuild;

impl std::fmt::Display for Rebuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the kept database holds another data set")
    }
}

impl std::error::Error for Rebuild {}

/// The name of the database to keep the data set in, from `--keep-data [NAME]`: `None`
/// without it (a scratch database), `botdb_bench_data_<users>` when no name is given.
///
/// # Errors
///
/// With `--keep-data` on the throwaway cluster, which does not outlive the run.
pub fn kept_name(keep_data: Option<&str>, users: i64, throwaway: bool) -> anyhow::Result<Option<String>> {
    Ok(match keep_data {
        None => None,
        Some(_) if throwaway => {
            anyhow::bail!("--keep-data needs a server that outlives the run: set BOTDB_BENCH_DATABASE_URL")
        }
        Some("") => Some(format!("botdb_bench_data_{users}")),
        Some(n) => Some(n.to_string()),
    })
}

/// Creates the run's database on the server `conn` is connected to and returns its
/// name: the kept one (created when it does not exist yet), or a scratch one.
///
/// # Errors
///
/// A kept name that is not a plain identifier, or a failed statement.
pub async fn create_database(conn: &mut PgConnection, keep: Option<&str>) -> anyhow::Result<String> {
    match keep {
        Some(name) => {
            // A database name cannot be a bound parameter: only plain identifiers.
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 63
                    && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "--keep-data: {name:?} is not a plain database name ([a-z_][a-z0-9_]*)"
            );
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(name)
                    .fetch_one(&mut *conn)
                    .await?;
            if !exists {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(name.to_string())
        }
        None => {
            let name = format!("botdb_bench_{}", uuid::Uuid::new_v4().simple());
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut *conn)
                .await?;
            Ok(name)
        }
    }
}

/// Drops database `name` and creates it again, empty: a kept database that held
/// another set is built from scratch.
///
/// # Errors
///
/// A failed statement.
pub async fn recreate_database(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    for sql in [
        format!("DROP DATABASE {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Drops database `name` (the scratch database, after the run).
///
/// # Errors
///
/// A failed statement.
pub async fn drop_database(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(conn)
        .await?;
    Ok(())
}

/// Users per chunk of the populate (x 20 messages per statement).
const CHUNK_USERS: i64 = 25_000;

/// What marks a kept database as complete (set once its build finished).
fn data_set_comment(users: i64) -> String {
    format!("botdb bench data set: {users} users x 20 messages, complete")
}

/// The data set's bounds, for the reset: the largest populated `seq`.
pub struct DataSet {
    max_seq: i64,
}

/// Builds `users` users x 20 messages (or, with `keep`, finds them already built):
/// chunks of `populate.sql` on two connections, with the secondary indexes and the
/// primary key of `messages` built once at the end rather than maintained row by row,
/// triggers (the content-length trigger, the foreign-key checks) off where the role may
/// (the rows are made consistent), then `VACUUM (ANALYZE)` so that the visibility map is
/// set and the planner knows the sizes.
///
/// # Errors
///
/// [`Rebuild`] when a kept database holds another data set; a failed statement.
pub async fn populate(config: &Config, users: i64, keep: bool) -> anyhow::Result<DataSet> {
    let setup = Instant::now();
    // Connections of its own (no statement timeout: on 1,000,000 users a count, an
    // index or a VACUUM takes minutes).
    let opts = config.connect_options()?;
    let mut admin = opts.clone().connect().await?;
    sqlx::raw_sql("SET statement_timeout = 0")
        .execute(&mut admin)
        .await?;
    if keep {
        let (comment, n_users, n_settings, n_messages, max_id): (Option<String>, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT shobj_description((SELECT oid FROM pg_database WHERE datname = current_database()), 'pg_database'), \
                        (SELECT count(*) FROM users), (SELECT count(*) FROM user_settings), \
                        (SELECT count(*) FROM messages), (SELECT COALESCE(max(id), 0) FROM users)",
            )
            .fetch_one(&mut admin)
            .await?;
        if comment.as_deref() == Some(data_set_comment(users).as_str())
            && n_users == users
            && n_settings == users
            && n_messages == users * 20
            && max_id == users
        {
            eprintln!(
                "reusing the data set: {users} users x 20 messages (checked in {:.1} s)",
                setup.elapsed().as_secs_f64()
            );
            return Ok(DataSet { max_seq: users * 20 });
        }
        if n_users + n_messages > 0 {
            return Err(Rebuild.into());
        }
    }
    eprintln!("populating {users} users x 20 messages ...");
    // Two loaders.
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut c = opts.clone().connect().await?;
        sqlx::raw_sql(
            "SET statement_timeout = 0; SET maintenance_work_mem = '512MB'; SET synchronous_commit = off; \
                       SET max_parallel_maintenance_workers = 0",
        )
        .execute(&mut c)
        .await?;
        // Triggers off (superuser only): the rows are consistent by construction.
        if sqlx::raw_sql("SET session_replication_role = replica")
            .execute(&mut c)
            .await
            .is_err()
        {
            eprintln!("(not a superuser: the populate runs with triggers, slower)");
        }
        conns.push(c);
    }
    // The indexes of messages, built at the end (one pass, sorted) instead of row by row.
    let indexes: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname::text \
           FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype = 'p' \
          WHERE i.indrelid = 'messages'::regclass AND (NOT i.indisunique OR i.indisprimary)",
    )
    .fetch_all(&mut admin)
    .await?;
    sqlx::raw_sql("ALTER TABLE messages ALTER COLUMN seq RESTART WITH 1")
        .execute(&mut admin)
        .await?;
    for (index, _, constraint) in &indexes {
        let sql = match constraint {
            Some(c) => format!("ALTER TABLE messages DROP CONSTRAINT {c}"),
            None => format!("DROP INDEX {index}"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
    }
    let statements: Vec<String> = sql_statements(include_str!("../workload/populate.sql"));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let loaders = conns.into_iter().map(|mut c| {
        let (next, statements) = (next.clone(), statements.clone());
        async move {
            loop {
                let lo = next.fetch_add(CHUNK_USERS, std::sync::atomic::Ordering::Relaxed);
                if lo > users {
                    return anyhow::Ok(c);
                }
                let hi = (lo + CHUNK_USERS - 1).min(users);
                for sql in &statements {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(lo)
                        .bind(hi)
                        .execute(&mut c)
                        .await?;
                }
            }
        }
    });
    let conns = futures::future::try_join_all(loaders).await?;
    let loaded = setup.elapsed().as_secs_f64();
    // The indexes, two at a time; a primary key as a unique index, then attached.
    let jobs = Arc::new(std::sync::Mutex::new(indexes));
    let builders = conns.into_iter().map(|mut c| {
        let jobs = jobs.clone();
        async move {
            loop {
                let job = jobs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some((index, def, constraint)) = job else {
                    return anyhow::Ok(c);
                };
                match constraint {
                    Some(con) => {
                        let cols = def
                            .split_once(" USING btree ")
                            .map(|(_, cols)| cols.to_string())
                            .ok_or_else(|| anyhow::anyhow!("unexpected index definition {def}"))?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "CREATE UNIQUE INDEX {index} ON messages USING btree {cols}"
                        )))
                        .execute(&mut c)
                        .await?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "ALTER TABLE messages ADD CONSTRAINT {con} PRIMARY KEY USING INDEX {index}"
                        )))
                        .execute(&mut c)
                        .await?;
                    }
                    None => {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(def)).execute(&mut c).await?;
                    }
                }
            }
        }
    });
    let conns = futures::future::try_join_all(builders).await?;
    let indexed = setup.elapsed().as_secs_f64();
    for c in conns {
        let _ = c.close().await;
    }
    for table in ["messages", "users", "user_settings"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
            .execute(&mut admin)
            .await?;
    }
    if keep {
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut admin)
            .await?;
        let comment = data_set_comment(users);
        // COMMENT takes no parameters: the text is ours (digits and words), quoted.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "COMMENT ON DATABASE \"{name}\" IS '{}'",
            comment.replace('\'', "''")
        )))
        .execute(&mut admin)
        .await?;
    }
    let _ = admin.close().await;
    // The identity restarted at 1 for the build: the data set's seqs are 1 to 20 x users.
    let max_seq = users * 20;
    eprintln!(
        "populated {users} users x 20 messages in {:.1} s (rows {loaded:.1} s, indexes {:.1} s, vacuum {:.1} s)",
        setup.elapsed().as_secs_f64(),
        indexed - loaded,
        setup.elapsed().as_secs_f64() - indexed,
    );
    Ok(DataSet { max_seq })
}

/// The `;`-terminated statements of `script`, comment lines left out.
fn sql_statements(script: &str) -> Vec<String> {
    script
        .split(';')
        .map(|statement| {
            statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// Undoes what the cells since `since` wrote (`reset.sql`); `since` becomes now.
pub async fn reset(
    pool: &PgPool,
    since: &mut chrono::DateTime<chrono::Utc>,
    data: &DataSet,
) -> anyhow::Result<()> {
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    for sql in sql_statements(include_str!("../workload/reset.sql")) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        if sql.contains("$1") {
            q = q.bind(*since).bind(data.max_seq);
        }
        q.execute(pool).await?;
    }
    *since = now;
    Ok(())
}
