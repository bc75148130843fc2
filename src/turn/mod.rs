//! Answering turns, whoever asks: the HTTP request (sync mode) or a queue worker
//! (queued mode, [`crate::queue`]).
//!
//! [`TurnRunner::answer_in_order`] takes one sender's accepted messages and answers
//! them in order, each exactly once: claim the message and its sender in the state
//! store, run the command / notice / engine turn, render and split the reply, send the
//! parts, record progress, and settle the message ([`Outcome`]). Consecutive fresh
//! texts are combined into one engine turn (rapid-fire).

mod approval;
mod reply;
mod runner;

pub use runner::{MAX_COMBINED, TurnOptions, TurnRunner};

use crate::commands::Command;
use crate::domain::Recipient;

/// What the adapter does with a message once it holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Command(Command),
    /// A fixed text (e.g. "only text is supported").
    Notice(&'static str),
    /// Text for the engine (several messages' texts, joined, for a combined turn).
    Turn(String),
    /// A tap on an Approve / Deny button (its id): answered at once, never queued
    /// behind the turn that waits for it.
    Approval(String),
}

/// A message the sender policy let in, with what to do and whose state it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// WhatsApp's message id (`wamid.…`); stored only hashed.
    pub id: String,
    pub sender: Recipient,
    /// Meta's timestamp (unix seconds): the message's place in its sender's order.
    pub timestamp: u64,
    /// The key the sender's state lives under.
    pub state_key: String,
    /// A short hash of the id, for logs.
    pub msg_ref: String,
    pub action: Action,
}

impl Accepted {
    /// A text for the engine.
    pub fn is_turn(&self) -> bool {
        matches!(self.action, Action::Turn(_))
    }
}

/// Who hands the runner its messages; decides what a failure before the engine took
/// the turn does (a turn the engine may have begun is never asked again, whoever asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Meta's webhook, answered after the reply (sync mode): the user is told at
    /// once, and Meta's redelivery may ask the engine again.
    Webhook,
    /// A queue worker (queued mode). Not `last`: the message is released quietly and
    /// the queue delivers it again. `last`: no retry follows, so the user is told
    /// and the message settled. One sender's messages stop at the first that is not
    /// settled: the queue redelivers the rest in order. `start_by`: no turn starts
    /// after this instant (the worker would be cut off mid-turn).
    Queued {
        last: bool,
        start_by: Option<tokio::time::Instant>,
    },
}

/// How one message ended, ordered by what it means for the delivery (the HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered now, answered before, or needing no answer: 200.
    Settled,
    /// Held by another delivery: 503.
    Busy,
    /// Failed for now, progress kept: 500.
    Failed,
}

#[cfg(test)]
mod tests;
