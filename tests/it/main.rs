//! botdb's integration tests: one binary, real PostgreSQL, a fresh database per test.

mod helpers;

mod actors;
mod app_migrations;
mod batching;
mod cli;
mod corpus;
mod errors;
mod faults;
mod fuzz;
mod http_hardening;
mod locks;
mod migrations;
mod once;
mod pool;
mod reference_schema;
mod repos;
mod secrets;
mod serve;
mod session;
mod takeover;
mod tls;
