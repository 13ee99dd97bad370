//! The Bot API client (`telegram::BotApi`) against the local Bot API server
//! (`embedded::LocalBotApi`): what it sends arrives, and each way Telegram fails becomes
//! the `SendError` that tells the caller what to do, with no token or URL in any text.
//! No database is involved.

use std::time::{Duration, Instant};

use botdb::Error;
use botdb::config::TelegramConfig;
use botdb::embedded::{Fault, LocalBotApi, SentMessage};
use botdb::telegram::{BotApi, MAX_MESSAGE_UTF16, RateLimits, SendError, split_message, utf16_len};
use secrecy::SecretString;

/// A token shaped as @BotFather's.
const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ";
/// Another, that the server does not know.
const WRONG_TOKEN: &str = "987654321:ZZHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ";

fn config(api_url: url::Url, token: &str, timeout: Duration) -> TelegramConfig {
    TelegramConfig {
        token: Some(SecretString::from(token.to_string())),
        api_url,
        timeout,
        ..TelegramConfig::default()
    }
}

fn server() -> LocalBotApi {
    LocalBotApi::start(TOKEN).expect("the local Bot API starts")
}

fn client(server: &LocalBotApi) -> BotApi {
    BotApi::new(&config(server.url(), TOKEN, Duration::from_secs(10))).unwrap()
}

/// Every text a caller may print of `err`.
fn texts(err: &SendError) -> String {
    format!("{err} {err:?}")
}

/// No token and no Bot API URL in any of `errors`' texts.
fn assert_secret_free(server: &LocalBotApi, errors: &[SendError]) {
    let url = server.url().to_string();
    for err in errors {
        let text = texts(err);
        for secret in [
            TOKEN,
            WRONG_TOKEN,
            "AAHdqTcv",
            "ZZHdqTcv",
            "/bot",
            url.trim_end_matches('/'),
        ] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    }
}

#[tokio::test]
async fn a_message_sent_arrives_and_its_id_comes_back() {
    let server = server();
    let api = client(&server);
    assert_eq!(api.send_message(7, "hello").await.unwrap(), 1);
    assert_eq!(api.send_message(7, "héllo again 😀").await.unwrap(), 2);
    assert_eq!(
        api.send_message(8, "another chat").await.unwrap(),
        1,
        "ids are per chat"
    );
    api.send_chat_action(7, "typing").await.unwrap();
    assert_eq!(server.messages(7), vec!["hello", "héllo again 😀"]);
    assert_eq!(server.messages(8), vec!["another chat"]);
    assert_eq!(server.chat_actions(7), vec!["typing"]);
    let sent = |chat_id, message_id, text: &str| SentMessage {
        chat_id,
        message_id,
        text: text.to_string(),
    };
    assert_eq!(
        server.all_messages(),
        vec![
            sent(7, 1, "hello"),
            sent(7, 2, "héllo again 😀"),
            sent(8, 1, "another chat")
        ],
        "all chats' messages, in the order they arrived"
    );
    assert_eq!(server.sends(), 3);
    // Markup is not interpreted (no parse_mode): the text arrives as written.
    api.send_message(7, "<b>*not bold*</b>").await.unwrap();
    assert_eq!(server.messages(7)[2], "<b>*not bold*</b>");
}

#[tokio::test]
async fn too_many_requests_is_retry_after_with_telegrams_value() {
    let server = server();
    let api = client(&server);
    server.script(vec![Fault::TooManyRequests { retry_after: 7 }]);
    let err = api.send_message(1, "soon").await.unwrap_err();
    assert_eq!(err, SendError::RetryAfter(Duration::from_secs(7)));
    assert_eq!(err.kind(), "retry_after");
    assert!(server.messages(1).is_empty(), "nothing was sent");
    // The fault was one call's: the next goes.
    api.send_message(1, "now").await.unwrap();
    assert_eq!(server.messages(1), vec!["now"]);
}

#[tokio::test]
async fn server_errors_are_transient_and_one_call_is_one_attempt() {
    let server = server();
    let api = client(&server);
    server.script(vec![Fault::Status(502), Fault::Status(500)]);
    let gateway = api.send_message(1, "a").await.unwrap_err();
    assert!(
        matches!(&gateway, SendError::Transient(s) if s.contains("502")),
        "{gateway:?}"
    );
    assert_eq!(server.sends(), 1, "the client did not try again by itself");
    let internal = api.send_message(1, "a").await.unwrap_err();
    assert!(
        matches!(&internal, SendError::Transient(s) if s.contains("500")),
        "{internal:?}"
    );
    assert_eq!(internal.kind(), "transient");
    assert!(server.messages(1).is_empty());
    assert_secret_free(&server, &[gateway, internal]);
}

