//! Property tests (the fuzzing of issue 6, on the stable toolchain): the webhook's update
//! parsing and the command parsing never panic, over well above 100,000 generated inputs,
//! and keep their invariants. `fuzz/` holds the same targets for cargo-fuzz (nightly).

use botdb::bot::Command;
use botdb::bot::telegram::{UpdateError, parse_update};
use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON values shaped like updates: Telegram's keys, other keys, any value types.
fn json_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        "/(start|reset|history|settings|limit|prompt|help)( .{0,20})?".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("update_id".to_string()),
        Just("message".to_string()),
        Just("from".to_string()),
        Just("chat".to_string()),
        Just("id".to_string()),
        Just("text".to_string()),
        Just("is_bot".to_string()),
        Just("message_id".to_string()),
        "[a-z_]{1,12}",
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid text update with one part replaced by an arbitrary value.
fn mutated_update() -> impl Strategy<Value = Value> {
    let paths = prop_oneof![
        Just(vec!["update_id"]),
        Just(vec!["message"]),
        Just(vec!["message", "from"]),
        Just(vec!["message", "from", "id"]),
        Just(vec!["message", "chat"]),
        Just(vec!["message", "chat", "id"]),
        Just(vec!["message", "text"]),
        Just(vec!["message", "from", "is_bot"]),
    ];
    (paths, json_tree()).prop_map(|(path, value)| {
        let mut update = json!({
            "update_id": 1,
            "message": {"message_id": 1, "from": {"id": 42, "is_bot": false}, "chat": {"id": 42}, "text": "hi"}
        });
        let mut slot = &mut update;
        for key in &path[..path.len() - 1] {
            slot = &mut slot[*key];
        }
        slot[*path.last().unwrap_or(&"update_id")] = value;
        update
    })
}

fn check_parsed(body: &[u8]) {
    match parse_update(body) {
        Ok(update) => {
            // Whatever parsed is well-typed; a text, if any, is valid UTF-8 by type.
            if let Some(m) = update.message {
                let _ = m.from.map(|f| f.id);
                let _ = m.text.map(|t| t.len());
            }
        }
        Err(UpdateError::NotUtf8) => assert!(std::str::from_utf8(body).is_err()),
        Err(UpdateError::NotAnUpdate(why)) => assert!(!why.is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 50_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn update_parsing_never_panics_on_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_parsed(&body);
    }

    #[test]
    fn command_parsing_never_panics_and_keeps_plain_text(text in "\\PC{0,200}|/\\PC{0,60}|/limit [-+]?[0-9]{0,25}.{0,5}") {
        match Command::parse(&text) {
            Command::Text(t) => {
                prop_assert!(!text.trim_start().starts_with('/'));
                prop_assert_eq!(t, text);
            }
            Command::Limit(Ok(n)) => {
                let args = text.trim_start()[1..].split_once(char::is_whitespace).map(|(_, a)| a.trim()).unwrap_or("");
                prop_assert_eq!(args.parse::<i64>().ok(), Some(n));
            }
            Command::Prompt(Some(p)) => prop_assert!(!p.is_empty() && p.trim() == p),
            _ => prop_assert!(text.trim_start().starts_with('/')),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn update_parsing_never_panics_on_json_shaped_input(value in json_tree()) {
        check_parsed(&serde_json::to_vec(&value).unwrap_or_default());
    }

    #[test]
    fn update_parsing_never_panics_on_mutated_updates(value in mutated_update()) {
        check_parsed(&serde_json::to_vec(&value).unwrap_or_default());
    }

    #[test]
    fn update_parsing_never_panics_on_any_text(text in "\\PC{0,300}") {
        check_parsed(text.as_bytes());
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 10_000, 100_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(matches!(
            parse_update(body.as_bytes()),
            Err(UpdateError::NotAnUpdate(_))
        ));
        let body = format!("{}1{}", "{\"message\":".repeat(depth), "}".repeat(depth));
        assert!(matches!(
            parse_update(body.as_bytes()),
            Err(UpdateError::NotAnUpdate(_))
        ));
    }
}
