//! The reference's operations (spec section 6) through the repositories.

use botdb::model::{DEFAULT_MAX_HISTORY, Role, SettingsPatch};
use botdb::{Error, repo};

use crate::helpers::TestDb;

#[tokio::test]
async fn get_create_upsert_touch_a_user() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    assert_eq!(repo::users::get(pool, 10).await.unwrap(), None);
    let created = repo::users::create(pool, 10).await.unwrap();
    assert_eq!(repo::users::get(pool, 10).await.unwrap(), Some(created.clone()));
    assert!(matches!(
        repo::users::create(pool, 10).await,
        Err(Error::Conflict(_))
    ));

    let touched = repo::users::touch(pool, 10).await.unwrap();
    assert!(touched.updated_at > created.updated_at);
    assert_eq!(touched.created_at, created.created_at);
    let upserted = repo::users::upsert(pool, 10).await.unwrap();
    assert!(upserted.updated_at > touched.updated_at);
    assert_eq!(repo::users::upsert(pool, 11).await.unwrap().id, 11);
    assert!(matches!(
        repo::users::touch(pool, 12).await,
        Err(Error::NotFound { entity: "user", .. })
    ));
}

#[tokio::test]
async fn register_creates_user_and_settings_in_one_transaction() {
    let t = TestDb::new().await;
    let prompt = t.db.limits().system_prompt("Be brief.").unwrap();
    let (user, settings) =
        t.db.session(async |tx| repo::users::register(tx, 5, 50, Some(&prompt)).await)
            .await
            .unwrap();
    assert_eq!(
        (user.id, settings.user_id, settings.max_history_messages),
        (5, 5, 50)
    );
    assert_eq!(settings.system_prompt.as_deref(), Some("Be brief."));

    // Make the settings insert fail inside the database: the user row must go too.
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER test_refuse BEFORE INSERT ON user_settings FOR EACH ROW EXECUTE FUNCTION test_refuse();",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
    let mut conn = t.db.pool().acquire().await.unwrap();
    assert!(
        repo::users::register(&mut conn, 6, DEFAULT_MAX_HISTORY, None)
            .await
            .is_err()
    );
    assert_eq!(
        repo::users::get(&mut *conn, 6).await.unwrap(),
        None,
        "half-written registration"
    );
}

#[tokio::test]
async fn settings_update_max_history_and_system_prompt() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    repo::users::create(pool, 1).await.unwrap();
    assert_eq!(repo::settings::get(pool, 1).await.unwrap(), None);
    let s = repo::settings::upsert(pool, 1, 50, None).await.unwrap();
    assert_eq!(s.max_history_messages, 50);
    let s2 = repo::settings::set_max_history(pool, 1, 100).await.unwrap();
    assert_eq!(s2.max_history_messages, 100);
    assert!(
        s2.updated_at > s.updated_at,
        "updated_at refreshed by the trigger"
    );
    let prompt = t.db.limits().system_prompt("Talk like a pirate.").unwrap();
    let s3 = repo::settings::set_system_prompt(pool, 1, Some(prompt))
        .await
        .unwrap();
    assert_eq!(
        (s3.max_history_messages, s3.system_prompt.as_deref()),
        (100, Some("Talk like a pirate."))
    );
    let s4 = repo::settings::update(pool, 1, &SettingsPatch::system_prompt(None))
        .await
        .unwrap();
    assert_eq!((s4.max_history_messages, s4.system_prompt), (100, None));
    let s5 = repo::settings::upsert(pool, 1, 7, None).await.unwrap();
    assert_eq!((s5.max_history_messages, s5.created_at), (7, s.created_at));
    assert!(matches!(
        repo::settings::set_max_history(pool, 2, 10).await,
        Err(Error::NotFound {
            entity: "user_settings",
            ..
        })
    ));
    assert!(matches!(
        repo::settings::upsert(pool, 2, 10, None).await,
        Err(Error::NotFound { entity: "user", .. })
    ));
}

