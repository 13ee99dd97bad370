//! `botdb serve` as a bench's child process, and the Telegram updates a bench posts to
//! its webhook: what the load bench's `http` mode (`load/http.rs`) and the `healthz`
//! bench both do, in one place (each includes this file with `#[path]`).
//!
//! [`start`] spawns the command it is given (`botdb serve --bind 127.0.0.1:0 ...`, the
//! caller's environment and options), waits for the line `listening on <address>` that
//! `serve` prints once bound, and keeps reading its stdout after that so that the child
//! never blocks on a full pipe. [`update`] is a text update as Telegram sends it (the
//! fields botdb reads and a few it does not), [`send`] posts one with the secret token.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `command` (a `botdb serve` bound to port 0), its stdout piped and the child
/// killed on drop, and returns it with the base URL it listens on.
///
/// # Errors
///
/// When it cannot be started, exits before it listens, or has not listened within
/// 60 s.
pub async fn start(command: &mut Command) -> anyhow::Result<(Child, String)> {
    let program = Path::new(command.as_std().get_program()).to_owned();
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} serve: {e}", program.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout from botdb serve"))?;
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Ok(addr.to_string());
            }
        }
        anyhow::bail!("botdb serve exited before listening")
    })
    .await
    .map_err(|_| anyhow::anyhow!("botdb serve did not listen within 60 s"))??;
    // Keep draining stdout so the child never blocks on a full pipe.
    actix_rt::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, base))
}

/// A Telegram text update, as Telegram sends it.
pub fn update(update_id: i64, user_id: i64, text: &str) -> Vec<u8> {
    let value = serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user_id, "is_bot": false, "first_name": "Bench", "language_code": "en"},
            "chat": {"id": user_id, "first_name": "Bench", "type": "private"},
            "date": 1_700_000_000,
            "text": text
        }
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Posts one update to `base`'s webhook with `secret`; `true` for a 200 whose body was
/// read.
pub async fn send(
    client: &awc::Client,
    base: &str,
    secret: &str,
    update_id: i64,
    user_id: i64,
    text: &str,
) -> bool {
    let answer = client
        .post(format!("{base}/telegram/webhook"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header((botdb::server::SECRET_HEADER, secret))
        .send_body(update(update_id, user_id, text))
        .await;
    match answer {
        Ok(mut resp) => resp.status().as_u16() == 200 && resp.body().limit(1 << 20).await.is_ok(),
        Err(_) => false,
    }
}
