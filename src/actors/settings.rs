//! Requests served by the `user_settings` actor.

use actix::Message;
use futures::future::LocalBoxFuture;

use crate::actors::batch::{self, Ran};
use crate::actors::once;
use crate::actors::request::{DbRequest, Settings, Table, user_request};
use crate::db::Database;
use crate::error::Result;
use crate::model::{RequestKey, SettingsPatch, UserSettings, check_history_limit, check_user_id};
use crate::repo;

user_request!(
    /// Get a user's settings, or `None`. Batched: the settings of many users in one query.
    GetSettings, Settings, Option<UserSettings>, read_replica repo::settings::get, batch = get_batch
);

fn get_batch(
    requests: Vec<GetSettings>,
    db: Database,
) -> LocalBoxFuture<'static, Vec<Ran<Option<UserSettings>>>> {
    Box::pin(async move {
        let prepared = requests.into_iter().map(|r| check_user_id(r.user_id)).collect();
        batch::run(
            prepared,
            async |ids: &[&i64]| {
                let ids: Vec<i64> = ids.iter().map(|id| **id).collect();
                let mut found = db
                    .read_replica(&ids, &[Settings::NAME], async |c| {
                        repo::settings::get_many(c, &ids).await
                    })
                    .await?;
                Ok(ids.iter().map(|id| Some(found.remove(id))).collect())
            },
            {
                let db = db.clone();
                move |&user_id: &i64| Box::pin(GetSettings { user_id }.run(db.clone()))
            },
        )
        .await
    })
}

/// Change some of a user's settings; fields left `None` stay as they are.
#[derive(Clone, Debug, Default, Message)]
#[rtype(result = "crate::Result<UserSettings>")]
pub struct UpdateSettings {
    /// The user.
    pub user_id: i64,
    /// New history length (1 to 1000).
    pub max_history_messages: Option<i64>,
    /// `Some(None)` clears the system prompt, `Some(Some(p))` sets it.
    pub system_prompt: Option<Option<String>>,
    /// Makes the request happen at most once (an idempotency key): a copy changes
    /// nothing and answers with the user's settings as they are.
    pub key: Option<RequestKey>,
}

impl DbRequest for UpdateSettings {
    type Output = UserSettings;
    type Table = Settings;
    const NAME: &'static str = "UpdateSettings";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<UserSettings> {
        let patch = SettingsPatch {
            max_history_messages: self
                .max_history_messages
                .map(|n| check_history_limit("max_history_messages", n))
                .transpose()?,
            system_prompt: self
                .system_prompt
                .map(|p| p.map(|p| db.limits().system_prompt(p)).transpose())
                .transpose()?,
        };
        settings_once(&db, self.key, self.user_id, async |c| {
            repo::settings::update(c, self.user_id, &patch).await
        })
        .await
    }
}

/// Set (`Some`) or clear (`None`) a user's system prompt.
#[derive(Clone, Debug, Message)]
#[rtype(result = "crate::Result<UserSettings>")]
pub struct SetSystemPrompt {
    /// The user.
    pub user_id: i64,
    /// The prompt.
    pub prompt: Option<String>,
    /// Makes the request happen at most once (an idempotency key).
    pub key: Option<RequestKey>,
}

impl DbRequest for SetSystemPrompt {
    type Output = UserSettings;
    type Table = Settings;
    const NAME: &'static str = "SetSystemPrompt";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<UserSettings> {
        let prompt = self.prompt.map(|p| db.limits().system_prompt(p)).transpose()?;
        settings_once(&db, self.key, self.user_id, async |c| {
            repo::settings::set_system_prompt(c, self.user_id, prompt).await
        })
        .await
    }
}

/// A settings change: one statement, or, under a key, at most once. The key's outcome
/// says only that settings changed (`{"settings": true}`), never what they became: a
/// system prompt must not outlive the user's next change or their erasure in
/// `request_keys`. A copy answers with the user's settings as they are.
async fn settings_once(
    db: &Database,
    key: Option<RequestKey>,
    user_id: i64,
    change: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<UserSettings>,
) -> Result<UserSettings> {
    if key.is_none() {
        return db.autocommit(change).await;
    }
    once::once(
        db,
        key.as_ref(),
        user_id,
        change,
        |_| serde_json::json!({ "settings": true }),
        async |tx, recorded| {
            if recorded.get("settings").is_none() {
                return Err(once::mismatch(&recorded));
            }
            repo::settings::get(&mut *tx, user_id)
                .await?
                .ok_or_else(|| crate::error::Error::not_found("user_settings", user_id))
        },
    )
    .await
}
