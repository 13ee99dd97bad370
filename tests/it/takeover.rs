//! `botdb migrate` on the reference Python bot's databases: built here with the DDL its
//! SQLAlchemy models and Alembic revisions emit (`../shared/spec/reference-database.md`),
//! at each state it describes, with data written the way the reference writes it; then
//! taken over, and every row compared before and after. Also: a hand-edited schema and
//! rows botdb's constraints refuse are refused untouched, `--dry-run` changes nothing,
//! two takeovers at once make one.

use std::collections::BTreeMap;

use botdb::catalog::Snapshot;
use botdb::takeover::{self, Found};
use sqlx::{Connection, PgConnection, Row};

use crate::cli::{run, stderr, stdout};
use crate::helpers::TestDb;
use crate::reference_schema::*;

/// The states a reference database can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Revision 1: naive datetimes, no `content_length`.
    Rev1,
    /// Revision 2 (head): timestamptz, no `content_length`.
    Rev2,
    /// Revision 2, then the `content_length` example: NULL for the older rows.
    Rev2ContentLength,
    /// Revision 1, then the `content_length` example (naive datetimes).
    Rev1ContentLength,
    /// The models' `create_all`, stamped at head.
    CreateAll,
    /// `create_all` under a naming convention.
    CreateAllNamed,
}

impl State {
    fn has_content_length(self) -> bool {
        !matches!(self, State::Rev1 | State::Rev2)
    }
}

/// The contents the reference's users wrote: several scripts, emoji (one character,
/// several bytes), a long one, lines.
const CONTENTS: &[&str] = &[
    "hello",
    "héllo wörld",
    "Привет, как дела?",
    "🙂🙃 emoji are one character each",
    "line one\nline two\n\ttabbed",
    "a quote ' and a backslash \\",
];

