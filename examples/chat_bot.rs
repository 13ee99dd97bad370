//! A bot of your own on botdb's actors, in one page: `cargo run --example chat_bot`.
//!
//! `POST /chat/{user_id}` with a text body answers and stores the turn;
//! `GET /history/{user_id}` lists what is remembered. Uses `DATABASE_URL` / `DB_*`, or
//! a throwaway local PostgreSQL when neither is set. Ctrl-C: HTTP stops, the actors
//! drain, the pool closes.

use actix_web::{App, HttpResponse, HttpServer, web};
use botdb::actors::{AppendTurn, DbHandle, DbSystem, EnsureUser, GetHistory};
use botdb::embedded::EmbeddedPostgres;
use botdb::model::PRIVATE_CHAT;
use botdb::shutdown::Signals;
use botdb::{Config, Database};

async fn chat(
    db: web::Data<DbHandle>,
    user: web::Path<i64>,
    text: String,
) -> Result<HttpResponse, botdb::Error> {
    let user_id = user.into_inner();
    let settings = db.send(EnsureUser { user_id }).await?.settings;
    let limit = i64::from(settings.max_history_messages);
    let history = db
        .send(GetHistory {
            user_id,
            chat_id: PRIVATE_CHAT,
            limit: Some(limit),
        })
        .await?;
    let reply = format!("echo: {text} ({} earlier messages remembered)", history.len());
    db.send(AppendTurn {
        user_id,
        chat_id: PRIVATE_CHAT,
        user_text: text,
        reply_text: reply.clone(),
        key: None,
    })
    .await?;
    Ok(HttpResponse::Ok().body(reply))
}

async fn history(db: web::Data<DbHandle>, user: web::Path<i64>) -> Result<HttpResponse, botdb::Error> {
    let messages = db
        .send(GetHistory {
            user_id: user.into_inner(),
            chat_id: PRIVATE_CHAT,
            limit: None,
        })
        .await?;
    Ok(HttpResponse::Ok().json(messages))
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    botdb::telemetry::init("info");
    let mut signals = Signals::install()?; // botdb owns SIGINT / SIGTERM
    let mut config = Config::from_env()?;
    let _local = if !config.server_configured() {
        let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
        config = pg.config_from(&config, "postgres");
        Some(pg)
    } else {
        None
    };
    let db = Database::connect(&config).await?;
    db.migrate().await?;
    let actors = DbSystem::start(db, config.actors);

    let data = web::Data::new(actors.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/chat/{user_id}", web::post().to(chat))
            .route("/history/{user_id}", web::get().to(history))
    })
    .disable_signals() // one owner of the signals: botdb
    .bind("127.0.0.1:8081")?
    .run();
    println!("try: curl -d 'hello' http://127.0.0.1:8081/chat/42");
    let stop = server.handle();
    let running = actix_web::rt::spawn(server);

    signals.recv().await;
    stop.stop(true).await; // 1. HTTP: no new requests, in-flight ones finish
    let _ = running.await;
    let report = actors.shutdown().await; // 2. actors drain, 3. the pool closes
    println!("shutdown: {report}");
    Ok(())
}
