//! Taking over a database the reference Python bot made (SQLAlchemy models, Alembic),
//! and the plan `botdb migrate` follows on any database.
//!
//! A database with the bot's tables and no botdb bookkeeping (`_sqlx_migrations`) is
//! recognised from its catalog, object by object, against the schema the reference's
//! models and migrations give (Alembic revision `e9844b552bfa`, naive timestamps, or
//! `b03417887b93`, timezone-aware; with or without its `content_length` migration,
//! whose column may hold NULLs for older rows). Anything else (a column added by hand,
//! a type changed) is refused with the differences listed, and nothing is touched.
//!
//! A recognised database is taken over in four steps:
//! 1. **data repairs**, in batches of [`REPAIR_BATCH`] rows, each its own short
//!    transaction (row locks only, nothing blocks readers or the reference's writes
//!    for long; idempotent, so an interrupted takeover can be run again):
//!    `content_length` computed in characters where it is NULL or wrong, NULL
//!    timestamps filled;
//! 2. **normalisation**, one transaction, catalog changes only (no table rewrite): the
//!    users' id sequence dropped (Telegram assigns ids), `role` from `varchar` to
//!    `text` (binary-coercible), timestamps and `content_length` made `NOT NULL`, the
//!    reference's indexes created if missing: the database is then exactly botdb's
//!    schema at migration 0001, 0002 or 0003;
//! 3. those migrations are **recorded** as applied (same transaction);
//! 4. the rest are **applied** as on any database, one transaction each.
//!
//! `alembic_version` is kept, untouched: the reference bot keeps working on the
//! database during a side-by-side move (botdb's schema accepts its writes), and its
//! Alembic still finds its head. Drop it once the Python bot is retired; `botdb check`
//! ignores it.
//!
//! Layout, in the order `botdb migrate` goes (each file imports only those above it):
//! - `reference`: a reference database as recognised ([`Reference`] and its parts);
//! - `recognise`: what a database is ([`inspect`], [`Found`]), from its catalog;
//! - `plan`: what will be done ([`plan`], [`plan_with`], [`Plan`] and its text);
//! - `carry_out`: doing it ([`migrate()`], [`migrate_with`], [`Done`]): repairs, the
//!   normalising transaction and its record, then the migrations;
//! - `database`: [`Database::migrate`](crate::Database::migrate) and
//!   [`Database::migrate_with`](crate::Database::migrate_with), which run
//!   `migrate_with` on a dedicated connection.
//!
//! This is the top of the schema layer: it imports `migrate`, `catalog` and `db`, and
//! none of them imports it.

mod carry_out;
mod database;
mod plan;
mod recognise;
mod reference;

pub use carry_out::{Done, migrate, migrate_with};
pub use plan::{Plan, REPAIR_BATCH, TAKEN_OVER_AT, plan, plan_with};
pub use recognise::{Found, inspect};
pub use reference::{Conflict, ContentLength, Reference, Rename, Rows};
