//! A table of the application's own (`notes`, defined here, outside botdb's sources,
//! with its own migration in `tests/it/own_tables/`) behind its own actor, registered
//! beside botdb's: it gets botdb's guarantees, proven by the same scenarios
//! (`tests/it/scenarios.rs`) that botdb's `messages` table runs.

use botdb::actors::{DbHandle, DbRequest, DbSystem, GetUser, Ran, Table, run_batch};
use botdb::migrate::{MigrationSet, Migrations};
use botdb::{ActorConfig, Database, Error, Result};
use futures::future::LocalBoxFuture;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::helpers::TestDb;
use crate::scenarios::{self, Subject, register};

/// The application's `notes` table.
pub struct Notes;

impl Table for Notes {
    const NAME: &'static str = "notes";
}

/// Stores a note; answers its id.
#[derive(Clone, Debug)]
pub struct AddNote {
    pub user_id: i64,
    pub body: String,
}

impl actix::Message for AddNote {
    type Result = Result<i64>;
}

impl DbRequest for AddNote {
    type Output = i64;
    type Table = Notes;
    const NAME: &'static str = "AddNote";

    fn user_id(&self) -> i64 {
        self.user_id
    }

    async fn run(self, db: Database) -> Result<i64> {
        db.autocommit(async |c| {
            Ok(
                sqlx::query_scalar("INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING id")
                    .bind(self.user_id)
                    .bind(&self.body)
                    .fetch_one(c)
                    .await?,
            )
        })
        .await
    }

    fn batch_runner() -> Option<botdb::actors::BatchRunner<Self>> {
        Some(add_notes)
    }
}

/// Group commit for notes: the ready notes of many users in one INSERT, through botdb's
/// `run_batch` (a note the batch cannot take runs alone; a broken batch never writes
/// twice).
fn add_notes(batch: Vec<AddNote>, db: Database) -> LocalBoxFuture<'static, Vec<Ran<i64>>> {
    Box::pin(async move {
        let together = db.clone();
        run_batch(
            batch.into_iter().map(Ok).collect(),
            async move |notes: &[&AddNote]| {
                let users: Vec<i64> = notes.iter().map(|n| n.user_id).collect();
                let bodies: Vec<&str> = notes.iter().map(|n| n.body.as_str()).collect();
                let mut ids: Vec<i64> = together
                    .autocommit(async |c| {
                        Ok(sqlx::query_scalar(
                            "INSERT INTO notes (user_id, body)
                             SELECT u, b FROM UNNEST($1::bigint[], $2::text[]) WITH ORDINALITY AS x(u, b, n)
                              ORDER BY n
                             RETURNING id",
                        )
                        .bind(&users)
                        .bind(&bodies)
                        .fetch_all(c)
                        .await?)
                    })
                    .await?;
                // Identity values are drawn in insertion order: the i-th smallest id is
                // the i-th note.
                ids.sort_unstable();
                Ok(ids.into_iter().map(Some).collect())
            },
            move |note: &AddNote| {
                let (note, db) = (note.clone(), db.clone());
                Box::pin(note.run(db))
            },
        )
        .await
    })
}

/// The application's migrations: `tests/it/own_tables/`, embedded (as an application
/// embeds its own with `sqlx::migrate!("./migrations")`; built by hand here because the
/// macro's path is relative to the package, and this file is shared by two packages).
pub fn notes_migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "notes".into(),
            MigrationType::ReversibleUp,
            sqlx::AssertSqlSafe(include_str!("own_tables/0001_notes.up.sql")).into_sql_str(),
            false,
        ),
        Migration::new(
            1,
            "notes".into(),
            MigrationType::ReversibleDown,
            sqlx::AssertSqlSafe(include_str!("own_tables/0001_notes.down.sql")).into_sql_str(),
            false,
        ),
    ])
}

/// A database with botdb's migrations and the application's, applied together by
/// botdb (`Database::migrate_with`): botdb's first, then the application's.
async fn notes_database() -> TestDb {
    let t = TestDb::empty().await;
    let migrations = Migrations::botdb()
        .with_app(&notes_migrator())
        .expect("the notes migrations");
    let applied = t.db.migrate_with(&migrations).await.expect("migrating");
    assert_eq!(
        applied.last().map(|m| (m.set, m.version)),
        Some((MigrationSet::App, 1)),
        "the application's migration runs last"
    );
    t
}

