//! `botdb erase-user USER_ID`: a user erased for good (GDPR Art. 17), through the same
//! request the bot's `/forget yes` sends, and the audit row that proves it.

use std::process::ExitCode;

use botdb::actors::{DbSystem, EraseUser};
use botdb::{Config, Database};

pub async fn run(config: &Config, user_id: i64) -> anyhow::Result<ExitCode> {
    botdb::model::check_user_id(user_id)?;
    if config.audit_key.is_none() {
        anyhow::bail!(
            "BOTDB_AUDIT_KEY is not set: an erasure leaves an audit row keyed with it (a secret of 16 bytes \
             or more, kept like a password), so users cannot be erased without it"
        );
    }
    let db = Database::connect(config).await?;
    // Through the users actor, as the bot does: serialised with this process's other
    // requests of the user, and by the user's row lock with everyone else's.
    let actors = DbSystem::start(db, config.actors);
    let done = actors.send(EraseUser { user_id, key: None }).await;
    actors.shutdown().await;
    let erasure = done?;
    println!(
        "erased user {user_id}: {} messages, {} settings row(s), {} request key(s); audit row {} at {}",
        erasure.messages,
        erasure.settings,
        erasure.request_keys,
        erasure.id,
        erasure.erased_at.to_rfc3339()
    );
    Ok(ExitCode::SUCCESS)
}
