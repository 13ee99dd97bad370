//! The reminders example (`examples/reminders/`): its table, migration, actor and
//! commands, driven through the same handler its webhook uses, on a real database.

#[path = "../../examples/reminders/reminders.rs"]
#[allow(dead_code)]
mod reminders;

use std::sync::Arc;

use botdb::actors::DbSystem;
use botdb::bot::{Bot, EchoModel, Outcome, Update};
use botdb::migrate::{MigrationSet, Migrations};
use botdb::{ActorConfig, Error};
use reminders::{AddReminder, Command, Reminders};

use crate::helpers::TestDb;

fn update(update_id: i64, user: i64, chat: i64, text: &str) -> Update {
    serde_json::from_value(serde_json::json!({
        "update_id": update_id,
        "message": {"from": {"id": user}, "chat": {"id": chat}, "text": text}
    }))
    .unwrap()
}

fn text(outcome: Outcome) -> String {
    match outcome {
        Outcome::Reply(m) => m.text,
        Outcome::Ignored(why) => panic!("ignored: {why}"),
    }
}

#[test]
fn the_commands_parse_and_bad_ones_get_the_usage() {
    assert_eq!(
        Command::parse("/remind 10m stretch your legs"),
        Some(Command::Remind {
            delay_secs: 600,
            text: "stretch your legs".into()
        })
    );
    assert_eq!(
        Command::parse(" /remind 3d x"),
        Some(Command::Remind {
            delay_secs: 3 * 86_400,
            text: "x".into()
        })
    );
    for bad in [
        "/remind",
        "/remind 10m",
        "/remind soon x",
        "/remind 0s x",
        "/remind 366d x",
        "/remind -5m x",
    ] {
        assert_eq!(Command::parse(bad), Some(Command::RemindUsage), "{bad}");
    }
    assert_eq!(Command::parse("/reminders"), Some(Command::List));
    assert_eq!(
        Command::parse("/reset"),
        None,
        "botdb's own commands go to botdb's bot"
    );
    assert_eq!(Command::parse("remind me"), None);
}

#[actix_rt::test]
async fn reminders_are_stored_through_their_own_actor_beside_botdbs_bot() {
    let t = TestDb::empty().await;
    let migrations = Migrations::botdb().with_app(&reminders::MIGRATIONS).unwrap();
    let applied = t.db.migrate_with(&migrations).await.unwrap();
    assert_eq!(
        applied.iter().filter(|m| m.set == MigrationSet::App).count(),
        1,
        "the example's migration"
    );
    let actors = DbSystem::builder(t.db.clone(), ActorConfig::default())
        .botdb_tables()
        .table::<Reminders>()
        .start();
    let bot = Bot::new(actors.clone(), Arc::new(EchoModel));
    let table = actors.table::<Reminders>().unwrap();
    let handle = async |u: Update| text(reminders::handle(&bot, &table, u).await.unwrap());

    assert_eq!(
        handle(update(1, 42, 42, "/remind 2h call mom")).await,
        "OK, in 2h: call mom"
    );
    assert_eq!(
        handle(update(2, 42, 42, "/remind 10m stretch")).await,
        "OK, in 10m: stretch"
    );
    // In a group, the same user's reminders are the group's.
    assert_eq!(
        handle(update(3, 42, -100, "/remind 1d standup")).await,
        "OK, in 1d: standup"
    );
    let list = handle(update(4, 42, 42, "/reminders")).await;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("1. in 9m") && lines[0].ends_with(": stretch"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("2. in 1h 59m") && lines[1].ends_with(": call mom"),
        "{list}"
    );
    assert_eq!(handle(update(5, 7, 7, "/reminders")).await, "No reminders.");
    assert!(
        handle(update(6, 42, 42, "/remind soon x"))
            .await
            .starts_with("Usage:")
    );
    let long = format!("/remind 1m {}", "x".repeat(501));
    assert!(
        handle(update(7, 42, 42, &long))
            .await
            .starts_with("Cannot: expected 1 to 500")
    );
    // Everything else is botdb's bot: a turn, stored in the user's dialogue.
    assert!(
        handle(update(8, 42, 42, "hello"))
            .await
            .starts_with("You said: hello")
    );

    // What is stored: the rows, due in the database's clock, and botdb's own tables.
    let mut conn = t.conn().await;
    let rows: Vec<(i64, i64, String, f64)> = sqlx::query_as(
        "SELECT user_id, chat_id, text, extract(epoch FROM due_at - created_at)::float8
           FROM reminders ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let rows: Vec<(i64, i64, &str, i64)> = rows
        .iter()
        .map(|(u, c, t, d)| (*u, *c, t.as_str(), d.round() as i64))
        .collect();
    assert_eq!(
        rows,
        [
            (42, 42, "call mom", 7200),
            (42, 42, "stretch", 600),
            (42, -100, "standup", 86_400)
        ]
    );
    let turns: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = 42")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(turns, 2, "the turn went to botdb's messages");

    // A bad request is refused by the actor itself, typed, nothing written.
    let refused = table
        .send(AddReminder {
            user_id: 42,
            chat_id: 42,
            delay_secs: 0,
            text: "x".into(),
        })
        .await;
    assert!(matches!(refused, Err(Error::InvalidInput { field: "delay", .. })));
    let stats = actors.stats().await.unwrap();
    let r = stats.actors.iter().find(|a| a.actor == "reminders").unwrap();
    assert_eq!(
        (r.completed, r.failed),
        (5, 2),
        "3 added, 2 lists; the long text and the zero delay refused: {r:?}"
    );
    let report = actors.shutdown().await;
    assert!(report.drained && report.pool_closed, "{report}");
}
