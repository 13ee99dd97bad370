//! The model client (`llm::OpenAiModel`) against a local OpenAI-compatible server
//! (`embedded::LocalModelServer`): what a turn sends, which failures are retried and
//! how long it waits between attempts (measured by the server's arrival times), which
//! fail at once, and that the API key never shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use botdb::ActorConfig;
use botdb::actors::DbSystem;
use botdb::bot::{Bot, Outcome, Update};
use botdb::config::ModelConfig;
use botdb::embedded::{Failure, LocalModelServer, ModelBehaviour, ReplyStyle};
use botdb::llm::{ChatMessage, Model, ModelError, ModelInput, OpenAiModel, from_config};
use botdb::model::Role;
use secrecy::SecretString;

use crate::helpers::TestDb;

const KEY: &str = "sk-test-4f9a0c2e7b1d8a35";

fn start() -> LocalModelServer {
    LocalModelServer::start(ModelBehaviour::default()).unwrap()
}

/// A client of `server`: short timeouts and waits, so failures are quick to see.
fn config(server: &LocalModelServer) -> ModelConfig {
    ModelConfig {
        url: Some(server.url()),
        name: "local-test".into(),
        timeout: Duration::from_secs(5),
        attempts: 3,
        max_backoff: Duration::from_millis(400),
        ..ModelConfig::default()
    }
}

fn client(cfg: &ModelConfig) -> OpenAiModel {
    OpenAiModel::new(cfg).unwrap()
}

fn message(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
    }
}

fn hello() -> Vec<ChatMessage> {
    vec![message(Role::User, "hello")]
}

async fn ask(model: &dyn Model, context: &[ChatMessage]) -> Result<String, ModelError> {
    model
        .reply(ModelInput {
            user_id: 1,
            system_prompt: None,
            context,
        })
        .await
}

/// The gaps between the server's arrivals, in order.
fn gaps(server: &LocalModelServer) -> Vec<Duration> {
    server.arrivals().windows(2).map(|w| w[1] - w[0]).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect()
}

#[tokio::test]
async fn a_call_sends_the_system_prompt_then_the_context_in_order() {
    let server = LocalModelServer::with_api_key(ModelBehaviour::default(), KEY).unwrap();
    let model = client(&ModelConfig {
        api_key: Some(SecretString::from(KEY)),
        ..config(&server)
    });
    let context = [
        message(Role::User, "one"),
        message(Role::Assistant, "first answer"),
        message(Role::System, "a note"),
        message(Role::User, "two"),
        message(Role::Assistant, "second answer"),
        message(Role::User, "three"),
    ];
    let answer = model
        .reply(ModelInput {
            user_id: 1,
            system_prompt: Some("Be brief."),
            context: &context,
        })
        .await
        .unwrap();
    assert_eq!(
        answer,
        "You said: three\n(model: 7 messages in context; earlier user messages: one | two)"
    );
    assert_eq!(
        server.requests(),
        vec![pairs(&[
            ("system", "Be brief."),
            ("user", "one"),
            ("assistant", "first answer"),
            ("system", "a note"),
            ("user", "two"),
            ("assistant", "second answer"),
            ("user", "three"),
        ])]
    );
    // Without a system prompt of the user's own, the context alone.
    assert!(
        ask(&model, &hello())
            .await
            .unwrap()
            .starts_with("You said: hello\n")
    );
    assert_eq!(server.requests()[1], pairs(&[("user", "hello")]));
    assert_eq!(server.calls(), 2);
    assert_eq!(
        server.connections(),
        1,
        "the second call reuses the first's connection"
    );
}

