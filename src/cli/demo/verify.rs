//! The verification read-back: after the drain, the database must hold exactly what
//! the bot acknowledged.
//!
//! Every acknowledged turn was logged by the simulation ([`Log`]); here the demo users'
//! messages written since the run began are read back, on a pool of its own, and
//! compared user by user: every acknowledged message present once, in the order it was
//! acknowledged, nothing else stored, and the messages from before an acknowledged
//! `/reset` soft-deleted. A turn stored twice (a redelivery gone wrong), lost (a commit
//! answered before it was durable) or reordered shows here.

use std::collections::HashMap;

use botdb::{Config, Database};

use super::simulation::{FIRST_USER, Log};

/// What the verification pass found.
#[derive(Default)]
pub(super) struct Verification {
    users: usize,
    acknowledged: usize,
    stored: usize,
    live: usize,
    hidden: usize,
    problems: Vec<String>,
}

impl Verification {
    /// Whether the database held exactly what was acknowledged.
    pub(super) fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stored:       {} messages ({} live, {} soft-deleted)",
            self.stored, self.live, self.hidden
        )?;
        if self.ok() {
            write!(
                f,
                "verification: OK: all {} acknowledged messages present, each once; order intact for {} users; \
                 the {} soft-deleted ones hidden from history",
                self.acknowledged, self.users, self.hidden
            )
        } else {
            write!(f, "verification: FAILED, {} problems", self.problems.len())?;
            for p in self.problems.iter().take(10) {
                write!(f, "\n              {p}")?;
            }
            Ok(())
        }
    }
}

/// Compares the database with the acknowledged log: every acknowledged message present,
/// each user's messages in the order they were acknowledged, nothing else, messages from
/// before a reset hidden and the others live. Reads after the drain, on a pool of its own
/// (the actors' is closed), which finds the server `config` wants among its hosts (the
/// promoted standby after a failover).
pub(super) async fn verify(
    config: &Config,
    logs: &HashMap<i64, Log>,
    users: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Verification> {
    let db = Database::connect(config).await?;
    let rows: Result<Vec<(i64, String, String, bool)>, _> = sqlx::query_as(
        "SELECT user_id, role, content, deleted_at IS NOT NULL FROM messages \
         WHERE user_id >= $1 AND user_id < $2 AND created_at >= $3 ORDER BY user_id, created_at, seq",
    )
    .bind(FIRST_USER)
    .bind(FIRST_USER + users)
    .bind(since)
    .fetch_all(db.pool())
    .await;
    db.close().await;
    let rows = rows?;
    let mut by_user: HashMap<i64, Vec<(String, String, bool)>> = HashMap::new();
    let mut v = Verification::default();
    for (user, role, content, deleted) in rows {
        v.stored += 1;
        if deleted {
            v.hidden += 1;
        } else {
            v.live += 1;
        }
        by_user.entry(user).or_default().push((role, content, deleted));
    }
    for (user, log) in logs {
        v.users += 1;
        v.acknowledged += log.turns.len() * 2;
        let stored = by_user.remove(user).unwrap_or_default();
        let expected: Vec<(String, String, bool)> = log
            .turns
            .iter()
            .enumerate()
            .flat_map(|(i, (text, reply))| {
                let hidden = log.reset_after.is_some_and(|r| i < r);
                [
                    ("user".to_string(), text.clone(), hidden),
                    ("assistant".to_string(), reply.clone(), hidden),
                ]
            })
            .collect();
        if stored != expected {
            let at = stored
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(stored.len().min(expected.len()));
            v.problems.push(format!(
                "user {user}: {} stored vs {} acknowledged messages; first difference at #{at}",
                stored.len(),
                expected.len()
            ));
        }
    }
    for (user, stored) in by_user {
        v.problems.push(format!(
            "user {user}: {} messages stored that were never acknowledged",
            stored.len()
        ));
    }
    Ok(v)
}
