//! A bot with a table of its own, on botdb: `cargo run --example reminders`.
//!
//! A Telegram webhook (`POST /telegram/webhook`, an Update as JSON, answered with a
//! `sendMessage`) where `/remind 10m text` stores a reminder through the bot's own
//! `reminders` actor and `/reminders` lists them; everything else (`/start`, `/reset`,
//! turns with the echo model...) is botdb's bot. The `reminders` table comes from the
//! example's migration (`examples/reminders/migrations`), applied after botdb's. Uses
//! `DATABASE_URL` / `DB_*`, or a throwaway local PostgreSQL when neither is set.
//! Ctrl-C: HTTP stops, every actor (botdb's and the reminders') drains, the pool closes.

mod reminders;

use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use botdb::actors::{DbSystem, TableHandle};
use botdb::bot::{Bot, BotError, EchoModel, Outcome};
use botdb::embedded::EmbeddedPostgres;
use botdb::migrate::Migrations;
use botdb::shutdown::Signals;
use botdb::{Config, Database};

use reminders::Reminders;

struct State {
    bot: Bot,
    reminders: TableHandle<Reminders>,
}

async fn webhook(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let update = match botdb::bot::telegram::parse_update(&body) {
        Ok(update) => update,
        Err(e) => return HttpResponse::BadRequest().body(e.to_string()),
    };
    match reminders::handle(&state.bot, &state.reminders, update).await {
        Ok(Outcome::Reply(message)) => HttpResponse::Ok().json(message),
        Ok(Outcome::Ignored(_)) => HttpResponse::Ok().finish(),
        Err(BotError::BadUpdate(e)) => HttpResponse::BadRequest().body(e),
        // Telegram retries a 5xx: the update is answered again later.
        Err(BotError::Db(e)) => HttpResponse::ServiceUnavailable().body(e.to_string()),
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    botdb::telemetry::init("info");
    let mut signals = Signals::install()?;
    let mut config = Config::from_env()?;
    let _local = if !config.server_configured() {
        let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
        config = pg.config_from(&config, "postgres");
        Some(pg)
    } else {
        None
    };
    let db = Database::connect(&config).await?;
    // botdb's migrations, then the example's own.
    db.migrate_with(&Migrations::botdb().with_app(&reminders::MIGRATIONS)?)
        .await?;
    // botdb's three tables and the example's, each behind its actor.
    let actors = DbSystem::builder(db, config.actors)
        .botdb_tables()
        .table::<Reminders>()
        .start();
    let state = web::Data::new(State {
        bot: Bot::new(actors.clone(), Arc::new(EchoModel)),
        reminders: actors.table::<Reminders>()?,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/telegram/webhook", web::post().to(webhook))
    })
    .disable_signals()
    .bind("127.0.0.1:8082")?
    .run();
    let update = |id: u32, text: &str| {
        format!(
            r#"curl -s -H 'Content-Type: application/json' -d '{{"update_id":{id},"message":{{"from":{{"id":42}},"chat":{{"id":42}},"text":"{text}"}}}}' http://127.0.0.1:8082/telegram/webhook"#
        )
    };
    println!(
        "try:\n  {}\n  {}",
        update(1, "/remind 10m stretch"),
        update(2, "/reminders")
    );
    let stop = server.handle();
    let running = actix_web::rt::spawn(server);

    signals.recv().await;
    stop.stop(true).await;
    let _ = running.await;
    let report = actors.shutdown().await;
    println!("shutdown: {report}");
    Ok(())
}
