//! The turn pipeline's requests (a bot that answers through Telegram's Bot API): an
//! update recorded before the webhook's 200 ([`RecordUpdate`]), the updates an
//! instance runs next ([`ClaimTurns`]) and the end of one ([`FinishTurn`]: its reply
//! in the outbox, in the same transaction); the messages it sends next
//! ([`ClaimSends`]) and what Telegram answered ([`RecordSend`]); leases kept alive and
//! given back; and the depth of both tables ([`PipelineDepth`]).
//!
//! Requests that are not one user's (the claims, the leases, the depth) run in lane 0:
//! one at a time, like one user's requests, beside every user's.

use std::time::Duration;

use actix::Message as ActixMessage;
use futures::future::LocalBoxFuture;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::actors::batch::{self, Ran};
use crate::actors::request::{BatchRunner, DbRequest, Inbox, Outbox, Table};
use crate::db::Database;
use crate::error::Result;
use crate::model::{Dialogue, RequestKey, check_user_id};
use crate::repo;
use crate::repo::inbox::{Claimed, NewUpdate, Recorded};
use crate::repo::outbox::Sent;

/// The lane of the requests that belong to no user.
const SYSTEM_LANE: i64 = 0;

/// Record an update before the webhook answers 200 (unless it was recorded before: a
/// copy, or one whose user was erased). Batched: the updates of many users ready
/// together in one statement, one commit.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Recorded>")]
pub struct RecordUpdate {
    /// The sender.
    pub user_id: i64,
    /// The chat it was sent in (Telegram's `chat.id`).
    pub chat_id: i64,
    /// Telegram's update id.
    pub update_id: i64,
    /// The update's key (`RequestKey::telegram_update(bot, update_id)`).
    pub key: RequestKey,
    /// The update as Telegram sent it.
    pub payload: Value,
}

impl RecordUpdate {
    fn prepare(&self) -> Result<Dialogue> {
        Dialogue::new(self.user_id, self.chat_id).checked()
    }
}

impl DbRequest for RecordUpdate {
    type Output = Recorded;
    type Table = Inbox;
    const NAME: &'static str = "RecordUpdate";
    fn user_id(&self) -> i64 {
        self.user_id
    }

    async fn run(self, db: Database) -> Result<Recorded> {
        let dialogue = self.prepare()?;
        let update = NewUpdate {
            key: &self.key,
            update_id: self.update_id,
            user_id: dialogue.user_id,
            chat_id: dialogue.chat_id,
            payload: &self.payload,
        };
        let mut recorded = db
            .autocommit(async |c| repo::inbox::record_many(c, &[update]).await)
            .await?;
        Ok(recorded.pop().unwrap_or(Recorded::Copy))
    }

    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(record_batch)
    }
}

fn record_batch(requests: Vec<RecordUpdate>, db: Database) -> LocalBoxFuture<'static, Vec<Ran<Recorded>>> {
    Box::pin(async move {
        let prepared = requests.into_iter().map(|r| Ok((r.prepare()?, r))).collect();
        let alone = db.clone();
        batch::run(
            prepared,
            async |wanted: &[&(Dialogue, RecordUpdate)]| {
                let updates: Vec<NewUpdate> = wanted
                    .iter()
                    .map(|(dialogue, r)| NewUpdate {
                        key: &r.key,
                        update_id: r.update_id,
                        user_id: dialogue.user_id,
                        chat_id: dialogue.chat_id,
                        payload: &r.payload,
                    })
                    .collect();
                let recorded = db
                    .autocommit(async |c| repo::inbox::record_many(c, &updates).await)
                    .await?;
                Ok(recorded.into_iter().map(Some).collect())
            },
            move |(_, request): &(Dialogue, RecordUpdate)| Box::pin(request.clone().run(alone.clone())),
        )
        .await
    })
}

/// Lease the next updates to run to `owner`: for each dialogue with nothing running,
/// its first open update (see [`repo::inbox::claim`]).
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Vec<Claimed>>")]
pub struct ClaimTurns {
    /// The instance claiming.
    pub owner: Uuid,
    /// At most this many.
    pub limit: i64,
    /// For this long, unless renewed.
    pub lease: Duration,
}

