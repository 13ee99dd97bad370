//! botdb's integration tests: one binary, real PostgreSQL, a fresh database per test.
//!
//! Built with botdb's default features, everything runs. Built without them
//! (`cargo test --no-default-features`, the library core alone), the tests of the
//! command, the server and the embedded cluster are left out, and the rest needs
//! `BOTDB_TEST_DATABASE_URL`.

// Without the default features some shared helpers and imports go unused.
#![cfg_attr(not(feature = "cli"), allow(unused_imports, dead_code))]

mod helpers;

mod actors;
#[cfg(feature = "cli")]
mod app_migrations;
mod batching;
#[cfg(feature = "cli")]
mod cli;
mod commands;
mod context;
#[cfg(feature = "cli")]
mod corpus;
mod erase;
mod errors;
#[cfg(feature = "cli")]
mod export;
#[cfg(feature = "cli")]
mod failover;
#[cfg(feature = "cli")]
mod faults;
mod fuzz;
#[cfg(feature = "embedded")]
mod hosts;
mod house;
#[cfg(feature = "cli")]
mod http_hardening;
mod key_owners;
#[cfg(feature = "cli")]
mod lifecycle_cli;
#[cfg(feature = "cli")]
mod llm;
#[cfg(feature = "embedded")]
mod lock_waits;
mod locks;
mod migrations;
mod once;
mod own_tables;
#[cfg(feature = "cli")]
mod pipeline;
mod pool;
mod purge;
#[cfg(feature = "cli")]
mod reference_schema;
mod reminders_example;
#[cfg(feature = "embedded")]
mod replicas;
mod repos;
mod scaling;
mod scenarios;
#[cfg(feature = "cli")]
mod secrets;
#[cfg(feature = "cli")]
mod serve;
mod session;
#[cfg(feature = "cli")]
mod silent_network;
#[cfg(feature = "embedded")]
mod standby;
#[cfg(feature = "cli")]
mod takeover;
#[cfg(feature = "cli")]
mod telegram;
#[cfg(feature = "cli")]
mod tls;
mod turns;
