//! The agent engine port: one call per user turn, returning the reply text.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{ApprovalRequest, Decision, Mode};

pub mod echo;
pub mod http;
pub mod openparallax;

pub use echo::EchoEngine;
pub use http::HttpEngine;
pub use openparallax::OpenParallaxEngine;

/// Told to the user, in front of the reply, when an engine had to ask for an
/// approval that can only be given in the OpenParallax app (Tier 3).
pub const APPROVAL_NOTICE: &str =
    "This action needs approval in the OpenParallax app before I can continue.";

/// One user turn handed to the engine.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    pub session_id: &'a str,
    pub mode: Mode,
    pub text: &'a str,
    /// The sender's key: phone digits, or the business-scoped user id for username users.
    pub from: &'a str,
    /// The inbound WhatsApp message id (`wamid.…`).
    pub message_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("engine unreachable: {0}")]
    Unreachable(String),
    #[error("engine answered HTTP {0}")]
    Status(u16),
    #[error("engine sent a reply that could not be read: {0}")]
    BadReply(String),
    #[error("engine reported {code}: {message}")]
    Reported { code: String, message: String },
}

/// A JSON error for logs: where and what kind, never the text serde quotes from the
/// input (which may be the user's or the engine's words).
pub fn json_problem(error: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        error.classify(),
        error.line(),
        error.column()
    )
}

impl EngineError {
    /// Whether the engine may have begun the turn. Only a turn that surely did not
    /// begin may be asked again: an agent run does not stop when we stop waiting, so a
    /// second ask would run its actions twice. Not begun: the engine could not be
    /// reached or logged in to ([`EngineError::Unreachable`]), or it answered that it
    /// is overloaded or down before taking the turn (429, 502, 503, 504), or
    /// OpenParallax reported `AGENT_UNAVAILABLE` (forwarding to its agent failed).
    pub fn may_have_started(&self) -> bool {
        match self {
            EngineError::Unreachable(_) | EngineError::Status(429 | 502 | 503 | 504) => false,
            EngineError::Reported { code, .. } => code != "AGENT_UNAVAILABLE",
            _ => true,
        }
    }

    /// Whether asking again later may succeed. Only a 4xx other than 408/429
    /// means the request itself is wrong, so retrying cannot help.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Status(code) => !(400..500).contains(code) || *code == 408 || *code == 429,
            _ => true,
        }
    }
}

/// Something for the user that cannot wait for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A text to send as it is.
    Text(String),
    /// The engine waits for the user's approval of an action (OpenParallax Tier 3).
    Approval(ApprovalRequest),
}

/// Where an engine puts [`Notice`]s while it works; the turn runner sends them as
/// they come.
pub type Notices = tokio::sync::mpsc::UnboundedSender<Notice>;

#[async_trait]
pub trait Engine: Send + Sync {
    /// Ask the engine for its reply to one turn. An empty string means "no reply".
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError>;

    /// [`Engine::reply`], with interim messages for the user sent to `notices` while
    /// the engine works. Engines that have none need not override it.
    async fn reply_with_notices(
        &self,
        turn: &Turn<'_>,
        notices: &Notices,
    ) -> Result<String, EngineError> {
        let _ = notices;
        self.reply(turn).await
    }

    /// The process is about to be frozen (a Lambda invocation ended): let go of
    /// connections a frozen process must not hold open.
    async fn park(&self) {}

    /// Pass the user's decision on an approval request to the engine. Engines that
    /// never ask for approvals refuse.
    async fn decide(&self, action_id: &str, decision: Decision) -> Result<(), EngineError> {
        let _ = (action_id, decision);
        Err(EngineError::Unreachable(
            "this engine does not take approval decisions".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn json_problem_never_quotes_the_input() {
        #[derive(Debug, Deserialize)]
        struct Reply {
            #[allow(dead_code)]
            reply: String,
        }
        // serde's own message quotes the input here; ours must not.
        let quoted = serde_json::from_str::<Reply>(r#""my secret words""#).unwrap_err();
        assert!(quoted.to_string().contains("secret"));
        for input in [
            r#""my secret words""#,
            r#"{"reply": ["my secret words"]}"#,
            r#"{"reply": "my secret words"#,
        ] {
            let problem = json_problem(&serde_json::from_str::<Reply>(input).unwrap_err());
            assert!(!problem.contains("secret"), "{problem}");
            assert!(problem.contains("line 1"), "{problem}");
        }
    }
}
