//! Fixtures: one PostgreSQL per test binary, a fresh database per test.
//!
//! The server is a throwaway cluster started from the installed binaries (removed when
//! the test binary exits), or the server in `BOTDB_TEST_DATABASE_URL` when set. Each
//! [`TestDb`] is a new database with a random name, dropped when the `TestDb` is dropped,
//! also when the test panics. Logs are quiet unless `TEST_LOG` is set.

use std::sync::OnceLock;
use std::time::Duration;

#[cfg(feature = "embedded")]
use botdb::embedded::EmbeddedPostgres;
use botdb::{Config, Database};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The `botdb` binary to run: `BOTDB_BIN` when set (the build without fault injection
/// that `.ci/run` tests too), else the one cargo built for this test crate.
pub fn botdb_bin() -> std::path::PathBuf {
    std::env::var_os("BOTDB_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_botdb").map(std::path::PathBuf::from))
        .expect("set BOTDB_BIN to the botdb binary to test (cargo sets CARGO_BIN_EXE_botdb only for botdb's own tests)")
}

/// The shared server of this test binary.
pub struct TestServer {
    /// Points at the server's `postgres` database, as a superuser.
    pub admin: Config,
    /// The embedded cluster, when one was started (kept alive for the whole binary).
    #[cfg(feature = "embedded")]
    pub embedded: Option<EmbeddedPostgres>,
}

static SERVER: OnceLock<TestServer> = OnceLock::new();

/// The fixtures' own connections (creating and dropping databases, observing) wait as
/// long as they must: botdb's default limits are for the bot's traffic.
fn unlimited(mut c: Config) -> Config {
    c.timeouts = botdb::config::TimeoutConfig {
        statement: None,
        lock: None,
        idle_in_transaction: None,
    };
    c
}

/// The shared server, started on first use.
pub fn server() -> &'static TestServer {
    SERVER.get_or_init(|| {
        #[cfg(feature = "cli")]
        if std::env::var_os("TEST_LOG").is_some() {
            botdb::telemetry::init("botdb=debug,sqlx=info,info");
        }
        match std::env::var("BOTDB_TEST_DATABASE_URL") {
            Ok(url) => TestServer {
                admin: unlimited(
                    Config::builder()
                        .url(url)
                        .build()
                        .expect("BOTDB_TEST_DATABASE_URL is malformed"),
                ),
                #[cfg(feature = "embedded")]
                embedded: None,
            },
            #[cfg(not(feature = "embedded"))]
            Err(_) => panic!(
                "botdb was built without its `embedded` feature: set BOTDB_TEST_DATABASE_URL to a server \
                 the tests may create databases on (postgres://user@host/postgres)"
            ),
            #[cfg(feature = "embedded")]
            Err(_) => embedded_server(),
        }
    })
}

#[cfg(feature = "embedded")]
fn embedded_server() -> TestServer {
    let pg = EmbeddedPostgres::start().expect("starting the test PostgreSQL cluster");
    TestServer {
        admin: unlimited(pg.config("postgres")),
        embedded: Some(pg),
    }
}

/// A server whose log this process reads, for tests that need the server's own record
/// (its lock waits, `tests/it/lock_waits.rs`): the shared one when it is the embedded
/// cluster; with `BOTDB_TEST_DATABASE_URL` (a server whose log is out of reach) a
/// throwaway cluster of its own, started on first use, so that such a test still
/// proves what it says instead of passing without looking.
#[cfg(feature = "embedded")]
pub fn logged_server() -> &'static TestServer {
    static LOGGED: OnceLock<TestServer> = OnceLock::new();
    if server().embedded.is_some() {
        return server();
    }
    LOGGED.get_or_init(embedded_server)
}

/// The pool settings tests use unless they say otherwise: small, so that many test
/// databases fit in the server's connection slots, and a short pool timeout.
fn test_config(server: &TestServer, database: &str) -> Config {
    let base = Config::builder()
        .pool_size(2)
        .max_overflow(3)
        .pool_timeout(Duration::from_secs(10))
        .build()
        .expect("test pool settings");
    base.with_server_of(&server.admin.with_database(database))
}

