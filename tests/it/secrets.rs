//! Secrets never reach the logs: everything botdb prints at TRACE level during a full
//! demo run, and during `serve` handling good and bad webhook calls, is searched for
//! the database password and the webhook secret; and runs of `botdb` given passwords in
//! every URL form (`DATABASE_URL` and `DATABASE_REPLICA_URL`, host lists among them)
//! print none of them, in any encoding.

use std::process::Stdio;
use std::time::Duration;

use botdb::embedded::EmbeddedPostgres;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::serve::{SECRET, client, post_raw, sigterm, text_update};

/// A cluster of this test's own: its password is random and known to this test only.
async fn cluster() -> (EmbeddedPostgres, String, String) {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("botdb").await.unwrap();
    let url = pg.url("botdb").expose_secret().to_string();
    let password = url::Url::parse(&url).unwrap().password().unwrap().to_string();
    assert!(password.len() >= 16);
    (pg, url, password)
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[actix_rt::test]
async fn a_trace_level_demo_run_never_prints_the_password() {
    let (_pg, url, password) = cluster().await;
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        Command::new(env!("CARGO_BIN_EXE_botdb"))
            .args(["demo", "--users", "40", "--turns", "3"])
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "trace")
            .env("DB_ECHO", "true")
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}", &all[all.len().saturating_sub(3000)..]);
    assert!(
        all.lines().count() > 300,
        "TRACE logging was on: {} lines",
        all.lines().count()
    );
    assert!(
        all.contains("botdb.request") && all.contains("INSERT INTO messages"),
        "request spans and statements logged"
    );
    assert!(
        all.contains("postgres://postgres:***@"),
        "the URL is shown, redacted"
    );
    eprintln!(
        "demo at TRACE: {} lines, {} bytes, password found {} times",
        all.lines().count(),
        all.len(),
        occurrences(&all, &password)
    );
    assert_eq!(occurrences(&all, &password), 0);
}

#[actix_rt::test]
async fn a_trace_level_serve_never_prints_the_webhook_secret_or_the_password() {
    let (_pg, url, password) = cluster().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_botdb"))
        .args(["serve", "--bind", "127.0.0.1:0", "--migrate"])
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", &url)
        .env("BOTDB_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "trace")
        .env("DB_ECHO", "true")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = actix_rt::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });
    let mut printed = String::new();
    let base = loop {
        let line = stdout.next_line().await.unwrap().expect("serve listens");
        printed.push_str(&line);
        printed.push('\n');
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    let c = client();
    for (i, token) in [Some(SECRET), Some("wrong-token"), None, Some(SECRET)]
        .into_iter()
        .enumerate()
    {
        let body = serde_json::to_vec(&text_update(i as i64, 31, "hello")).unwrap();
        let (status, _) = post_raw(&c, &base, body, "application/json", token).await;
        assert_eq!(status, if token == Some(SECRET) { 200 } else { 401 });
    }
    let status = sigterm(&mut child).await;
    assert_eq!(status.code(), Some(0));
    while let Ok(Some(line)) = stdout.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
    }
    let all = printed + &errors.await.unwrap();
    assert!(
        all.lines().count() > 100,
        "TRACE logging was on: {} lines",
        all.lines().count()
    );
    assert!(all.contains("botdb.request"), "request spans logged");
    eprintln!(
        "serve at TRACE: {} lines, secret found {} times, password found {} times",
        all.lines().count(),
        occurrences(&all, SECRET),
        occurrences(&all, &password)
    );
    assert_eq!(occurrences(&all, SECRET), 0);
    assert_eq!(occurrences(&all, &password), 0);
}

/// A password as a URL carries it (`written`) and as the server knows it (`plain`).
struct Password {
    written: &'static str,
    plain: &'static str,
}

impl Password {
    /// Every form in which botdb might print it, named: as written in the URL, plain,
    /// percent-encoded byte by byte (both cases of hex digits), as the url crate
    /// encodes a user-info password, and as a query value (`+` for a space).
    fn forms(&self) -> Vec<(&'static str, String)> {
        let every_byte = |upper: bool| -> String {
            self.plain
                .bytes()
                .map(|b| match b {
                    b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => char::from(b).to_string(),
                    _ if upper => format!("%{b:02X}"),
                    _ => format!("%{b:02x}"),
                })
                .collect()
        };
        let mut userinfo = url::Url::parse("postgres://u@h/").unwrap();
        userinfo.set_password(Some(self.plain)).unwrap();
        let mut forms = vec![
            ("as written", self.written.to_string()),
            ("plain", self.plain.to_string()),
            ("percent-encoded", every_byte(true)),
            ("percent-encoded, lower-case hex", every_byte(false)),
            ("user-info encoded", userinfo.password().unwrap().to_string()),
            (
                "query encoded",
                url::form_urlencoded::byte_serialize(self.plain.as_bytes()).collect(),
            ),
        ];
        forms.sort_by(|a, b| a.1.cmp(&b.1));
        forms.dedup_by(|a, b| a.1 == b.1);
        forms
    }
}

