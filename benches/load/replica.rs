//! Mode `replica`: `batched` with its reads on an asynchronous streaming standby.
//!
//! The standby is started beside the throwaway cluster for this mode (a server named by
//! `BOTDB_BENCH_DATABASE_URL` gets none: the mode is skipped). The mode's Database has
//! `DATABASE_REPLICA_URL` pointing at it: `GetSettings` and `GetHistory` go to the
//! standby once it has replayed the user's own last write (waiting up to 50 ms), else to
//! the primary, and every write records its WAL position. Its turns are the five
//! requests of [`crate::actors`]; where the reads went is printed after the run.

use botdb::actors::{DbHandle, DbSystem};
use botdb::embedded::{EmbeddedPostgres, Replication};
use botdb::{Config, Database};

/// Starts a standby of `cluster` and the `batched` actors over a Database at `url` that
/// reads from it; returns the standby (to stop after the run) and both. `None`, with a
/// note, without the throwaway cluster.
///
/// # Errors
///
/// When the standby does not start or the Database does not connect.
pub async fn start(
    cluster: Option<&EmbeddedPostgres>,
    url: &url::Url,
    config: &Config,
) -> anyhow::Result<Option<(EmbeddedPostgres, (DbHandle, Database))>> {
    let Some(pg) = cluster else {
        eprintln!("mode replica needs the throwaway cluster (BOTDB_BENCH_DATABASE_URL is set): skipped");
        return Ok(None);
    };
    let s = pg.start_standby(Replication::Asynchronous).await?;
    let mut at = url.clone();
    at.set_port(Some(s.port()))
        .map_err(|()| anyhow::anyhow!("cannot set the standby's port"))?;
    let with_replica = Config::builder()
        .url(url.to_string())
        .replica_url(at.to_string())
        .build()?;
    let rdb = Database::connect(&with_replica).await?;
    Ok(Some((s, (DbSystem::start(rdb.clone(), config.actors), rdb))))
}

/// Stops the mode's actors and prints their report and where the reads went.
pub async fn report(handle: &DbHandle, rdb: &Database) {
    let report = handle.shutdown().await;
    let reads = rdb.replica_reads();
    eprintln!(
        "replica: {report}; reads on the standby {}, on the primary: behind {}, lagging {}, down {}",
        reads.on_replica, reads.behind, reads.lagging, reads.down
    );
}