#[tokio::test]
async fn history_is_newest_first_limited_and_exact_within_one_transaction() {
    let t = TestDb::new().await;
    let limits = *t.db.limits();
    let written: Vec<_> = (0..30)
        .map(|i| {
            limits
                .message(
                    3,
                    if i % 2 == 0 { Role::User } else { Role::Assistant },
                    format!("message {i}"),
                )
                .unwrap()
        })
        .collect();
    // All 30 in ONE transaction: they share created_at, and must still come back in order.
    t.db.session(async |tx| {
        repo::users::create(&mut *tx, 3).await?;
        for m in &written {
            repo::messages::append(&mut *tx, m).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let history = repo::messages::history(t.db.pool(), 3, 20).await.unwrap();
    let got: Vec<String> = history.iter().map(|m| m.content.clone()).collect();
    let expected: Vec<String> = (10..30).rev().map(|i| format!("message {i}")).collect();
    assert_eq!(got, expected);
    assert!(
        history.iter().all(|m| m.created_at == history[0].created_at),
        "one transaction, one now()"
    );
    assert_eq!(history[0].role, Role::Assistant);
    assert_eq!(history[0].id, written[29].id);
}

#[tokio::test]
async fn append_computes_content_length_in_characters() {
    let t = TestDb::new().await;
    repo::users::create(t.db.pool(), 1).await.unwrap();
    let m = repo::messages::append(
        t.db.pool(),
        &t.db.limits().message(1, Role::User, "héllo 👋").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(m.content_length, 7);
    // A client that lies about content_length is corrected by the database.
    sqlx::query("INSERT INTO messages (id, user_id, role, content, content_length) VALUES (gen_random_uuid(), 1, 'user', 'abc', 99)")
        .execute(t.db.pool())
        .await
        .unwrap();
    let lens: Vec<i32> = sqlx::query_scalar("SELECT content_length FROM messages ORDER BY seq")
        .fetch_all(t.db.pool())
        .await
        .unwrap();
    assert_eq!(lens, vec![7, 3]);
}

#[tokio::test]
async fn clear_history_soft_deletes_and_keeps_the_rows() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    repo::users::create(pool, 9).await.unwrap();
    for i in 0..5 {
        repo::messages::append(
            pool,
            &t.db.limits().message(9, Role::User, format!("m{i}")).unwrap(),
        )
        .await
        .unwrap();
    }
    assert_eq!(repo::messages::clear_history(pool, 9).await.unwrap(), 5);
    assert_eq!(
        repo::messages::clear_history(pool, 9).await.unwrap(),
        0,
        "already hidden"
    );
    assert!(repo::messages::history(pool, 9, 20).await.unwrap().is_empty());
    let counts = repo::messages::count(pool, 9).await.unwrap();
    assert_eq!((counts.live, counts.deleted), (0, 5));
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = 9 AND deleted_at IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(rows, 5);
    // New messages after a reset form the new live history.
    repo::messages::append(pool, &t.db.limits().message(9, Role::User, "after").unwrap())
        .await
        .unwrap();
    let live = repo::messages::history(pool, 9, 20).await.unwrap();
    assert_eq!(
        live.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["after"]
    );
}

#[tokio::test]
async fn deleting_users_respects_the_stated_on_delete_rules() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    t.db.session(async |tx| repo::users::register(tx, 1, 20, None).await)
        .await
        .unwrap();
    t.db.session(async |tx| repo::users::register(tx, 2, 20, None).await)
        .await
        .unwrap();
    repo::messages::append(pool, &t.db.limits().message(2, Role::User, "keep me").unwrap())
        .await
        .unwrap();
    // No messages: the user goes, its settings cascade.
    assert!(repo::users::delete(pool, 1).await.unwrap());
    assert_eq!(repo::settings::get(pool, 1).await.unwrap(), None);
    // Messages: RESTRICT, history is never physically removed.
    assert!(matches!(
        repo::users::delete(pool, 2).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(repo::messages::count(pool, 2).await.unwrap().live, 1);
}

#[tokio::test]
async fn updated_at_is_refreshed_by_any_update() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    let u = repo::users::create(pool, 4).await.unwrap();
    // Even an UPDATE that tries to set an old timestamp gets now().
    sqlx::query("UPDATE users SET updated_at = '2000-01-01' WHERE id = 4")
        .execute(pool)
        .await
        .unwrap();
    let after = repo::users::get(pool, 4).await.unwrap().unwrap();
    assert!(after.updated_at > u.updated_at);
}

#[tokio::test]
async fn a_history_read_is_bounded_in_bytes_as_well_as_rows() {
    let t = TestDb::new().await;
    let limits = *t.db.limits();
    repo::users::create(t.db.pool(), 4).await.unwrap();
    // 30 messages of 1,000 bytes, 502 characters: bytes, not characters, count.
    for i in 0..30 {
        let text = format!("{i:03}{}x", "é".repeat(498));
        assert_eq!((text.len(), text.chars().count()), (1000, 502));
        repo::messages::append(t.db.pool(), &limits.message(4, Role::User, text).unwrap())
            .await
            .unwrap();
    }
    let bytes = |h: &[botdb::model::Message]| h.iter().map(|m| m.content.len()).sum::<usize>();
    let h = repo::messages::history_within(t.db.pool(), 4, 1000, 20_000)
        .await
        .unwrap();
    assert_eq!(h.len(), 20, "as many of the newest as fit in 20,000 bytes");
    assert!(bytes(&h) <= 20_000);
    assert!(h[0].content.starts_with("029"), "newest first");
    // Rows still bound it when they come first.
    assert_eq!(
        repo::messages::history_within(t.db.pool(), 4, 5, 20_000)
            .await
            .unwrap()
            .len(),
        5
    );
    // The newest message always comes back, even when it alone is over the bound.
    let one = repo::messages::history_within(t.db.pool(), 4, 1000, 1024)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    let none_fit = repo::messages::history_within(t.db.pool(), 4, 1000, 500)
        .await
        .unwrap();
    assert_eq!(none_fit.len(), 1);
    // The settings-driven read is bounded the same way.
    repo::settings::upsert(t.db.pool(), 4, 1000, None).await.unwrap();
    let per_settings = repo::messages::history_per_settings(t.db.pool(), 4, 10_000)
        .await
        .unwrap();
    assert_eq!(per_settings.len(), 10);
}
