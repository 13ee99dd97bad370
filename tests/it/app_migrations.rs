//! The application's own migrations beside botdb's: applied after botdb's (their own
//! bookkeeping table, so no version clash), rolled back newest first across both sets,
//! listed, checked, refused when out of order or edited; through the library
//! (`Migrations`, `Database::migrate`, `migrate_with`), the `botdb` verbs with
//! `--app-migrations` or `BOTDB_APP_MIGRATIONS`, and the takeover.

use std::path::Path;

use botdb::catalog::Snapshot;
use botdb::migrate::{self, MigrationSet, Migrations};
use botdb::{Config, Database, Error, MigrateConfig};
use sqlx::PgConnection;

use crate::cli::{run, stderr, stdout};
use crate::helpers::TestDb;

const REMINDERS_UP: &str = "CREATE TABLE reminders (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    due_at timestamptz NOT NULL,
    text text NOT NULL
);
";
const REMINDERS_DOWN: &str = "DROP TABLE reminders;\n";
const DUE_INDEX_UP: &str = "CREATE INDEX ix_reminders_due ON reminders (due_at);\n";
const DUE_INDEX_DOWN: &str = "DROP INDEX ix_reminders_due;\n";

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

/// A reversible pair `NNNN_name.{up,down}.sql` (`version` as written, any numbering).
fn pair(dir: &Path, version: &str, name: &str, up: &str, down: &str) {
    write(dir, &format!("{version}_{name}.up.sql"), up);
    write(dir, &format!("{version}_{name}.down.sql"), down);
}

/// The application's directory: 0001 reminders (referencing botdb's users), 0002 an
/// index on them.
fn app_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pair(dir.path(), "0001", "reminders", REMINDERS_UP, REMINDERS_DOWN);
    pair(
        dir.path(),
        "0002",
        "reminders_due_index",
        DUE_INDEX_UP,
        DUE_INDEX_DOWN,
    );
    dir
}

async fn with_app(dir: &Path) -> Migrations {
    Migrations::botdb().with_app_dir(dir).await.unwrap()
}

fn policy() -> MigrateConfig {
    MigrateConfig::default()
}

/// (set, version) of each status, in order.
fn ids(list: &[migrate::MigrationStatus]) -> Vec<(MigrationSet, i64)> {
    list.iter().map(|s| (s.set, s.version)).collect()
}

fn botdb_ids(versions: impl IntoIterator<Item = i64>) -> Vec<(MigrationSet, i64)> {
    versions.into_iter().map(|v| (MigrationSet::Botdb, v)).collect()
}

fn app_ids(versions: impl IntoIterator<Item = i64>) -> Vec<(MigrationSet, i64)> {
    versions.into_iter().map(|v| (MigrationSet::App, v)).collect()
}

fn all_botdb() -> Vec<(MigrationSet, i64)> {
    botdb_ids(1..=migrate::head().unwrap())
}

/// The versions `table` records, in order (none when it does not exist).
async fn recorded(conn: &mut PgConnection, table: &str) -> Vec<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    if !exists {
        return Vec::new();
    }
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap()
}

