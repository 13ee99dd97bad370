//! The model's context within a budget (issue 15): the newest live messages that fit in
//! a number of characters and of messages, in one indexed query that reads the rows it
//! returns and at most one more.

use botdb::actors::{DbSystem, GetContext, GetHistory};
use botdb::config::ActorConfig;
use botdb::model::{Budget, Dialogue, NewMessage, PRIVATE_CHAT, Role};
use botdb::{Error, repo};
use serde_json::Value;

use crate::helpers::TestDb;

/// Writes `contents` (oldest first) into user `user`'s private dialogue.
async fn write(t: &TestDb, user: i64, contents: &[String]) {
    if repo::users::get(t.db.pool(), user).await.unwrap().is_none() {
        repo::users::create(t.db.pool(), user).await.unwrap();
    }
    for c in contents {
        let msg = NewMessage::new(user, Role::User, c.clone()).unwrap();
        repo::messages::append(t.db.pool(), &msg).await.unwrap();
    }
}

async fn context(t: &TestDb, user: i64, max_chars: i64, max_messages: Option<i64>) -> Vec<String> {
    let budget = Budget::new(max_chars, max_messages).unwrap();
    repo::messages::context(t.db.pool(), Dialogue::private(user), budget)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect()
}

fn text(len: usize, tag: char) -> String {
    std::iter::repeat_n(tag, len).collect()
}

#[tokio::test]
async fn the_context_is_the_newest_messages_that_fit_the_budget() {
    let t = TestDb::new().await;
    // Oldest first: a(10) b(20) c(30) d(40), so newest first: d c b a.
    let msgs: Vec<String> = [(10, 'a'), (20, 'b'), (30, 'c'), (40, 'd')]
        .iter()
        .map(|&(n, c)| text(n, c))
        .collect();
    write(&t, 1, &msgs).await;
    let heads = |v: Vec<String>| v.iter().map(|s| s.chars().next().unwrap()).collect::<String>();

    // Exactly at the budget: all four (40+30+20+10 = 100).
    assert_eq!(heads(context(&t, 1, 100, Some(1000)).await), "dcba");
    // One character short: the oldest no longer fits.
    assert_eq!(heads(context(&t, 1, 99, Some(1000)).await), "dcb");
    // Exactly d + c.
    assert_eq!(heads(context(&t, 1, 70, Some(1000)).await), "dc");
    // The message count bounds too.
    assert_eq!(heads(context(&t, 1, 100, Some(2)).await), "dc");
    // A message that does not fit ends the context, even if an older one would fit:
    // c (30) does not fit after d (40) in 60, and b, a are not taken past the gap.
    assert_eq!(heads(context(&t, 1, 60, Some(1000)).await), "d");
    // The newest message alone is longer than the budget: nothing fits.
    assert_eq!(context(&t, 1, 39, Some(1000)).await, Vec::<String>::new());
    assert_eq!(context(&t, 1, 0, Some(1000)).await, Vec::<String>::new());
    // Without a message limit, the user's setting (no settings row: the default 20).
    assert_eq!(heads(context(&t, 1, 1000, None).await), "dcba");
    repo::settings::upsert(t.db.pool(), 1, 3, None).await.unwrap();
    assert_eq!(heads(context(&t, 1, 1000, None).await), "dcb");
}

#[tokio::test]
async fn an_empty_or_cleared_history_gives_an_empty_context_and_characters_are_not_bytes() {
    let t = TestDb::new().await;
    repo::users::create(t.db.pool(), 2).await.unwrap();
    assert!(context(&t, 2, 1000, None).await.is_empty(), "no messages at all");
    // Unknown user: an empty context, like an empty history.
    assert!(context(&t, 99, 1000, None).await.is_empty());

    // 5 characters of 2 bytes each: the budget counts characters (content_length).
    write(&t, 2, &["héllo".to_string(), "ωωωωω".to_string()]).await;
    assert_eq!(context(&t, 2, 10, None).await.len(), 2, "10 characters, 16 bytes");
    repo::messages::clear_history(t.db.pool(), 2).await.unwrap();
    assert!(
        context(&t, 2, 1000, None).await.is_empty(),
        "soft-deleted rows are not context"
    );
    write(&t, 2, &["after".to_string()]).await;
    assert_eq!(context(&t, 2, 1000, None).await, vec!["after".to_string()]);
    // Another chat of the same user is another dialogue.
    let group = NewMessage {
        chat_id: -100,
        ..NewMessage::new(2, Role::User, "in the group").unwrap()
    };
    repo::messages::append(t.db.pool(), &group).await.unwrap();
    assert_eq!(context(&t, 2, 1000, None).await, vec!["after".to_string()]);
}