#[tokio::test]
async fn a_server_that_never_answers_is_unknown_within_the_timeout() {
    let server = server();
    let timeout = Duration::from_millis(400);
    let api = BotApi::new(&config(server.url(), TOKEN, timeout)).unwrap();
    server.script(vec![Fault::Hang]);
    let start = Instant::now();
    let err = api.send_message(1, "anyone there?").await.unwrap_err();
    let took = start.elapsed();
    // The request went: Telegram may have it. Nothing says otherwise to the client.
    assert!(matches!(&err, SendError::Unknown(_)), "{err:?}");
    assert!(took >= timeout, "gave up after {took:?}, before the timeout");
    assert!(
        took < timeout + Duration::from_secs(2),
        "took {took:?} for a {timeout:?} timeout"
    );
    assert_eq!(server.sends(), 1);
    assert_secret_free(&server, &[err]);
}

#[tokio::test]
async fn a_message_taken_but_never_answered_is_unknown_and_is_there() {
    let server = server();
    let api = BotApi::new(&config(server.url(), TOKEN, Duration::from_millis(400))).unwrap();
    server.script(vec![Fault::HangAfterRecording]);
    let err = api.send_message(3, "did it go?").await.unwrap_err();
    assert!(matches!(&err, SendError::Unknown(_)), "{err:?}");
    assert_eq!(err.kind(), "unknown");
    // The duplicate case: Telegram has it though the client could not know.
    assert_eq!(server.messages(3), vec!["did it go?"]);
    assert_secret_free(&server, &[err]);
}

#[tokio::test]
async fn an_answer_cut_off_is_unknown_and_the_message_is_there() {
    let server = server();
    let api = client(&server);
    server.script(vec![Fault::Drop]);
    let err = api.send_message(4, "cut").await.unwrap_err();
    assert!(matches!(&err, SendError::Unknown(_)), "{err:?}");
    assert_eq!(server.messages(4), vec!["cut"]);
    // The connection is gone; the client opens another for the next call.
    assert_eq!(api.send_message(4, "next").await.unwrap(), 2);
    assert_secret_free(&server, &[err]);
}

#[tokio::test]
async fn a_user_who_blocked_the_bot_is_refused_403() {
    let server = server();
    let api = client(&server);
    server.block(9);
    let err = api.send_message(9, "hello?").await.unwrap_err();
    assert_eq!(
        err,
        SendError::Refused {
            code: 403,
            description: "Forbidden: bot was blocked by the user".into()
        }
    );
    assert_eq!(err.kind(), "refused");
    let action = api.send_chat_action(9, "typing").await.unwrap_err();
    assert!(matches!(action, SendError::Refused { code: 403, .. }));
    assert!(server.messages(9).is_empty());
    api.send_message(10, "others still get theirs").await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_is_refused_401_and_never_shown() {
    let server = server();
    let api = BotApi::new(&config(server.url(), WRONG_TOKEN, Duration::from_secs(10))).unwrap();
    let err = api.send_message(1, "hello").await.unwrap_err();
    assert_eq!(
        err,
        SendError::Refused {
            code: 401,
            description: "Unauthorized".into()
        }
    );
    assert!(server.messages(1).is_empty());
    assert_secret_free(&server, &[err]);
    assert!(!format!("{api:?}").contains(WRONG_TOKEN), "{api:?}");
}

#[tokio::test]
async fn no_connection_is_transient() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let api = BotApi::new(&config(url, TOKEN, Duration::from_secs(5))).unwrap();
    let err = api.send_message(1, "hello").await.unwrap_err();
    assert!(matches!(&err, SendError::Transient(_)), "{err:?}");
    let text = texts(&err);
    assert!(!text.contains(TOKEN) && !text.contains("/bot"), "{text}");
}

