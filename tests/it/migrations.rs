//! Migrations: reversibility step by step, the schema they define, check, concurrency,
//! tampering, compatibility with the reference's models.

use botdb::catalog::{self, Difference, Snapshot};
use botdb::migrate;
use botdb::{Database, Error};
use sqlx::PgConnection;

use crate::helpers::TestDb;

async fn snapshot(conn: &mut PgConnection) -> Snapshot {
    Snapshot::read(conn).await.unwrap()
}

#[tokio::test]
async fn each_down_migration_restores_the_previous_schema_exactly() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    let head = migrate::head().unwrap();

    // Going up one step at a time, remember the schema at each version.
    let mut at = vec![snapshot(&mut conn).await];
    assert!(at[0].objects.is_empty());
    for version in 1..=head {
        let applied = migrate::upgrade_to(&mut conn, Some(version)).await.unwrap();
        assert_eq!(
            applied.iter().map(|s| s.version).collect::<Vec<_>>(),
            vec![version]
        );
        at.push(snapshot(&mut conn).await);
        assert_ne!(
            at[version as usize],
            at[version as usize - 1],
            "migration {version} changed nothing"
        );
    }
    // Coming down one step at a time, each schema must be the one seen going up.
    for version in (1..=head).rev() {
        let reverted = migrate::downgrade(&mut conn, 1).await.unwrap();
        assert_eq!(
            reverted.iter().map(|s| s.version).collect::<Vec<_>>(),
            vec![version]
        );
        let now = snapshot(&mut conn).await;
        let expected = &at[version as usize - 1];
        assert_eq!(
            expected.diff(&now),
            Vec::<Difference>::new(),
            "after reverting {version}"
        );
    }
    assert_eq!(migrate::current(&mut conn).await.unwrap(), None);
    // And up again to head: identical to the first time.
    assert_eq!(migrate::upgrade(&mut conn).await.unwrap().len(), head as usize);
    assert_eq!(
        at[head as usize].diff(&snapshot(&mut conn).await),
        Vec::<Difference>::new()
    );
}