/// Builds a reference database in `state` on `conn`, with `extra` messages of bulk data
/// on top of the hand-written rows.
pub(crate) async fn build(conn: &mut PgConnection, state: State, extra: i64) {
    sqlx::raw_sql("SET TIME ZONE 'UTC'")
        .execute(&mut *conn)
        .await
        .unwrap();
    match state {
        State::CreateAll | State::CreateAllNamed => {
            let ddl = if state == State::CreateAll {
                CREATE_ALL
            } else {
                CREATE_ALL_NAMED
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "{ddl} {ALEMBIC} INSERT INTO alembic_version VALUES ('b03417887b93');"
            )))
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        _ => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "{REV1} {ALEMBIC} INSERT INTO alembic_version VALUES ('e9844b552bfa');"
            )))
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }
    // Rows written at revision 1 (or by create_all's code).
    write_rows(
        conn,
        1,
        state == State::CreateAll || state == State::CreateAllNamed,
    )
    .await;
    if matches!(state, State::Rev2 | State::Rev2ContentLength) {
        sqlx::raw_sql(TO_REV2).execute(&mut *conn).await.unwrap();
    }
    if matches!(state, State::Rev2ContentLength | State::Rev1ContentLength) {
        sqlx::raw_sql(CONTENT_LENGTH).execute(&mut *conn).await.unwrap();
        // The code of that revision sets content_length on what it writes.
        write_rows(conn, 2, true).await;
    } else if !state.has_content_length() {
        write_rows(conn, 2, false).await;
    }
    if extra > 0 {
        let with_length = if state.has_content_length()
            && !matches!(state, State::Rev2ContentLength | State::Rev1ContentLength)
        {
            ", content_length"
        } else {
            ""
        };
        let length_value = if with_length.is_empty() {
            ""
        } else {
            ", char_length('bulk message ' || g)"
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO messages (id, user_id, role, content{with_length}, created_at)
             SELECT gen_random_uuid(), 1000 + g % 3, CASE g % 2 WHEN 0 THEN 'user' ELSE 'assistant' END,
                    'bulk message ' || g{length_value}, now() - make_interval(secs => g)
               FROM generate_series(1, {extra}) g"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// One generation of rows, as the reference writes them (its statements: the users'
/// ids are Telegram's, message ids uuid4 from Python, `content_length` when its model
/// has it, `len(content)` in characters), plus what hand-run scripts leave behind (NULL
/// timestamps, a wrong length).
async fn write_rows(conn: &mut PgConnection, generation: i64, content_length: bool) {
    let base = generation * 1000;
    for (u, user) in [base, base + 1, base + 2, base + 5_000_000_000]
        .into_iter()
        .enumerate()
    {
        if u == 2 {
            // A user row inserted by a script: no timestamps.
            sqlx::query("INSERT INTO users (id, created_at, updated_at) VALUES ($1, NULL, NULL)")
                .bind(user)
                .execute(&mut *conn)
                .await
                .unwrap();
        } else {
            sqlx::query("INSERT INTO users (id, created_at) VALUES ($1, '2024-03-01 12:00:00+00'::timestamptz + make_interval(days => $2))")
                .bind(user)
                .bind(u as i32)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        if u != 1 {
            sqlx::query("INSERT INTO user_settings (user_id, max_history_messages, system_prompt) VALUES ($1, $2, $3)")
                .bind(user)
                .bind(if u == 0 { 1 } else { 1000 })
                .bind(if u == 0 { None } else { Some(format!("you are bot {u}; répondez en français")) })
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        for (i, content) in CONTENTS.iter().enumerate() {
            let role = ["user", "assistant", "system"][i % 3];
            let deleted = i % 4 == 3;
            let null_created = u == 3 && i == 0;
            let statement = format!(
                "INSERT INTO messages (id, user_id, role, content{}, created_at, deleted_at)
                 VALUES ($1, $2, $3, $4{}, {}, CASE WHEN $5 THEN '2024-06-01 08:00:00+00'::timestamptz END)",
                if content_length { ", content_length" } else { "" },
                if content_length { ", $6" } else { "" },
                if null_created {
                    "NULL"
                } else {
                    "'2024-03-02 10:00:00.123456+00'::timestamptz + make_interval(mins => $7)"
                },
            );
            // One row with a length in bytes (a buggy script): a derived value, repaired.
            let length = if u == 1 && i == 1 {
                content.len()
            } else {
                content.chars().count()
            } as i32;
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(uuid::Uuid::new_v4())
                .bind(user)
                .bind(role)
                .bind(*content)
                .bind(deleted)
                .bind(length)
                .bind(i as i32)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    // A long message.
    let long = "ю".repeat(10_000);
    let statement = format!(
        "INSERT INTO messages (id, user_id, role, content{}) VALUES ($1, $2, 'assistant', $3{})",
        if content_length { ", content_length" } else { "" },
        if content_length { ", 10000" } else { "" },
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(uuid::Uuid::new_v4())
        .bind(base)
        .bind(long)
        .execute(&mut *conn)
        .await
        .unwrap();
}

const TIME: &str = "'YYYY-MM-DD HH24:MI:SS.US'";

/// Every row of the three tables, each column as text (datetimes as UTC wall time, for
/// naive and aware columns alike), in key order.
async fn rows(conn: &mut PgConnection) -> BTreeMap<&'static str, Vec<Vec<Option<String>>>> {
    sqlx::raw_sql("SET TIME ZONE 'UTC'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let queries = [
        (
            "users",
            format!("SELECT id::text, to_char(created_at, {TIME}), to_char(updated_at, {TIME}) FROM users ORDER BY id"),
        ),
        (
            "messages",
            format!(
                "SELECT id::text, user_id::text, role::text, content, to_char(created_at, {TIME}),
                        to_char(deleted_at, {TIME}) FROM messages ORDER BY id"
            ),
        ),
        (
            "user_settings",
            format!(
                "SELECT user_id::text, max_history_messages::text, system_prompt,
                        to_char(created_at, {TIME}), to_char(updated_at, {TIME}) FROM user_settings ORDER BY user_id"
            ),
        ),
    ];
    let mut out = BTreeMap::new();
    for (table, query) in queries {
        let rows = sqlx::query(sqlx::AssertSqlSafe(query))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        out.insert(
            table,
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<Option<String>, _>(i)).collect())
                .collect(),
        );
    }
    out
}

/// Asserts that `after` holds every row of `before`, unchanged, except that NULL
/// timestamps (`created_at` / `updated_at`, which botdb requires) are now filled.
fn assert_same_rows(
    before: &BTreeMap<&'static str, Vec<Vec<Option<String>>>>,
    after: &BTreeMap<&'static str, Vec<Vec<Option<String>>>>,
) {
    for (table, rows) in before {
        let found = &after[table];
        assert_eq!(rows.len(), found.len(), "{table}: row count");
        assert!(!rows.is_empty(), "{table}: the fixture has rows");
        // The columns that may go from NULL to filled: created_at, updated_at.
        let fillable: &[usize] = match *table {
            "users" => &[1, 2],
            "messages" => &[4],
            _ => &[3, 4],
        };
        for (b, a) in rows.iter().zip(found) {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                if bv.is_none() && fillable.contains(&i) {
                    assert!(av.is_some(), "{table} {b:?}: column {i} filled");
                } else {
                    assert_eq!(bv, av, "{table}: column {i} of {b:?}");
                }
            }
        }
    }
}

/// A snapshot of everything: the schema (with the bookkeeping table) and the rows.
async fn everything(
    conn: &mut PgConnection,
) -> (Snapshot, BTreeMap<&'static str, Vec<Vec<Option<String>>>>, bool) {
    let schema = Snapshot::read(conn).await.unwrap();
    let bookkeeping: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (schema, rows(conn).await, bookkeeping)
}

/// The reference bot's own statements still work on the database (a side-by-side move):
/// the ones its SQLAlchemy session sends, naming only its own columns.
async fn reference_still_works(conn: &mut PgConnection, content_length: bool) {
    let user = 777_i64;
    let (created, updated): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as("INSERT INTO users (id) VALUES ($1) RETURNING users.created_at, users.updated_at")
        .bind(user)
        .fetch_one(&mut *conn)
        .await
        .expect("the reference inserts a user");
    assert!(created.is_some() && updated.is_some());
    sqlx::query(
        "INSERT INTO user_settings (user_id, max_history_messages, system_prompt) VALUES ($1, $2, $3)",
    )
    .bind(user)
    .bind(20)
    .bind(None::<String>)
    .execute(&mut *conn)
    .await
    .expect("the reference inserts settings");
    for (role, content) in [("user", "ça va? 🙂"), ("assistant", "oui")] {
        let statement = if content_length {
            "INSERT INTO messages (id, user_id, role, content, content_length) VALUES ($1, $2, $3, $4, $5)"
        } else {
            "INSERT INTO messages (id, user_id, role, content) VALUES ($1, $2, $3, $4)"
        };
        sqlx::query(statement)
            .bind(uuid::Uuid::new_v4())
            .bind(user)
            .bind(role)
            .bind(content)
            .bind(content.chars().count() as i32)
            .execute(&mut *conn)
            .await
            .expect("the reference inserts a message");
    }
    sqlx::query(
        "UPDATE user_settings SET system_prompt=$1, updated_at=now() WHERE user_settings.user_id = $2",
    )
    .bind("be brief")
    .bind(user)
    .execute(&mut *conn)
    .await
    .expect("the reference updates settings");
    let history: Vec<(String, String)> = sqlx::query_as(
        "SELECT messages.role, messages.content FROM messages
          WHERE messages.user_id = $1 AND messages.deleted_at IS NULL
          ORDER BY messages.created_at DESC LIMIT $2",
    )
    .bind(user)
    .bind(20_i64)
    .fetch_all(&mut *conn)
    .await
    .expect("the reference reads history");
    assert_eq!(history.len(), 2);
    let soft: u64 = sqlx::query(
        "UPDATE messages SET deleted_at=now() WHERE messages.user_id = $1 AND messages.deleted_at IS NULL",
    )
    .bind(user)
    .execute(&mut *conn)
    .await
    .expect("the reference clears history")
    .rows_affected();
    assert_eq!(soft, 2);
    let lengths_right: bool = sqlx::query_scalar(
        "SELECT bool_and(content_length = char_length(content)) FROM messages WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(lengths_right);
}

/// The whole takeover of a database in `state`, through the `botdb` command.
async fn takes_over(state: State, extra: i64) {
    let t = TestDb::empty().await;
    let env = t.env();
    let mut conn = t.conn().await;
    build(&mut conn, state, extra).await;
    let before = rows(&mut conn).await;

    let o = run(&["migrate"], &env).await;
    let out = stdout(&o);
    assert!(o.status.success(), "{state:?}: {}\n{out}", stderr(&o));
    assert!(out.contains("found: the reference bot's schema"), "{out}");
    assert!(out.contains("took over the reference bot's database"), "{out}");
    assert!(out.contains("applied 0007"), "{out}");

    // Every row, unchanged in meaning.
    let after = rows(&mut conn).await;
    assert_same_rows(&before, &after);
    let (wrong, nulls): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE content_length <> char_length(content)),
                (SELECT count(*) FROM users WHERE created_at IS NULL OR updated_at IS NULL)
           FROM messages",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (wrong, nulls),
        (0, 0),
        "content_length computed in characters, timestamps filled"
    );
    let alembic: String = sqlx::query_scalar("SELECT version_num FROM alembic_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!alembic.is_empty(), "alembic_version is kept");

    // botdb's own reads see the reference's dialogues: user 1000's live history.
    let history =
        t.db.read(async |tx| botdb::repo::messages::history(&mut *tx, 1000, 1000).await)
            .await
            .unwrap();
    let live = before["messages"]
        .iter()
        .filter(|m| m[1].as_deref() == Some("1000") && m[5].is_none())
        .count();
    assert_eq!(
        history.len(),
        live.min(1000),
        "botdb reads the user's live messages"
    );

    let o = run(&["check"], &env).await;
    assert!(
        o.status.success(),
        "{state:?}: check after the takeover:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("kept       table alembic_version"),
        "{}",
        stdout(&o)
    );
    let o = run(&["migrate"], &env).await;
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("nothing to do"), "{}", stdout(&o));

    // Rollback as on any botdb database, and forward again.
    let o = run(&["rollback", "--steps", "3"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().filter(|l| l.starts_with("reverted")).count(),
        3
    );
    // At 0003 (botdb's take on the reference's schema) the reference's code works: the
    // way back to the Python bot.
    reference_still_works(&mut conn, true).await;
    let o = run(&["migrate"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["check"], &env).await;
    assert!(o.status.success(), "{}", stdout(&o));
    assert_same_rows(
        &before,
        &rows(&mut conn)
            .await
            .into_iter()
            .map(|(k, v)| {
                // The rows the reference just wrote are not in `before`.
                let v = v
                    .into_iter()
                    .filter(|r| r[0].as_deref() != Some("777") && r[1].as_deref() != Some("777"))
                    .collect();
                (k, v)
            })
            .collect(),
    );
    let _ = conn.close().await;
}

#[tokio::test]
async fn takes_over_revision_1_naive_datetimes_without_content_length() {
    takes_over(State::Rev1, 0).await;
}

#[tokio::test]
async fn takes_over_revision_2_without_content_length() {
    takes_over(State::Rev2, 0).await;
}

#[tokio::test]
async fn takes_over_revision_2_with_content_length_null_for_older_rows_in_batches() {
    // More rows than one repair batch, all with a NULL length.
    takes_over(State::Rev2ContentLength, 2 * takeover::REPAIR_BATCH + 7).await;
}

#[tokio::test]
async fn takes_over_revision_1_with_content_length() {
    takes_over(State::Rev1ContentLength, 0).await;
}

#[tokio::test]
async fn takes_over_create_all_stamped_at_head() {
    takes_over(State::CreateAll, 100).await;
}

#[tokio::test]
async fn takes_over_create_all_under_a_naming_convention() {
    takes_over(State::CreateAllNamed, 0).await;
}

#[tokio::test]
async fn the_reference_keeps_working_beside_botdb_after_a_takeover() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev2, 0).await;
    let o = run(&["migrate"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // Revision 2's code never names content_length: botdb's trigger computes it.
    reference_still_works(&mut conn, false).await;
    let _ = conn.close().await;
}

#[tokio::test]
async fn a_hand_edited_schema_is_refused_untouched() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev2ContentLength, 0).await;
    sqlx::raw_sql(
        "ALTER TABLE users ADD COLUMN language TEXT;
         ALTER TABLE messages ALTER COLUMN role TYPE VARCHAR(20);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let before = everything(&mut conn).await;
    for args in [&["migrate"][..], &["migrate", "--dry-run"][..]] {
        let o = run(args, &t.env()).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}{err}", stdout(&o));
        assert!(
            err.contains("unexpected column users.language: text NULL"),
            "{err}"
        );
        assert!(
            err.contains("changed    column messages.role: expected character varying NOT NULL, found character varying(20) NOT NULL"),
            "{err}"
        );
        assert!(
            err.contains("nothing was changed") && err.contains("the way out"),
            "{err}"
        );
    }
    // The library refuses it the same way, and its plain migrator points at the takeover.
    let e = t.db.migrate().await.unwrap_err();
    assert!(matches!(e, botdb::Error::Migration(_)), "{e}");
    let e = botdb::migrate::upgrade(&mut conn).await.unwrap_err();
    assert!(e.to_string().contains("botdb migrate"), "{e}");
    assert_eq!(everything(&mut conn).await, before, "nothing was touched");
    let _ = conn.close().await;
}

#[tokio::test]
async fn rows_botdb_would_refuse_are_listed_and_nothing_is_touched() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev2, 0).await;
    sqlx::raw_sql(
        "INSERT INTO messages (id, user_id, role, content) VALUES (gen_random_uuid(), 1000, 'tool', '{}');
         UPDATE user_settings SET max_history_messages = 5000 WHERE user_id = 1000;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let before = everything(&mut conn).await;
    let o = run(&["migrate"], &t.env()).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("1 row(s) break: messages.role is one of system, user, assistant"),
        "{err}"
    );
    assert!(
        err.contains("1 row(s) break: user_settings.max_history_messages is between 1 and 1000"),
        "{err}"
    );
    assert!(
        err.contains("WHERE role NOT IN ('system', 'user', 'assistant')"),
        "{err}"
    );
    assert_eq!(everything(&mut conn).await, before, "nothing was touched");
    let _ = conn.close().await;
}