impl DbRequest for ClaimTurns {
    type Output = Vec<Claimed>;
    type Table = Inbox;
    const NAME: &'static str = "ClaimTurns";
    fn user_id(&self) -> i64 {
        SYSTEM_LANE
    }
    async fn run(self, db: Database) -> Result<Vec<Claimed>> {
        db.autocommit(async |c| repo::inbox::claim(c, self.owner, self.limit, self.lease).await)
            .await
    }
}

/// Which table's leases a [`RenewLeases`] or [`ReleaseLeases`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leased {
    /// Updates being run.
    Turns,
    /// Messages being sent.
    Sends,
}

/// Extend the leases `owner` holds on the rows `ids` of `what` (those it is working on:
/// a row it gave up on is not renewed, and its lease expires) to `lease` from now; the
/// number renewed.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<u64>")]
pub struct RenewLeases {
    /// The instance.
    pub owner: Uuid,
    /// Updates or messages.
    pub what: Leased,
    /// The rows.
    pub ids: Vec<i64>,
    /// From now.
    pub lease: Duration,
}

impl DbRequest for RenewLeases {
    type Output = u64;
    type Table = Inbox;
    const NAME: &'static str = "RenewLeases";
    fn user_id(&self) -> i64 {
        SYSTEM_LANE
    }
    async fn run(self, db: Database) -> Result<u64> {
        db.autocommit(async |c| match self.what {
            Leased::Turns => repo::inbox::renew(c, self.owner, &self.ids, self.lease).await,
            Leased::Sends => repo::outbox::renew(c, self.owner, &self.ids, self.lease).await,
        })
        .await
    }
}

/// Give back the leases `owner` holds on `what` (a shutdown that leaves work
/// unfinished, or one row it gave up on): another instance takes it at once.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<u64>")]
pub struct ReleaseLeases {
    /// The instance.
    pub owner: Uuid,
    /// Updates or messages.
    pub what: Leased,
    /// Only this row, as claimed by this attempt; `None`: every row `owner` holds.
    pub only: Option<(i64, i32)>,
}

impl DbRequest for ReleaseLeases {
    type Output = u64;
    type Table = Inbox;
    const NAME: &'static str = "ReleaseLeases";
    fn user_id(&self) -> i64 {
        SYSTEM_LANE
    }
    async fn run(self, db: Database) -> Result<u64> {
        db.autocommit(async |c| match self.what {
            Leased::Turns => repo::inbox::release(c, self.owner, self.only).await,
            Leased::Sends => repo::outbox::release(c, self.owner, self.only).await,
        })
        .await
    }
}

/// A reply to send.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Telegram's chat to send it to.
    pub chat_id: i64,
    /// Its messages, in order (each within Telegram's 4,096 characters).
    pub parts: Vec<String>,
    /// Why it is sent (`reply`, `command`, `model failed: timeout`...), no content.
    pub note: String,
}

/// How a [`FinishTurn`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The update is done and its reply in the outbox.
    Done,
    /// Its user was erased meanwhile (`/forget yes`, an operator): the reply is in the
    /// outbox, owned by nobody (it tells the user so).
    Erased,
    /// This owner no longer holds the update (its lease expired and another took it
    /// over, or finished it): nothing was written.
    Fenced,
}

/// End update `id` for the owner and attempt that claimed it: in ONE transaction the
/// update leaves the inbox, its reply (if any) enters the outbox, and its key is
/// recorded if the turn did not record it (a turn the model failed, an ignored update),
/// so that a copy arriving later does nothing.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Finished>")]
pub struct FinishTurn {
    /// The inbox row.
    pub id: i64,
    /// The sender (the lane: after the user's other requests).
    pub user_id: i64,
    /// The dialogue's chat, as stored.
    pub chat_id: i64,
    /// The claim being finished.
    pub owner: Uuid,
    /// Its number ([`Claimed::attempts`]).
    pub attempt: i32,
    /// The update's key.
    pub key: RequestKey,
    /// What to send, if anything.
    pub reply: Option<Reply>,
}

