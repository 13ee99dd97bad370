//! [`EmbeddedPostgres`]: one throwaway cluster in a temporary directory, from initdb to
//! its removal (by a watcher process, however this process ends).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::embedded::host::{RunAs, embedded_error, find_bindir, free_port, path_str, run_as_user};
use crate::error::Result;

/// The `cluster_name` of a standby, which its WAL receiver reports as `application_name`.
pub(super) const STANDBY_NAME: &str = "botdb_standby";

/// How to stop the server (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, shut down cleanly.
    Fast,
    /// Abort at once, like a crash (recovery runs at the next start).
    Immediate,
}

/// A running throwaway PostgreSQL cluster. Dropping it stops the server and deletes its
/// files.
pub struct EmbeddedPostgres {
    pub(super) root: PathBuf,
    pub(super) bindir: PathBuf,
    pub(super) port: u16,
    pub(super) password: SecretString,
    pub(super) run_as: Option<RunAs>,
    pub(super) watcher: Mutex<Option<(Child, ChildStdin)>>,
    /// A standby of another cluster (its files live in that cluster's directory, which
    /// that cluster's watcher removes): dropping it stops its server.
    pub(super) standby: bool,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("root", &self.root)
            .field("port", &self.port)
            .field("run_as", &self.run_as.as_ref().map(|r| &r.name))
            .finish_non_exhaustive()
    }
}

