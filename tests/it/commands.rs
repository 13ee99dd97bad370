//! The bot's commands under their update's key: every command an update carries is
//! recorded once, a copy answers as the first did and writes nothing (after an erasure,
//! registers nobody), a copy naming another chat is refused, and a group never sees a
//! user's private system prompt. Updates are Telegram's own JSON shapes, parsed as the
//! webhook parses them.

use std::sync::Arc;

use botdb::actors::{DbHandle, DbSystem};
use botdb::bot::telegram::parse_update;
use botdb::bot::{Bot, BotError, EchoModel, Outcome, Update};
use botdb::config::AuditKey;
use botdb::{ActorConfig, Error};
use serde_json::json;
use sqlx::PgConnection;

use crate::helpers::TestDb;

/// A private chat's message, as Telegram sends it.
fn private(update_id: i64, user: i64, text: &str) -> Update {
    in_chat(
        update_id,
        user,
        json!({"id": user, "type": "private", "first_name": "Ann"}),
        text,
    )
}

/// A supergroup's message, as Telegram sends it (a negative `-100...` chat id).
fn group(update_id: i64, user: i64, text: &str) -> Update {
    in_chat(
        update_id,
        user,
        json!({"id": -1_001_234_567_890_i64, "title": "Team", "type": "supergroup"}),
        text,
    )
}

fn in_chat(update_id: i64, user: i64, chat: serde_json::Value, text: &str) -> Update {
    let body = json!({
        "update_id": update_id,
        "message": {
            "message_id": 1000 + update_id,
            "from": {"id": user, "is_bot": false, "first_name": "Ann", "language_code": "en"},
            "chat": chat,
            "date": 1_733_300_000,
            "text": text
        }
    });
    parse_update(body.to_string().as_bytes()).unwrap()
}

fn text(outcome: Outcome) -> String {
    match outcome {
        Outcome::Reply(m) => m.text,
        Outcome::Ignored(why) => panic!("ignored: {why}"),
    }
}

/// Rows of each table that name `user`: users, user_settings, messages, request_keys.
async fn rows_of(c: &mut PgConnection, user: i64) -> [i64; 4] {
    let mut out = [0; 4];
    for (i, sql) in [
        "SELECT count(*) FROM users WHERE id = $1",
        "SELECT count(*) FROM user_settings WHERE user_id = $1",
        "SELECT count(*) FROM messages WHERE user_id = $1",
        "SELECT count(*) FROM request_keys WHERE user_id = $1",
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = sqlx::query_scalar(sql)
            .bind(user)
            .fetch_one(&mut *c)
            .await
            .unwrap();
    }
    out
}

