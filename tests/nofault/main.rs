//! botdb's actor and webhook tests, on a build of botdb without fault injection (see
//! `Cargo.toml`). The test files are botdb's own (`tests/it/`), included as they are;
//! the few tests that arm a fault are compiled out here.

// The shared helpers serve tests this package does not include.
#![allow(dead_code)]

#[path = "../it/helpers.rs"]
mod helpers;

#[path = "../it/actors.rs"]
mod actors;
#[path = "../it/batching.rs"]
mod batching;
#[path = "../it/commands.rs"]
mod commands;
#[path = "../it/failover.rs"]
mod failover;
#[path = "../it/http_hardening.rs"]
mod http_hardening;
#[path = "../it/key_owners.rs"]
mod key_owners;
#[path = "../it/own_tables.rs"]
mod own_tables;
#[path = "../it/pipeline.rs"]
mod pipeline;
#[path = "../it/replicas.rs"]
mod replicas;
#[path = "../it/scenarios.rs"]
mod scenarios;
#[path = "../it/serve.rs"]
mod serve;
#[path = "../it/turns.rs"]
mod turns;

#[test]
fn this_build_of_botdb_has_no_fault_injection() {
    let built_with_faults = botdb::FAULT_INJECTION;
    assert!(!built_with_faults, "botdb was built with fault-injection");
}
