//! `botdb export-user USER_ID`: everything stored about a user as one JSON document on
//! stdout (GDPR Art. 20), streamed from one consistent snapshot
//! (`botdb::repo::export::export_user`), within `BOTDB_EXPORT_TIMEOUT`.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use botdb::{Config, Database, repo};
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

const CUT_SHORT: &str = "stdout was closed before the export was complete (broken pipe): \
                         what was written is not a whole JSON document";

/// Bytes on their way to stdout that the export may have written ahead of it.
const PIPE_BUFFER: usize = 64 * 1024;

pub async fn run(config: &Config, user_id: i64) -> anyhow::Result<ExitCode> {
    // A bad id is refused before any connection is made.
    botdb::model::check_user_id(user_id)?;
    let db = Database::connect(config).await?;
    let exported = export(&db, user_id, config.export_timeout).await;
    db.close().await;
    let summary = exported?;
    eprintln!(
        "exported user {}: {} messages ({} soft-deleted)",
        summary.user_id, summary.messages, summary.deleted
    );
    Ok(ExitCode::SUCCESS)
}

async fn export(db: &Database, user_id: i64, limit: Duration) -> anyhow::Result<repo::export::ExportSummary> {
    let deadline = Instant::now() + limit;
    let mut conn = db
        .pool()
        .acquire()
        .await
        .map_err(botdb::Error::from)
        .context("getting a database connection")?;
    let (mut out, mut written) = stdout_writer()?;
    let result = repo::export::export_user(&mut conn, user_id, &mut out, limit).await;
    // The end of the document: the writer thread writes what it holds, then stops.
    drop(out);
    match result {
        Ok(summary) => match tokio::time::timeout_at(deadline, written).await {
            Ok(Ok(Ok(()))) => Ok(summary),
            Ok(Ok(Err(e))) if e.kind() == io::ErrorKind::BrokenPipe => anyhow::bail!(CUT_SHORT),
            Ok(Ok(Err(e))) => Err(e).context("writing the export to stdout"),
            Ok(Err(_)) => anyhow::bail!("the thread writing stdout ended without a word"),
            Err(_) => anyhow::bail!(
                "stdout did not take the end of the export within {} (BOTDB_EXPORT_TIMEOUT): what \
                 was written is not a whole JSON document",
                humantime::format_duration(limit)
            ),
        },
        // Past the bound the writer thread may be stuck in a write: it is not waited for
        // (the process ends it on exit).
        Err(e @ botdb::Error::Timeout { .. }) => Err(e.into()),
        Err(e) => {
            // A write refused because the writer thread stopped: it said why before it
            // closed its end.
            if let Ok(Err(w)) = written.try_recv()
                && w.kind() == io::ErrorKind::BrokenPipe
            {
                anyhow::bail!(CUT_SHORT);
            }
            Err(e.into())
        }
    }
}

/// An async writer whose bytes a thread of its own writes to stdout, and what that
/// thread ended with. A write to stdout blocks for as long as its reader does not read:
/// on a thread of its own it never blocks the runtime, so the export's bound can fire,
/// and the process does not wait for it on exit.
fn stdout_writer() -> anyhow::Result<(DuplexStream, oneshot::Receiver<io::Result<()>>)> {
    let (writer, mut reader) = tokio::io::duplex(PIPE_BUFFER);
    let (done, written) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let result = futures::executor::block_on(async {
                let mut stdout = io::stdout().lock();
                let mut buf = vec![0_u8; PIPE_BUFFER];
                loop {
                    let n = reader.read(&mut buf).await?;
                    if n == 0 {
                        return stdout.flush();
                    }
                    stdout.write_all(&buf[..n])?;
                }
            });
            // Said before the reader half goes: a write refused by the closed duplex
            // then finds the cause already here.
            let _ = done.send(result);
            drop(reader);
        })
        .context("starting the thread that writes stdout")?;
    Ok((writer, written))
}
