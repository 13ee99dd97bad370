//! The turns of the modes that run botdb's own code: `actors`, `batched`, `keyed`,
//! `context` and `replica` through the actors, `direct` without them, `session` through
//! the repositories in one transaction.
//!
//! The first six send the same five requests (`UpsertUser`, `GetSettings`,
//! `AppendMessage`, a read, `AppendMessage`); they differ in where the requests go
//! ([`Runs`]: a [`DbHandle`] of some actor settings, or the [`Database`] directly) and
//! in what they carry (`keyed`: request keys) or read (`context`: [`Read::Context`]).
//! So `actors` vs `direct` is the actor layer's own cost, and `actors` vs `batched`
//! what group commit buys.

use botdb::actors::{AppendMessage, DbHandle, DbRequest, GetContext, GetHistory, GetSettings, UpsertUser};
use botdb::model::{PRIVATE_CHAT, RequestKey, Role};
use botdb::{Database, repo};

use crate::workers::Target;

/// Where a turn's requests go: through the actors, or run directly.
pub trait Runs {
    async fn exec<M: DbRequest>(&self, request: M) -> botdb::Result<M::Output>;
}

impl Runs for DbHandle {
    async fn exec<M: DbRequest>(&self, request: M) -> botdb::Result<M::Output> {
        self.send(request).await
    }
}

impl Runs for Database {
    async fn exec<M: DbRequest>(&self, request: M) -> botdb::Result<M::Output> {
        request.run(self.clone()).await
    }
}

/// Numbers the turns of the `keyed` mode, so that each append has a key of its own.
pub static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a turn reads between its two appends.
#[derive(Clone, Copy)]
pub enum Read {
    /// `GetHistory`: the user's last messages.
    History,
    /// `GetContext`: the model's context, the newest messages within the default budget
    /// (200,000 characters) and the user's limit, what the bot reads for a turn.
    Context,
}

/// The turn as five requests, each its own transaction (or batch). With `turn`, both
/// appends carry request keys (idempotency on, as the webhook's writes do).
pub async fn five_requests(t: &Target, to: &impl Runs, uid: i64, turn: Option<u64>) -> botdb::Result<()> {
    five_requests_reading(t, to, uid, turn, Read::History).await
}

/// [`five_requests`], reading `read` between the appends.
pub async fn five_requests_reading(
    t: &Target,
    to: &impl Runs,
    uid: i64,
    turn: Option<u64>,
    read: Read,
) -> botdb::Result<()> {
    let key = |side: &str| {
        turn.map(|n| RequestKey::new("bench", format!("{n}-{side}")))
            .transpose()
    };
    to.exec(UpsertUser { user_id: uid }).await?;
    let settings = to.exec(GetSettings { user_id: uid }).await?;
    to.exec(AppendMessage {
        user_id: uid,
        chat_id: PRIVATE_CHAT,
        role: Role::User,
        content: t.user_text.to_string(),
        key: key("user")?,
    })
    .await?;
    let limit = settings.map_or(20, |s| i64::from(s.max_history_messages));
    match read {
        Read::History => {
            to.exec(GetHistory {
                user_id: uid,
                chat_id: PRIVATE_CHAT,
                limit: Some(limit),
            })
            .await?;
        }
        Read::Context => {
            to.exec(GetContext {
                user_id: uid,
                chat_id: PRIVATE_CHAT,
                max_chars: None,
                max_messages: Some(limit),
            })
            .await?;
        }
    }
    to.exec(AppendMessage {
        user_id: uid,
        chat_id: PRIVATE_CHAT,
        role: Role::Assistant,
        content: t.reply_text.to_string(),
        key: key("reply")?,
    })
    .await?;
    Ok(())
}

/// The same turn through botdb's repositories, one session.
pub async fn session_turn(t: &Target, uid: i64) -> botdb::Result<()> {
    let limits = *t.db.limits();
    let user_msg = limits.message(uid, Role::User, &*t.user_text)?;
    let reply = limits.message(uid, Role::Assistant, &*t.reply_text)?;
    t.db.session(async |tx| {
        repo::users::upsert(&mut *tx, uid).await?;
        let settings = repo::settings::get(&mut *tx, uid).await?;
        repo::messages::append(&mut *tx, &user_msg).await?;
        let limit = settings.map_or(20, |s| i64::from(s.max_history_messages));
        repo::messages::history(&mut *tx, uid, limit).await?;
        repo::messages::append(&mut *tx, &reply).await?;
        Ok(())
    })
    .await
}

/// Stops actors `name` (`actors` or `batched`) and prints their report and how much
/// they batched.
///
/// # Errors
///
/// When their statistics cannot be read.
pub async fn report(name: &str, handle: &DbHandle) -> anyhow::Result<()> {
    let report = handle.shutdown().await;
    let stats = handle.stats().await?;
    let (batches, batched): (u64, u64) = stats
        .actors
        .iter()
        .fold((0, 0), |(b, r), a| (b + a.batches, r + a.batched_requests));
    eprintln!("{name}: {report}; {batches} batches carried {batched} requests");
    Ok(())
}