/// botdb's tables and `notes`, each behind its actor.
fn start_with_notes(t: &TestDb, config: ActorConfig) -> DbHandle {
    DbSystem::builder(t.db.clone(), config)
        .botdb_tables()
        .table::<Notes>()
        .start()
}

/// The notes table, for the shared scenarios.
struct OwnNotes;

impl Subject for OwnNotes {
    type Append = AddNote;
    const BATCHED: bool = true;

    async fn database() -> TestDb {
        notes_database().await
    }

    fn start(t: &TestDb, config: ActorConfig) -> DbHandle {
        start_with_notes(t, config)
    }

    fn append(user_id: i64, body: String) -> AddNote {
        AddNote { user_id, body }
    }

    async fn stored(t: &TestDb, user: i64) -> Vec<String> {
        sqlx::query_scalar("SELECT body FROM notes WHERE user_id = $1 ORDER BY id")
            .bind(user)
            .fetch_all(&mut t.conn().await)
            .await
            .unwrap()
    }
}

#[actix_rt::test]
async fn own_table_a_thousand_requests_of_one_user_run_in_send_order() {
    scenarios::a_thousand_requests_of_one_user_run_in_send_order::<OwnNotes>().await;
}

#[actix_rt::test]
async fn own_table_many_users_keep_their_own_order_and_run_concurrently() {
    scenarios::many_users_keep_their_own_order_and_run_concurrently::<OwnNotes>().await;
}

#[actix_rt::test]
async fn own_table_past_the_bound_requests_are_overloaded_and_one_user_cannot_take_the_bound() {
    scenarios::past_the_bound_requests_are_overloaded_and_one_user_cannot_take_the_bound::<OwnNotes>().await;
}

#[actix_rt::test]
async fn own_table_shutdown_under_load_drains_every_accepted_request_then_closes_the_pool() {
    scenarios::shutdown_under_load_drains_every_accepted_request_then_closes_the_pool::<OwnNotes>().await;
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn own_table_a_panic_costs_its_request_and_the_actor_is_restarted() {
    scenarios::a_panic_costs_its_request_and_the_actor_is_restarted::<OwnNotes>().await;
}

#[actix_rt::test]
async fn a_table_that_was_not_registered_is_a_typed_error() {
    let t = notes_database().await;
    // botdb's tables only.
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    assert!(!h.serves::<Notes>());
    let sent = h
        .send(AddNote {
            user_id: 1,
            body: "x".into(),
        })
        .await;
    assert!(
        matches!(sent, Err(Error::TableNotRegistered { table: "notes" })),
        "{sent:?}"
    );
    assert!(matches!(
        h.table::<Notes>(),
        Err(Error::TableNotRegistered { table: "notes" })
    ));
    // Only the application's table: botdb's are not served.
    let own = DbSystem::builder(t.db.clone(), ActorConfig::default())
        .table::<Notes>()
        .start();
    assert!(matches!(
        own.send(GetUser { user_id: 1 }).await,
        Err(Error::TableNotRegistered { table: "users" })
    ));
    let stats = own.stats().await.unwrap();
    assert_eq!(
        stats.actors.iter().map(|a| a.actor).collect::<Vec<_>>(),
        ["notes"]
    );
}

#[actix_rt::test]
async fn a_table_handle_sends_its_tables_requests_and_shares_the_systems_shutdown() {
    let t = notes_database().await;
    let h = start_with_notes(&t, ActorConfig::default());
    register(&h, 1).await;
    let notes = h.table::<Notes>().unwrap();
    let first = notes
        .send(AddNote {
            user_id: 1,
            body: "remember the milk".into(),
        })
        .await
        .unwrap();
    let second = notes
        .send(AddNote {
            user_id: 1,
            body: "and the bread".into(),
        })
        .await
        .unwrap();
    assert!(second > first);
    // A note of a user botdb does not know: the foreign key refuses it, typed.
    let unknown = notes
        .send(AddNote {
            user_id: 999,
            body: "who?".into(),
        })
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
    let stats = h.stats().await.unwrap();
    let names: Vec<&str> = stats.actors.iter().map(|a| a.actor).collect();
    assert_eq!(
        names,
        ["users", "messages", "user_settings", "inbox", "outbox", "notes"]
    );
    let report = notes.system().shutdown().await;
    assert!(report.drained && report.pool_closed, "{report}");
    assert!(matches!(
        notes
            .send(AddNote {
                user_id: 1,
                body: "late".into()
            })
            .await,
        Err(Error::ShuttingDown)
    ));
}