#[tokio::test]
async fn dry_run_prints_the_takeover_plan_and_changes_nothing() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev2ContentLength, 0).await;
    let before = everything(&mut conn).await;
    let o = run(&["migrate", "--dry-run"], &t.env()).await;
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for expected in [
        "found: the reference bot's schema: Alembic revision 4c2a9e7f1d35",
        "content_length nullable (",
        "repair:    compute content_length (characters) of ",
        "repair:    fill ",
        "normalise: ALTER TABLE users ALTER COLUMN id DROP DEFAULT",
        "ALTER COLUMN content_length SET NOT NULL",
        "normalise: UPDATE messages SET content_length = char_length(content) WHERE content_length IS NULL",
        "record:    0001",
        "record:    0003",
        "apply:     0004 integrity and ordering",
        "apply:     0006 request keys",
        "apply:     0007 erasures and retention",
        "dry run: nothing was changed",
    ] {
        assert!(out.contains(expected), "{expected:?} in:\n{out}");
    }
    assert!(!out.contains("record:    0004"), "{out}");
    assert_eq!(everything(&mut conn).await, before, "nothing was changed");
    let _ = conn.close().await;
}

#[tokio::test]
async fn dry_run_on_ordinary_databases_lists_what_would_apply_and_changes_nothing() {
    // An empty database: every migration.
    let t = TestDb::empty().await;
    let o = run(&["migrate", "--dry-run"], &t.env()).await;
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.starts_with("found: no botdb tables"), "{out}");
    let head = botdb::migrate::head().unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("apply:")).count() as i64,
        head,
        "{out}"
    );
    let mut conn = t.conn().await;
    assert!(
        Snapshot::read(&mut conn).await.unwrap().objects.is_empty(),
        "still empty"
    );

    // A botdb database at 0003: the rest.
    let o = run(&["migrate", "--to", "3"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let before = everything(&mut conn).await;
    let o = run(&["migrate", "--dry-run"], &t.env()).await;
    let out = stdout(&o);
    assert!(out.starts_with("found: a botdb database"), "{out}");
    let listed: Vec<&str> = out.lines().filter(|l| l.starts_with("apply:")).collect();
    assert_eq!(listed.len() as i64, head - 3, "{out}");
    assert!(listed[0].contains("0004"), "{out}");
    assert_eq!(everything(&mut conn).await, before);
    let current = botdb::migrate::current(&mut conn).await.unwrap().unwrap();
    assert_eq!(current.version, 3);
    // And up to date: nothing.
    let o = run(&["migrate"], &t.env()).await;
    assert!(o.status.success());
    let o = run(&["migrate", "--dry-run"], &t.env()).await;
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));
    let _ = conn.close().await;
}

