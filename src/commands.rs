//! Slash commands and the fixed texts the adapter itself sends.

/// A slash command: the whole message, trimmed and case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a fresh session in normal mode.
    New,
    /// Start a fresh Off-The-Record session: nothing of it is stored.
    Otr,
    /// List the commands.
    Help,
}

impl Command {
    /// `Some` only when the whole text is a command; `/new please` is ordinary text,
    /// so a sentence that happens to start with a slash still reaches the engine.
    pub fn parse(text: &str) -> Option<Command> {
        let t = text.trim();
        if !t.starts_with('/') || t.len() > 8 {
            return None;
        }
        match t.to_ascii_lowercase().as_str() {
            "/new" => Some(Command::New),
            "/otr" => Some(Command::Otr),
            "/help" => Some(Command::Help),
            _ => None,
        }
    }

    /// The command as typed (what [`Command::parse`] reads back).
    pub fn name(self) -> &'static str {
        match self {
            Command::New => "/new",
            Command::Otr => "/otr",
            Command::Help => "/help",
        }
    }

    /// The one short confirmation the user gets.
    pub fn confirmation(self) -> &'static str {
        match self {
            Command::New => NEW_SESSION_TEXT,
            Command::Otr => OTR_SESSION_TEXT,
            Command::Help => HELP_TEXT,
        }
    }
}

pub const NEW_SESSION_TEXT: &str = "New conversation started.";
pub const OTR_SESSION_TEXT: &str =
    "Off-the-record conversation started: nothing of it is stored. Send /new to leave it.";
pub const HELP_TEXT: &str = "Commands:\n/new - start a new conversation\n/otr - start an off-the-record conversation (nothing is stored)\n/help - show this list";
pub const UNSUPPORTED_TEXT: &str = "Sorry, I can only read text messages for now.";
pub const UNAVAILABLE_TEXT: &str =
    "The assistant is unavailable right now, please try again in a moment.";
/// The engine took the turn but did not answer in time; it is never asked again.
pub const SLOW_TEXT: &str = "This is taking longer than expected, so I stopped waiting for the answer. Please ask again in a little while.";
/// A turn began, but its answer was lost (the worker running it died).
/// A tap on an approval button after the engine stopped waiting (it denied).
pub const APPROVAL_EXPIRED_TEXT: &str =
    "This approval request has expired, so the action was not taken.";
/// A tap on an approval button that could not be passed on to the engine.
pub const DECISION_FAILED_TEXT: &str =
    "Sorry, I could not pass your decision on to the agent. Please decide in the OpenParallax app.";
pub const LOST_TEXT: &str = "Sorry, the answer to your last message was lost. Please ask again.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trimmed_case_insensitive() {
        assert_eq!(Command::parse("/new"), Some(Command::New));
        assert_eq!(Command::parse("  /OTR \n"), Some(Command::Otr));
        assert_eq!(Command::parse("/Help"), Some(Command::Help));
    }

    #[test]
    fn other_text_is_not_a_command() {
        assert_eq!(Command::parse("/new please"), None);
        assert_eq!(Command::parse("new"), None);
        assert_eq!(Command::parse("/newer"), None);
        assert_eq!(Command::parse("/"), None);
        assert_eq!(Command::parse(""), None);
    }
}