#[actix_rt::test]
async fn a_bot_turn_gives_the_model_every_earlier_message() {
    let server = start();
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let bot = Bot::new(h.clone(), from_config(&config(&server)).unwrap());
    let update = |id: i64, text: &str| -> Update {
        serde_json::from_value(serde_json::json!({
            "update_id": id,
            "message": {"from": {"id": 7}, "chat": {"id": 7}, "text": text}
        }))
        .unwrap()
    };
    let mut replies = Vec::new();
    for (id, text) in [(1, "/prompt Be brief."), (2, "one"), (3, "two"), (4, "three")] {
        let Outcome::Reply(reply) = bot.handle(update(id, text)).await.unwrap() else {
            panic!("no reply to {text}")
        };
        replies.push(reply.text);
    }
    assert_eq!(
        replies[3],
        "You said: three\n(model: 6 messages in context; earlier user messages: one | two)"
    );
    assert_eq!(server.calls(), 3, "one call per text, none for the command");
    assert_eq!(
        server.requests()[2],
        pairs(&[
            ("system", "Be brief."),
            ("user", "one"),
            ("assistant", &replies[1]),
            ("user", "two"),
            ("assistant", &replies[2]),
            ("user", "three"),
        ])
    );
    h.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_retried_with_growing_waits_then_answered() {
    let server = start();
    server.script(vec![
        Failure::Status(500),
        Failure::Status(502),
        Failure::Status(503),
    ]);
    let model = client(&ModelConfig {
        attempts: 4,
        max_backoff: Duration::from_secs(1),
        ..config(&server)
    });
    assert!(
        ask(&model, &hello())
            .await
            .unwrap()
            .starts_with("You said: hello")
    );
    assert_eq!(server.calls(), 4);
    // The waits: 250 ms, 500 ms, 1 s steps, each at least half its step (jitter).
    let gaps = gaps(&server);
    for (gap, least) in gaps.iter().zip([125, 250, 500]) {
        assert!(*gap >= Duration::from_millis(least), "waits {gaps:?}");
    }
    // Each attempt the same question.
    let requests = server.requests();
    assert!(requests.iter().all(|r| *r == requests[0]), "{requests:?}");
}

#[tokio::test]
async fn the_last_attempt_s_failure_is_unavailable() {
    let server = start();
    server.script(vec![Failure::Status(503); 3]);
    let model = client(&config(&server));
    let err = ask(&model, &hello()).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::Unavailable { attempts: 3, reason } if reason.contains("503")),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.kind(), "unavailable");
    assert_eq!(server.calls(), 3);
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_asks_within_the_longest_wait() {
    let server = start();
    server.script(vec![Failure::RateLimited { retry_after_secs: 1 }]);
    let model = client(&ModelConfig {
        max_backoff: Duration::from_secs(8),
        ..config(&server)
    });
    ask(&model, &hello()).await.unwrap();
    assert_eq!(server.calls(), 2);
    let gap = gaps(&server)[0];
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");

    // A Retry-After past the longest wait is cut to it.
    let server = start();
    server.script(vec![Failure::RateLimited { retry_after_secs: 30 }]);
    let model = client(&ModelConfig {
        max_backoff: Duration::from_millis(300),
        ..config(&server)
    });
    ask(&model, &hello()).await.unwrap();
    let gap = gaps(&server)[0];
    assert!(gap < Duration::from_secs(2), "retried after {gap:?}");
}

#[tokio::test]
async fn a_wrong_key_or_an_unknown_model_is_refused_at_once() {
    let server = LocalModelServer::with_api_key(ModelBehaviour::default(), KEY).unwrap();
    let wrong = "sk-wrong-93b1e07d5c2a";
    let model = client(&ModelConfig {
        api_key: Some(SecretString::from(wrong)),
        attempts: 5,
        ..config(&server)
    });
    let err = ask(&model, &hello()).await.unwrap_err();
    assert!(matches!(&err, ModelError::Refused { status: 401, .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(server.calls(), 1, "a 401 is never retried");
    // The server quoted the key it was given; the error does not.
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("sk-wrong"), "{shown}");
        assert!(shown.contains("Incorrect API key"), "{shown}");
    }
    // No key at all: 401 too.
    let err = ask(&client(&config(&server)), &hello()).await.unwrap_err();
    assert!(matches!(&err, ModelError::Refused { status: 401, .. }), "{err:?}");

    let server = start();
    server.script(vec![Failure::Status(404)]);
    let model = client(&ModelConfig {
        attempts: 5,
        ..config(&server)
    });
    let err = ask(&model, &hello()).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::Refused { status: 404, reason } if reason.contains("does not exist")),
        "{err:?}"
    );
    assert_eq!(server.calls(), 1);
    // A wrong base URL: the server's own 404, not a call.
    let mut url = server.url();
    url.set_path("/v2");
    let err = ask(
        &client(&ModelConfig {
            url: Some(url),
            ..config(&server)
        }),
        &hello(),
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, ModelError::Refused { status: 404, .. }), "{err:?}");
    assert_eq!(err.kind(), "refused");
}

