//! The `botdb` binary: the operator verbs, check's exit code, concurrency, tampering, and
//! the demo on the embedded default.

use std::process::Output;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::TestDb;

/// `botdb ARGS` with `env`, from an empty directory (no stray `.env`), nothing inherited
/// that names a database.
pub(crate) fn botdb(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botdb"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    for var in [
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_USER",
        "DB_PASSWORD",
        "DB_SSLMODE",
        "DB_SSLROOTCERT",
        "BOTDB_WEBHOOK_SECRET",
        "BOTDB_ADMIN_TOKEN",
        "BOTDB_APP_MIGRATIONS",
        "BOTDB_AUDIT_KEY",
        "BOTDB_PURGE_AFTER",
        "BOTDB_KEY_RETENTION_HOURS",
        "BOTDB_EXPORT_TIMEOUT",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub(crate) async fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    tokio::time::timeout(Duration::from_secs(120), botdb(args, env).output())
        .await
        .expect("botdb finished")
        .expect("botdb ran")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn operator_verbs_migrate_current_history_rollback() {
    let t = TestDb::empty().await;
    let env = t.env();
    let o = run(&["current"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "no migration applied");

    let o = run(&["migrate"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().filter(|l| l.starts_with("applied ")).count(),
        10,
        "{}",
        stdout(&o)
    );

    let o = run(&["current"], &env).await;
    assert_eq!(stdout(&o).trim(), "0010 turn pipeline (head)");

    let o = run(&["rollback", "-n", "7"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "reverted 0010 turn pipeline\nreverted 0009 validate request key owners\nreverted 0008 request keys owned by users\n\
         reverted 0007 erasures and retention\nreverted 0006 request keys\nreverted 0005 dialogues per chat\n\
         reverted 0004 integrity and ordering"
    );

    let o = run(&["history"], &env).await;
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("0003") && l.contains("applied") && l.contains("20")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("0004") && l.contains("pending")),
        "{out}"
    );

    let o = run(&["rollback", "-n", "3"], &env).await;
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    let o = run(&["migrate", "--to", "2"], &env).await;
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    let o = run(&["migrate"], &env).await;
    assert_eq!(stdout(&o).lines().count(), 8, "{}", stdout(&o));
}

#[tokio::test]
async fn check_exits_zero_when_clean_and_one_listing_differences() {
    let t = TestDb::new().await;
    let o = run(&["check"], &t.env()).await;
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("ok:"));

    sqlx::raw_sql("ALTER TABLE messages ADD COLUMN language TEXT; DROP INDEX ix_users_id")
        .execute(&mut t.conn().await)
        .await
        .unwrap();
    let o = run(&["check"], &t.env()).await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("unexpected column messages.language: text NULL"),
        "{out}"
    );
    assert!(out.contains("missing    index ix_users_id"), "{out}");
    assert!(stderr(&o).contains("2 difference(s)"), "{}", stderr(&o));
}

#[tokio::test]
async fn two_migrate_commands_at_once_one_applies_the_other_finds_nothing_to_do() {
    let t = TestDb::empty().await;
    let env = t.env();
    let (a, b) = tokio::join!(run(&["migrate"], &env), run(&["migrate"], &env));
    assert!(
        a.status.success() && b.status.success(),
        "{} {}",
        stderr(&a),
        stderr(&b)
    );
    let mut outs = [stdout(&a), stdout(&b)];
    outs.sort_by_key(|o| o.contains("nothing to do"));
    assert_eq!(
        outs[0].lines().filter(|l| l.starts_with("applied")).count(),
        10,
        "{outs:?}"
    );
    assert!(outs[1].starts_with("nothing to do"), "{outs:?}");
}

