//! The webhook's input path: a body parsed as a Telegram update, then its text parsed
//! as a command. Neither may panic, whatever the bytes.
#![no_main]

use botdb::bot::Command;
use botdb::bot::telegram::parse_update;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = parse_update(data)
        && let Some(text) = update.message.and_then(|m| m.text)
    {
        let _ = Command::parse(&text);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Command::parse(text);
    }
});
