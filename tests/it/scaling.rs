//! The distributable schema (issue 16, docs/scaling.md): the application migration in
//! `docs/citus/migrations` makes botdb's schema what Citus needs to shard it by user id
//! (every unique key and foreign key of a distributed table includes its distribution
//! column), changes nothing else, keeps every operation of botdb's working on plain
//! PostgreSQL, and rolls back to botdb's own schema exactly.

use std::path::Path;
use std::time::Duration;

use botdb::actors::{
    AppendTurn, ClearHistory, DbSystem, EraseUser, GetContext, GetHistory, RegisterUser, UpdateSettings,
};
use botdb::catalog::{self, Snapshot};
use botdb::config::AuditKey;
use botdb::migrate::{MigrationSet, Migrations};
use botdb::model::{NewMessage, PRIVATE_CHAT, RequestKey, Role};
use botdb::repo::messages::RowKey;
use botdb::retention::{self, PurgeOptions};
use botdb::{Error, MigrateConfig, repo};
use sqlx::PgConnection;

use crate::helpers::TestDb;

/// The migration's directory, as an operator names it (`--app-migrations`).
fn citus_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/citus/migrations"))
}

async fn citus() -> Migrations {
    Migrations::botdb().with_app_dir(citus_dir()).await.unwrap()
}

/// The distributed tables and their distribution column, as docs/scaling.md has them.
const DISTRIBUTED: [(&str, &str); 3] = [
    ("users", "id"),
    ("messages", "user_id"),
    ("user_settings", "user_id"),
];

/// The tables that stay whole (docs/scaling.md: request_keys, inbox and outbox on the
/// coordinator, erasures a reference table), with no distribution column to include.
const NOT_DISTRIBUTED: [&str; 4] = ["request_keys", "erasures", "inbox", "outbox"];