async fn exists(conn: &mut PgConnection, relation: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(relation)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// The environment of a `botdb` child with `BOTDB_APP_MIGRATIONS` set to `dir`.
fn env_with_app(t: &TestDb, dir: &Path) -> Vec<(&'static str, String)> {
    let mut env = t.env();
    env.push(("BOTDB_APP_MIGRATIONS", dir.display().to_string()));
    env
}

#[tokio::test]
async fn migrate_applies_botdb_then_the_app_and_a_second_migrate_does_nothing() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let migrations = with_app(dir.path()).await;
    let mut conn = t.conn().await;

    let applied = migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    let mut expected = all_botdb();
    expected.extend(app_ids([1, 2]));
    assert_eq!(ids(&applied), expected, "botdb's first, then the app's");
    assert_eq!(applied[10].description, "reminders");
    assert_eq!(applied[11].label(), "app 0002 reminders due index");
    // Each set in its own bookkeeping table.
    assert_eq!(
        recorded(&mut conn, "_sqlx_migrations").await,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 2]);
    assert!(exists(&mut conn, "reminders").await);
    assert!(
        applied[6].installed_on >= applied[5].installed_on,
        "the app's applied after botdb's head"
    );
    // The app's table references botdb's users.
    botdb::repo::users::create(&mut conn, 42).await.unwrap();
    sqlx::query("INSERT INTO reminders (user_id, due_at, text) VALUES ($1, now(), 'tea')")
        .bind(42_i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let orphan = sqlx::query("INSERT INTO reminders (user_id, due_at, text) VALUES ($1, now(), 'x')")
        .bind(43_i64)
        .execute(&mut conn)
        .await;
    assert!(orphan.is_err(), "reminders.user_id references users");

    // Again: nothing to do, for both sets.
    assert!(
        migrations
            .upgrade(&mut conn, None, &policy())
            .await
            .unwrap()
            .is_empty()
    );
    // botdb's alone (no app directory configured) leaves the app's set alone.
    assert!(t.db.migrate().await.unwrap().is_empty());
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 2]);

    let current = migrations.current(&mut conn).await.unwrap();
    assert_eq!(current.botdb.map(|s| s.version), migrate::head());
    assert_eq!(
        current.app.map(|s| (s.set, s.version)),
        Some((MigrationSet::App, 2))
    );
    let history = migrations.history(&mut conn).await.unwrap();
    assert_eq!(ids(&history), expected);
    assert!(history.iter().all(|s| s.is_applied() && s.checksum_matches));
    let json = serde_json::to_value(&history[10]).unwrap();
    assert_eq!(json["set"], "app");
    assert_eq!(serde_json::to_value(&history[0]).unwrap()["set"], "botdb");
}

#[tokio::test]
async fn botdb_migrate_to_a_version_below_head_applies_no_app_migration() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let migrations = with_app(dir.path()).await;
    let mut conn = t.conn().await;
    let applied = migrations.upgrade(&mut conn, Some(4), &policy()).await.unwrap();
    assert_eq!(ids(&applied), botdb_ids(1..=4));
    assert!(recorded(&mut conn, "_app_migrations").await.is_empty());
    let applied = migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    let mut expected = botdb_ids(5..=10);
    expected.extend(app_ids([1, 2]));
    assert_eq!(ids(&applied), expected);
}

#[tokio::test]
async fn check_expects_the_app_tables_given_the_directory_and_lists_them_without_it() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let flag = dir.path().display().to_string();
    let o = run(&["--app-migrations", &flag, "migrate"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));

    let o = run(&["--app-migrations", &flag, "check"], &t.env()).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("ok:"), "{}", stdout(&o));
    assert!(stdout(&o).contains("app head 0002"), "{}", stdout(&o));
    // The library agrees.
    let report = botdb::catalog::check_with(&t.config, &with_app(dir.path()).await)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");

    // Without the directory, the app's tables are not botdb's schema.
    let o = run(&["check"], &t.env()).await;
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("unexpected table reminders"), "{out}");
    assert!(out.contains("unexpected index ix_reminders_due"), "{out}");
    assert!(
        out.contains("unknown    migration app 0001 reminders: applied, but the application's migrations were not given"),
        "{out}"
    );
    assert!(
        !out.contains("_app_migrations"),
        "bookkeeping is not schema: {out}"
    );

    // A pending app migration is reported as such.
    let o = run(&["--app-migrations", &flag, "rollback"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--app-migrations", &flag, "check"], &t.env()).await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("pending    migration app 0002 reminders due index"),
        "{out}"
    );
    assert!(out.contains("missing    index ix_reminders_due"), "{out}");
}

