//! botdb's integration tests: one binary, real PostgreSQL, a fresh database per test.

mod helpers;

mod actors;
mod cli;
mod errors;
mod migrations;
mod pool;
mod repos;
mod serve;
mod session;
