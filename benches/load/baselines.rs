//! The baselines botdb is measured against: the workload's pgbench statements without
//! botdb, on a plain sqlx pool (`raw`, `raw-tx`) and through pgbench itself (`pgbench`,
//! `pgbench-tx`).
//!
//! `raw` is what an application would write with sqlx and its default pool (the same
//! size as botdb's, `test_before_acquire` on): every statement its own transaction, as
//! pgbench's autocommit statements; `raw-tx` one transaction per turn. The pgbench modes
//! run `workload/turn.pgbench` / `turn_tx.pgbench` (`-M prepared`) as a child process
//! for the cell's duration: turns/s is pgbench's tps, the latencies come from its
//! per-transaction log, the client CPU is the child's.

use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::Mode;
use crate::stats::{Sample, cpu_times, histogram, sample};
use crate::workers::Target;

/// Where pgbench connects, and as whom (the bench's database URL, taken apart).
pub struct PgbenchTarget {
    host: String,
    port: u16,
    user: String,
    database: String,
    password: Option<String>,
}

impl PgbenchTarget {
    /// The server, user and database of `url`.
    pub fn of(url: &url::Url) -> PgbenchTarget {
        PgbenchTarget {
            host: url.host_str().unwrap_or("127.0.0.1").to_string(),
            port: url.port().unwrap_or(5432),
            user: url.username().to_string(),
            database: url.path().trim_start_matches('/').to_string(),
            password: url.password().map(str::to_string),
        }
    }
}

/// Whether `pgbench` is on PATH (its modes are skipped when it is not).
pub fn pgbench_available() -> bool {
    std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The pgbench script's five statements, verbatim, on executor `$ex` (re-evaluated for
/// each statement: `&pool` checks out a connection per statement, `&mut *tx` reuses one).
macro_rules! pgbench_turn {
    ($ex:expr, $t:expr, $uid:expr) => {{
        sqlx::query("INSERT INTO users(id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET updated_at = now()")
            .bind($uid)
            .execute($ex)
            .await?;
        let _: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT max_history_messages, system_prompt FROM user_settings WHERE user_id = $1",
        )
        .bind($uid)
        .fetch_optional($ex)
        .await?;
        sqlx::query(
            "INSERT INTO messages(id, user_id, role, content, content_length) \
             VALUES (gen_random_uuid(), $1, 'user', $2, 200)",
        )
        .bind($uid)
        .bind(&*$t.user_text)
        .execute($ex)
        .await?;
        let _: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT role, content, created_at FROM messages WHERE user_id = $1 AND deleted_at IS NULL \
             ORDER BY created_at DESC LIMIT 20",
        )
        .bind($uid)
        .fetch_all($ex)
        .await?;
        sqlx::query(
            "INSERT INTO messages(id, user_id, role, content, content_length) \
             VALUES (gen_random_uuid(), $1, 'assistant', $2, 400)",
        )
        .bind($uid)
        .bind(&*$t.reply_text)
        .execute($ex)
        .await?;
    }};
}

/// The pgbench turn on the plain sqlx pool: each statement its own transaction (as
/// pgbench's autocommit statements), or one transaction for the turn.
pub async fn raw_turn(t: &Target, uid: i64, one_tx: bool) -> Result<(), sqlx::Error> {
    if one_tx {
        let mut tx = t.raw.begin().await?;
        pgbench_turn!(&mut *tx, t, uid);
        tx.commit().await
    } else {
        pgbench_turn!(&t.raw, t, uid);
        Ok(())
    }
}

/// Runs pgbench for one cell; turns/s is its tps (one script run = one turn), the
/// latencies come from its per-transaction log.
pub async fn pgbench(target: &Target, mode: Mode, c: usize, duration: Duration) -> anyhow::Result<Sample> {
    let pg = target
        .pg
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no pgbench target"))?;
    let script = match mode {
        Mode::PgbenchTx => concat!(env!("CARGO_MANIFEST_DIR"), "/benches/workload/turn_tx.pgbench"),
        _ => concat!(env!("CARGO_MANIFEST_DIR"), "/benches/workload/turn.pgbench"),
    };
    let logs = tempfile::tempdir()?;
    let prefix = logs.path().join("pgbench_log");
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .args(["-c", &c.to_string(), "-j", &c.min(2).to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .args(["-f", script])
        .args([
            "-D",
            &format!("nclients={c}"),
            "-D",
            &format!("users={}", target.users),
        ])
        .args(["-D", &format!("ucontent={}", target.user_text)])
        .args(["-D", &format!("acontent={}", target.reply_text)])
        .args([
            "-h",
            &pg.host,
            "-p",
            &pg.port.to_string(),
            "-U",
            &pg.user,
            &pg.database,
        ])
        .current_dir(logs.path())
        .kill_on_drop(true);
    if let Some(password) = &pg.password {
        // In the environment, not on the command line.
        cmd.env("PGPASSWORD", password);
    }
    let (_, children_before) = cpu_times();
    let out = cmd.output().await?;
    let (_, children_after) = cpu_times();
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output:\n{text}"))?;
    let hist = pgbench_latencies(logs.path())?;
    let failed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut s = sample(mode, c, &hist, failed, 1.0, children_after - children_before);
    s.turns_per_sec = tps;
    Ok(s)
}

/// Per-transaction latencies (µs, third column) from pgbench's log files.
fn pgbench_latencies(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    let mut hist = histogram();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()) {
                let _ = hist.record(us.max(1));
            }
        }
    }
    Ok(hist)
}