#[tokio::test]
async fn rollback_reverts_the_newest_first_across_both_sets() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let migrations = with_app(dir.path()).await;
    let mut conn = t.conn().await;
    migrations.upgrade(&mut conn, None, &policy()).await.unwrap();

    // botdb gained nothing since: the newest is the app's.
    let reverted = migrations.downgrade(&mut conn, 1, &policy()).await.unwrap();
    assert_eq!(ids(&reverted), app_ids([2]));
    assert!(!exists(&mut conn, "ix_reminders_due").await);
    assert!(exists(&mut conn, "reminders").await);
    let applied = migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    assert_eq!(ids(&applied), app_ids([2]));

    // botdb's rollback alone must not pass the app's migrations by.
    let err = migrate::downgrade(&mut conn, 1).await.unwrap_err();
    assert!(matches!(err, Error::Migration(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("app 0002") && text.contains("--app-migrations"),
        "{text}"
    );
    assert_eq!(
        recorded(&mut conn, "_sqlx_migrations").await.len(),
        10,
        "nothing rolled back"
    );
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 2]);

    // All the way down, cleanly: the app's first (they reference botdb's tables).
    let reverted = migrations
        .downgrade(&mut conn, usize::MAX, &policy())
        .await
        .unwrap();
    let mut expected = app_ids([2, 1]);
    expected.extend(botdb_ids((1..=10).rev()));
    assert_eq!(ids(&reverted), expected);
    assert!(Snapshot::read(&mut conn).await.unwrap().objects.is_empty());
    assert!(recorded(&mut conn, "_sqlx_migrations").await.is_empty());
    assert!(recorded(&mut conn, "_app_migrations").await.is_empty());
    assert!(
        migrations
            .downgrade(&mut conn, 1, &policy())
            .await
            .unwrap()
            .is_empty()
    );

    // An older botdb (head 0009) applied the app's; this one adds 0010, applied after
    // them: it is the newest, and rolled back first.
    migrate::upgrade_to(&mut conn, Some(9)).await.unwrap();
    migrations.app().unwrap().run(&mut conn).await.unwrap();
    let applied = migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    assert_eq!(ids(&applied), botdb_ids([10]));
    let reverted = migrations.downgrade(&mut conn, 2, &policy()).await.unwrap();
    assert_eq!(
        ids(&reverted),
        vec![(MigrationSet::Botdb, 10), (MigrationSet::App, 2)]
    );
}

#[tokio::test]
async fn an_out_of_order_app_migration_is_refused_and_nothing_is_applied() {
    let t = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    pair(dir.path(), "0001", "reminders", REMINDERS_UP, REMINDERS_DOWN);
    pair(
        dir.path(),
        "0003",
        "reminders_due_index",
        DUE_INDEX_UP,
        DUE_INDEX_DOWN,
    );
    let mut conn = t.conn().await;
    with_app(dir.path())
        .await
        .upgrade(&mut conn, None, &policy())
        .await
        .unwrap();
    // A branch merged late: 0002 is older than the applied 0003; 0004 is in order.
    pair(
        dir.path(),
        "0002",
        "reminder_notes",
        "ALTER TABLE reminders ADD COLUMN note text;",
        "ALTER TABLE reminders DROP COLUMN note;",
    );
    pair(
        dir.path(),
        "0004",
        "feedback",
        "CREATE TABLE feedback (user_id bigint REFERENCES users(id));",
        "DROP TABLE feedback;",
    );
    let migrations = with_app(dir.path()).await;
    let err = migrations.upgrade(&mut conn, None, &policy()).await.unwrap_err();
    assert!(matches!(err, Error::Migration(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("app 0002 (reminder notes"), "{text}");
    assert!(text.contains("0002_reminder_notes.up.sql"), "{text}");
    assert!(text.contains("out of order"), "{text}");
    assert!(text.contains("newer version than 0003"), "{text}");
    assert_eq!(
        recorded(&mut conn, "_app_migrations").await,
        vec![1, 3],
        "nothing applied"
    );
    assert!(!exists(&mut conn, "feedback").await);
    let note: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'reminders' AND column_name = 'note')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!note);

    // The command says the same, and so does its dry run.
    let flag = dir.path().display().to_string();
    for args in [
        &["--app-migrations", &flag, "migrate"][..],
        &["--app-migrations", &flag, "migrate", "--dry-run"][..],
    ] {
        let o = run(args, &t.env()).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("app 0002") && stderr(&o).contains("newer version"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 3]);
}

