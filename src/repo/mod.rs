//! SQL, one module per table: plain async functions over any executor (`&PgPool`, a
//! `&mut PgConnection` from [`Database::session`](crate::Database::session), a
//! transaction), so the same statement runs in a session, in a test, or behind an actor.
//!
//! Every statement uses bound parameters. Functions check their inputs before sending
//! anything, and map constraint violations to [`Error`] variants a caller
//! can act on (an unknown user is [`Error::NotFound`]).

pub mod erasures;
pub mod export;
pub mod inbox;
pub mod keys;
pub mod messages;
pub mod outbox;
pub mod settings;
pub mod users;

use crate::error::Error;

/// Maps a foreign-key violation on `users` to "user N not found", leaving others as they
/// are.
pub(crate) fn user_fk(user_id: i64) -> impl Fn(sqlx::Error) -> Error {
    move |err| match Error::from(err) {
        Error::NotFound {
            entity: "referenced row",
            ..
        } => Error::not_found("user", user_id),
        other => other,
    }
}