#[tokio::test]
async fn garbage_is_a_bad_answer_and_not_retried() {
    let server = start();
    server.script(vec![Failure::Garbage]);
    let err = ask(&client(&config(&server)), &hello()).await.unwrap_err();
    assert!(matches!(err, ModelError::BadAnswer(_)), "{err:?}");
    assert_eq!(err.kind(), "bad_answer");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn an_answer_without_text_is_empty() {
    let server = start();
    server.script(vec![Failure::Empty]);
    let err = ask(&client(&config(&server)), &hello()).await.unwrap_err();
    assert_eq!(err, ModelError::Empty);
    assert_eq!(server.calls(), 1);
    // Whitespace is no text either.
    let server = LocalModelServer::start(ModelBehaviour {
        reply: ReplyStyle::Fixed(" \n\t ".into()),
        ..ModelBehaviour::default()
    })
    .unwrap();
    assert_eq!(
        ask(&client(&config(&server)), &hello()).await,
        Err(ModelError::Empty)
    );
}

#[tokio::test]
async fn a_model_that_never_answers_times_out_within_attempts_times_timeout() {
    let server = start();
    server.script(vec![Failure::Hang, Failure::Hang]);
    let cfg = ModelConfig {
        timeout: Duration::from_secs(1),
        attempts: 2,
        max_backoff: Duration::from_millis(200),
        ..config(&server)
    };
    let bound = cfg.timeout * cfg.attempts + cfg.max_backoff;
    let started = Instant::now();
    // Past the bound and a margin the test fails instead of waiting for the client.
    let err = tokio::time::timeout(bound * 2, ask(&client(&cfg), &hello()))
        .await
        .expect("the client gave up within its bound")
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ModelError::Timeout { attempts: 2, .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(took >= cfg.timeout * cfg.attempts, "gave up after {took:?}");
    assert!(
        took < bound + Duration::from_millis(500),
        "took {took:?}, bound {bound:?}"
    );
    assert!(
        matches!(err, ModelError::Timeout { after, .. } if after <= took),
        "{err:?}"
    );
    assert_eq!(server.calls(), 2);

    // A timeout is retried: an answer too slow once, then in time.
    let server = start();
    server.script(vec![Failure::Slow(Duration::from_secs(30))]);
    let slow_then_fast = client(&ModelConfig {
        url: Some(server.url()),
        ..cfg.clone()
    });
    tokio::time::timeout(bound * 2, ask(&slow_then_fast, &hello()))
        .await
        .expect("the client gave up within its bound")
        .unwrap();
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ModelConfig {
        url: Some(format!("http://127.0.0.1:{port}/v1").parse().unwrap()),
        name: "m".into(),
        api_key: Some(SecretString::from(KEY)),
        attempts: 2,
        max_backoff: Duration::from_millis(50),
        ..ModelConfig::default()
    };
    let err = ask(&client(&cfg), &hello()).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::Unavailable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(KEY), "{err}");
}

#[tokio::test]
async fn calls_run_at_once_on_one_client() {
    let server = LocalModelServer::start(ModelBehaviour {
        latency: Duration::from_millis(300),
        ..ModelBehaviour::default()
    })
    .unwrap();
    let model = client(&config(&server));
    let context = hello();
    let answers = futures::future::join_all((0..8).map(|_| ask(&model, &context))).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(server.max_in_flight(), 8);
}

#[tokio::test]
async fn the_key_never_shows() {
    let cfg = ModelConfig {
        url: Some("https://api.example.com/v1".parse().unwrap()),
        name: "gpt-4o-mini".into(),
        api_key: Some(SecretString::from(KEY)),
        ..ModelConfig::default()
    };
    let whole = botdb::Config::builder().model(cfg.clone()).build().unwrap();
    let model = client(&cfg);
    for shown in [format!("{cfg:?}"), format!("{whole:?}"), format!("{model:?}")] {
        assert!(!shown.contains(KEY), "{shown}");
        assert!(!shown.contains("4f9a0c"), "{shown}");
    }
    // Every error of a call with the key, whatever failed: a server that accepts it
    // (and fails), one that quotes it back in its 401.
    let accepting = start();
    accepting.script(vec![
        Failure::Status(500),
        Failure::Garbage,
        Failure::Empty,
        Failure::Status(400),
    ]);
    let quoting = LocalModelServer::with_api_key(ModelBehaviour::default(), "sk-other-key-000000").unwrap();
    for (server, calls) in [(&accepting, 4), (&quoting, 1)] {
        let model = client(&ModelConfig {
            api_key: Some(SecretString::from(KEY)),
            attempts: 1,
            ..config(server)
        });
        for _ in 0..calls {
            let err = ask(&model, &hello()).await.unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("4f9a0c"), "{shown}");
        }
    }
}

#[tokio::test]
async fn the_echo_model_without_a_url() {
    let model = from_config(&ModelConfig::default()).unwrap();
    let answer = ask(model.as_ref(), &hello()).await.unwrap();
    assert!(answer.contains("echo model"), "{answer}");
    let bad = ModelConfig {
        url: Some("http://127.0.0.1:1/v1".parse().unwrap()),
        ..ModelConfig::default()
    };
    assert!(matches!(from_config(&bad), Err(botdb::Error::Config { key, .. }) if key == "BOTDB_MODEL_NAME"));
    let _: Arc<dyn Model> = from_config(&config(&start())).unwrap();
}