impl EmbeddedPostgres {
    /// Creates and starts a cluster. Blocks for a second or two (initdb); call it from
    /// `tokio::task::spawn_blocking` inside a runtime.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when no PostgreSQL server binaries are found (saying how to
    /// install them), when running as root without an unprivileged user to run the
    /// server as, or when initdb or the server fail to start (with the server's log).
    pub fn start() -> Result<Self> {
        let bindir = find_bindir()?;
        let run_as = run_as_user()?;
        let root = tempfile::Builder::new()
            .prefix("botdb-pg-")
            .tempdir()
            .map_err(|e| embedded_error(format!("cannot create a temporary directory: {e}")))?
            .keep();
        let mut pg = EmbeddedPostgres {
            root,
            bindir,
            port: 0,
            password: SecretString::from(uuid::Uuid::new_v4().simple().to_string()),
            run_as,
            watcher: Mutex::new(None),
            standby: false,
        };
        if let Some(user) = &pg.run_as {
            std::os::unix::fs::chown(&pg.root, Some(user.uid), Some(user.gid)).map_err(|e| {
                embedded_error(format!(
                    "cannot hand {} to user {}: {e}",
                    pg.root.display(),
                    user.name
                ))
            })?;
        }
        // From here on the watcher removes everything, whatever happens to us.
        pg.spawn_watcher()?;
        pg.initdb()?;
        let mut last_error = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.start_server() {
                Ok(()) => {
                    tracing::info!(port = pg.port, dir = %pg.root.display(), "started a throwaway PostgreSQL");
                    return Ok(pg);
                }
                // Another process may have taken the port between our probe and the bind.
                Err(e) if e.to_string().contains("could not bind") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| embedded_error("no free port".into())))
    }

    /// The port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of superuser `postgres` (a secret: never print it). A standby
    /// shares its primary's.
    pub fn password(&self) -> &SecretString {
        &self.password
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The server's log (what it writes to stderr, appended across restarts). Each line
    /// starts `TIME [PID] USER@DATABASE ` (`log_line_prefix = '%m [%p] %q%u@%d '`, as
    /// Debian's clusters have it), so a reader can tell which database a line is
    /// about. Tests read it for the server's own record of lock waits (`log_lock_waits`),
    /// which PostgreSQL 15 keeps nowhere else.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// A [`Config`] (reference defaults for everything but the server) pointing at
    /// database `database` of this cluster, as superuser `postgres`.
    pub fn config(&self, database: &str) -> Config {
        self.config_from(&Config::default(), database)
    }

    /// `base` with its server replaced by database `database` of this cluster; pool
    /// settings and limits are kept.
    pub fn config_from(&self, base: &Config, database: &str) -> Config {
        let server = Config::builder()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(self.password.expose_secret())
            .database(database)
            .build()
            .unwrap_or_default();
        base.with_server_of(&server)
    }

    /// The URL of database `database` on this cluster, password included. It is a
    /// secret: hand it to a child process, never print it.
    pub fn url(&self, database: &str) -> SecretString {
        SecretString::from(format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password.expose_secret(),
            self.port
        ))
    }

    /// Creates database `name` unless it exists.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        use sqlx::Connection;
        let mut conn = crate::migrate::connect_to(&self.config("postgres")).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// Stops the server, keeping its files (fault tests use it to take the database away).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) when `pg_ctl stop` fails.
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let data = self.data_dir();
        self.run(
            self.bindir.join("pg_ctl"),
            &["stop", "-D", path_str(&data)?, "-m", mode, "-w", "-t", "60"],
        )
        .map(|_| ())
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&self) -> Result<()> {
        self.start_server()
    }

    pub(super) fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A command for the server's tools, with a scrubbed environment: nothing of
    /// botdb's own (`DB_PASSWORD`, `BOTDB_WEBHOOK_SECRET`, `DATABASE_URL`, ...) reaches the
    /// server's processes, which may run as another OS user.
    pub(super) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let path = std::env::join_paths([self.bindir.as_path(), Path::new("/usr/bin"), Path::new("/bin")])
            .unwrap_or_else(|_| "/usr/bin:/bin".into());
        cmd.current_dir(&self.root)
            .env_clear()
            .env("PATH", path)
            .env("LC_ALL", "C")
            .env("HOME", &self.root);
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid).gid(user.gid).env("USER", &user.name);
        }
        cmd
    }

    /// Runs a server tool to completion; its output becomes the error message on failure.
    pub(super) fn run(&self, program: PathBuf, args: &[&str]) -> Result<String> {
        let output = self
            .command(&program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| embedded_error(format!("cannot run {}: {e}", program.display())))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(embedded_error(format!(
                "{} {} failed: {}",
                program.display(),
                args.first().unwrap_or(&""),
                text.trim()
            )))
        }
    }

    fn spawn_watcher(&self) -> Result<()> {
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.data_dir();
        let mut child = self
            .command("/bin/sh")
            .args([
                "-c",
                // Wait for EOF on stdin (our end closes however we exit), then clean up.
                // A standby's server (if one was started) lives in the directory too.
                r#"while read -r _; do :; done; "$0" stop -D "$1" -m immediate -w -t 60 >/dev/null 2>&1; "$0" stop -D "$2/standby/data" -m immediate -w -t 60 >/dev/null 2>&1; rm -rf "$2""#,
            ])
            .arg(&pg_ctl)
            .arg(&data)
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| embedded_error(format!("cannot start the cleanup watcher (/bin/sh): {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| embedded_error("the cleanup watcher has no stdin".into()))?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some((child, stdin));
        }
        Ok(())
    }

    fn initdb(&self) -> Result<()> {
        let pwfile = self.root.join("pwfile");
        {
            let mut f = std::fs::File::create(&pwfile)
                .map_err(|e| embedded_error(format!("cannot write the password file: {e}")))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .and_then(|()| f.write_all(self.password.expose_secret().as_bytes()))
                .map_err(|e| embedded_error(format!("cannot write the password file: {e}")))?;
        }
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(user.uid), Some(user.gid)).map_err(|e| {
                embedded_error(format!("cannot hand the password file to {}: {e}", user.name))
            })?;
        }
        let data = self.data_dir();
        let result = self.run(
            self.bindir.join("initdb"),
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", path_str(&pwfile)?),
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        let _ = std::fs::remove_file(&pwfile);
        result.map(|_| ())
    }

    pub(super) fn start_server(&self) -> Result<()> {
        let data = self.data_dir();
        let log = self.log_path();
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories='{}' -c max_connections=300 \
             -c shared_buffers=128MB -c log_min_messages=warning -c log_line_prefix='%m [%p] %q%u@%d '",
            self.port,
            path_str(&self.root)?
        );
        if self.standby {
            // Its WAL receiver reports this as its application_name, which
            // synchronous_standby_names names.
            options.push_str(&format!(" -c cluster_name={STANDBY_NAME}"));
        }
        let started = self.run(
            self.bindir.join("pg_ctl"),
            &[
                "start",
                "-D",
                path_str(&data)?,
                "-w",
                "-t",
                "60",
                "-l",
                path_str(&log)?,
                "-o",
                &options,
            ],
        );
        started.map(|_| ()).map_err(|e| {
            let tail = std::fs::read_to_string(&log)
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            embedded_error(format!("{e}\nserver log:\n{tail}"))
        })
    }
}

impl Drop for EmbeddedPostgres {
    /// Closes the watcher's pipe and waits while it stops the server and deletes the
    /// directory.
    fn drop(&mut self) {
        if self.standby {
            let _ = self.stop(StopMode::Immediate);
        }
        let watcher = self.watcher.lock().ok().and_then(|mut slot| slot.take());
        if let Some((mut child, stdin)) = watcher {
            drop(stdin);
            let _ = child.wait();
        }
    }
}
