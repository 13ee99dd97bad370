//! Requests served by the `users` actor.

use actix::Message;
use futures::future::LocalBoxFuture;
use serde::Serialize;

use crate::actors::batch::{self, Ran};
use crate::actors::request::{BatchRunner, DbRequest, Users, user_request};
use crate::db::Database;
use crate::error::Result;
use crate::model::{DEFAULT_MAX_HISTORY, User, UserSettings, check_user_id};
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
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Registered> {
        db.session(async |tx| {
            let user = repo::users::upsert(&mut *tx, self.user_id).await?;
            let (settings, created) =
                repo::settings::insert_if_absent(tx, self.user_id, DEFAULT_MAX_HISTORY, None).await?;
            Ok(Registered {
                user,
                settings,
                created,
            })
        })
        .await
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
                        db.session(async |tx| {
                            // Users whose row another transaction holds are left out
                            // (`None`): they go on alone, the others do not wait.
                            let users = repo::users::upsert_many(&mut *tx, &ids).await?;
                            let free: Vec<i64> = users.iter().flatten().map(|u| u.id).collect();
                            let created =
                                repo::settings::insert_defaults_many(&mut *tx, &free, DEFAULT_MAX_HISTORY)
                                    .await?;
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
                        })
                        .await
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
