//! Requests served by the `users` actor.

use actix::Message;
use futures::future::LocalBoxFuture;
use serde::Serialize;

use crate::actors::batch::{self, Ran};
use crate::actors::once;
use crate::actors::request::{BatchRunner, DbRequest, Messages, Settings, Table, Users, user_request};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::model::{DEFAULT_MAX_HISTORY, Erasure, RequestKey, User, UserSettings, check_user_id};
use crate::repo;

user_request!(
    /// Get a user, or `None`.
    GetUser, Users, Option<User>, read repo::users::get
);

user_request!(
    /// Create a user; [`Conflict`](crate::Error::Conflict) if it exists.
    CreateUser, Users, User, autocommit repo::users::create
);

user_request!(
    /// Create the user if absent, else refresh its `updated_at`. Batched: the upserts of
    /// many users in one statement.
    UpsertUser, Users, User, autocommit repo::users::upsert, batch = upsert_batch
);

fn upsert_batch(requests: Vec<UpsertUser>, db: Database) -> LocalBoxFuture<'static, Vec<Ran<User>>> {
    Box::pin(async move {
        let prepared = requests.into_iter().map(|r| check_user_id(r.user_id)).collect();
        batch::run(
            prepared,
            async |ids: &[&i64]| {
                let ids: Vec<i64> = ids.iter().map(|id| **id).collect();
                db.autocommit(async |c| repo::users::upsert_many(c, &ids).await)
                    .await
            },
            {
                let db = db.clone();
                move |&user_id: &i64| Box::pin(UpsertUser { user_id }.run(db.clone()))
            },
        )
        .await
    })
}

user_request!(
    /// Refresh a user's `updated_at`; [`NotFound`](crate::Error::NotFound) if absent.
    TouchUser, Users, User, autocommit repo::users::touch
);

/// A user and their settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registered {
    /// The user row.
    pub user: User,
    /// The settings row.
    pub settings: UserSettings,
    /// `true` when this request created them.
    pub created: bool,
}

/// Create a user together with their settings, in one transaction;
/// [`Conflict`](crate::Error::Conflict) if the user exists.
#[derive(Clone, Debug, Message)]
#[rtype(result = "crate::Result<Registered>")]
pub struct RegisterUser {
    /// The user.
    pub user_id: i64,
    /// History length; [`DEFAULT_MAX_HISTORY`] when `None`.
    pub max_history_messages: Option<i32>,
    /// Own system prompt.
    pub system_prompt: Option<String>,
}

impl DbRequest for RegisterUser {
    type Output = Registered;
    type Table = Users;
    const NAME: &'static str = "RegisterUser";
    const ALSO_WRITES: &'static [&'static str] = &[Settings::NAME];
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Registered> {
        let prompt = self
            .system_prompt
            .map(|p| db.limits().system_prompt(p))
            .transpose()?;
        let max = self.max_history_messages.unwrap_or(DEFAULT_MAX_HISTORY);
        db.session(async |tx| {
            let (user, settings) = repo::users::register(tx, self.user_id, max, prompt.as_ref()).await?;
            Ok(Registered {
                user,
                settings,
                created: true,
            })
        })
        .await
    }
}

/// What a bot does on every update: make sure the user and their settings exist
/// (default settings for a user never seen), in one transaction, and return both.
#[derive(Clone, Debug, Message)]
#[rtype(result = "crate::Result<Registered>")]
pub struct EnsureUser {
    /// The user.
    pub user_id: i64,
}

impl DbRequest for EnsureUser {
    type Output = Registered;
    type Table = Users;
    const NAME: &'static str = "EnsureUser";
    const ALSO_WRITES: &'static [&'static str] = &[Settings::NAME];
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Registered> {
        db.session(async |tx| ensure(tx, self.user_id).await).await
    }

    /// Many users made sure of in one transaction (three statements for all).
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let prepared = requests.into_iter().map(|r| check_user_id(r.user_id)).collect();
                batch::run(
                    prepared,
                    async |ids: &[&i64]| {
                        let ids: Vec<i64> = ids.iter().map(|id| **id).collect();
                        db.session(async |tx| ensure_many(tx, &ids).await).await
                    },
                    {
                        let db = db.clone();
                        move |&user_id: &i64| Box::pin(EnsureUser { user_id }.run(db.clone()))
                    },
                )
                .await
            })
        })
    }
}