#[tokio::test]
async fn rollback_n_steps_and_all() {
    let t = TestDb::new().await;
    let mut conn = t.conn().await;
    let reverted = migrate::downgrade(&mut conn, 2).await.unwrap();
    assert_eq!(
        reverted.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![10, 9]
    );
    assert_eq!(migrate::current(&mut conn).await.unwrap().unwrap().version, 8);
    assert_eq!(migrate::downgrade_all(&mut conn).await.unwrap().len(), 8);
    assert!(migrate::downgrade(&mut conn, 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_final_schema_is_the_specs() {
    let t = TestDb::new().await;
    let s = snapshot(&mut t.conn().await).await;
    let get = |key: &str| {
        s.objects
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("missing {key}"))
    };
    for (key, definition) in [
        ("column users.id", "bigint NOT NULL"),
        (
            "column users.created_at",
            "timestamp with time zone NOT NULL DEFAULT now()",
        ),
        (
            "column users.updated_at",
            "timestamp with time zone NOT NULL DEFAULT now()",
        ),
        ("column messages.id", "uuid NOT NULL DEFAULT gen_random_uuid()"),
        ("column messages.user_id", "bigint NOT NULL"),
        ("column messages.chat_id", "bigint NOT NULL DEFAULT 0"),
        ("column messages.role", "text NOT NULL"),
        ("column messages.content", "text NOT NULL"),
        ("column messages.content_length", "integer NOT NULL"),
        (
            "column messages.created_at",
            "timestamp with time zone NOT NULL DEFAULT now()",
        ),
        ("column messages.deleted_at", "timestamp with time zone NULL"),
        (
            "column messages.seq",
            "bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
        ),
        ("column user_settings.user_id", "bigint NOT NULL"),
        ("column user_settings.max_history_messages", "integer NOT NULL"),
        ("column user_settings.system_prompt", "text NULL"),
        (
            "column user_settings.created_at",
            "timestamp with time zone NOT NULL DEFAULT now()",
        ),
        (
            "column user_settings.updated_at",
            "timestamp with time zone NOT NULL DEFAULT now()",
        ),
        (
            "index ix_messages_user_deleted_created",
            "CREATE INDEX ix_messages_user_deleted_created ON public.messages USING btree (user_id, deleted_at, created_at)",
        ),
        (
            "index ix_messages_dialogue_live",
            "CREATE INDEX ix_messages_dialogue_live ON public.messages USING btree (user_id, chat_id, created_at DESC, seq DESC) WHERE (deleted_at IS NULL)",
        ),
        (
            "constraint messages.ck_messages_chat_id",
            "CHECK ((chat_id <> user_id))",
        ),
        (
            "index ix_users_id",
            "CREATE INDEX ix_users_id ON public.users USING btree (id)",
        ),
        (
            "constraint messages.messages_user_id_fkey",
            "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE RESTRICT",
        ),
        (
            "constraint user_settings.user_settings_user_id_fkey",
            "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        ),
        (
            "constraint user_settings.ck_user_settings_max_history_messages",
            "CHECK (((max_history_messages >= 1) AND (max_history_messages <= 1000)))",
        ),
    ] {
        assert_eq!(get(key), definition, "{key}");
    }
    let tables: Vec<&String> = s.objects.keys().filter(|k| k.starts_with("table ")).collect();
    assert_eq!(
        tables,
        [
            "table erasures",
            "table inbox",
            "table messages",
            "table outbox",
            "table request_keys",
            "table user_settings",
            "table users"
        ]
    );
    for key in [
        "constraint messages.ck_messages_role",
        "trigger messages.trg_messages_content_length",
    ] {
        assert!(s.objects.contains_key(key), "{key}");
    }
}

#[tokio::test]
async fn check_passes_on_a_migrated_database_and_lists_a_manual_change() {
    let t = TestDb::new().await;
    let report = catalog::check(&t.config).await.unwrap();
    assert!(report.is_clean(), "{report:?}");

    sqlx::raw_sql(
        "ALTER TABLE users ADD COLUMN nickname TEXT; ALTER TABLE messages ALTER COLUMN role DROP NOT NULL",
    )
    .execute(&mut t.conn().await)
    .await
    .unwrap();
    let report = catalog::check(&t.config).await.unwrap();
    assert!(!report.is_clean());
    let lines: Vec<String> = report.differences.iter().map(ToString::to_string).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("unexpected column users.nickname")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("changed    column messages.role") && l.contains("text NULL")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn check_reports_pending_migrations() {
    let t = TestDb::new().await;
    migrate::downgrade(&mut t.conn().await, 4).await.unwrap();
    let report = catalog::check(&t.config).await.unwrap();
    assert_eq!(
        report.pending.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert!(report.differences.iter().any(|d| d.object() == "table erasures"));
}

#[tokio::test]
async fn concurrent_migrations_apply_once_and_the_other_finds_nothing_to_do() {
    let t = TestDb::empty().await;
    let other = Database::connect(&t.config).await.unwrap();
    let (a, b) = tokio::join!(t.db.migrate(), other.migrate());
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut counts = [a.len(), b.len()];
    counts.sort();
    assert_eq!(
        counts,
        [0, migrate::head().unwrap() as usize],
        "one applies all, the other none"
    );
}

#[tokio::test]
async fn a_migration_edited_after_it_was_applied_is_named_in_the_error() {
    let t = TestDb::new().await;
    // What an edited file looks like from the database: the recorded checksum differs.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = sha384('tampered') WHERE version = 3")
        .execute(&mut t.conn().await)
        .await
        .unwrap();
    let err = t.db.migrate().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Migration(_)), "{err:?}");
    assert!(text.contains("0003"), "{text}");
    assert!(text.contains("content_length_and_history_index.up.sql"), "{text}");
    assert!(text.contains("edited after it was applied"), "{text}");
    let err = migrate::downgrade(&mut t.conn().await, 1).await.unwrap_err();
    assert!(err.to_string().contains("0003"), "{err}");
    let report = catalog::check(&t.config).await.unwrap();
    assert_eq!(
        report.mismatched.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![3]
    );
}

#[tokio::test]
async fn the_reference_models_work_unchanged_on_a_botdb_schema() {
    // The statements SQLAlchemy emits for the reference's models: message ids generated
    // client-side, content_length set by the application, server defaults for times.
    let t = TestDb::new().await;
    let mut conn = t.conn().await;
    sqlx::raw_sql(
        "INSERT INTO users (id) VALUES (77);
         INSERT INTO user_settings (user_id, max_history_messages, system_prompt) VALUES (77, 50, NULL);
         INSERT INTO messages (id, user_id, role, content, content_length, deleted_at)
              VALUES ('6f1c1f5e-0c1a-4d7e-9b1a-1a2b3c4d5e6f', 77, 'user', 'héllo 👋', 7, NULL);
         UPDATE user_settings SET max_history_messages = 100, updated_at = now() WHERE user_id = 77;
         UPDATE messages SET deleted_at = now() WHERE user_id = 77 AND deleted_at IS NULL;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (id, len): (uuid::Uuid, i32) = sqlx::query_as(
        "SELECT messages.id, messages.content_length FROM messages WHERE messages.user_id = $1 \
         ORDER BY messages.created_at DESC LIMIT $2",
    )
    .bind(77_i64)
    .bind(20_i64)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(id.to_string(), "6f1c1f5e-0c1a-4d7e-9b1a-1a2b3c4d5e6f");
    assert_eq!(len, 7);
    // botdb reads what the reference wrote.
    let counts = botdb::repo::messages::count(&mut conn, 77).await.unwrap();
    assert_eq!((counts.live, counts.deleted), (0, 1));
}

#[tokio::test]
async fn private_dialogues_written_before_chats_were_told_apart_keep_working() {
    let t = TestDb::empty().await;
    let mut conn = t.conn().await;
    migrate::upgrade_to(&mut conn, Some(4)).await.unwrap();
    // Written at 0004, as the reference's code writes (it never names chat_id).
    sqlx::raw_sql(
        "INSERT INTO users (id) VALUES (77);
         INSERT INTO messages (id, user_id, role, content, content_length)
              VALUES (gen_random_uuid(), 77, 'user', 'before chats', 12),
                     (gen_random_uuid(), 77, 'assistant', 'reply', 5);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(migrate::upgrade(&mut conn).await.unwrap().len(), 6);
    // They are the user's private dialogue: what botdb reads for the private chat.
    let private: Vec<String> = botdb::repo::messages::history(&mut conn, 77, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(private, ["reply", "before chats"]);
    let in_group = botdb::repo::messages::history(&mut conn, botdb::model::Dialogue::new(77, -100), 20)
        .await
        .unwrap();
    assert!(in_group.is_empty());
    // The reference's code keeps inserting without chat_id: private, too.
    sqlx::query(
        "INSERT INTO messages (id, user_id, role, content, content_length) \
         VALUES (gen_random_uuid(), 77, 'user', 'from the reference', 18)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        botdb::repo::messages::history(&mut conn, 77, 20)
            .await
            .unwrap()
            .len(),
        3
    );
    // A private chat is stored one way only: 0, never the user's own id.
    let err = sqlx::query(
        "INSERT INTO messages (id, user_id, chat_id, role, content, content_length) \
         VALUES (gen_random_uuid(), 77, 77, 'user', 'x', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ck_messages_chat_id"), "{err}");
    // Rolling 0005 back keeps every row.
    migrate::downgrade(&mut conn, 2).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 3);
}

/// Waits until a session of database `name` waits for a lock on `messages`.
async fn lock_waiter_on_messages(observer: &mut PgConnection, name: &str) -> bool {
    crate::helpers::eventually(std::time::Duration::from_secs(20), async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
              WHERE d.datname = $1 AND NOT l.granted AND l.relation = 'messages'::regclass)",
        )
        .bind(name)
        .fetch_one(&mut *observer)
        .await
        .unwrap()
    })
    .await
}

#[tokio::test]
async fn a_migration_queued_behind_a_long_transaction_delays_traffic_at_most_its_lock_timeout() {
    use sqlx::Connection;
    let t = TestDb::new().await;
    migrate::downgrade(&mut t.conn().await, 6).await.unwrap();
    // An operator's long transaction reads messages and stays open.
    let mut blocker = t.conn().await;
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM messages")
        .execute(&mut *tx)
        .await
        .unwrap();
    // `botdb migrate` on the live database: 0005 needs messages exclusively.
    let policy = botdb::MigrateConfig {
        lock_timeout: std::time::Duration::from_millis(200),
        attempts: 1000,
    };
    let mut migrator = t.conn().await;
    let migration = tokio::spawn(async move { migrate::upgrade_with(&mut migrator, None, &policy).await });
    let mut observer = t.conn().await;
    assert!(
        lock_waiter_on_messages(&mut observer, &t.name).await,
        "the migration waits for its lock"
    );
    // The bot's traffic: an insert into messages, which conflicts with the queued DDL.
    // Without a lock timeout it would wait behind the DDL as long as the long
    // transaction lasts; with one, the DDL steps back and the insert goes through,
    // while the long transaction is still open.
    repo_user(&t, 1).await;
    // (At 0004 the bot writes as the reference does: without chat_id.)
    let insert = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sqlx::query(
            "INSERT INTO messages (id, user_id, role, content, content_length) \
             VALUES (gen_random_uuid(), 1, 'user', 'live', 4)",
        )
        .execute(t.db.pool()),
    )
    .await;
    assert!(
        matches!(insert, Ok(Ok(_))),
        "the live insert was not served while the migration waited: {insert:?}"
    );
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let still_held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND granted \
            AND relation = 'messages'::regclass AND mode = 'AccessShareLock')",
    )
    .bind(blocker_pid)
    .fetch_one(&mut observer)
    .await
    .unwrap();
    assert!(
        still_held,
        "the long transaction still holds its lock on messages"
    );
    // Once it ends, the migration (still retrying) goes through.
    tx.commit().await.unwrap();
    let applied = tokio::time::timeout(std::time::Duration::from_secs(60), migration)
        .await
        .expect("the migration finished")
        .unwrap()
        .unwrap();
    assert_eq!(
        applied.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9, 10]
    );
}

async fn repo_user(t: &TestDb, id: i64) {
    botdb::repo::users::create(t.db.pool(), id).await.unwrap();
}

#[tokio::test]
async fn a_migration_that_never_gets_its_lock_fails_named_and_applies_nothing() {
    use sqlx::Connection;
    let t = TestDb::new().await;
    migrate::downgrade(&mut t.conn().await, 6).await.unwrap();
    let mut blocker = t.conn().await;
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM messages")
        .execute(&mut *tx)
        .await
        .unwrap();
    let policy = botdb::MigrateConfig {
        lock_timeout: std::time::Duration::from_millis(50),
        attempts: 3,
    };
    let err = migrate::upgrade_with(&mut t.conn().await, None, &policy)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Migration(_)), "{err:?}");
    assert!(err.to_string().contains("could not take its locks"), "{err}");
    assert!(err.to_string().contains("3 attempts"), "{err}");
    tx.rollback().await.unwrap();
    let current = migrate::current(&mut t.conn().await).await.unwrap().unwrap();
    assert_eq!(current.version, 4, "nothing of 0005 applied");
}
