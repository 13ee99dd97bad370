//! A streaming standby beside a throwaway cluster: a base backup through a replication
//! slot, its own server, synchronous or not; and its promotion.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Mutex;

use secrecy::ExposeSecret;

use crate::embedded::cluster::{EmbeddedPostgres, STANDBY_NAME};
use crate::embedded::host::{embedded_error, free_port, path_str};
use crate::error::Result;

/// How a standby follows its primary ([`EmbeddedPostgres::start_standby`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// The primary's COMMIT returns once the standby has the WAL on disk
    /// (`synchronous_standby_names` names it, `synchronous_commit = on`): a commit
    /// acknowledged by the primary survives the primary's loss.
    Synchronous,
    /// The primary does not wait: the standby may be behind by what was committed last.
    Asynchronous,
}

impl EmbeddedPostgres {
    /// Starts a streaming standby of this cluster beside it: a base backup
    /// (`pg_basebackup`, through a physical replication slot so the primary keeps the
    /// WAL the standby still needs), then its own server on another free port, hot
    /// (readable). With [`Replication::Synchronous`] the primary then waits for it on
    /// every commit (`synchronous_standby_names`); this returns once the primary reports
    /// it streaming (and `sync`). Its files live in this cluster's directory and go with
    /// it; one standby per cluster.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when a tool or the standby's server fails (with its output), or
    /// when the primary does not report the standby within 60 seconds.
    pub async fn start_standby(&self, mode: Replication) -> Result<EmbeddedPostgres> {
        use sqlx::Connection;
        let root = self.root.join("standby");
        std::fs::create_dir(&root)
            .and_then(|()| std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| embedded_error(format!("cannot create {}: {e}", root.display())))?;
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid)).map_err(|e| {
                embedded_error(format!("cannot hand {} to {}: {e}", root.display(), user.name))
            })?;
        }
        let mut standby = EmbeddedPostgres {
            root,
            bindir: self.bindir.clone(),
            port: 0,
            password: self.password.clone(),
            run_as: self.run_as.clone(),
            watcher: Mutex::new(None),
            standby: true,
        };
        let data = standby.data_dir();
        let port = self.port.to_string();
        let output = standby
            .command(self.bindir.join("pg_basebackup"))
            .env("PGPASSWORD", self.password.expose_secret())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path_str(&data)?,
            ])
            .args([
                "-R",
                "-C",
                "-S",
                STANDBY_NAME,
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                embedded_error(format!(
                    "cannot run {} (in {}): {e}",
                    self.bindir.join("pg_basebackup").display(),
                    standby.root.display()
                ))
            })?;
        if !output.status.success() {
            return Err(embedded_error(format!(
                "pg_basebackup failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let mut started = Err(embedded_error("no free port".into()));
        for _ in 0..5 {
            standby.port = free_port()?;
            started = standby.start_server();
            match &started {
                Err(e) if e.to_string().contains("could not bind") => {}
                _ => break,
            }
        }
        started?;
        let mut conn = crate::migrate::connect_to(&self.config("postgres")).await?;
        if mode == Replication::Synchronous {
            // Two statements: ALTER SYSTEM refuses a (multi-statement, implicit) transaction.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"
            )))
            .execute(&mut conn)
            .await?;
            sqlx::raw_sql("SELECT pg_reload_conf()")
                .execute(&mut conn)
                .await?;
        }
        let wanted = match mode {
            Replication::Synchronous => "sync",
            Replication::Asynchronous => "async",
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
            )
            .bind(STANDBY_NAME)
            .fetch_optional(&mut conn)
            .await?;
            if state.as_deref() == Some(wanted) {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(embedded_error(format!(
                    "the standby did not become a {wanted} streaming standby within 60 s (state: {state:?})"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = conn.close().await;
        tracing::info!(port = standby.port, ?mode, "started a streaming standby");
        Ok(standby)
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting until it accepts
    /// writes).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when this is not a standby or `pg_ctl promote` fails.
    pub fn promote(&self) -> Result<()> {
        if !self.standby {
            return Err(embedded_error("promote: this cluster is not a standby".into()));
        }
        let data = self.data_dir();
        self.run(
            self.bindir.join("pg_ctl"),
            &["promote", "-D", path_str(&data)?, "-w", "-t", "60"],
        )
        .map(|_| ())
    }
}
