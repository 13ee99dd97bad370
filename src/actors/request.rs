//! What makes a message a botdb request: [`DbRequest`], and the [`Table`] whose actor
//! serves it.

use std::future::Future;

use futures::future::LocalBoxFuture;

pub use crate::actors::batch::Ran;
use crate::db::Database;
use crate::error::Result;

/// Runs several requests of one type, all of different users, together: one statement
/// (group commit for writes, one round trip for reads) or one transaction. Returns one
/// [`Ran`] per request, in order: its answer, or, for a request that cannot run with
/// the others (its row locked by another transaction, an unknown user, a constraint),
/// the way to run it alone; the actor runs those separately, so they hold up neither
/// the batch's answers nor its users.
pub type BatchRunner<M> = fn(Vec<M>, Database) -> LocalBoxFuture<'static, Vec<Ran<<M as DbRequest>::Output>>>;

/// A typed request served by one table's actor, for one user, in one transaction.
///
/// Every request is an actix [`Message`](actix::Message) returning
/// `Result<Self::Output, botdb::Error>`. Its [`run`](DbRequest::run) is the whole unit of
/// work: a [`Database::session`] (several statements) or a
/// [`Database::autocommit`] of exactly one statement, which is one transaction too.
///
/// A request is `Clone`: when a row it needs is locked by another transaction past the
/// lock timeout, nothing of it was committed, and the actor runs it again (a fresh
/// clone) after backing off, within `BOTDB_LOCK_WAIT`.
pub trait DbRequest: actix::Message<Result = Result<Self::Output>> + Clone + Send + 'static {
    /// What a successful request returns.
    type Output: Send + 'static;
    /// The table whose actor serves it.
    type Table: Table;
    /// The request's name, in spans and stats.
    const NAME: &'static str;
    /// Tables it may write besides its own (`EnsureUser` creates settings): with
    /// replicas (`DATABASE_REPLICA_URL`), a committed write's WAL position is recorded
    /// for its user and each of these tables, and a later read of them by that user
    /// waits for a replica to have it ([`Database::acting_for`]).
    const ALSO_WRITES: &'static [&'static str] = &[];

    /// The user this request belongs to: requests of one user run one at a time, in
    /// the order they arrived.
    fn user_id(&self) -> i64;

    /// Carries the request out.
    fn run(self, db: Database) -> impl Future<Output = Result<Self::Output>> + 'static;

    /// How to run several requests of this type at once, when the actor has more than
    /// one ready at the same moment; `None` (the default): one at a time.
    fn batch_runner() -> Option<BatchRunner<Self>>
    where
        Self: Sized,
    {
        None
    }
}

/// A table served by one actor: botdb's ([`Users`], [`Messages`], [`Settings`],
/// [`Inbox`], [`Outbox`]) and any
/// of the application's own, registered with
/// [`DbSystemBuilder::table`](crate::actors::DbSystemBuilder::table). A marker type:
///
/// ```
/// /// The bot's `reminders` table.
/// struct Reminders;
/// impl botdb::actors::Table for Reminders {
///     const NAME: &'static str = "reminders";
/// }
/// ```
pub trait Table: Unpin + 'static {
    /// The actor's name (the table's), in spans, stats and errors.
    const NAME: &'static str;
}

/// The `users` table.
#[derive(Debug)]
pub struct Users;
/// The `messages` table.
#[derive(Debug)]
pub struct Messages;
/// The `user_settings` table.
#[derive(Debug)]
pub struct Settings;
/// The `inbox` table: updates recorded until their turn is done.
#[derive(Debug)]
pub struct Inbox;
/// The `outbox` table: messages to send through Telegram's Bot API.
#[derive(Debug)]
pub struct Outbox;

impl Table for Users {
    const NAME: &'static str = "users";
}
impl Table for Messages {
    const NAME: &'static str = "messages";
}
impl Table for Settings {
    const NAME: &'static str = "user_settings";
}
impl Table for Inbox {
    const NAME: &'static str = "inbox";
}
impl Table for Outbox {
    const NAME: &'static str = "outbox";
}

/// Defines a request that carries only a user id and runs one repository function for
/// that user as a single statement (one implicit transaction), optionally with a batch
/// runner. `$run` is the [`Database`] method that runs it: `read` for a read,
/// `autocommit` for a write.
macro_rules! user_request {
    ($(#[$doc:meta])* $name:ident, $table:ty, $output:ty, $run:ident $repo:path $(, batch = $runner:expr)?) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            /// The user.
            pub user_id: i64,
        }

        impl actix::Message for $name {
            type Result = crate::Result<$output>;
        }

        impl crate::actors::DbRequest for $name {
            type Output = $output;
            type Table = $table;
            const NAME: &'static str = stringify!($name);

            fn user_id(&self) -> i64 {
                self.user_id
            }

            async fn run(self, db: crate::Database) -> crate::Result<$output> {
                crate::actors::request::user_call!(
                    $run,
                    db,
                    self.user_id,
                    <$table as crate::actors::Table>::NAME,
                    async |c| $repo(c, self.user_id).await
                )
            }

            $(
                fn batch_runner() -> Option<crate::actors::BatchRunner<Self>> {
                    Some($runner)
                }
            )?
        }
    };
}

/// `db.read_replica(&[user], &[table], body)` for `read_replica`, `db.$run(body)`
/// otherwise.
macro_rules! user_call {
    (read_replica, $db:ident, $user:expr, $table:expr, $body:expr) => {
        $db.read_replica(&[$user], &[$table], $body).await
    };
    ($run:ident, $db:ident, $user:expr, $table:expr, $body:expr) => {
        $db.$run($body).await
    };
}

pub(crate) use {user_call, user_request};
