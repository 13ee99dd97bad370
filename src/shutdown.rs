//! Process signals: the first SIGINT or SIGTERM asks for a graceful shutdown, a second
//! one exits at once.
//!
//! ctrlc allows one handler per process and runs it on its own thread; botdb installs
//! it once ([`Signals::install`]) and turns it into a future ([`Signals::recv`]). Whoever
//! embeds botdb in actix-web gives signal ownership to botdb and disables actix-web's
//! own (`HttpServer::disable_signals()`), so that one Ctrl-C runs the stages in order:
//! stop the HTTP server gracefully (in-flight requests finish), then shut the actors
//! down (accepted requests drain), then close the pool.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// Exit status after a second signal (the shell's convention for SIGINT).
pub const FORCED_EXIT_CODE: i32 = 130;

static SIGNALS_SEEN: AtomicU32 = AtomicU32::new(0);

/// The process's SIGINT / SIGTERM, as a future.
#[derive(Debug, Clone)]
pub struct Signals {
    rx: watch::Receiver<u32>,
}

impl Signals {
    /// Installs the process's signal handler (SIGINT and SIGTERM). The first signal
    /// resolves [`recv`](Self::recv); the second exits the process at once with
    /// [`FORCED_EXIT_CODE`].
    ///
    /// # Errors
    /// [`Error::Config`] if a handler was installed already (ctrlc allows one per
    /// process) or the system refused it.
    pub fn install() -> Result<Self> {
        let (tx, rx) = watch::channel(0u32);
        ctrlc::set_handler(move || {
            let seen = SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst) + 1;
            if seen >= 2 {
                eprintln!("second signal: exiting now without draining");
                std::process::exit(FORCED_EXIT_CODE);
            }
            eprintln!("signal received: shutting down gracefully (send it again to exit at once)");
            let _ = tx.send(seen);
        })
        .map_err(|e| match e {
            ctrlc::Error::MultipleHandlers => Error::config(
                "signal handler",
                "a SIGINT/SIGTERM handler is already installed in this process; install botdb's once",
            ),
            other => Error::config("signal handler", other.to_string()),
        })?;
        Ok(Signals { rx })
    }

    /// Resolves at the first SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        let _ = self.rx.wait_for(|seen| *seen >= 1).await;
    }
}