/// What Citus would refuse in this schema, checked on plain PostgreSQL: a unique index
/// (primary key, unique constraint or plain) of a distributed table without its
/// distribution column; a foreign key of a distributed table that does not pair its
/// distribution column with the referenced distributed table's; a foreign key from a
/// table that is not distributed into one that is; a table in neither list.
async fn citus_refusals(conn: &mut PgConnection) -> Vec<String> {
    let (tables, columns): (Vec<&str>, Vec<&str>) = DISTRIBUTED.iter().copied().unzip();
    sqlx::query_scalar(
        "WITH d AS MATERIALIZED ( \
             SELECT to_regclass(t) AS rel, \
                    (SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass(t) AND attname = c) AS col \
               FROM UNNEST($1::text[], $2::text[]) AS x(t, c)) \
         SELECT 'unique index ' || i.indexrelid::regclass::text || ' lacks the distribution column' \
           FROM pg_index i JOIN d ON i.indrelid = d.rel \
          WHERE i.indisunique AND NOT d.col = ANY (i.indkey::int2[]) \
         UNION ALL \
         SELECT 'foreign key ' || c.conname || ' does not pair the distribution columns' \
           FROM pg_constraint c JOIN d ON c.conrelid = d.rel \
          WHERE c.contype = 'f' AND NOT EXISTS ( \
                SELECT 1 FROM d r, generate_subscripts(c.conkey, 1) k \
                 WHERE r.rel = c.confrelid AND c.conkey[k] = d.col AND c.confkey[k] = r.col) \
         UNION ALL \
         SELECT 'foreign key ' || c.conname || ' into a distributed table from another' \
           FROM pg_constraint c JOIN d ON c.confrelid = d.rel \
          WHERE c.contype = 'f' AND c.conrelid NOT IN (SELECT rel FROM d) \
         UNION ALL \
         SELECT 'table ' || c.relname || ' is neither distributed nor listed as whole' \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') \
            AND c.relname NOT IN ('_sqlx_migrations', '_app_migrations') \
            AND c.oid NOT IN (SELECT rel FROM d) AND c.relname <> ALL ($3::text[]) \
         ORDER BY 1",
    )
    .bind(&tables)
    .bind(&columns)
    .bind(NOT_DISTRIBUTED)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// The definition of a constraint of `messages`.
async fn messages_constraint(conn: &mut PgConnection, name: &str) -> String {
    sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
          WHERE conrelid = 'messages'::regclass AND conname = $1",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn with_key() -> TestDb {
    TestDb::with(|b| {
        b.audit_key(AuditKey::new("scaling-audit-key-0123456789").unwrap())
            .lock_timeout(Some(Duration::from_secs(30)))
    })
    .await
}

fn policy() -> MigrateConfig {
    MigrateConfig::default()
}

#[actix_rt::test]
async fn the_distributable_migration_keys_by_user_changes_only_messages_key_and_rolls_back_exactly() {
    let t = with_key().await;
    let mut conn = t.conn().await;
    let botdb_schema = Snapshot::read(&mut conn).await.unwrap();
    // The check bites: botdb's own schema has exactly one key and one foreign key Citus
    // would refuse (request_keys stays coordinator-local).
    assert_eq!(
        citus_refusals(&mut conn).await,
        [
            "foreign key request_keys_user_id_fkey into a distributed table from another",
            "unique index messages_pkey lacks the distribution column"
        ]
    );

    let migrations = citus().await;
    let applied = migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    assert_eq!(
        applied
            .iter()
            .map(|s| (s.set, s.version, s.description.as_str()))
            .collect::<Vec<_>>(),
        [(MigrationSet::App, 1, "distributable")],
        "botdb's own set is untouched; the migration is the application's"
    );
    assert_eq!(citus_refusals(&mut conn).await, Vec::<String>::new());
    assert_eq!(
        messages_constraint(&mut conn, "messages_pkey").await,
        "PRIMARY KEY (id, user_id)"
    );
    // id leads the key: the lookups by id alone (a keyed request's replay) keep an index.
    let leading: String = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
          WHERE i.indexrelid = 'messages_pkey'::regclass",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(leading, "id");
    let referencing_messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_constraint WHERE confrelid = 'messages'::regclass")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(referencing_messages, 0, "nothing references messages");
    // Only what Citus requires changed: the key of messages (its constraint and index),
    // and the foreign key of the keys.
    let distributable = Snapshot::read(&mut conn).await.unwrap();
    let changed: Vec<String> = botdb_schema
        .diff(&distributable)
        .iter()
        .map(|d| d.object().to_string())
        .collect();
    assert_eq!(
        changed,
        [
            "constraint messages.messages_pkey",
            "constraint request_keys.request_keys_user_id_fkey",
            "index messages_pkey"
        ]
    );
    // `botdb check --app-migrations docs/citus/migrations` finds the database as defined.
    let report = catalog::check_with(&t.config, &migrations).await.unwrap();
    assert!(report.is_clean(), "{report:?}");

    // botdb's operations, on the distributable schema.
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    for user_id in [1, 2] {
        let registered = h
            .send(RegisterUser {
                user_id,
                max_history_messages: Some(20),
                system_prompt: None,
            })
            .await
            .unwrap();
        assert!(registered.created);
    }
    let turn = |user_id: i64, n: i64| AppendTurn {
        user_id,
        chat_id: PRIVATE_CHAT,
        user_text: format!("question {n} of {user_id}"),
        reply_text: format!("answer {n} of {user_id}"),
        key: Some(RequestKey::telegram_update("scaling", user_id * 100 + n).unwrap()),
    };
    let mut first = Vec::new();
    for n in 1..=3 {
        for user_id in [1, 2] {
            first.push(h.send(turn(user_id, n)).await.unwrap());
        }
    }
    // A copy of a keyed request: answered with the stored turn (found by id), not stored again.
    let copy = h.send(turn(1, 2)).await.unwrap();
    assert_eq!(copy, first[2], "the copy gets the turn its key recorded");
    let count = |user_id: i64| repo::messages::count(t.db.pool(), user_id);
    assert_eq!(count(1).await.unwrap().live, 6, "the copy stored nothing");
    // The same key in one batch statement: taken once, its rows written once.
    let outcome = serde_json::json!({"batched": true});
    let key = RequestKey::new("scaling-batch", "k1").unwrap();
    let row_key = Some(RowKey {
        key: &key,
        outcome: &outcome,
    });
    let a = NewMessage::new(2, Role::User, "batched").unwrap();
    let b = NewMessage::new(2, Role::User, "batched copy").unwrap();
    let written = repo::messages::append_many(t.db.pool(), &[&a], &[row_key])
        .await
        .unwrap();
    assert!(written[0].is_some());
    let again = repo::messages::append_many(t.db.pool(), &[&b], &[row_key])
        .await
        .unwrap();
    assert!(again[0].is_none(), "a copy of a batched key is left out");
    let found = repo::messages::by_ids(t.db.pool(), &[a.id, b.id]).await.unwrap();
    assert_eq!(found[0].as_ref().map(|m| m.content.as_str()), Some("batched"));
    assert!(found[1].is_none());

    // History and context, newest first, in the order written.
    let history = h
        .send(GetHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            limit: None,
        })
        .await
        .unwrap();
    let contents: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        contents,
        [
            "answer 3 of 1",
            "question 3 of 1",
            "answer 2 of 1",
            "question 2 of 1",
            "answer 1 of 1",
            "question 1 of 1"
        ]
    );
    let context = h
        .send(GetContext {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            max_chars: Some(30),
            max_messages: None,
        })
        .await
        .unwrap();
    let contents: Vec<&str> = context.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        contents,
        ["answer 3 of 1", "question 3 of 1"],
        "the newest that fit in 30 characters"
    );
    // A settings change, then the history it bounds.
    let settings = h
        .send(UpdateSettings {
            user_id: 1,
            max_history_messages: Some(2),
            system_prompt: Some(Some("Be brief.".into())),
            key: None,
        })
        .await
        .unwrap();
    assert_eq!(settings.max_history_messages, 2);
    let history = h
        .send(GetHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(history.len(), 2);

    // Reset (soft delete), then the purge of what was soft-deleted long enough ago.
    let hidden = h
        .send(ClearHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            key: Some(RequestKey::new("scaling", "reset-1").unwrap()),
        })
        .await
        .unwrap();
    assert_eq!(hidden, 6);
    let counts = count(1).await.unwrap();
    assert_eq!((counts.live, counts.deleted), (0, 6));
    sqlx::query(
        "UPDATE messages SET deleted_at = deleted_at - interval '40 days' \
          WHERE user_id = $1 AND deleted_at IS NOT NULL",
    )
    .bind(1_i64)
    .execute(&mut conn)
    .await
    .unwrap();
    let report = retention::purge(
        &t.db,
        PurgeOptions::new(Duration::from_secs(30 * 86_400)),
        |_| {},
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!((report.due, report.purged, report.finished), (6, 6, true));
    let counts = count(1).await.unwrap();
    assert_eq!((counts.live, counts.deleted), (0, 0));
    assert_eq!(count(2).await.unwrap().live, 7, "another user's rows stay");

    // Export, then erasure.
    let mut out = Vec::new();
    let mut export_conn = t.db.pool().acquire().await.unwrap();
    let summary = repo::export::export_user(&mut export_conn, 2, &mut out, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.deleted), (7, 0));
    let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc["messages"].as_array().map(Vec::len), Some(7));
    drop(export_conn);
    let erasure = h
        .send(EraseUser {
            user_id: 2,
            key: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (erasure.messages, erasure.settings, erasure.request_keys),
        (7, 1, 4)
    );
    assert!(repo::users::get(t.db.pool(), 2).await.unwrap().is_none());
    h.shutdown().await;

    // Back to botdb's schema, exactly; the rows stay.
    let reverted = migrations.downgrade(&mut conn, 1, &policy()).await.unwrap();
    assert_eq!(
        reverted.iter().map(|s| (s.set, s.version)).collect::<Vec<_>>(),
        [(MigrationSet::App, 1)]
    );
    let after = Snapshot::read(&mut conn).await.unwrap();
    assert_eq!(botdb_schema.diff(&after), Vec::new());
    let report = catalog::check_with(&t.config, &Migrations::botdb())
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        messages_constraint(&mut conn, "messages_pkey").await,
        "PRIMARY KEY (id)"
    );
    assert!(
        repo::users::get(&mut conn, 1).await.unwrap().is_some(),
        "the rows stay"
    );
}

