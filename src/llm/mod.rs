//! The language model behind the bot: the [`Model`] trait, what it is asked
//! ([`ModelInput`]), how it fails ([`ModelError`]), and a local default that needs no
//! network ([`EchoModel`]).
//!
//! - `error`: [`ModelError`], what a caller can do about a failure;
//! - `openai` (feature `server`): `OpenAiModel`, a client of any OpenAI-compatible chat
//!   completions API, and `from_config`, the model a
//!   [`ModelConfig`](crate::config::ModelConfig) names;
//! - `backoff` (feature `server`): the waits between its attempts.

#[cfg(feature = "server")]
mod backoff;
mod error;
#[cfg(feature = "server")]
pub mod openai;

use futures::future::BoxFuture;

use crate::model::Role;

pub use error::ModelError;
#[cfg(feature = "server")]
pub use openai::{OpenAiModel, from_config};

/// One message of the context sent to the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

/// What the model is asked.
#[derive(Clone, Debug)]
pub struct ModelInput<'a> {
    /// The user being answered.
    pub user_id: i64,
    /// The user's own system prompt, if they set one.
    pub system_prompt: Option<&'a str>,
    /// The context, oldest first; the last message is the user's new one.
    pub context: &'a [ChatMessage],
}

/// A language model. Plug a real client in by implementing this.
pub trait Model: Send + Sync + 'static {
    /// The model's reply to `input`.
    fn reply<'a>(&'a self, input: ModelInput<'a>) -> BoxFuture<'a, Result<String, ModelError>>;
}

/// A deterministic local model: it echoes the user's message and says how much context
/// it was given, which makes the effect of `/limit` and `/prompt` visible.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoModel;

impl Model for EchoModel {
    fn reply<'a>(&'a self, input: ModelInput<'a>) -> BoxFuture<'a, Result<String, ModelError>> {
        let text = input.context.last().map(|m| m.content.as_str()).unwrap_or("");
        let prompt = input.system_prompt.unwrap_or("default");
        let reply = format!(
            "You said: {text}\n(echo model; context: {} messages; system prompt: {prompt})",
            input.context.len()
        );
        Box::pin(async move { Ok(reply) })
    }
}