#[tokio::test]
async fn an_app_migration_edited_after_it_was_applied_is_named() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let mut conn = t.conn().await;
    with_app(dir.path())
        .await
        .upgrade(&mut conn, None, &policy())
        .await
        .unwrap();
    write(
        dir.path(),
        "0001_reminders.up.sql",
        &REMINDERS_UP.replace("text text NOT NULL", "text text"),
    );
    let migrations = with_app(dir.path()).await;
    for err in [
        migrations.upgrade(&mut conn, None, &policy()).await.unwrap_err(),
        migrations.downgrade(&mut conn, 1, &policy()).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::Migration(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("app 0001 (reminders"), "{text}");
        assert!(text.contains("0001_reminders.up.sql"), "{text}");
        assert!(text.contains("edited after it was applied"), "{text}");
        assert!(text.contains("_app_migrations"), "{text}");
    }
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 2]);

    let env = env_with_app(&t, dir.path());
    let o = run(&["history"], &env).await;
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("0001") && l.contains(" app ") && l.contains("EDITED")),
        "{}",
        stdout(&o)
    );
    let o = run(&["check"], &env).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("edited     migration app 0001 reminders"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn app_versions_equal_to_botdbs_do_not_clash() {
    let t = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    for v in 1..=6 {
        pair(
            dir.path(),
            &format!("{v:04}"),
            &format!("app_table_{v}"),
            &format!("CREATE TABLE app_t{v} (user_id bigint REFERENCES users(id));"),
            &format!("DROP TABLE app_t{v};"),
        );
    }
    let migrations = with_app(dir.path()).await;
    let mut conn = t.conn().await;
    let applied = migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    let mut expected = all_botdb();
    expected.extend(app_ids(1..=6));
    assert_eq!(ids(&applied), expected);
    assert_eq!(
        recorded(&mut conn, "_sqlx_migrations").await,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        recorded(&mut conn, "_app_migrations").await,
        vec![1, 2, 3, 4, 5, 6]
    );
    // botdb's own verbs still see botdb's set exactly.
    assert_eq!(
        migrate::current(&mut conn).await.unwrap().unwrap().description,
        "turn pipeline"
    );
    assert!(
        botdb::catalog::check_with(&t.config, &migrations)
            .await
            .unwrap()
            .is_clean()
    );
    let reverted = migrations
        .downgrade(&mut conn, usize::MAX, &policy())
        .await
        .unwrap();
    let mut expected = app_ids((1..=6).rev());
    expected.extend(botdb_ids((1..=10).rev()));
    assert_eq!(ids(&reverted), expected);
    assert!(Snapshot::read(&mut conn).await.unwrap().objects.is_empty());
}

#[tokio::test]
async fn sqlx_cli_timestamp_versions_work() {
    let t = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    pair(
        dir.path(),
        "20240501120000",
        "reminders",
        REMINDERS_UP,
        REMINDERS_DOWN,
    );
    pair(
        dir.path(),
        "20240601093000",
        "reminders_due_index",
        DUE_INDEX_UP,
        DUE_INDEX_DOWN,
    );
    let env = env_with_app(&t, dir.path());
    let o = run(&["migrate"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("applied app 20240601093000 reminders due index"),
        "{}",
        stdout(&o)
    );
    let o = run(&["current"], &env).await;
    assert_eq!(
        stdout(&o).trim(),
        "botdb: 0010 turn pipeline (head)\napp:   20240601093000 reminders due index (head)"
    );
    let o = run(&["rollback", "-n", "2"], &env).await;
    assert_eq!(
        stdout(&o).trim(),
        "reverted app 20240601093000 reminders due index\nreverted app 20240501120000 reminders"
    );
}

#[tokio::test]
async fn the_cli_flag_and_the_environment_variable_both_work() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let flag = dir.path().display().to_string();
    // The flag is global: after the verb too.
    let o = run(&["migrate", "--app-migrations", &flag], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let applied: Vec<&str> = out.lines().filter(|l| l.starts_with("applied ")).collect();
    assert_eq!(applied.len(), 12, "{out}");
    assert!(applied[9].starts_with("applied 0010 turn pipeline"), "{out}");
    assert!(applied[10].starts_with("applied app 0001 reminders ("), "{out}");
    assert!(
        applied[11].starts_with("applied app 0002 reminders due index ("),
        "{out}"
    );

    let env = env_with_app(&t, dir.path());
    let o = run(&["current"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "botdb: 0010 turn pipeline (head)\napp:   0002 reminders due index (head)"
    );
    let o = run(&["history"], &env).await;
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1 + 10 + 2, "{out}");
    assert!(
        lines[0].starts_with("version") && lines[0].contains("set"),
        "{out}"
    );
    assert!(
        lines[1..11]
            .iter()
            .all(|l| l.contains(" botdb ") && l.contains("applied")),
        "{out}"
    );
    assert!(
        lines[11].starts_with("0001") && lines[11].contains(" app ") && lines[11].contains("reminders"),
        "{out}"
    );
    let o = run(&["migrate", "--dry-run"], &env).await;
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));

    // botdb's verbs without the directory: the app's newest stands in the way.
    let o = run(&["rollback"], &t.env()).await;
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("--app-migrations"), "{}", stderr(&o));
    let o = run(&["current"], &t.env()).await;
    assert!(
        stdout(&o).contains("app:   0002 reminders due index (the application's migrations were not given"),
        "{}",
        stdout(&o)
    );

    let o = run(&["rollback", "-n", "2"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "reverted app 0002 reminders due index\nreverted app 0001 reminders"
    );
    // The flag wins over the variable (here naming a directory that does not exist).
    let mut bad = t.env();
    bad.push(("BOTDB_APP_MIGRATIONS", "/nonexistent/botdb-app".into()));
    let o = run(&["--app-migrations", &flag, "migrate"], &bad).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("applied app 0001 reminders"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn a_missing_or_malformed_directory_is_a_configuration_error() {
    let missing = "/nonexistent/botdb-app-migrations";
    let err = Config::builder().app_migrations(missing).build().unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "BOTDB_APP_MIGRATIONS"),
        "{err:?}"
    );
    assert!(err.to_string().contains(missing), "{err}");
    let err = Migrations::botdb().with_app_dir(missing).await.unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "BOTDB_APP_MIGRATIONS"),
        "{err:?}"
    );

    // Malformed sets, each named.
    for (files, named) in [
        (&[("abc_reminders.sql", "x")][..], "abc_reminders.sql"),
        (&[("0001_reminders.up.sql", "x")][..], "0001_reminders.down.sql"),
        (&[("0001_reminders.down.sql", "x")][..], "0001_reminders.up.sql"),
        (&[("0001_a.sql", "x"), ("0001_b.sql", "x")][..], "same version 1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            write(dir.path(), name, body);
        }
        let err = Migrations::botdb().with_app_dir(dir.path()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "BOTDB_APP_MIGRATIONS"),
            "{err:?}"
        );
        assert!(err.to_string().contains(named), "{named}: {err}");
    }
    // Other files are ignored, as sqlx does.
    let dir = app_dir();
    write(dir.path(), "README.md", "notes");
    assert_eq!(with_app(dir.path()).await.app_head(), Some(2));

    // The command: flag or variable, nothing touched.
    let t = TestDb::empty().await;
    let mut env = t.env();
    env.push(("BOTDB_APP_MIGRATIONS", missing.into()));
    for (args, env) in [
        (&["--app-migrations", missing, "migrate"][..], t.env()),
        (&["migrate"][..], env),
    ] {
        let o = run(args, &env).await;
        assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("BOTDB_APP_MIGRATIONS") && err.contains(missing),
            "{err}"
        );
    }
    assert!(recorded(&mut t.conn().await, "_sqlx_migrations").await.is_empty());
}