#[actix_rt::test]
async fn bad_budgets_are_typed_errors() {
    let t = TestDb::new().await;
    let handle = DbSystem::start(t.db.clone(), ActorConfig::default());
    for (max_chars, max_messages) in [
        (Some(-1), None),
        (Some(100_000_001), None),
        (None, Some(0)),
        (None, Some(1001)),
    ] {
        let err = handle
            .send(GetContext {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                max_chars,
                max_messages,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{max_chars:?} {max_messages:?}: {err}"
        );
    }
    let err = handle
        .send(GetContext {
            user_id: 0,
            chat_id: PRIVATE_CHAT,
            max_chars: None,
            max_messages: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    handle.shutdown().await;
}

/// The index probes the plan made on `messages` (the loops of every node that reads
/// it), and what those nodes are. Each probe is an index scan under `LIMIT 1`: it
/// reads at most one row, so probes bound the rows read. (`Actual Rows` is an average
/// per loop, rounded: loops are the exact count.)
fn probes_of_messages(plan: &Value) -> (f64, Vec<String>) {
    let mut total = 0.0;
    let mut kinds = Vec::new();
    let mut stack = vec![(plan, None::<&Value>)];
    while let Some((node, parent)) = stack.pop() {
        if node.get("Relation Name").and_then(Value::as_str) == Some("messages") {
            total += node["Actual Loops"].as_f64().unwrap_or(0.0);
            kinds.push(format!(
                "{} on {} under {}",
                node["Node Type"].as_str().unwrap_or("?"),
                node.get("Index Name").and_then(Value::as_str).unwrap_or("-"),
                parent.and_then(|p| p["Node Type"].as_str()).unwrap_or("-")
            ));
        }
        if let Some(children) = node.get("Plans").and_then(Value::as_array) {
            stack.extend(children.iter().map(|c| (c, Some(node))));
        }
    }
    (total, kinds)
}

async fn explain(t: &TestDb, users: &[i64], max_messages: Option<i64>, max_chars: i64) -> Value {
    let mut conn = t.conn().await;
    let explained: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        repo::messages::CONTEXT_SQL
    )))
    .bind(users)
    .bind(vec![PRIVATE_CHAT; users.len()])
    .bind(vec![max_messages; users.len()])
    .bind(20_i64)
    .bind(vec![max_chars; users.len()])
    .bind(1_i64 << 30)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    explained[0]["Plan"].clone()
}

#[tokio::test]
async fn the_plan_reads_only_the_rows_it_returns_plus_one() {
    let t = TestDb::new().await;
    // A long history: 2,000 messages of 100 characters.
    let msgs: Vec<String> = (0..2000).map(|i| format!("{i:0>100}")).collect();
    write(&t, 7, &msgs).await;
    write(&t, 8, &msgs[..50]).await;
    sqlx::query("ANALYZE messages")
        .execute(t.db.pool())
        .await
        .unwrap();

    // The budget stops it: 1,050 characters = 10 messages, then the 11th does not fit:
    // 11 probes, 11 rows read, 10 returned.
    let plan = explain(&t, &[7], Some(1000), 1050).await;
    let (probes, kinds) = probes_of_messages(&plan);
    assert_eq!(context(&t, 7, 1050, Some(1000)).await.len(), 10);
    assert_eq!(probes, 11.0, "returned 10, probed {probes}: {kinds:?}\n{plan:#}");
    assert!(
        kinds
            .iter()
            .all(|k| k == "Index Scan on ix_messages_dialogue_live under Limit"),
        "only one-row probes of the dialogue index, no other scan: {kinds:?}"
    );

    // The message limit stops it: 5 returned, 5 read (not one more).
    let plan = explain(&t, &[7], Some(5), 1_000_000).await;
    assert_eq!(probes_of_messages(&plan).0, 5.0, "{plan:#}");

    // Batched: two users at once, each read to its own bound (10 + 1 each).
    let plan = explain(&t, &[7, 8], Some(1000), 1050).await;
    assert_eq!(probes_of_messages(&plan).0, 11.0 + 11.0, "{plan:#}");
    // User 7 stops at its limit (60 read); user 8's 50 are all returned, and one more
    // probe finds nothing.
    let plan = explain(&t, &[7, 8], Some(60), 100_000).await;
    assert_eq!(probes_of_messages(&plan).0, 60.0 + 51.0, "{plan:#}");
}

#[actix_rt::test]
async fn batched_contexts_are_each_users_own_and_match_the_single_query() {
    let t = TestDb::new().await;
    for user in 1..=40_i64 {
        let msgs: Vec<String> = (0..30)
            .map(|i| {
                text(
                    10 + usize::try_from((user * 7 + i) % 50).unwrap(),
                    char::from(b'a' + u8::try_from(user % 26).unwrap()),
                )
            })
            .collect();
        write(&t, user, &msgs).await;
    }
    let handle = DbSystem::start(t.db.clone(), ActorConfig::default());
    let asks: Vec<_> = (1..=40_i64)
        .map(|user| {
            handle.send(GetContext {
                user_id: user,
                chat_id: PRIVATE_CHAT,
                max_chars: Some(300 + user * 10),
                max_messages: Some(25),
            })
        })
        .collect();
    let got = futures::future::join_all(asks).await;
    for (user, got) in (1..=40_i64).zip(got) {
        let got = got.unwrap();
        let alone = repo::messages::context(
            t.db.pool(),
            Dialogue::private(user),
            Budget::new(300 + user * 10, Some(25)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(got, alone, "user {user}");
        assert!(got.iter().all(|m| m.user_id == user));
        let chars: i64 = got.iter().map(|m| i64::from(m.content_length)).sum();
        assert!(chars <= 300 + user * 10);
        // It is the newest prefix of the history.
        let history = handle
            .send(GetHistory {
                user_id: user,
                chat_id: PRIVATE_CHAT,
                limit: Some(25),
            })
            .await
            .unwrap();
        assert_eq!(got[..], history[..got.len()], "user {user}");
        assert!(
            got.len() == 25 || chars + i64::from(history[got.len()].content_length) > 300 + user * 10,
            "user {user}: the next message would not have fit"
        );
    }
    let stats = handle.stats().await.unwrap();
    let ran = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert!(ran.batches > 0, "the contexts ran batched: {ran:?}");
    handle.shutdown().await;
}
