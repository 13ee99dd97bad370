//! `BeginTurn`: a bot's turn before the model in one request (the update's stored turn,
//! or the user made sure of and their context), batched across users; and the bot's
//! text turn as two requests to the actors instead of four.

use std::sync::Arc;

use botdb::ActorConfig;
use botdb::actors::{
    AppendTurn, BeginTurn, Begun, DbHandle, DbSystem, EraseUser, GetContext, RegisterUser, Turn,
};
use botdb::bot::{Bot, EchoModel, Outcome, Update};
use botdb::config::AuditKey;
use botdb::model::{PRIVATE_CHAT, RequestKey};
use botdb::{Error, repo};
use futures::future::join_all;

use crate::helpers::TestDb;

fn key(k: i64) -> RequestKey {
    RequestKey::telegram_update("bot", k).unwrap()
}

fn begin(user_id: i64, k: i64, context_for: Option<i64>) -> BeginTurn {
    BeginTurn {
        user_id,
        chat_id: PRIVATE_CHAT,
        key: key(k),
        context_for,
    }
}

fn turn(user_id: i64, k: i64, text: &str) -> AppendTurn {
    AppendTurn {
        user_id,
        chat_id: PRIVATE_CHAT,
        user_text: text.into(),
        reply_text: format!("re: {text}"),
        key: Some(key(k)),
    }
}

fn update(update_id: i64, user: i64, text: &str) -> Update {
    serde_json::from_value(serde_json::json!({
        "update_id": update_id,
        "message": {"from": {"id": user}, "chat": {"id": user}, "text": text}
    }))
    .unwrap()
}

fn new(begun: Begun) -> (botdb::actors::Registered, Option<Vec<botdb::model::Message>>) {
    match begun {
        Begun::New { registered, context } => (registered, context),
        Begun::Stored(turn) => panic!("a stored turn: {turn:?}"),
    }
}

async fn completed(h: &DbHandle) -> u64 {
    h.stats()
        .await
        .unwrap()
        .actors
        .iter()
        .map(|a| a.completed + a.failed)
        .sum()
}

#[actix_rt::test]
async fn a_bot_text_turn_is_two_requests_to_the_actors() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let bot = Bot::new(h.clone(), Arc::new(EchoModel));
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let before = completed(&h).await;
        let Outcome::Reply(reply) = bot.handle(update(i as i64 + 1, 7, text)).await.unwrap() else {
            panic!("no reply")
        };
        // The context the model saw: every earlier message, then the new one.
        assert!(
            reply.text.contains(&format!("context: {} messages", 2 * i + 1)),
            "{}",
            reply.text
        );
        // BeginTurn (key, user, settings, context) and AppendTurn: where there were
        // TurnOf, EnsureUser, GetContext and AppendTurn.
        assert_eq!(completed(&h).await - before, 2, "requests for turn {i}");
    }
    // A copy of the last update: one request (BeginTurn answers the stored turn), the
    // same reply, nothing stored again.
    let before = completed(&h).await;
    let Outcome::Reply(copy) = bot.handle(update(3, 7, "three")).await.unwrap() else {
        panic!("no reply")
    };
    assert!(copy.text.contains("context: 5 messages"), "{}", copy.text);
    assert_eq!(completed(&h).await - before, 1);
    assert_eq!(
        repo::messages::count(&mut t.conn().await, 7).await.unwrap().live,
        6
    );
    h.shutdown().await;
}

#[actix_rt::test]
async fn turns_begun_together_run_as_one_batch_and_each_gets_its_own_context() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    // Users 1..=24: user u has u earlier turns and a limit of 2 + u % 5 messages; user
    // 25 is new.
    for u in 1..=24 {
        h.send(RegisterUser {
            user_id: u,
            max_history_messages: Some(2 + (u % 5) as i32),
            system_prompt: None,
        })
        .await
        .unwrap();
        for k in 0..u {
            h.send(turn(
                u,
                u * 100 + k,
                &format!("m{k} {}", "x".repeat(k as usize * 10)),
            ))
            .await
            .unwrap();
        }
    }
    // The new message's size: user 3's takes all but 50 characters of the budget, so
    // their context is what fits in 50.
    let budget = t.db.limits().context_max_chars as i64;
    let size = |u: i64| if u == 3 { budget - 50 } else { 200 };
    // The users actor's batches, the requests they carried, and those split out of a
    // batch to run alone.
    let batching = |s: botdb::actors::SystemStats| {
        let users = s.actors.iter().find(|a| a.actor == "users").cloned().unwrap();
        (users.batches, users.batched_requests, users.batch_splits)
    };
    let before = batching(h.stats().await.unwrap());
    // One batch, deterministically: `h.send` files its request in the actor's mailbox
    // when it is called (admission and actix's `Addr::send`, unbounded mailbox), and
    // `join_all` calls all 25 before anything is polled; the actor runs on this same
    // thread (the test's arbiter), so it finds all 25 in one turn of its mailbox (it
    // reads the mailbox empty before its engine runs), and at the end of that turn
    // launches its pending BeginTurns as one batch: 25, within `batch_max` (64), with no
    // batch of the actor in flight (everything before was awaited).
    let begun = join_all((1..=25).map(|u| h.send(begin(u, u * 100 + 99, Some(size(u)))))).await;
    let after = batching(h.stats().await.unwrap());
    // Answered by that one batch itself: none run alone (a batch that failed as a whole,
    // its key lookup say, would split every one of them).
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (1, 25, 0),
        "(batches, requests in them, split out to run alone): one batch of all 25"
    );
    for (u, begun) in (1..=25).zip(begun) {
        let (registered, context) = new(begun.unwrap());
        assert_eq!(registered.user.id, u);
        assert_eq!(registered.created, u == 25, "user {u}");
        let expected = if u == 25 {
            Vec::new()
        } else {
            h.send(GetContext {
                user_id: u,
                chat_id: PRIVATE_CHAT,
                max_chars: Some(budget - size(u)),
                max_messages: Some(i64::from(registered.settings.max_history_messages) - 1),
            })
            .await
            .unwrap()
        };
        assert_eq!(context, Some(expected), "user {u}");
    }
    // Without a size, no context is read.
    let (_, context) = new(h.send(begin(5, 599, None)).await.unwrap());
    assert_eq!(context, None);
    // A message that fills the budget leaves no room for any.
    let (_, context) = new(h.send(begin(5, 598, Some(budget))).await.unwrap());
    assert_eq!(context, Some(Vec::new()));
    h.shutdown().await;
}