/// One run of `botdb`: how it exited and what it printed on each stream.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// What was actually done, counted where it happened: `botdb` processes spawned, and
/// output streams searched for passwords.
#[derive(Default)]
struct Tally {
    spawned: usize,
    searched: usize,
}

impl Tally {
    /// `botdb ARGS` at TRACE level with `env` (`DATABASE_URL`, ...) and no other
    /// database setting of the caller's environment.
    async fn botdb(&mut self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botdb"));
        cmd.args(args)
            .current_dir(std::env::temp_dir())
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in [
            "DATABASE_URL",
            "DATABASE_REPLICA_URL",
            "DB_HOST",
            "DB_PORT",
            "DB_NAME",
            "DB_USER",
            "DB_PASSWORD",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("botdb starts");
        self.spawned += 1;
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("botdb ends in time")
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts that neither stream of `run` shows any form of any of `passwords`, and
    /// counts each stream searched.
    fn search(&mut self, case: &str, run: &Run, passwords: &[&Password]) {
        for (stream, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            let found = shown(text, passwords);
            assert!(
                found.is_empty(),
                "{case}: the password on {stream}, {found:?}:\n{text}"
            );
            self.searched += 1;
        }
    }
}

/// The names of the forms of `passwords` that `text` shows (names, so that a failure
/// message does not repeat the password once more).
fn shown(text: &str, passwords: &[&Password]) -> Vec<&'static str> {
    passwords
        .iter()
        .flat_map(|p| p.forms())
        .filter(|(_, form)| text.contains(form.as_str()))
        .map(|(name, _)| name)
        .collect()
}

/// One planned run: a name, the command, its environment, the exit code, and pieces of
/// its output that show it got where it should and printed the URLs it was given,
/// redacted (the place a password would leak).
struct Case {
    name: String,
    args: &'static [&'static str],
    env: Vec<(&'static str, String)>,
    code: i32,
    shows: Vec<String>,
}

#[actix_rt::test]
async fn passwords_in_every_url_form_are_redacted_everywhere() {
    let (pg, _, _) = cluster().await;
    // Roles whose passwords need percent-encoding in a URL: one for the primary, one
    // for the replicas, so that a replica's password leaking is told apart.
    let primary = Password {
        written: "Pq%407%20w%2Frd%25%21x",
        plain: "Pq@7 w/rd%!x",
    };
    let reader = Password {
        written: "Rd%23%3A9%20%2Bq%26y",
        plain: "Rd#:9 +q&y",
    };
    let wrong = Password {
        written: "Wr0ng-pw_%3Fsecret",
        plain: "Wr0ng-pw_?secret",
    };
    let mut admin = botdb::migrate::connect_to(&pg.config("postgres")).await.unwrap();
    for (role, pw) in [("tester", &primary), ("reader", &reader)] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{}'",
            pw.plain
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    // Migrated, so that `migrate` with a working URL says "nothing to do: <URL> is up
    // to date", the URL printed.
    let db = botdb::Database::connect(&pg.config("botdb")).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
    let port = pg.port();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (down, down2) = (free_port(), free_port());
    // Each form at `port`; the host list puts a host that is down first, as after a
    // failover, so that `port` decides.
    let forms = |pw: &str, db: &str, port: u16| {
        let first = if port == down { down2 } else { down };
        [
            ("user info", format!("postgres://tester:{pw}@127.0.0.1:{port}/{db}"), "postgres://tester:***@"),
            (
                "query",
                format!("postgres://tester@127.0.0.1:{port}/{db}?password={pw}"),
                "?password=***",
            ),
            (
                "query after another parameter",
                format!("postgres://tester@127.0.0.1:{port}/{db}?sslmode=disable&password={pw}"),
                "?sslmode=disable&password=***",
            ),
            (
                "SQLAlchemy scheme, both places",
                format!(
                    "postgresql+asyncpg://tester:{pw}@127.0.0.1:{port}/{db}?application_name=x&password={pw}"
                ),
                "postgresql://tester:***@",
            ),
            (
                "host list",
                format!(
                    "postgres://tester:{pw}@127.0.0.1:{first},127.0.0.1:{port}/{db}?target_session_attrs=read-write"
                ),
                "postgres://tester:***@127.0.0.1:",
            ),
        ]
        .map(|(form, url, redacted)| (form, url, redacted.to_string()))
    };
    // A host list that never satisfies its attribute is retried until the pool
    // timeout: short for the runs that are refused, longer for the demo's work.
    let mut cases = Vec::new();
    let mut plan = |name: String, args, env: Vec<(&'static str, String)>, code, shows: &[&str]| {
        cases.push(Case {
            name,
            args,
            env,
            code,
            shows: shows.iter().map(|s| s.to_string()).collect(),
        })
    };
    let migrate: &[&str] = &["migrate"];
    for (form, url, redacted) in forms(wrong.written, "botdb", port) {
        // Rejected credentials: typed, naming the setting used (DATABASE_URL).
        let shows = ["the server rejected the credentials", "DATABASE_URL", &redacted];
        plan(
            format!("wrong password, {form}"),
            migrate,
            vec![("DATABASE_URL", url), ("DB_POOL_TIMEOUT", "1".into())],
            2,
            &shows,
        );
    }
    for (form, url, redacted) in forms(primary.written, "no_such_db", port) {
        // A database that does not exist: DATABASE_URL named, not DB_NAME.
        let shows = ["the database does not exist", "DATABASE_URL", &redacted];
        plan(
            format!("no such database, {form}"),
            migrate,
            vec![("DATABASE_URL", url), ("DB_POOL_TIMEOUT", "1".into())],
            2,
            &shows,
        );
    }
    for (form, url, redacted) in forms(primary.written, "botdb", down) {
        let shows = ["connection to the database failed", &redacted];
        plan(
            format!("server down, {form}"),
            migrate,
            vec![("DATABASE_URL", url), ("DB_POOL_TIMEOUT", "1".into())],
            2,
            &shows,
        );
    }
    for (form, url, redacted) in forms(primary.written, "botdb", port) {
        let shows = ["is up to date", &redacted];
        plan(
            format!("works, {form}"),
            migrate,
            vec![("DATABASE_URL", url), ("DB_POOL_TIMEOUT", "1".into())],
            0,
            &shows,
        );
    }
    // Replicas with a password of their own, read from by a short demo: the primary
    // itself as the replica (its connections made, then skipped: no standby), a host
    // list with the password in the query, a wrong password, and a malformed URL.
    let primary_url = forms(primary.written, "botdb", port)[0].1.clone();
    let demo: &[&str] = &["demo", "--users", "4", "--turns", "2", "--concurrency", "2"];
    let with_replica = |replica: String| {
        vec![
            ("DATABASE_URL", primary_url.clone()),
            ("DATABASE_REPLICA_URL", replica),
            ("DB_POOL_TIMEOUT", "10".into()),
        ]
    };
    plan(
        "replica, user info".into(),
        demo,
        with_replica(format!(
            "postgres://reader:{}@127.0.0.1:{port}/botdb",
            reader.written
        )),
        0,
        &[
            "demo OK",
            &format!("replicas=postgres://reader:***@127.0.0.1:{port}/botdb"),
        ],
    );
    plan(
        "replica host list, query".into(),
        demo,
        with_replica(format!(
            "postgres://reader@127.0.0.1:{down},127.0.0.1:{port}/botdb?password={}",
            reader.written
        )),
        0,
        &[
            "demo OK",
            &format!("replicas=postgres://reader@127.0.0.1:{down},127.0.0.1:{port}/botdb?password=***"),
        ],
    );
    plan(
        "replica, wrong password".into(),
        demo,
        with_replica(format!(
            "postgres://reader:{}@127.0.0.1:{port}/botdb",
            wrong.written
        )),
        0,
        &[
            "demo OK",
            "replicas=postgres://reader:***@",
            "password authentication failed for user \"reader\"",
        ],
    );
    plan(
        "replica, malformed".into(),
        demo,
        with_replica(format!(
            "postgres://reader:{}@127.0.0.1:notaport/botdb",
            reader.written
        )),
        2,
        &["configuration error in DATABASE_REPLICA_URL"],
    );

    let every = [&primary, &reader, &wrong];
    let mut tally = Tally::default();
    for case in &cases {
        let env: Vec<(&str, &str)> = case.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = tally.botdb(case.args, &env).await;
        tally.search(&case.name, &run, &every);
        let all = format!("{}{}", run.stdout, run.stderr);
        assert_eq!(run.code, Some(case.code), "{}: {all}", case.name);
        for piece in &case.shows {
            assert!(
                all.contains(piece.as_str()),
                "{}: no {piece:?} in {all}",
                case.name
            );
        }
        assert!(
            !all.contains("DB_NAME"),
            "{}: names the setting used: {all}",
            case.name
        );
    }
    // The configuration's own renderings, in process.
    let mut rendered = 0;
    for (form, url, _) in forms(primary.written, "botdb", port) {
        let config = botdb::Config::builder()
            .url(url)
            .replica_url(format!(
                "postgres://reader:{}@127.0.0.1:{port}/botdb",
                reader.written
            ))
            .build()
            .unwrap();
        let replica = config.replica().unwrap();
        for text in [
            format!("{config:?}"),
            format!("{config}"),
            config.redacted_url(),
            replica.redacted_url(),
        ] {
            assert!(text.contains("***"), "{form}: {text}");
            let found = shown(&text, &every);
            assert!(
                found.is_empty(),
                "{form}: the password rendered, {found:?}: {text}"
            );
            rendered += 1;
        }
    }
    eprintln!(
        "password forms: {} runs of botdb, {} outputs searched for {} forms of {} passwords, \
         none found; {rendered} renderings in process",
        tally.spawned,
        tally.searched,
        every.iter().map(|p| p.forms().len()).sum::<usize>(),
        every.len(),
    );
    assert_eq!(tally.spawned, cases.len());
    assert_eq!(tally.searched, 2 * cases.len());
    // 5 URL forms x 4 outcomes, and 4 replica runs.
    assert_eq!(cases.len(), 24);
}