/// `EnsureUser`'s work inside the caller's transaction: the user upserted, default
/// settings if they had none.
pub(crate) async fn ensure(tx: &mut sqlx::PgConnection, user_id: i64) -> Result<Registered> {
    let user = repo::users::upsert(&mut *tx, user_id).await?;
    let (settings, created) =
        repo::settings::insert_if_absent(tx, user_id, DEFAULT_MAX_HISTORY, None).await?;
    Ok(Registered {
        user,
        settings,
        created,
    })
}

/// [`ensure`] for many users in three statements, answers in the order of `ids`. Users
/// whose row another transaction holds are left out (`None`): they go on alone, the
/// others do not wait.
pub(crate) async fn ensure_many(tx: &mut sqlx::PgConnection, ids: &[i64]) -> Result<Vec<Option<Registered>>> {
    let users = repo::users::upsert_many(&mut *tx, ids).await?;
    let free: Vec<i64> = users.iter().flatten().map(|u| u.id).collect();
    let created = repo::settings::insert_defaults_many(&mut *tx, &free, DEFAULT_MAX_HISTORY).await?;
    let mut settings = repo::settings::get_many(&mut *tx, &free).await?;
    Ok(users
        .into_iter()
        .map(|user| {
            let user = user?;
            let created = created.contains(&user.id);
            settings.remove(&user.id).map(|settings| Registered {
                user,
                settings,
                created,
            })
        })
        .collect())
}

/// Erase a user for good (GDPR Art. 17): their messages (live and soft-deleted, every
/// chat), settings, request keys and user row, in one transaction, with an audit row
/// (`erasures`: when, how many of each, under a keyed hash of the id) that proves it
/// happened. Serialised with the user's other writes by the user's row lock, across
/// actors and instances: a turn in flight either committed before (its messages are
/// erased too) or finds no user ([`NotFound`](crate::Error::NotFound)); nothing is left
/// half-way. An unknown user is `NotFound` (no audit row). Needs `BOTDB_AUDIT_KEY`
/// ([`Error::Config`] without it). The user's request keys stay until the key
/// retention, owned by nobody: a copy of a request they made before (this one too,
/// with a `key`) is [`NotFound`](crate::Error::NotFound) (entity
/// [`ERASED_ENTITY`](crate::repo::keys::ERASED_ENTITY)) and does nothing, even if the
/// user came back since.
#[derive(Clone, Debug, Message)]
#[rtype(result = "crate::Result<Erasure>")]
pub struct EraseUser {
    /// The user.
    pub user_id: i64,
    /// Makes the request happen at most once (an idempotency key).
    pub key: Option<RequestKey>,
}

impl DbRequest for EraseUser {
    type Output = Erasure;
    type Table = Users;
    const NAME: &'static str = "EraseUser";
    const ALSO_WRITES: &'static [&'static str] = &[Settings::NAME, Messages::NAME];
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Erasure> {
        let user_id = check_user_id(self.user_id)?;
        let audit = db.audit_key().cloned().ok_or_else(|| {
            Error::config(
                "BOTDB_AUDIT_KEY",
                "not set: an erasure leaves an audit row keyed with it, so users cannot be erased without it",
            )
        })?;
        let erased = std::cell::Cell::new(false);
        let done = once::once(
            &db,
            self.key.as_ref(),
            user_id,
            async |tx| {
                let erasure = repo::erasures::erase(tx, &audit, user_id).await?;
                erased.set(true);
                Ok(erasure)
            },
            // The key was scrubbed with the user's others: it names nobody, and a copy
            // finds it erased (`outcome_of`), never this outcome.
            |_| serde_json::json!({ "erased": true }),
            async |_, recorded| Err(once::mismatch(&recorded)),
        )
        .await?;
        if erased.get() {
            db.counters().erased(u64::try_from(done.messages).unwrap_or(0));
        }
        Ok(done)
    }
}
