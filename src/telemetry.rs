//! Logging setup: `tracing` events as structured lines on stderr (or any writer).
//!
//! Building a subscriber ([`subscriber`]) is separate from installing it ([`init`]), so
//! tests can send logs to a buffer of their own with a filter of their own.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt};

/// A subscriber writing to `sink`, filtered by `filter` (`RUST_LOG` syntax, e.g.
/// `"botdb=info,sqlx=warn"`).
pub fn subscriber<W>(filter: &str, sink: W) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::registry().with(EnvFilter::new(filter)).with(
        tracing_subscriber::fmt::layer()
            .with_writer(sink)
            .with_target(true)
            // One line per finished span: with `botdb=debug`, a line per request
            // (actor, request, user_id, outcome, ms).
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .compact(),
    )
}

/// Installs a subscriber writing to stderr as the global default, filtered by `RUST_LOG`
/// when set, else by `default_filter`. Does nothing if a global subscriber is already
/// installed.
pub fn init(default_filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_string());
    let _ = tracing::subscriber::set_global_default(subscriber(&filter, std::io::stderr));
}