impl DbRequest for FinishTurn {
    type Output = Finished;
    type Table = Inbox;
    const NAME: &'static str = "FinishTurn";
    const ALSO_WRITES: &'static [&'static str] = &[Outbox::NAME];
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Finished> {
        let user_id = check_user_id(self.user_id)?;
        db.session(async |tx| {
            let finished = if repo::inbox::finish(&mut *tx, self.id, self.owner, self.attempt).await? {
                Finished::Done
            } else if repo::inbox::exists(&mut *tx, self.id).await?
                || repo::users::get(&mut *tx, user_id).await?.is_some()
            {
                // Another owner holds it, or finished it: its reply is theirs to send.
                return Ok(Finished::Fenced);
            } else {
                // Gone with its user: an erasure removed the user's updates.
                Finished::Erased
            };
            let owner = match finished {
                Finished::Done => repo::users::get(&mut *tx, user_id).await?.map(|u| u.id),
                _ => None,
            };
            if let Some(reply) = &self.reply {
                repo::outbox::enqueue(&mut *tx, owner, reply.chat_id, &reply.parts, &reply.note).await?;
            }
            if owner.is_some() {
                let outcome = json!({ "finished": true, "chat": self.chat_id });
                sqlx::query(
                    "INSERT INTO request_keys (scope, key, user_id, outcome) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (scope, key) DO NOTHING",
                )
                .bind(self.key.scope())
                .bind(self.key.key())
                .bind(user_id)
                .bind(&outcome)
                .execute(&mut *tx)
                .await?;
            }
            Ok(finished)
        })
        .await
    }
}

/// Lease the next messages to send to `owner`: each chat's first unsent one that is due
/// (see [`repo::outbox::claim`]).
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Vec<repo::outbox::Claimed>>")]
pub struct ClaimSends {
    /// The instance claiming.
    pub owner: Uuid,
    /// At most this many.
    pub limit: i64,
    /// For this long, unless renewed.
    pub lease: Duration,
}

impl DbRequest for ClaimSends {
    type Output = Vec<repo::outbox::Claimed>;
    type Table = Outbox;
    const NAME: &'static str = "ClaimSends";
    fn user_id(&self) -> i64 {
        SYSTEM_LANE
    }
    async fn run(self, db: Database) -> Result<Vec<repo::outbox::Claimed>> {
        db.autocommit(async |c| repo::outbox::claim(c, self.owner, self.limit, self.lease).await)
            .await
    }
}

/// Record what sending message `id` did, for the owner and attempt that claimed it;
/// `false` when they no longer hold it.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<bool>")]
pub struct RecordSend {
    /// The outbox row.
    pub id: i64,
    /// Its chat (the lane: one chat's records in order).
    pub chat_id: i64,
    /// The claim.
    pub owner: Uuid,
    /// Its number ([`repo::outbox::Claimed::attempts`]).
    pub attempt: i32,
    /// What happened.
    pub sent: Sent,
}

impl DbRequest for RecordSend {
    type Output = bool;
    type Table = Outbox;
    const NAME: &'static str = "RecordSend";
    fn user_id(&self) -> i64 {
        self.chat_id
    }
    async fn run(self, db: Database) -> Result<bool> {
        db.autocommit(async |c| repo::outbox::record(c, self.id, self.owner, self.attempt, &self.sent).await)
            .await
    }
}

/// The pipeline's depth, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Depth {
    /// Updates recorded and not done.
    pub inbox: i64,
    /// Of which running.
    pub running: i64,
    /// How long the oldest waiting (not running) update has waited.
    pub oldest_waiting: Option<Duration>,
    /// Messages not yet sent.
    pub outbox: i64,
    /// How long the oldest of them has waited.
    pub oldest_unsent: Option<Duration>,
}

/// How deep the inbox and the outbox are (all instances').
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Depth>")]
pub struct PipelineDepth;

impl DbRequest for PipelineDepth {
    type Output = Depth;
    type Table = Inbox;
    const NAME: &'static str = "PipelineDepth";
    fn user_id(&self) -> i64 {
        SYSTEM_LANE
    }
    async fn run(self, db: Database) -> Result<Depth> {
        db.read(async |c| {
            let (inbox, running, oldest_waiting) = repo::inbox::depth(&mut *c).await?;
            let (outbox, oldest_unsent) = repo::outbox::depth(&mut *c).await?;
            Ok(Depth {
                inbox,
                running,
                oldest_waiting,
                outbox,
                oldest_unsent,
            })
        })
        .await
    }
}