#[actix_rt::test]
async fn the_keys_of_a_batch_are_judged_each_in_order() {
    let t = TestDb::new().await;
    let mut c = t.conn().await;
    for user_id in [1, 2] {
        repo::users::upsert(&mut c, user_id).await.unwrap();
    }
    let outcome = serde_json::json!({"messages": []});
    assert_eq!(
        repo::keys::claim(&mut c, &key(10), 1, &outcome).await.unwrap(),
        None
    );
    assert_eq!(
        repo::keys::claim(&mut c, &key(11), 2, &outcome).await.unwrap(),
        None
    );
    // An erased user's key: owned by nobody.
    sqlx::query("UPDATE request_keys SET user_id = NULL WHERE key = $1")
        .bind(key(11).key())
        .execute(&mut c)
        .await
        .unwrap();
    let (k10, k11, k12) = (key(10), key(11), key(12));
    let judged =
        repo::keys::outcomes_of_many(&mut c, &[(&k12, 1), (&k10, 1), (&k11, 2), (&k10, 2), (&k12, 2)])
            .await
            .unwrap();
    assert_eq!(judged.len(), 5);
    assert!(matches!(judged[0], Ok(None)), "{:?}", judged[0]);
    assert_eq!(judged[1].as_ref().unwrap(), &Some(outcome));
    assert!(
        matches!(&judged[2], Err(Error::NotFound { entity, .. }) if *entity == repo::keys::ERASED_ENTITY),
        "{:?}",
        judged[2]
    );
    assert!(matches!(judged[3], Err(Error::Conflict(_))), "{:?}", judged[3]);
    assert!(matches!(judged[4], Ok(None)), "{:?}", judged[4]);
}

#[actix_rt::test]
async fn a_recorded_key_answers_its_turn_and_registers_nobody_once_erased() {
    let t = TestDb::with(|b| b.audit_key(AuditKey::new("test-audit-key-0123456789").unwrap())).await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    for user_id in [41, 42] {
        h.send(botdb::actors::EnsureUser { user_id }).await.unwrap();
    }
    let stored: Turn = h.send(turn(41, 1, "hello")).await.unwrap();
    h.send(turn(42, 2, "hi")).await.unwrap();
    // Alone and in a batch with fresh turns: the stored one comes back as it was.
    let begun = join_all([
        h.send(begin(41, 1, Some(10))),
        h.send(begin(42, 3, Some(10))),
        h.send(begin(43, 4, Some(10))),
    ])
    .await;
    let mut begun = begun.into_iter().map(Result::unwrap);
    assert_eq!(begun.next(), Some(Begun::Stored(stored.clone())));
    assert_eq!(new(begun.next().unwrap()).1.unwrap().len(), 2, "user 42's turn");
    assert!(new(begun.next().unwrap()).0.created, "user 43 is new");
    assert_eq!(h.send(begin(41, 1, None)).await.unwrap(), Begun::Stored(stored));
    // A key is never answered to another user, alone or beside others.
    let e = h.send(begin(42, 1, Some(10))).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    let mut begun = join_all([h.send(begin(42, 1, Some(10))), h.send(begin(45, 6, Some(10)))])
        .await
        .into_iter();
    let conflict = begun.next().unwrap();
    assert!(matches!(conflict, Err(Error::Conflict(_))), "{conflict:?}");
    assert!(new(begun.next().unwrap().unwrap()).0.created);
    // Once the user is erased, a copy of their update is NotFound and registers nobody,
    // alone or beside others.
    h.send(EraseUser {
        user_id: 41,
        key: None,
    })
    .await
    .unwrap();
    let begun = join_all([h.send(begin(41, 1, Some(10))), h.send(begin(44, 5, Some(10)))]).await;
    let mut begun = begun.into_iter();
    match begun.next().unwrap() {
        Err(Error::NotFound { entity, .. }) => assert_eq!(entity, repo::keys::ERASED_ENTITY),
        other => panic!("{other:?}"),
    }
    assert!(new(begun.next().unwrap().unwrap()).0.created);
    assert_eq!(repo::users::get(&mut t.conn().await, 41).await.unwrap(), None);
    h.shutdown().await;
}