/// Polls until backend `pid` is waiting for a lock while running a statement that
/// starts with `statement`.
async fn waits_in(observer: &mut PgConnection, pid: i32, statement: &str) {
    let waiting = crate::helpers::eventually(std::time::Duration::from_secs(60), async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT wait_event_type = 'Lock' AND query LIKE $2 || '%' FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .bind(statement)
        .fetch_optional(&mut *observer)
        .await
        .unwrap()
        .unwrap_or(false)
    })
    .await;
    assert!(waiting, "the takeover never waited in {statement}");
}

/// The index build backend `pid` reports (`pg_stat_progress_create_index`), if any:
/// its command and phase.
async fn building(observer: &mut PgConnection, pid: i32) -> Option<(String, String)> {
    sqlx::query_as(
        "SELECT command, phase FROM pg_stat_progress_create_index \
          WHERE pid = $1 AND relid = 'messages'::regclass",
    )
    .bind(pid)
    .fetch_optional(observer)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_takeover_itself_rewrites_no_table_and_builds_indexes_concurrently() {
    // The oldest state: naive datetimes, no content_length, no history index.
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev1, 5000).await;
    let files = async |conn: &mut PgConnection| -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT relname::text, relfilenode::bigint FROM pg_class
              WHERE relname IN ('users', 'messages', 'user_settings') ORDER BY relname",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap()
    };
    let before = files(&mut conn).await;
    let rows_before = rows(&mut conn).await;
    let takeover_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut observer = t.conn().await;

    // The bot writes while the history index is built, and a write of the bot is under
    // way when the build starts. Ordered without sleeps: the repairs end by filling user
    // 1002's NULL timestamps (after the content_length column was added, which no
    // transaction on messages may overlap), so holding that row stops the takeover
    // there; a bot transaction that wrote a message then stays open, which a concurrent
    // build waits for ("waiting for writers before build") and the writes go on meanwhile.
    let mut users_conn = t.conn().await;
    let mut user_row = users_conn.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = 1002 FOR UPDATE")
        .execute(&mut *user_row)
        .await
        .unwrap();
    // Long enough for the takeover to wait for the row the test holds (not a limit on
    // anything measured).
    let policy = botdb::MigrateConfig {
        lock_timeout: std::time::Duration::from_secs(60),
        ..botdb::MigrateConfig::default()
    };
    let takeover = tokio::spawn(async move {
        let done = takeover::migrate(&mut conn, Some(takeover::TAKEN_OVER_AT), &policy).await;
        (conn, done)
    });
    waits_in(&mut observer, takeover_pid, "UPDATE users SET created_at").await;
    let mut open_conn = t.conn().await;
    let mut open_write = open_conn.begin().await.unwrap();
    let insert = "INSERT INTO messages (id, user_id, role, content, created_at) \
                  VALUES (gen_random_uuid(), 1000, 'user', $1, now())";
    sqlx::query(insert)
        .bind("written during the build: open when it started")
        .execute(&mut *open_write)
        .await
        .unwrap();
    user_row.commit().await.unwrap();
    waits_in(&mut observer, takeover_pid, "CREATE INDEX").await;

    // The bot's writes, each committed on its own. A write the build blocked would wait
    // for it, and the build waits for `open_write`, which ends only after these: the
    // lock timeout turns that endless wait into a failure (any finite one would do).
    let mut writer = t.conn().await;
    sqlx::raw_sql("SET lock_timeout = '5s'")
        .execute(&mut writer)
        .await
        .unwrap();
    for i in 0..20 {
        sqlx::query(insert)
            .bind(format!("written during the build {i}"))
            .execute(&mut writer)
            .await
            .unwrap_or_else(|e| panic!("write {i} waited for the index build: {e}"));
    }
    // Committed while the build was in progress: it still is, concurrently.
    assert_eq!(
        building(&mut observer, takeover_pid).await,
        Some((
            "CREATE INDEX CONCURRENTLY".to_string(),
            "waiting for writers before build".to_string()
        )),
        "the history index is being built while the writes committed"
    );
    open_write.commit().await.unwrap();
    let (mut conn, done) = takeover.await.unwrap();
    let done = done.unwrap();
    assert!(matches!(done.plan.found, Found::Reference(_)));
    assert!(
        done.plan
            .repairs
            .iter()
            .any(|r| r.contains("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_messages_user_deleted_created"))
    );
    assert!(done.applied.is_empty(), "stopped at the takeover's version");
    assert_eq!(
        done.repaired,
        5000 + 50 + 4,
        "every message's length, and the 4 NULL timestamps"
    );
    assert_eq!(files(&mut conn).await, before, "no table was rewritten");
    // Every row as it was, and the 21 written during the build, their lengths computed
    // by the normalisation (the reference's statements do not set them).
    let mut rows_after = rows(&mut conn).await;
    let messages = rows_after.get_mut("messages").unwrap();
    let count = messages.len();
    messages.retain(|m| {
        !m[3]
            .as_deref()
            .unwrap_or("")
            .starts_with("written during the build")
    });
    assert_eq!(count - messages.len(), 21, "the writes made during the build");
    assert_same_rows(&rows_before, &rows_after);
    let measured: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE content LIKE 'written during the build%' \
            AND content_length = char_length(content)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(measured, 21);
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_messages_user_deleted_created'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(valid, "the concurrent build finished");
    let current = botdb::migrate::current(&mut conn).await.unwrap().unwrap();
    assert_eq!(current.version, takeover::TAKEN_OVER_AT);
    // The schema is exactly botdb's at that version.
    let scratch = TestDb::empty().await;
    let mut other = scratch.conn().await;
    botdb::migrate::upgrade_to(&mut other, Some(takeover::TAKEN_OVER_AT))
        .await
        .unwrap();
    let mut ours = Snapshot::read(&mut conn).await.unwrap();
    ours.objects.retain(|k, _| !k.contains("alembic_version"));
    assert_eq!(Snapshot::read(&mut other).await.unwrap().diff(&ours), vec![]);
    for c in [conn, other, observer, writer, users_conn, open_conn] {
        let _ = c.close().await;
    }
}

#[tokio::test]
async fn two_takeovers_at_once_make_one() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev2ContentLength, 1000).await;
    let before = rows(&mut conn).await;
    let (mut a, mut b) = (t.conn().await, t.conn().await);
    let policy = botdb::MigrateConfig::default();
    let (x, y) = tokio::join!(
        takeover::migrate(&mut a, None, &policy),
        takeover::migrate(&mut b, None, &policy)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let took: Vec<bool> = [&x, &y]
        .iter()
        .map(|d| matches!(d.plan.found, Found::Reference(_)))
        .collect();
    assert_eq!(took.iter().filter(|t| **t).count(), 1, "exactly one took over");
    let (first, second) = if took[0] { (x, y) } else { (y, x) };
    assert_eq!(first.applied.len() as i64, botdb::migrate::head().unwrap() - 3);
    assert!(matches!(second.plan.found, Found::Botdb));
    assert!(second.applied.is_empty(), "the second found nothing to do");
    assert_same_rows(&before, &rows(&mut conn).await);
    for c in [a, b, conn] {
        let _ = c.close().await;
    }
}