#[tokio::test]
async fn database_migrate_applies_both_sets_from_the_configuration() {
    let t = TestDb::empty().await;
    let dir = app_dir();
    let config = Config::builder()
        .pool_size(1)
        .max_overflow(1)
        .app_migrations(dir.path())
        .build()
        .unwrap()
        .with_server_of(&t.config);
    let db = Database::connect(&config).await.unwrap();
    let applied = db.migrate().await.unwrap();
    let mut expected = all_botdb();
    expected.extend(app_ids([1, 2]));
    assert_eq!(ids(&applied), expected);
    assert!(db.migrate().await.unwrap().is_empty());
    db.close().await;

    // An application that embeds its migrations (`sqlx::migrate!()` gives a Migrator
    // on `_sqlx_migrations`): copied onto `_app_migrations`, botdb's table untouched.
    let other = TestDb::empty().await;
    let embedded = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    assert_eq!(embedded.table_name, "_sqlx_migrations");
    let migrations = Migrations::botdb().with_app(&embedded).unwrap();
    let applied = other.db.migrate_with(&migrations).await.unwrap();
    assert_eq!(ids(&applied), expected);
    let mut conn = other.conn().await;
    assert_eq!(
        recorded(&mut conn, "_sqlx_migrations").await,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 2]);
    // The same files through the directory: the same checksums, nothing to do.
    let from_dir = with_app(dir.path()).await;
    assert!(
        from_dir
            .upgrade(&mut conn, None, &policy())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_takeover_of_a_reference_database_applies_the_app_set_too() {
    use crate::takeover::{State, build};
    let t = TestDb::empty().await;
    let dir = app_dir();
    let flag = dir.path().display().to_string();
    let mut conn = t.conn().await;
    build(&mut conn, State::Rev2ContentLength, 0).await;

    let o = run(&["--app-migrations", &flag, "migrate", "--dry-run"], &t.env()).await;
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("found: the reference bot's schema"), "{out}");
    assert!(out.contains("apply:     0010 turn pipeline\n"), "{out}");
    assert!(
        out.contains("apply:     app 0001 reminders\napply:     app 0002 reminders due index\n"),
        "{out}"
    );
    assert!(
        !exists(&mut conn, "_app_migrations").await,
        "a dry run changes nothing"
    );

    let o = run(&["--app-migrations", &flag, "migrate"], &t.env()).await;
    let out = stdout(&o);
    assert!(o.status.success(), "{}\n{out}", stderr(&o));
    assert!(out.contains("took over the reference bot's database"), "{out}");
    assert!(out.contains("applied 0010 turn pipeline"), "{out}");
    assert!(out.contains("applied app 0002 reminders due index"), "{out}");
    assert_eq!(
        recorded(&mut conn, "_sqlx_migrations").await,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(recorded(&mut conn, "_app_migrations").await, vec![1, 2]);
    // The reference's users can have reminders.
    sqlx::query("INSERT INTO reminders (user_id, due_at, text) VALUES (1000, now(), 'tea')")
        .execute(&mut conn)
        .await
        .unwrap();
    let o = run(&["--app-migrations", &flag, "check"], &t.env()).await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("kept       table alembic_version"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn new_numbers_an_app_directory_on_its_own() {
    let dir = app_dir();
    let flag = dir.path().display().to_string();
    let o = run(&["--app-migrations", &flag, "new", "feedback"], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("0003_feedback.up.sql").is_file());
    assert!(dir.path().join("0003_feedback.down.sql").is_file());
    assert!(stdout(&o).contains("read at run time"), "{}", stdout(&o));
    // The files it makes are a well-formed set.
    assert_eq!(with_app(dir.path()).await.app_head(), Some(3));
}
