//! What the HTTP handlers share: the bot, the secrets they check, their limits, and
//! the counters `/metrics` shows.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use secrecy::SecretString;

use crate::bot::Bot;
use crate::pipeline::Pipeline;
use crate::server::health::HealthCache;
use crate::server::metrics::WebhookMetrics;

/// The handlers' limits, from [`ServeOptions`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) body_limit: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) health_cache: Duration,
}

/// What the handlers share.
pub(crate) struct AppState {
    pub(crate) bot: Bot,
    pub(crate) secret: Option<SecretString>,
    pub(crate) admin_token: Option<SecretString>,
    pub(crate) limits: Limits,
    pub(crate) webhook: WebhookMetrics,
    pub(crate) health: HealthCache,
    /// Handled update ids removed by the retention purge.
    pub(crate) keys_purged: AtomicU64,
    /// Sent and failed outbox messages removed by the same purge.
    pub(crate) outbox_purged: AtomicU64,
    /// With the Bot API (`TELEGRAM_BOT_TOKEN`): the pipeline that runs the recorded
    /// updates and sends their replies; `None`: each reply rides on its webhook answer.
    pub(crate) pipeline: Option<std::sync::Arc<Pipeline>>,
}
