//! `botdb export-user USER_ID`: everything stored about a user as one JSON document on
//! stdout (GDPR Art. 20), streamed from one consistent snapshot
//! (`botdb::repo::export::export_user`).

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use anyhow::Context;
use botdb::{Config, Database, repo};

/// Stdout, remembering whether a write failed because the reader went away (`| head`):
/// the library reports write failures as text, and this one deserves its own message.
struct Stdout {
    inner: io::Stdout,
    broken_pipe: bool,
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| self.note(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| self.note(e))
    }
}

impl Stdout {
    fn note(&mut self, e: &io::Error) {
        self.broken_pipe |= e.kind() == io::ErrorKind::BrokenPipe;
    }
}

const CUT_SHORT: &str = "stdout was closed before the export was complete (broken pipe): \
                         what was written is not a whole JSON document";

pub async fn run(config: &Config, user_id: i64) -> anyhow::Result<ExitCode> {
    // A bad id is refused before any connection is made.
    botdb::model::check_user_id(user_id)?;
    let db = Database::connect(config).await?;
    let exported = export(&db, user_id).await;
    db.close().await;
    let summary = exported?;
    eprintln!(
        "exported user {}: {} messages ({} soft-deleted)",
        summary.user_id, summary.messages, summary.deleted
    );
    Ok(ExitCode::SUCCESS)
}

async fn export(db: &Database, user_id: i64) -> anyhow::Result<repo::export::ExportSummary> {
    let mut conn = db
        .pool()
        .acquire()
        .await
        .map_err(botdb::Error::from)
        .context("getting a database connection")?;
    // Not `stdout().lock()`: a lock guard is not `Send`, which `export_user` asks of
    // its writer. The BufWriter takes stdout's lock once per 64 KiB instead.
    let mut out = BufWriter::with_capacity(
        64 * 1024,
        Stdout {
            inner: io::stdout(),
            broken_pipe: false,
        },
    );
    let result = repo::export::export_user(&mut conn, user_id, &mut out).await;
    let flushed = out.flush();
    let broken_pipe = out.get_ref().broken_pipe;
    if broken_pipe {
        anyhow::bail!(CUT_SHORT);
    }
    let summary = result?;
    flushed.context("writing the export to stdout")?;
    Ok(summary)
}