#[tokio::test]
async fn two_users_may_share_a_message_id_only_while_distributable_and_the_rollback_refuses_them() {
    let t = TestDb::new().await;
    let mut conn = t.conn().await;
    for user_id in [1, 2] {
        repo::users::create(&mut conn, user_id).await.unwrap();
    }
    let mine = NewMessage::new(1, Role::User, "mine").unwrap();
    let mut same_id = NewMessage::new(2, Role::User, "theirs").unwrap();
    same_id.id = mine.id;
    repo::messages::append(&mut conn, &mine).await.unwrap();
    // botdb's key: one id, one message, whoever's.
    let refused = repo::messages::append(&mut conn, &same_id).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");

    let migrations = citus().await;
    migrations.upgrade(&mut conn, None, &policy()).await.unwrap();
    // The distributable key (id, user_id): unique per user, as each shard can check.
    repo::messages::append(&mut conn, &same_id).await.unwrap();
    let refused = repo::messages::append(&mut conn, &same_id).await;
    assert!(
        matches!(refused, Err(Error::Conflict(_))),
        "still unique for one user: {refused:?}"
    );
    let before = Snapshot::read(&mut conn).await.unwrap();

    // The rollback cannot restore botdb's key over them: refused, nothing changed.
    let err = migrations.downgrade(&mut conn, 1, &policy()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("app 0001") && message.contains(&mine.id.to_string()),
        "names the migration and the shared id: {message}"
    );
    assert_eq!(before.diff(&Snapshot::read(&mut conn).await.unwrap()), Vec::new());
    let recorded: Vec<i64> = sqlx::query_scalar("SELECT version FROM _app_migrations")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(recorded, [1], "still applied");

    // Once the id is unique again, it rolls back.
    sqlx::query("UPDATE messages SET id = gen_random_uuid() WHERE id = $1 AND user_id = $2")
        .bind(mine.id)
        .bind(2_i64)
        .execute(&mut conn)
        .await
        .unwrap();
    migrations.downgrade(&mut conn, 1, &policy()).await.unwrap();
    assert_eq!(
        messages_constraint(&mut conn, "messages_pkey").await,
        "PRIMARY KEY (id)"
    );
}
