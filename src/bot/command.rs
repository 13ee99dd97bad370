//! Parsing what a user typed: a command (`/start`, `/limit 10`, ...) or plain text.

/// What a user's text asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/start`: register (user + default settings).
    Start,
    /// `/reset`: soft-delete the history.
    Reset,
    /// `/history`: show the live history.
    History,
    /// `/settings`: show the settings.
    Settings,
    /// `/limit N`: set `max_history_messages` (the value as typed; range checked later).
    Limit(Result<i64, String>),
    /// `/prompt TEXT`: set the system prompt; `/prompt` alone clears it.
    Prompt(Option<String>),
    /// `/forget`: asks to confirm; `/forget yes` (`true`): erase everything stored
    /// about the user, for good.
    Forget(bool),
    /// `/help`, or a command botdb does not know.
    Help,
    /// Anything else: a message for the model.
    Text(String),
}

impl Command {
    /// Parses a message text. Commands may carry the bot's name (`/start@MyBot`) and are
    /// case-insensitive; arguments follow after whitespace.
    pub fn parse(text: &str) -> Command {
        let trimmed = text.trim_start();
        let Some(rest) = trimmed.strip_prefix('/') else {
            return Command::Text(text.to_string());
        };
        let (word, args) = match rest.find(char::is_whitespace) {
            Some(i) => (&rest[..i], rest[i..].trim()),
            None => (rest, ""),
        };
        let name = word.split('@').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "start" => Command::Start,
            "reset" => Command::Reset,
            "history" => Command::History,
            "settings" => Command::Settings,
            "limit" => Command::Limit(args.parse::<i64>().map_err(|_| {
                format!(
                    "expected a whole number, got {:?}",
                    args.chars().take(40).collect::<String>()
                )
            })),
            "prompt" => Command::Prompt((!args.is_empty()).then(|| args.to_string())),
            "forget" => Command::Forget(args.eq_ignore_ascii_case("yes")),
            "help" => Command::Help,
            _ => Command::Help,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_text() {
        assert_eq!(Command::parse("/start"), Command::Start);
        assert_eq!(Command::parse("/START@MyBot"), Command::Start);
        assert_eq!(Command::parse("  /reset  "), Command::Reset);
        assert_eq!(Command::parse("/limit 10"), Command::Limit(Ok(10)));
        assert_eq!(Command::parse("/limit\t-3"), Command::Limit(Ok(-3)));
        assert!(matches!(Command::parse("/limit ten"), Command::Limit(Err(_))));
        assert!(matches!(Command::parse("/limit"), Command::Limit(Err(_))));
        assert_eq!(
            Command::parse("/prompt Be brief."),
            Command::Prompt(Some("Be brief.".into()))
        );
        assert_eq!(Command::parse("/prompt"), Command::Prompt(None));
        assert_eq!(Command::parse("/forget"), Command::Forget(false));
        assert_eq!(Command::parse("/forget@MyBot YES"), Command::Forget(true));
        assert_eq!(Command::parse("/forget please"), Command::Forget(false));
        assert_eq!(Command::parse("/whatever"), Command::Help);
        assert_eq!(Command::parse("/"), Command::Help);
        assert_eq!(
            Command::parse("hello /start"),
            Command::Text("hello /start".into())
        );
        assert_eq!(Command::parse(""), Command::Text(String::new()));
    }
}
