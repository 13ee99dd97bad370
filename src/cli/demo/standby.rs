//! The `--standby` variant of the demo: the throwaway cluster given a synchronous
//! standby, and the failover to it half-way through the run.
//!
//! [`Pair`] is the cluster (with its standby, if any) that must outlive the run;
//! [`Failover`] stops the primary hard once a share of the turns is acknowledged,
//! promotes the standby, and records what the summary prints of it (when it happened,
//! how long the promotion took, when the first write landed on the new primary, how
//! many deliveries were repeated meanwhile).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use botdb::Config;
use botdb::config::TargetSessionAttrs;
use botdb::embedded::{EmbeddedPostgres, Replication, StopMode};
use secrecy::ExposeSecret;

/// The demo's own throwaway cluster, and its standby with `--standby`. The standby
/// comes first: fields are dropped in order, and the standby's server (whose files live
/// in the primary's directory) must stop before the primary's watcher removes that
/// directory.
pub(super) struct Pair {
    standby: Option<Arc<EmbeddedPostgres>>,
    primary: Arc<EmbeddedPostgres>,
}

impl Pair {
    fn alone(primary: EmbeddedPostgres) -> Pair {
        Pair {
            standby: None,
            primary: Arc::new(primary),
        }
    }

    /// Starts a synchronous standby of `primary` (the databases are copied with it), and
    /// returns `config` pointed at both, read-write.
    async fn start(config: &Config, primary: EmbeddedPostgres) -> anyhow::Result<(Config, Pair)> {
        let standby = primary.start_standby(Replication::Synchronous).await?;
        let both = Config::builder()
            .host("127.0.0.1,127.0.0.1")
            .ports(vec![primary.port(), standby.port()])
            .user("postgres")
            .password(primary.password().expose_secret())
            .database(config.database_name())
            .target_session_attrs(TargetSessionAttrs::ReadWrite)
            .build()?;
        println!(
            "standby:      synchronous, on port {} (primary on port {})",
            standby.port(),
            primary.port()
        );
        Ok((
            config.with_server_of(&both),
            Pair {
                standby: Some(Arc::new(standby)),
                primary: Arc::new(primary),
            },
        ))
    }
}

/// The configuration and the cluster of a run: with `standby`, `server` (the
/// throwaway cluster) is given a standby and the configuration points at both;
/// without, the cluster is only kept until the end of the run.
///
/// # Errors
///
/// `standby` with a configured server (the demo cannot add a standby to it), or a
/// standby that does not start.
pub(super) async fn for_run(
    config: &Config,
    standby: bool,
    server: Option<EmbeddedPostgres>,
) -> anyhow::Result<(Config, Option<Pair>)> {
    Ok(match (standby, server) {
        (true, Some(primary)) => {
            let (config, pair) = Pair::start(config, primary).await?;
            (config, Some(pair))
        }
        (true, None) => anyhow::bail!(
            "--standby adds a standby to the demo's own throwaway PostgreSQL, but a server is configured ({}); \
             the demo cannot add one to it: unset DATABASE_URL and DB_* to use the throwaway cluster, or drop --standby",
            config.redacted_url()
        ),
        // Without a standby the cluster only has to outlive the run.
        (false, server) => (config.clone(), server.map(Pair::alone)),
    })
}

/// The failover of a `--standby` run: when, and what was seen of it.
pub(super) struct Failover {
    standby: Arc<EmbeddedPostgres>,
    primary: Arc<EmbeddedPostgres>,
    /// Acknowledged turns after which the primary is stopped.
    at: u64,
    /// The stop and the promotion, once started.
    task: RefCell<Option<actix_rt::task::JoinHandle<anyhow::Result<()>>>>,
    /// When the primary stop began, and when it was gone.
    stopping: Cell<Option<Instant>>,
    gone: Cell<Option<Instant>>,
    /// How long `pg_ctl promote` took.
    promote: Cell<Option<Duration>>,
    /// The first acknowledged turn once the primary was gone.
    first_write: Cell<Option<Instant>>,
    /// Deliveries beyond the first of updates that failed transiently.
    pub(super) redelivered: Cell<u64>,
}

impl Failover {
    /// The failover of a run of `total` turns on `pair`, after `share` of them: none
    /// without a standby.
    pub(super) fn of(pair: Option<&Pair>, share: Option<f64>, total: u64) -> Option<Rc<Failover>> {
        match (pair, share) {
            (
                Some(Pair {
                    standby: Some(standby),
                    primary,
                }),
                Some(share),
            ) => Some(Rc::new(Failover {
                standby: standby.clone(),
                primary: primary.clone(),
                at: ((total as f64 * share).ceil() as u64).max(1),
                task: RefCell::new(None),
                stopping: Cell::new(None),
                gone: Cell::new(None),
                promote: Cell::new(None),
                first_write: Cell::new(None),
                redelivered: Cell::new(0),
            })),
            _ => None,
        }
    }

    /// Stops the primary (immediate) and promotes the standby, in the background.
    fn start(self: &Rc<Self>) {
        let me = self.clone();
        let task = actix_rt::spawn(async move {
            me.stopping.set(Some(Instant::now()));
            let primary = me.primary.clone();
            tokio::task::spawn_blocking(move || primary.stop(StopMode::Immediate)).await??;
            let gone = Instant::now();
            me.gone.set(Some(gone));
            let standby = me.standby.clone();
            tokio::task::spawn_blocking(move || standby.promote()).await??;
            me.promote.set(Some(gone.elapsed()));
            Ok(())
        });
        *self.task.borrow_mut() = Some(task);
    }

    /// An acknowledged turn, the `n`-th: the failover starts at `at`; the first one
    /// after the primary is gone is the first write on the new primary.
    pub(super) fn acknowledged(self: &Rc<Self>, n: u64) {
        if n == self.at && self.task.borrow().is_none() {
            self.start();
        }
        if self.first_write.get().is_none() && self.gone.get().is_some() {
            self.first_write.set(Some(Instant::now()));
        }
    }

    /// Waits for the stop and the promotion (when they were started).
    pub(super) async fn finish(&self) -> anyhow::Result<()> {
        let task = self.task.borrow_mut().take();
        if let Some(task) = task {
            task.await??;
        }
        Ok(())
    }

    /// The summary's line about the failover.
    pub(super) fn summary(&self) -> String {
        match (self.stopping.get(), self.promote.get()) {
            (Some(stopping), Some(promote)) => format!(
                "failover:     primary stopped at turn {}, standby promoted in {:.2} s; first write on the new \
                 primary after {}",
                self.at,
                promote.as_secs_f64(),
                self.first_write.get().map_or("none".to_string(), |w| format!(
                    "{:.2} s",
                    (w - stopping).as_secs_f64()
                ))
            ),
            _ => format!("failover:     not reached (set for turn {})", self.at),
        }
    }
}