/// A connection to `server`'s `postgres` database.
async fn admin_connection(server: &TestServer) -> PgConnection {
    server
        .admin
        .connect_options()
        .unwrap()
        .connect()
        .await
        .expect("admin connection")
}

/// A fresh database for one test, dropped (with its connections) when this is dropped.
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// Its configuration (the test pool settings).
    pub config: Config,
    /// A pool on it.
    pub db: Database,
    /// The server it lives on.
    pub server: &'static TestServer,
}

impl TestDb {
    /// A fresh database with every migration applied.
    pub async fn new() -> Self {
        Self::new_on(server()).await
    }

    /// A fresh database on `server` (the shared one, or [`logged_server`]) with every
    /// migration applied.
    pub async fn new_on(server: &'static TestServer) -> Self {
        let t = Self::empty_on(server).await;
        t.db.migrate().await.expect("migrating the test database");
        t
    }

    /// A fresh database with every migration applied, and `config` adjusted by `f`.
    pub async fn with(f: impl FnOnce(botdb::config::ConfigBuilder) -> botdb::config::ConfigBuilder) -> Self {
        let mut t = Self::new().await;
        t.db.close().await;
        let builder = f(Config::builder()
            .pool_size(2)
            .max_overflow(3)
            .pool_timeout(Duration::from_secs(10)));
        t.config = builder.build().expect("test config").with_server_of(&t.config);
        t.db = Database::connect(&t.config)
            .await
            .expect("connecting to the test database");
        t
    }

    /// A fresh database with no migration applied.
    pub async fn empty() -> Self {
        Self::empty_on(server()).await
    }

    async fn empty_on(server: &'static TestServer) -> Self {
        let name = format!("botdb_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection(server).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("creating the test database");
        let _ = admin.close().await;
        let config = test_config(server, &name);
        let db = Database::connect(&config)
            .await
            .expect("connecting to the test database");
        TestDb {
            name,
            config,
            db,
            server,
        }
    }

    /// A separate connection to this database (not from the pool), for assertions.
    pub async fn conn(&self) -> PgConnection {
        let mut config = self.config.clone();
        // An observer waits as long as it must (botdb's limits are for the bot's traffic).
        config.timeouts = botdb::config::TimeoutConfig {
            statement: None,
            lock: None,
            idle_in_transaction: None,
        };
        config
            .connect_options()
            .unwrap()
            .connect()
            .await
            .expect("test connection")
    }

    /// The URL of this database, password included, for a `botdb` child process.
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&server_url_of(self.server)).expect("server URL");
        url.set_path(&self.name);
        url.to_string()
    }

    /// The environment for running the `botdb` binary on this database.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("DATABASE_URL", self.url()), ("RUST_LOG", "warn".into())]
    }
}

/// The shared server's password (empty when it has none).
pub fn server_password() -> String {
    url::Url::parse(&server_url())
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .unwrap_or_default()
}

/// The shared server's URL with its password (only tests handle it in clear).
pub fn server_url() -> String {
    server_url_of(server())
}

/// `server`'s URL with its password: the embedded cluster's, else the external one's.
#[cfg_attr(not(feature = "embedded"), allow(unused_variables))]
fn server_url_of(server: &TestServer) -> String {
    #[cfg(feature = "embedded")]
    if let Some(pg) = &server.embedded {
        use secrecy::ExposeSecret;
        return pg.url("postgres").expose_secret().to_string();
    }
    std::env::var("BOTDB_TEST_DATABASE_URL").unwrap_or_default()
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.server.admin.clone();
        // Drop may run inside a runtime (or while unwinding): use a thread of our own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut conn = admin.connect_options()?.connect().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                let _ = conn.close().await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Polls `check` until it returns `true` or `limit` passes; returns the last result.
/// Used where the outcome is produced by a background task (the pool's reaper, the
/// server), never to order our own steps.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many server connections are open to database `name`, not counting `conn`'s own.
pub async fn server_connections(conn: &mut PgConnection, name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A `tracing` writer that keeps everything written, for tests that read the logs.
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