/// Everything about `user` that a copy must not change: the rows above, and the
/// settings and message states.
async fn state_of(c: &mut PgConnection, user: i64) -> String {
    let messages: Vec<(String, bool)> = sqlx::query_as(
        "SELECT content, deleted_at IS NOT NULL FROM messages WHERE user_id = $1 ORDER BY created_at, seq",
    )
    .bind(user)
    .fetch_all(&mut *c)
    .await
    .unwrap();
    let settings: Option<(i32, Option<String>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT max_history_messages, system_prompt, updated_at FROM user_settings WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(&mut *c)
    .await
    .unwrap();
    let updated: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT updated_at FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional(&mut *c)
            .await
            .unwrap();
    format!(
        "{:?} {messages:?} {settings:?} {updated:?}",
        rows_of(c, user).await
    )
}

async fn bot_on(t: &TestDb) -> (DbHandle, Bot) {
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let bot = Bot::new(h.clone(), Arc::new(EchoModel));
    (h, bot)
}

/// The commands of one user's session, each its own update: what a user would send.
const SESSION: [&str; 11] = [
    "/start",
    "hello there",
    "/reset",
    "/limit 30",
    "/prompt Be brief.",
    "/settings",
    "/history",
    "/help",
    "/limit 5000",
    "/whatever",
    "a text with a \0 byte, refused",
];

/// Each command of a session, then a copy of each (Telegram redelivers): the copy gets
/// the first's answer and writes nothing. Then `/forget yes`, then late copies of all:
/// ignored, and nothing of the user comes back (before, a copy of any command but a
/// text re-created the user and their settings).
#[actix_rt::test]
async fn copies_of_every_command_answer_as_the_first_and_after_forget_yes_register_nobody() {
    let t = TestDb::with(|b| b.audit_key(AuditKey::new("test-audit-key-0123456789").unwrap())).await;
    let (h, bot) = bot_on(&t).await;
    let mut c = t.conn().await;
    let user = 41;
    let mut first = Vec::new();
    for (i, command) in SESSION.iter().enumerate() {
        first.push(text(
            bot.handle(private(i as i64 + 1, user, command)).await.unwrap(),
        ));
    }
    assert!(
        first[0].starts_with("Welcome! You are registered."),
        "{}",
        first[0]
    );
    assert!(first[2].contains("2 messages forgotten"), "{}", first[2]);
    assert!(first[8].contains("from 1 to 1000"), "{}", first[8]);
    // A later message, which a copy of the reset must not hide.
    text(bot.handle(private(50, user, "after the reset")).await.unwrap());
    let before = state_of(&mut c, user).await;
    for (i, command) in SESSION.iter().enumerate() {
        let again = text(bot.handle(private(i as i64 + 1, user, command)).await.unwrap());
        match *command {
            // Shown as they are now (the same here: nothing changed them since).
            "/history" => assert!(again.contains("after the reset"), "{again}"),
            _ => assert_eq!(again, first[i], "a copy of {command}"),
        }
        assert_eq!(state_of(&mut c, user).await, before, "a copy of {command} wrote");
    }

    let done = text(bot.handle(private(60, user, "/forget yes")).await.unwrap());
    assert!(done.starts_with("Done"), "{done}");
    assert_eq!(rows_of(&mut c, user).await, [0; 4]);
    for (i, command) in SESSION.iter().enumerate() {
        assert_eq!(
            bot.handle(private(i as i64 + 1, user, command)).await.unwrap(),
            Outcome::Ignored("sent before its user was erased"),
            "a late copy of {command}"
        );
        assert_eq!(
            rows_of(&mut c, user).await,
            [0; 4],
            "a late copy of {command} registered the user"
        );
    }
    // The user comes back with a new update: registered afresh.
    let back = text(bot.handle(private(70, user, "/start")).await.unwrap());
    assert!(back.starts_with("Welcome! You are registered."), "{back}");
    h.shutdown().await;
}

/// `/settings@bot` in a supergroup answers the group: the user's own system prompt,
/// set in private, is not in it; in private it is.
#[actix_rt::test]
async fn settings_in_a_group_never_show_the_users_private_prompt() {
    let t = TestDb::new().await;
    let (h, bot) = bot_on(&t).await;
    let prompt = "You are the assistant of Ann Example, account 4711.";
    let set = text(
        bot.handle(private(1, 42, &format!("/prompt {prompt}")))
            .await
            .unwrap(),
    );
    assert_eq!(set, "System prompt set.");
    let Outcome::Reply(in_group) = bot
        .handle(group(2, 42, "/settings@botdb_test_bot"))
        .await
        .unwrap()
    else {
        panic!("no answer in the group")
    };
    assert_eq!(in_group.chat_id, -1_001_234_567_890);
    assert!(!in_group.text.contains("Ann Example"), "{}", in_group.text);
    assert!(
        in_group.text.contains("max_history_messages: 20"),
        "{}",
        in_group.text
    );
    assert!(
        in_group.text.contains("shown only in our private chat"),
        "{}",
        in_group.text
    );
    let in_private = text(bot.handle(private(3, 42, "/settings")).await.unwrap());
    assert!(in_private.contains(prompt), "{in_private}");
    h.shutdown().await;
}

/// An update id seen in one chat, arriving again naming another chat, is not a copy
/// (another bot under the same name, or a forged update): refused, nothing written, and
/// the first one's answer is never sent into the other chat.
#[actix_rt::test]
async fn a_copy_naming_another_chat_is_refused_and_never_answered_there() {
    let t = TestDb::new().await;
    let (h, bot) = bot_on(&t).await;
    let mut c = t.conn().await;
    let secret = "my private diary entry";
    let reply = text(bot.handle(private(1, 43, secret)).await.unwrap());
    assert!(reply.contains(secret), "{reply}");
    text(bot.handle(private(2, 43, "/reset")).await.unwrap());
    text(bot.handle(private(3, 43, "/settings")).await.unwrap());
    let before = state_of(&mut c, 43).await;
    for (update_id, what) in [(1, "a turn"), (2, "a reset"), (3, "a command")] {
        let copy = bot.handle(group(update_id, 43, "anything")).await;
        assert!(
            matches!(copy, Err(BotError::Db(Error::Conflict(_)))),
            "{what} replayed into another chat: {copy:?}"
        );
        let copy = bot.handle(group(update_id, 43, "/reset")).await;
        assert!(
            matches!(copy, Err(BotError::Db(Error::Conflict(_)))),
            "{what} replayed into another chat: {copy:?}"
        );
        assert_eq!(
            state_of(&mut c, 43).await,
            before,
            "{what}: the refused copy wrote"
        );
    }
    h.shutdown().await;
}

/// `serve` says at start which name its update ids are recorded under, and that bots
/// sharing a database need names of their own.
#[cfg(feature = "cli")]
#[actix_rt::test]
async fn serve_names_its_bot_at_start_and_says_each_bot_needs_its_own_name() {
    let t = TestDb::new().await;
    let mut served = crate::serve::spawn_serve_with(&t.url(), &[], &[("BOTDB_BOT_NAME", "shop_bot")]).await;
    let line = served
        .startup
        .iter()
        .find(|l| l.starts_with("bot name: "))
        .unwrap_or_else(|| panic!("no bot name line in {:?}", served.startup));
    assert!(line.starts_with("bot name: shop_bot "), "{line}");
    assert!(line.contains("its own BOTDB_BOT_NAME"), "{line}");
    served.child.kill().await.unwrap();
}
