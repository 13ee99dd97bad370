//! After the cells: how botdb's history read runs on the data set, for random populated
//! users (`--explain N` reads of each kind; 0 skips it).
//!
//! The plan (`EXPLAIN (ANALYZE, BUFFERS)`) of `repo::messages::HISTORY_SQL` (one
//! dialogue) and `HISTORY_MANY_SQL` (a batch of 16), summed up in one line each: how
//! `messages` is scanned, rows and shared buffers per history, time per statement. It
//! is what tells, as `--users` grows, whether a turn got dearer because the plan changed
//! or because the pages it reads no longer stay in memory.

use botdb::model::PRIVATE_CHAT;
use botdb::repo;
use sqlx::PgPool;

use crate::workers::Rng;

/// `EXPLAIN (ANALYZE, BUFFERS)` of botdb's history reads (`repo::messages::HISTORY_SQL`,
/// one dialogue, the user's own limit; `HISTORY_MANY_SQL`, a batch of 16) for random
/// populated users: how `messages` is scanned, and the buffers one history costs.
pub async fn explain_history(pool: &PgPool, users: i64, samples: usize) -> anyhow::Result<()> {
    if samples == 0 {
        return Ok(());
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let max_bytes = botdb::Limits::default().max_history_bytes as i64;
    let default_limit = i64::from(botdb::model::DEFAULT_MAX_HISTORY);
    for batch in [1usize, 16] {
        let (mut hit, mut read, mut ms, mut rows) = (0.0, 0.0, 0.0, 0.0);
        let mut scan = String::new();
        for _ in 0..samples {
            let ids: Vec<i64> = (0..batch).map(|_| 1 + rng.below(users as u64) as i64).collect();
            let q = if batch == 1 {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
                    repo::messages::HISTORY_SQL
                )))
                .bind(ids[0])
                .bind(PRIVATE_CHAT)
                .bind(None::<i64>)
            } else {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
                    repo::messages::HISTORY_MANY_SQL
                )))
                .bind(ids.clone())
                .bind(vec![PRIVATE_CHAT; batch])
                .bind(vec![None::<i64>; batch])
            };
            let plan: serde_json::Value = q.bind(default_limit).bind(max_bytes).fetch_one(pool).await?;
            let top = &plan[0]["Plan"];
            hit += top["Shared Hit Blocks"].as_f64().unwrap_or(0.0) / batch as f64;
            read += top["Shared Read Blocks"].as_f64().unwrap_or(0.0) / batch as f64;
            rows += top["Actual Rows"].as_f64().unwrap_or(0.0) / batch as f64;
            ms += plan[0]["Execution Time"].as_f64().unwrap_or(0.0);
            if scan.is_empty() {
                scan = messages_scan(top).unwrap_or_else(|| "no scan of messages found".into());
            }
        }
        let n = samples as f64;
        eprintln!(
            "history read ({}) at {users} users: {scan}; per history: {:.1} rows, shared buffers hit {:.1} read {:.1}; {:.3} ms per statement (mean of {samples})",
            if batch == 1 {
                "HISTORY_SQL, one user"
            } else {
                "HISTORY_MANY_SQL, 16 users"
            },
            rows / n,
            hit / n,
            read / n,
            ms / n,
        );
    }
    Ok(())
}

/// The node that reads `messages` in a JSON plan: its type, index and heap fetches.
fn messages_scan(node: &serde_json::Value) -> Option<String> {
    if node["Relation Name"].as_str() == Some("messages") {
        let mut s = node["Node Type"].as_str().unwrap_or("?").to_string();
        if let Some(index) = node["Index Name"].as_str() {
            s += &format!(" using {index}");
        }
        if let Some(fetches) = node["Heap Fetches"].as_f64() {
            s += &format!(" (heap fetches {fetches})");
        }
        return Some(s);
    }
    node["Plans"].as_array()?.iter().find_map(messages_scan)
}
