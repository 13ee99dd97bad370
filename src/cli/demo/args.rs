//! `botdb demo`'s options and their parsers.

/// `demo`'s options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 1000)]
    pub(super) users: i64,
    /// Text turns per user (each stores two messages).
    #[arg(long, default_value_t = 20)]
    pub(super) turns: u32,
    /// Users talking at the same moment.
    #[arg(long, default_value_t = 64)]
    pub(super) concurrency: usize,
    /// Stop starting new turns after this many seconds (the run then drains and verifies).
    #[arg(long)]
    pub(super) duration: Option<f64>,
    /// Percent of turns delivered twice at once, as Telegram does when a 200 is late;
    /// half of those are delivered a third time after the user's next turn. Every copy
    /// must get the first one's reply, and no turn may be stored twice.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    pub(super) redeliver: f64,
    /// Give the throwaway PostgreSQL a synchronous standby and fail over to it during the
    /// run (see --failover-at): the demo is given both servers, read-write. Only with the
    /// throwaway cluster (no DATABASE_URL / DB_HOST).
    #[arg(long)]
    pub(super) standby: bool,
    /// With --standby: once this share of the turns is acknowledged (`50%` or `0.5`),
    /// stop the primary hard (pg_ctl stop -m immediate) and promote the standby; turns
    /// failing meanwhile are redelivered until answered [default: 50%].
    #[arg(long, value_name = "SHARE", requires = "standby", value_parser = share)]
    pub(super) failover_at: Option<f64>,
    /// Run the bot as it runs with a real model and Telegram's Bot API: a local
    /// OpenAI-compatible model that takes this long (`2s`, `500ms`), a local Bot API
    /// server, and serve's turn pipeline between them; each user sends all their
    /// messages at once, and every reply is checked (once, in order, complete context).
    #[arg(long, value_name = "DURATION", value_parser = latency, conflicts_with_all = ["standby", "redeliver"])]
    pub(super) model_latency: Option<std::time::Duration>,
}

impl DemoArgs {
    /// The share of the turns after which to fail over, when there is a standby.
    pub(super) fn failover_share(&self) -> Option<f64> {
        self.standby.then_some(self.failover_at.unwrap_or(0.5))
    }
}

/// A share of a whole: `50%` or `0.5`.
fn share(v: &str) -> Result<f64, String> {
    let parsed = match v.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => v.trim().parse::<f64>(),
    };
    match parsed {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s),
        _ => Err(format!("expected a share from 0% to 100% (or 0 to 1), got {v:?}")),
    }
}

/// A model's latency: `2s`, `500ms` (0 to 10 minutes).
fn latency(v: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(v.trim()) {
        Ok(d) if d <= std::time::Duration::from_secs(600) => Ok(d),
        _ => Err(format!("expected a duration up to 10m (2s, 500ms), got {v:?}")),
    }
}

/// A percentage: 0 to 100.
fn percent(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a percentage from 0 to 100, got {v:?}")),
    }
}
