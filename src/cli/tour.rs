//! `botdb tour`: the reference's example operations, step by step.

use std::process::ExitCode;

use botdb::model::{Role, SettingsPatch};
use botdb::{Config, Database, repo};

pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    println!("database: {}", config.redacted_url());
    let db = Database::connect(config).await?;
    let applied = db.migrate().await?;
    println!("migrations applied now: {}", applied.len());

    let alice = 1_000_001_i64;
    let bob = 1_000_002_i64;
    let limits = *db.limits();
    let prompt = limits.system_prompt("You are a concise assistant.")?;
    let (user, settings) = db
        .session(async |tx| {
            // Idempotent across runs on a persistent database: start from a clean slate.
            if let Some(existing) = repo::settings::get(&mut *tx, alice).await? {
                return Ok((repo::users::touch(&mut *tx, alice).await?, existing));
            }
            repo::users::register(tx, alice, 50, Some(&prompt)).await
        })
        .await?;
    println!(
        "user {} with settings: max_history_messages={}, system_prompt={:?}",
        user.id, settings.max_history_messages, settings.system_prompt
    );
    let bob_user = db.session(async |tx| repo::users::upsert(tx, bob).await).await?;
    println!(
        "user {} created at {}",
        bob_user.id,
        bob_user.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    );

    let dialogue = [
        (Role::User, "Hi! What is PostgreSQL?"),
        (Role::Assistant, "An open-source relational database."),
        (Role::User, "And what is a connection pool?"),
        (
            Role::Assistant,
            "A set of open connections that requests borrow and return.",
        ),
        (Role::User, "Thanks!"),
        (Role::Assistant, "You're welcome."),
    ];
    let messages = dialogue
        .iter()
        .map(|(role, text)| limits.message(alice, *role, *text))
        .collect::<botdb::Result<Vec<_>>>()?;
    let written = db
        .session(async |tx| {
            let mut n = 0;
            for m in &messages {
                repo::messages::append(&mut *tx, m).await?;
                n += 1;
            }
            Ok(n)
        })
        .await?;
    println!("wrote {written} messages in one transaction");

    let history = db
        .session(async |tx| repo::messages::history(tx, alice, 20).await)
        .await?;
    println!("last {} live messages, newest first:", history.len());
    for m in &history {
        println!("  [{:<9}] {:>3} chars  {}", m.role, m.content_length, m.content);
    }

    let updated = db
        .session(async |tx| repo::settings::update(tx, alice, &SettingsPatch::max_history(100)?).await)
        .await?;
    println!(
        "max_history_messages {} -> {}",
        settings.max_history_messages, updated.max_history_messages
    );

    let hidden = db
        .session(async |tx| repo::messages::clear_history(tx, alice).await)
        .await?;
    let (counts, live) = db
        .session(async |tx| {
            let counts = repo::messages::count(&mut *tx, alice).await?;
            let live = repo::messages::history(&mut *tx, alice, 20).await?;
            Ok((counts, live))
        })
        .await?;
    println!(
        "soft-deleted {hidden} messages: live history now {} messages; {} kept as deleted rows",
        live.len(),
        counts.deleted
    );
    let touched = db.session(async |tx| repo::users::touch(tx, alice).await).await?;
    println!(
        "touched user {}: updated_at {}",
        touched.id,
        touched.updated_at.format("%H:%M:%S%.3f")
    );
    db.close().await;
    println!("pool closed");
    Ok(ExitCode::SUCCESS)
}