#[tokio::test]
async fn no_error_of_any_kind_shows_the_token_or_a_url() {
    let server = server();
    let api = BotApi::new(&config(server.url(), TOKEN, Duration::from_millis(300))).unwrap();
    let wrong = BotApi::new(&config(server.url(), WRONG_TOKEN, Duration::from_secs(5))).unwrap();
    server.script(vec![
        Fault::TooManyRequests { retry_after: 1 },
        Fault::Status(502),
        Fault::Status(400),
        Fault::Hang,
        Fault::HangAfterRecording,
        Fault::Drop,
    ]);
    let mut errors = Vec::new();
    for _ in 0..6 {
        errors.push(api.send_message(1, "x").await.unwrap_err());
    }
    server.block(2);
    errors.push(api.send_message(2, "x").await.unwrap_err());
    errors.push(api.send_message(1, &"x".repeat(5000)).await.unwrap_err());
    errors.push(wrong.send_message(1, "x").await.unwrap_err());
    let kinds: Vec<&str> = errors.iter().map(SendError::kind).collect();
    assert_eq!(
        kinds,
        [
            "retry_after",
            "transient",
            "refused",
            "unknown",
            "unknown",
            "unknown",
            "refused",
            "refused",
            "refused"
        ]
    );
    assert_secret_free(&server, &errors);
    // Nor the client's Debug, nor a configuration error about the token.
    assert!(!format!("{api:?}").contains(TOKEN));
    let mut malformed = config(server.url(), &format!("{TOKEN}!"), Duration::from_secs(1));
    let err = BotApi::new(&malformed).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(TOKEN), "{err}");
    malformed.token = None;
    let err = BotApi::new(&malformed).unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "TELEGRAM_BOT_TOKEN"),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_server_refuses_what_telegram_refuses() {
    let server = server();
    let api = client(&server);
    let too_long = "😀".repeat(MAX_MESSAGE_UTF16 / 2 + 1);
    let exactly = "😀".repeat(MAX_MESSAGE_UTF16 / 2);
    assert_eq!(
        api.send_message(1, &too_long).await.unwrap_err(),
        SendError::Refused {
            code: 400,
            description: "Bad Request: message is too long".into()
        },
        "4,098 UTF-16 units, though 2,049 characters"
    );
    api.send_message(1, &exactly).await.unwrap();
    let empty = api.send_message(1, "  ").await.unwrap_err();
    assert!(matches!(&empty, SendError::Refused { code: 400, description } if description.contains("empty")));
    let action = api.send_chat_action(1, "dancing").await.unwrap_err();
    assert!(matches!(action, SendError::Refused { code: 400, .. }));
    assert_eq!(server.messages(1), vec![exactly]);

    // As Telegram, a form body and query parameters are taken too; a missing chat is not.
    let http = reqwest::Client::new();
    let base = format!("{}bot{TOKEN}", server.url());
    let form = http
        .post(format!("{base}/sendMessage"))
        .form(&[("chat_id", "5"), ("text", "from a form")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let query = http
        .get(format!("{base}/sendMessage?chat_id=5&text=from%20a%20query"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);
    assert_eq!(server.messages(5), vec!["from a form", "from a query"]);
    let no_chat = http
        .post(format!("{base}/sendMessage"))
        .json(&serde_json::json!({ "text": "to whom?" }))
        .send()
        .await
        .unwrap();
    assert_eq!(no_chat.status(), 400);
    let body: serde_json::Value = no_chat.json().await.unwrap();
    assert_eq!(body["description"], "Bad Request: chat_id is empty");
    let unknown = http.post(format!("{base}/sendSticker")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn a_chat_sent_to_too_fast_gets_429_with_the_wait_left() {
    let server = server();
    let api = client(&server);
    server.enforce_limits(Duration::from_secs(60));
    api.send_message(1, "first").await.unwrap();
    let err = api.send_message(1, "too soon").await.unwrap_err();
    assert_eq!(err, SendError::RetryAfter(Duration::from_secs(60)));
    api.send_message(2, "another chat is not held").await.unwrap();
    assert_eq!(server.messages(1), vec!["first"]);
}

#[tokio::test]
async fn a_20000_character_reply_arrives_whole_and_in_order() {
    let server = server();
    let api = client(&server);
    // Telegram's per-chat limit, kept by the client's RateLimits with a margin.
    server.enforce_limits(Duration::from_millis(20));
    let limits = RateLimits::new(30, Duration::from_millis(60));
    let mut reply = String::new();
    for i in 0.. {
        if reply.chars().count() >= 20_000 {
            break;
        }
        reply.push_str(&format!("Абзац {i}: текст ответа с эмодзи 😀 и 中文字符, "));
        if i % 7 == 6 {
            reply.push_str("\n\n");
        }
    }
    let parts = split_message(&reply, MAX_MESSAGE_UTF16);
    assert!(parts.len() >= 5, "{} parts", parts.len());
    let chat = 42;
    for part in &parts {
        assert!(utf16_len(part) <= MAX_MESSAGE_UTF16);
        loop {
            limits.wait(chat).await;
            match api.send_message(chat, part).await {
                Ok(_) => break,
                // The server's clock and ours may disagree by a hair: wait as told.
                Err(SendError::RetryAfter(d)) => limits.pause(Some(chat), d),
                Err(e) => panic!("{e}"),
            }
        }
    }
    let arrived = server.messages(chat);
    assert_eq!(arrived, parts, "every part, once, in order");
    // Whole: the parts, in order, are the reply but for the whitespace between them.
    let mut rest = reply.as_str();
    for part in &arrived {
        let at = rest
            .find(part.as_str())
            .expect("each part is the reply's next text");
        assert!(rest[..at].trim().is_empty(), "skipped {:?}", &rest[..at]);
        rest = &rest[at + part.len()..];
    }
    assert!(rest.trim().is_empty(), "lost the end: {rest:?}");
}
