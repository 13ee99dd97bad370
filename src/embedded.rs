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

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::error::{Error, Result};

const INSTALL_HINT: &str = "install PostgreSQL's server package (Debian/Ubuntu: `apt install postgresql`; \
     Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql`), put its bin directory on \
     PATH or in BOTDB_PG_BINDIR, or point botdb at a running server with DATABASE_URL";

/// How to stop the server (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, shut down cleanly.
    Fast,
    /// Abort at once, like a crash (recovery runs at the next start).
    Immediate,
}

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

/// The standby's `cluster_name`, which its WAL receiver reports as `application_name`.
const STANDBY_NAME: &str = "botdb_standby";

/// The OS user the server runs as, when it is not this process's user.
#[derive(Clone, Debug)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// A running throwaway PostgreSQL cluster. Dropping it stops the server and deletes its
/// files.
pub struct EmbeddedPostgres {
    root: PathBuf,
    bindir: PathBuf,
    port: u16,
    password: SecretString,
    run_as: Option<RunAs>,
    watcher: Mutex<Option<(Child, ChildStdin)>>,
    /// A standby of another cluster (its files live in that cluster's directory, which
    /// that cluster's watcher removes): dropping it stops its server.
    standby: bool,
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
    /// [`Error::Config`] when no PostgreSQL server binaries are found (saying how to
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
    /// [`Error::Config`] when `pg_ctl stop` fails.
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

    /// Starts a streaming standby of this cluster beside it: a base backup
    /// (`pg_basebackup`, through a physical replication slot so the primary keeps the
    /// WAL the standby still needs), then its own server on another free port, hot
    /// (readable). With [`Replication::Synchronous`] the primary then waits for it on
    /// every commit (`synchronous_standby_names`); this returns once the primary reports
    /// it streaming (and `sync`). Its files live in this cluster's directory and go with
    /// it; one standby per cluster.
    ///
    /// # Errors
    /// [`Error::Config`] when a tool or the standby's server fails (with its output), or
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
    /// [`Error::Config`] when this is not a standby or `pg_ctl promote` fails.
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

    /// Starts the server again after [`stop`](Self::stop), on the same port.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&self) -> Result<()> {
        self.start_server()
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A command for the server's tools, with a scrubbed environment: nothing of
    /// botdb's own (`DB_PASSWORD`, `BOTDB_WEBHOOK_SECRET`, `DATABASE_URL`, ...) reaches the
    /// server's processes, which may run as another OS user.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
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
    fn run(&self, program: PathBuf, args: &[&str]) -> Result<String> {
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

    fn start_server(&self) -> Result<()> {
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

fn embedded_error(message: String) -> Error {
    Error::config("embedded PostgreSQL", message)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| embedded_error(format!("path {} is not UTF-8", path.display())))
}

fn free_port() -> Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| embedded_error(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// [`installed_bindir`], through the symbolic links some systems put on PATH (Debian's
/// `/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb`): the real directory
/// also holds the other tools of that version (`pg_basebackup` for a standby).
fn find_bindir() -> Result<PathBuf> {
    let dir = installed_bindir()?;
    Ok(std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| real.join(b).is_file())
        })
        .unwrap_or(dir))
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`: `BOTDB_PG_BINDIR`,
/// then `PATH`, then `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (newest).
fn installed_bindir() -> Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("BOTDB_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(embedded_error(format!(
                "BOTDB_PG_BINDIR={} does not hold initdb, pg_ctl and postgres; {INSTALL_HINT}",
                dir.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if complete(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().split('.').next()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        embedded_error(format!(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; {INSTALL_HINT}"
        ))
    })
}

/// `None` when this process may run the server itself; the unprivileged user to run it
/// as when this process is root.
fn run_as_user() -> Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = std::env::var("BOTDB_PG_OS_USER").unwrap_or_else(|_| "postgres".to_string());
    match nix::unistd::User::from_name(&name) {
        Ok(Some(user)) if !user.uid.is_root() => Ok(Some(RunAs {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        _ => Err(embedded_error(format!(
            "botdb runs as root and PostgreSQL refuses to; no unprivileged OS user {name:?} to run it as \
             (create one, e.g. `useradd --system postgres`, or name one in BOTDB_PG_OS_USER, or run botdb as \
             an ordinary user)"
        ))),
    }
}
