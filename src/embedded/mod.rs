//! A throwaway PostgreSQL cluster started from the installed server binaries.
//!
//! `botdb demo` (with no `DATABASE_URL` / `DB_HOST`) and the test suite run on one of
//! these, so neither needs a running server nor any setting. The cluster lives in a
//! temporary directory, listens only on 127.0.0.1 on a free port, requires a random
//! password (SCRAM), and is removed when the [`EmbeddedPostgres`] is dropped.
//!
//! Removal does not depend on this process ending well: a small watcher process (plain
//! `sh`, in its own process group so a terminal's Ctrl-C does not reach it) holds the
//! read end of a pipe whose write end only this process has. When the pipe closes, on
//! drop, on exit, on a crash or on SIGKILL, the watcher stops the server and deletes
//! the directory.
//!
//! PostgreSQL refuses to run as root: when botdb runs as root, the server runs as the
//! unprivileged OS user `postgres` (or `BOTDB_PG_OS_USER`).
//!
//! - `cluster`: [`EmbeddedPostgres`]: initdb, start, stop, the watcher, the configs and
//!   URLs that point at it;
//! - `standby`: a streaming standby beside it (synchronous or not) and its promotion;
//! - `host`: what it needs of this machine: the server binaries, a free port, the
//!   unprivileged OS user it runs as;
//! - `model_server` (with feature `server`): `LocalModelServer`, an OpenAI-compatible
//!   chat completions server that plays the language model for the tests and the demo.
//! - `bot_api` (with the feature `server`): [`LocalBotApi`], a Bot API server on
//!   127.0.0.1 that plays Telegram, faults included, for the tests and the demo.
//! - `tcp_proxy`: [`TcpProxy`], a TCP proxy on 127.0.0.1 that tests put between botdb
//!   and the server, and that goes silent on demand (no FIN, no RST, no bytes), as a
//!   failover behind a moved address or a dropped route looks to a client.

#[cfg(feature = "server")]
mod bot_api;
mod cluster;
mod host;
#[cfg(feature = "server")]
mod model_server;
mod standby;
mod tcp_proxy;

#[cfg(feature = "server")]
pub use bot_api::{Fault, LocalBotApi, SentMessage};
pub use cluster::{EmbeddedPostgres, StopMode};
#[cfg(feature = "server")]
pub use model_server::{Failure, LocalModelServer, ModelBehaviour, ReplyStyle};
pub use standby::Replication;
pub use tcp_proxy::{ProxyStats, TcpProxy};
