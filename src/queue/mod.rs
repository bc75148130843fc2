//! Queued turns (`turns.mode: queued`): the webhook checks, parses and hands each
//! accepted message to a [`TurnQueue`], answers 200 at once, and a worker runs the
//! turn with a long budget.
//!
//! Two queues: [`SqsQueue`] (an SQS FIFO queue: on AWS, and in `serve` with a
//! `turns.queue_url`) and [`LocalQueue`] (in-process per-sender queues, `serve`
//! without a queue URL). Either way, one sender's turns run one at a time and in
//! order, different senders' at once, and consecutive texts of one sender waiting
//! together are one turn (rapid-fire). Exactly once still rests on the state store:
//! the worker claims each message before its turn ([`crate::turn`]), so a duplicate
//! delivery of a job finds it done or begun, and a begun turn is never asked again.
//!
//! What a job holds ([`Job`]) is the accepted message itself, the user's text
//! included: it lives in the queue until its turn ends (answered, or given up after
//! [`MAX_ATTEMPTS`] with the user told), and no longer.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::commands::{Command, UNSUPPORTED_TEXT};
use crate::domain::Recipient;
use crate::turn::{Accepted, Action};

pub mod local;
pub mod sqs;
pub mod worker;

pub use local::LocalQueue;
pub use sqs::SqsQueue;

/// Deliveries of one job before the worker gives up on a turn the engine never took:
/// the user is told, and the job leaves the queue (so no dead-letter queue keeps text).
pub const MAX_ATTEMPTS: u32 = 3;

/// The pause before a failed job is tried again, after `attempt` deliveries.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(10 * u64::from(attempt.clamp(1, 6)))
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// In-process queues are bounded: the webhook answers 503 and Meta comes back.
    #[error("the turn queue is full")]
    Full,
    #[error("turn queue unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait TurnQueue: Send + Sync {
    /// Hand one sender's accepted messages, in order, to the queue.
    async fn enqueue(&self, batch: Vec<Accepted>) -> Result<(), QueueError>;
}

/// The wire form of an [`Accepted`] message (JSON in the queue).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// WhatsApp's message id.
    pub id: String,
    /// `Some(digits)` for a phone number, else the business-scoped user id in `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub timestamp: u64,
    pub state_key: String,
    pub msg_ref: String,
    #[serde(flatten)]
    pub action: JobAction,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobAction {
    Turn {
        text: String,
    },
    Command {
        command: String,
    },
    Notice {
        notice: String,
    },
    /// A tap on an approval button (its signed id; no message text).
    Approval {
        button: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable job: {0}")]
pub struct BadJob(String);

impl Job {
    pub fn from_accepted(message: &Accepted) -> Job {
        let (phone, user) = match &message.sender {
            Recipient::Phone(digits) => (Some(digits.clone()), None),
            Recipient::UserId(id) => (None, Some(id.clone())),
        };
        let action = match &message.action {
            Action::Turn(text) => JobAction::Turn { text: text.clone() },
            Action::Command(command) => JobAction::Command {
                command: command.name().to_string(),
            },
            Action::Notice(_) => JobAction::Notice {
                notice: "unsupported".to_string(),
            },
            Action::Approval(button) => JobAction::Approval {
                button: button.clone(),
            },
        };
        Job {
            id: message.id.clone(),
            phone,
            user,
            timestamp: message.timestamp,
            state_key: message.state_key.clone(),
            msg_ref: message.msg_ref.clone(),
            action,
        }
    }

    pub fn into_accepted(self) -> Result<Accepted, BadJob> {
        let sender = match (self.phone, self.user) {
            (Some(digits), None) => Recipient::Phone(digits),
            (None, Some(id)) => Recipient::UserId(id),
            _ => return Err(BadJob("needs exactly one of phone and user".into())),
        };
        let action = match self.action {
            JobAction::Turn { text } => Action::Turn(text),
            JobAction::Command { command } => Action::Command(
                Command::parse(&command).ok_or_else(|| BadJob("unknown command".into()))?,
            ),
            JobAction::Notice { notice } if notice == "unsupported" => {
                Action::Notice(UNSUPPORTED_TEXT)
            }
            JobAction::Notice { .. } => return Err(BadJob("unknown notice".into())),
            JobAction::Approval { button } => Action::Approval(button),
        };
        Ok(Accepted {
            id: self.id,
            sender,
            timestamp: self.timestamp,
            state_key: self.state_key,
            msg_ref: self.msg_ref,
            action,
        })
    }

    pub fn to_json(message: &Accepted) -> String {
        // A struct of strings and numbers: serialising cannot fail.
        serde_json::to_string(&Job::from_accepted(message)).unwrap_or_default()
    }

    pub fn parse(body: &str) -> Result<Accepted, BadJob> {
        serde_json::from_str::<Job>(body)
            .map_err(|e| BadJob(crate::engine::json_problem(&e)))?
            .into_accepted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(action: Action, sender: Recipient) -> Accepted {
        Accepted {
            id: "wamid.1".into(),
            state_key: sender.state_key(),
            sender,
            timestamp: 1_700_000_000,
            msg_ref: "abcd1234".into(),
            action,
        }
    }

    #[test]
    fn every_action_survives_the_queue() {
        for (action, sender) in [
            (
                Action::Turn("hi\nthere".into()),
                Recipient::Phone("15551234567".into()),
            ),
            (
                Action::Command(Command::Otr),
                Recipient::UserId("US.123".into()),
            ),
            (Action::Command(Command::New), Recipient::Phone("1".into())),
            (Action::Command(Command::Help), Recipient::Phone("1".into())),
            (
                Action::Notice(UNSUPPORTED_TEXT),
                Recipient::Phone("1".into()),
            ),
        ] {
            let message = accepted(action, sender);
            assert_eq!(Job::parse(&Job::to_json(&message)).unwrap(), message);
        }
    }

    #[test]
    fn unreadable_jobs_are_refused_without_quoting_them() {
        for body in [
            "not json",
            r#"{"id":"w","timestamp":1,"state_key":"k","msg_ref":"r","kind":"turn","text":"secret"}"#,
            r#"{"id":"w","phone":"1","timestamp":1,"state_key":"k","msg_ref":"r","kind":"command","command":"/secret"}"#,
        ] {
            let error = Job::parse(body).unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
