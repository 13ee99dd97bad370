//! Mode `bot`: the webhook's text turn in this process, and the update that it and mode
//! `http` send.
//!
//! A `bot` turn is the Telegram update `http` posts, parsed and handled by `Bot::handle`
//! (echo model) over the `batched` actors: `BeginTurn`, then `AppendTurn` with the
//! update's key. Beside `http` it shows what HTTP and `serve` cost on top of the bot;
//! beside `batched`, what the bot's turn costs on top of the reference turn.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::serve::update;
use crate::workers::Target;

/// Update ids, increasing across the whole run (every worker, of `http` and `bot`, draws
/// from it).
pub static UPDATE_IDS: AtomicI64 = AtomicI64::new(1);

/// The user's text: 200 characters of words.
pub fn text() -> String {
    let words = "how would you plan a three day trip to the mountains with two children \
                 and a dog when the forecast says rain on the second day and we can only \
                 drive four hours at most ";
    words.chars().cycle().take(200).collect()
}

/// The bot's text turn in this process: the update `http` sends, parsed and handled by
/// `Bot::handle` (what `serve`'s webhook does, without HTTP); `true` for a reply.
pub async fn bot_turn(t: &Target, uid: i64) -> bool {
    let update_id = UPDATE_IDS.fetch_add(1, Ordering::Relaxed);
    let Ok(update) = serde_json::from_slice(&update(update_id, uid, &t.update_text)) else {
        return false;
    };
    matches!(t.bot.handle(update).await, Ok(botdb::bot::Outcome::Reply(_)))
}