#[tokio::test]
async fn a_tampered_migration_fails_with_its_name() {
    let t = TestDb::new().await;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = sha384('edited') WHERE version = 2")
        .execute(&mut t.conn().await)
        .await
        .unwrap();
    let o = run(&["migrate"], &t.env()).await;
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("0002") && err.contains("edited after it was applied"),
        "{err}"
    );
    let o = run(&["history"], &t.env()).await;
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("0002") && l.contains("EDITED"))
    );
}

#[tokio::test]
async fn new_creates_the_next_reversible_pair() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    std::fs::write(dir.path().join("migrations/0004_x.up.sql"), "").unwrap();
    let o = botdb(&["new", "add user language"], &[])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        dir.path()
            .join("migrations/0005_add_user_language.up.sql")
            .is_file()
    );
    assert!(
        dir.path()
            .join("migrations/0005_add_user_language.down.sql")
            .is_file()
    );
}

#[tokio::test]
async fn a_bad_setting_names_the_variable() {
    let o = run(&["current"], &[("DB_POOL_SIZE", "lots".into())]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("DB_POOL_SIZE") && stderr(&o).contains("whole number"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn tour_runs_the_reference_operations_on_a_configured_server() {
    let t = TestDb::empty().await;
    let o = run(&["tour"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("max_history_messages 50 -> 100"), "{out}");
    assert!(out.contains("soft-deleted 6 messages"), "{out}");
    let password = crate::helpers::server_password();
    if !password.is_empty() {
        assert!(
            !out.contains(&password) && !stderr(&o).contains(&password),
            "the password was printed"
        );
    }
}

#[tokio::test]
async fn demo_simulates_users_through_the_actors_and_verifies_everything() {
    let t = TestDb::empty().await;
    let o = run(
        &[
            "demo",
            "--users",
            "60",
            "--turns",
            "6",
            "--concurrency",
            "16",
            "--redeliver",
            "30",
        ],
        &t.env(),
    )
    .await;
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("turns:        360 in"), "{out}");
    assert!(out.contains("per turn:     p50"), "{out}");
    // Redelivered updates: every copy answered with the first reply, and the
    // verification below (stored = acknowledged, exactly) finds no turn twice.
    let copies = out
        .lines()
        .find_map(|l| l.strip_prefix("redelivered:  "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the demo reports its redeliveries");
    assert!(copies > 0, "{out}");
    assert!(
        out.contains(&format!("{copies} answered with the first reply")),
        "{out}"
    );
    assert!(
        out.contains(
            "verification: OK: all 720 acknowledged messages present, each once; order intact for 60 users"
        ),
        "{out}"
    );
    assert!(
        out.contains("shutdown:     accepted") && out.contains("pool closed"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("demo OK"), "{out}");
    // The database agrees: 720 messages, the reset users' first halves hidden.
    let (all, hidden): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE deleted_at IS NOT NULL) FROM messages")
            .fetch_one(&mut t.conn().await)
            .await
            .unwrap();
    assert_eq!(all, 720);
    assert!(hidden > 0);
}

/// The embedded cluster's directory, from the log line that announces it.
fn cluster_dir(line: &str) -> Option<std::path::PathBuf> {
    let start = line.find("dir=")? + 4;
    let dir = line[start..].split_whitespace().next()?;
    Some(dir.trim_end_matches('\u{1b}').into())
}

#[tokio::test]
async fn demo_on_the_embedded_default_prints_the_result_and_removes_the_cluster() {
    let o = run(
        &["demo", "--users", "100", "--turns", "4"],
        &[("NO_COLOR", "1".into())],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("verification: OK"), "{}", stdout(&o));
    let err = stderr(&o);
    let dir = err
        .lines()
        .find_map(cluster_dir)
        .expect("the demo names its cluster directory");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn demo_with_a_standby_fails_over_half_way_and_verifies_everything_on_the_promoted_one() {
    let o = run(
        &[
            "demo",
            "--standby",
            "--failover-at",
            "50%",
            "--users",
            "40",
            "--turns",
            "5",
            "--concurrency",
            "16",
        ],
        &[("NO_COLOR", "1".into())],
    )
    .await;
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("standby:      synchronous, on port"), "{out}");
    assert!(out.contains("target_session_attrs=read-write"), "{out}");
    assert!(out.contains("turns:        200 in"), "{out}");
    assert!(out.contains("failures:     0"), "{out}");
    assert!(
        out.contains("failover:     primary stopped at turn 100, standby promoted in"),
        "{out}"
    );
    assert!(out.contains("first write on the new primary after"), "{out}");
    assert!(out.contains("redelivered after failover: "), "{out}");
    assert!(
        out.contains(
            "verification: OK: all 400 acknowledged messages present, each once; order intact for 40 users"
        ),
        "{out}"
    );
    assert!(out.trim_end().ends_with("demo OK"), "{out}");
    let dir = stderr(&o)
        .lines()
        .find_map(cluster_dir)
        .expect("the demo names its cluster directory");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn demo_standby_is_refused_on_a_configured_server_and_failover_at_needs_it() {
    // Refused before anything is connected to: no server needs to listen there.
    let password = "never-shown-pw";
    let url = format!("postgres://postgres:{password}@127.0.0.1:{}/bot", closed_port());
    let o = run(&["demo", "--standby"], &[("DATABASE_URL", url)]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--standby adds a standby to the demo's own throwaway PostgreSQL"),
        "{err}"
    );
    assert!(!err.contains(password) && !stdout(&o).contains(password), "{err}");
    for (args, expected) in [
        (&["demo", "--failover-at", "50%"][..], "--standby"),
        (
            &["demo", "--standby", "--failover-at", "150%"][..],
            "expected a share",
        ),
        (
            &["demo", "--standby", "--failover-at", "2"][..],
            "expected a share",
        ),
    ] {
        let o = run(args, &[]).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
}

/// Starts `botdb demo` on the embedded default and returns it once it is simulating,
/// with its cluster directory.
async fn demo_in_progress() -> (
    tokio::process::Child,
    std::path::PathBuf,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = botdb(
        &["demo", "--users", "100000", "--turns", "50"],
        &[("NO_COLOR", "1".into())],
    )
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    let dir = loop {
        let line = errs
            .next_line()
            .await
            .unwrap()
            .expect("the demo names its cluster directory");
        if let Some(dir) = cluster_dir(&line) {
            break dir;
        }
    };
    actix_rt::spawn(async move { while let Ok(Some(_)) = errs.next_line().await {} });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = out
            .next_line()
            .await
            .unwrap()
            .expect("the demo starts simulating");
        if line.starts_with("simulating") {
            break;
        }
    }
    (child, dir, out)
}

#[actix_rt::test]
async fn ctrl_c_during_the_demo_drains_verifies_and_removes_the_cluster() {
    let (mut child, dir, mut out) = demo_in_progress().await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut summary = String::new();
    while let Ok(Some(line)) = out.next_line().await {
        summary.push_str(&line);
        summary.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{summary}");
    assert!(summary.contains("stopped early"), "{summary}");
    assert!(summary.contains("verification: OK"), "{summary}");
    assert!(
        summary.contains("unfinished 0") && summary.contains("pool closed"),
        "{summary}"
    );
    let removed = crate::helpers::eventually(Duration::from_secs(30), async || !dir.exists()).await;
    assert!(removed, "{} left behind", dir.display());
}

#[actix_rt::test]
async fn a_second_signal_exits_at_once_and_the_cluster_is_still_removed() {
    let (mut child, dir, _out) = demo_in_progress().await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(botdb::shutdown::FORCED_EXIT_CODE));
    let removed = crate::helpers::eventually(Duration::from_secs(30), async || !dir.exists()).await;
    assert!(removed, "{} left behind", dir.display());
}

#[actix_rt::test]
async fn the_embedded_cluster_is_removed_even_when_botdb_is_killed() {
    let (mut child, dir, _out) = demo_in_progress().await;
    assert!(dir.exists());
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "killed mid-run, not finished: {status:?}"
    );
    let removed = crate::helpers::eventually(Duration::from_secs(30), async || !dir.exists()).await;
    assert!(removed, "{} left behind after SIGKILL", dir.display());
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

#[tokio::test]
async fn serve_with_db_settings_never_starts_a_throwaway_database() {
    // The trap: DB_NAME and credentials but no DB_HOST, relying on its default. That is
    // the configured server (localhost), which here is down: serve must fail and say so,
    // never serve real users from a database deleted on exit.
    let port = closed_port().to_string();
    let secret = ("BOTDB_WEBHOOK_SECRET", crate::serve::SECRET.to_string());
    let o = run(
        &["serve", "--bind", "127.0.0.1:0", "--migrate"],
        &[
            ("DB_NAME", "prod_bot".into()),
            ("DB_USER", "postgres".into()),
            ("DB_PASSWORD", "pw-of-prod".into()),
            ("DB_PORT", port.clone()),
            ("DB_POOL_TIMEOUT", "2".into()),
            secret.clone(),
        ],
    )
    .await;
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(!err.to_lowercase().contains("throwaway"), "{err}");
    assert!(
        err.contains(&format!("postgres://postgres:***@localhost:{port}/prod_bot")),
        "the error names the configured server: {err}"
    );
    assert!(!err.contains("pw-of-prod"), "{err}");

    // Asking for a throwaway database while a server is configured is refused too.
    let o = run(
        &["serve", "--bind", "127.0.0.1:0", "--throwaway-db"],
        &[("DB_NAME", "prod_bot".into()), secret],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--throwaway-db"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("listening"));
}

/// The environment of a running process, as `KEY=value` strings.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

#[actix_rt::test]
async fn serve_uses_a_throwaway_database_only_when_asked_and_hands_it_no_secrets() {
    let canary = "canary-secret_4b7d1e";
    let mut child = botdb(
        &["serve", "--bind", "127.0.0.1:0", "--throwaway-db"],
        &[
            ("NO_COLOR", "1".into()),
            ("BOTDB_WEBHOOK_SECRET", canary.into()),
            ("BOTDB_ADMIN_TOKEN", canary.into()),
        ],
    )
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    let dir = loop {
        let line = errs
            .next_line()
            .await
            .unwrap()
            .expect("serve names its cluster directory");
        warned |= line.contains("THROWAWAY");
        if let Some(dir) = cluster_dir(&line) {
            break dir;
        }
    };
    assert!(warned, "the throwaway database is announced as such");
    actix_rt::spawn(async move { while let Ok(Some(_)) = errs.next_line().await {} });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = out.next_line().await.unwrap() {
        if line.starts_with("listening on") {
            break;
        }
    }
    // The server's processes (postmaster and its children) get none of botdb's
    // environment: no secret, nothing of cargo's or the test's.
    let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let env = environ(postmaster);
    assert!(!env.is_empty(), "the postmaster's environment was read");
    for kv in &env {
        assert!(!kv.contains(canary), "{kv} reached PostgreSQL");
        let key = kv.split('=').next().unwrap_or_default();
        assert!(
            !key.starts_with("BOTDB_")
                && !key.starts_with("CARGO")
                && !key.starts_with("DB_")
                && key != "DATABASE_URL",
            "{key} reached PostgreSQL: {env:?}"
        );
    }
    let ours = environ(std::process::id());
    assert!(
        ours.iter().any(|kv| kv.starts_with("CARGO")),
        "the test's own environment has cargo's variables, so their absence above means something"
    );
    let status = crate::serve::sigterm(&mut child).await;
    assert_eq!(status.code(), Some(0));
    let removed = crate::helpers::eventually(Duration::from_secs(30), async || !dir.exists()).await;
    assert!(removed, "{} left behind", dir.display());
}
