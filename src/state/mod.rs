//! Per-sender session state and per-message exactly-once bookkeeping.
//!
//! Every inbound message goes through [`SessionStore::begin`] (claim the message id,
//! then take the sender's lease), and ends with [`SessionStore::finish`] (answered:
//! mark done, release the sender, persist the session) or [`SessionStore::abandon`]
//! (failed for now: release both leases, keep the progress for Meta's redelivery).
//! A claim carries a lease: a holder that dies is overtaken once the lease expires.
//!
//! # Order
//!
//! A message that cannot be answered now (its sender is busy, or its attempt failed and
//! waits for Meta's redelivery) is written into the sender's *waiting list* as
//! [`waiting_entry`] (its timestamp and hashed id). The sender lease is only granted to
//! a message when no older message is waiting, so one sender's messages are answered in
//! the order of their timestamps even when an older one comes back later. An entry
//! holds newer messages back only while the message is younger than the store's
//! *order hold* ([`DEFAULT_ORDER_HOLD`]): a message that keeps failing, or that Meta
//! stops redelivering, cannot block its sender for longer.

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::domain::SessionRecord;

pub mod dynamodb;
pub mod memory;

pub use dynamodb::DynamoStore;
pub use memory::MemoryStore;

/// How long a message id is remembered: longer than Meta's 7-day redelivery window.
pub const DEDUP_RETENTION: Duration = Duration::from_secs(10 * 24 * 3600);

/// How long after its timestamp an unanswered message holds back newer messages of
/// its sender (`state.order_hold_secs`).
pub const DEFAULT_ORDER_HOLD: Duration = Duration::from_secs(300);

/// What earlier attempts at one message achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The reply, split; stored for normal sessions only, never in OTR.
    pub parts: Vec<String>,
    /// How many reply parts the Graph API accepted.
    pub sent: u32,
    /// The user was told this message failed (unavailable, lost or too slow): it no
    /// longer holds back its sender's newer messages.
    pub notice_sent: bool,
    /// The engine was (or may have been) asked for this message's turn. A later
    /// attempt that finds no stored reply must not ask again: the agent's run goes on
    /// without us, and a second ask would run its actions twice.
    pub started: bool,
}

impl Progress {
    /// Nothing of a reply went out or was stored yet, and no turn began.
    pub fn is_fresh(&self) -> bool {
        self.parts.is_empty() && self.sent == 0 && !self.started
    }

    /// A turn began but its reply is gone (the attempt died, or an OTR reply that is
    /// never stored was cut short): it cannot be resumed, and must not be asked again.
    pub fn is_lost(&self) -> bool {
        self.started && self.parts.is_empty()
    }
}

/// One attempt at one inbound message.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub message_id: &'a str,
    /// The sender's state key (phone digits or user id).
    pub sender: &'a str,
    /// Unique per attempt: later writes only succeed while this attempt holds the leases.
    pub token: &'a str,
    /// Meta's timestamp of the message (unix seconds): its place in the sender's order.
    pub timestamp: u64,
    /// The message is text for the engine: claiming it records [`Progress::started`]
    /// in the same write (handed back if the sender turns out busy).
    pub starts_turn: bool,
    /// Later messages of the same sender answered by the same reply (a rapid-fire
    /// turn), each already claimed with [`SessionStore::claim`] under this token.
    pub merged: &'a [Merged<'a>],
}

/// A message answered together with an attempt's own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged<'a> {
    pub message_id: &'a str,
    pub timestamp: u64,
}

/// The result of claiming one more message for a turn whose sender lease is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Answered by an earlier delivery.
    Done,
    /// Another delivery holds it.
    Busy,
    /// This attempt holds it; what earlier attempts achieved.
    Claimed(Progress),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Answered by an earlier delivery: send nothing.
    Done,
    /// Another delivery of this message holds it: answer 503, Meta comes back later.
    MessageBusy,
    /// Another message of this sender is being answered.
    SenderBusy,
    /// This attempt holds the message and the sender.
    Ready {
        session: Option<SessionRecord>,
        progress: Progress,
        /// The sender's waiting list ([`waiting_entry`]s of other messages, all newer
        /// than this one): a message newer than one of them must not join this turn.
        waiting: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store throttled: {0}")]
    Throttled(String),
    #[error("the lease on this message was taken over by another delivery")]
    LostLease,
    #[error("state item unreadable: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Claim the message and lease its sender; see [`Begin`]. Refused (SenderBusy)
    /// while the sender is leased to another attempt or an older message is waiting;
    /// a refused message is added to the sender's waiting list. The progress returned
    /// is what the message had *before* this claim (`started` included).
    async fn begin(&self, attempt: &Attempt<'_>, now: u64) -> Result<Begin, StateError>;
    /// Claim one more message under `attempt.token`, whose `begin` already holds the
    /// sender: a rapid-fire message to be answered in the same turn.
    async fn claim(&self, attempt: &Attempt<'_>, now: u64) -> Result<Claim, StateError>;
    /// Record how far the reply got, so a redelivery resumes instead of repeating.
    async fn save_progress(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
    ) -> Result<(), StateError>;
    /// The message (and every `attempt.merged` one) is answered: mark them done,
    /// persist the session, release the sender.
    async fn finish(
        &self,
        attempt: &Attempt<'_>,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError>;
    /// The message failed for now: keep `progress`, persist the session, release both
    /// leases at once so a redelivery can resume, and put the message on the sender's
    /// waiting list so newer messages wait for it, unless the user was told it failed
    /// (`progress.notice_sent`: nobody is held back by a failure they were told of).
    /// Merged messages are done once their turn began (`progress.started`: the engine
    /// had their text, and is never asked for it again), else released and put on
    /// the waiting list as well.
    async fn abandon(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError>;
    /// Remember that the username user `user_id` is the person whose sender key is
    /// `sender`, so their session survives when Meta stops sending the phone number.
    async fn link_user(&self, user_id: &str, sender: &str, now: u64) -> Result<(), StateError>;
    /// The sender key linked to `user_id`, if any.
    async fn linked_sender(&self, user_id: &str) -> Result<Option<String>, StateError>;
    /// The user of sender key `from` now writes as `to` (WhatsApp's number change): the
    /// session of `from` (id, mode, timestamps), unless expired, moves to `to`, unless
    /// `to` already has a live session of its own; then nothing changes. Moving removes
    /// it from `from`, so whoever gets the old number later does not continue it. The
    /// leases and waiting lists of both keys are left alone.
    async fn move_session(&self, from: &str, to: &str, now: u64)
    -> Result<SessionMove, StateError>;
}

/// What [`SessionStore::move_session`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMove {
    /// The session now lives under the new key only.
    Moved,
    /// The old key has no live session (none yet, expired, or moved already).
    NothingToMove,
    /// The new key already has a live session: both stay as they were.
    Kept,
}

/// The stored key of a message id: a hash, so the table keeps no message ids
/// beyond what deduplication needs.
pub fn message_key(message_id: &str) -> String {
    let digest = Sha256::digest(message_id.as_bytes());
    hex::encode(&digest[..16])
}

/// A message's place in its sender's waiting list: zero-padded timestamp, then the
/// hashed id, so entries sort by timestamp (ties by hash) as strings.
pub fn waiting_entry(message_id: &str, timestamp: u64) -> String {
    format!("{timestamp:012}#{}", message_key(message_id))
}

/// Whether `entry` still holds back newer messages at `now`.
pub(crate) fn is_live(entry: &str, now: u64, hold: Duration) -> bool {
    entry
        .split('#')
        .next()
        .and_then(|ts| ts.parse::<u64>().ok())
        .is_some_and(|ts| ts.saturating_add(hold.as_secs()) > now)
}

fn live_entries(waiting: &[String], now: u64, hold: Duration) -> impl Iterator<Item = &String> {
    waiting
        .iter()
        .filter(move |entry| is_live(entry, now, hold))
}

/// Whether `entry` belongs to the message whose own entry is `mine`.
fn same_message(entry: &str, mine: &str) -> bool {
    entry.split('#').nth(1) == mine.split('#').nth(1)
}

/// Where the message whose entry is `mine` stands in its sender's waiting list.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// An older message is waiting: this one must wait too.
    Behind { listed: bool },
    /// No older message waits; `remaining` is the list without this message's
    /// entries and without expired ones.
    Next { remaining: Vec<String> },
}

pub(crate) fn place_in_line(waiting: &[String], mine: &str, now: u64, hold: Duration) -> Place {
    let mut listed = false;
    let mut older = false;
    for entry in live_entries(waiting, now, hold) {
        if same_message(entry, mine) {
            listed = true;
        } else if entry.as_str() < mine {
            older = true;
        }
    }
    if older {
        return Place::Behind { listed };
    }
    Place::Next {
        remaining: live_entries(waiting, now, hold)
            .filter(|e| !same_message(e, mine))
            .cloned()
            .collect(),
    }
}

/// Unix seconds, from the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(300);

    #[test]
    fn entries_sort_by_timestamp_as_strings() {
        let early = waiting_entry("wamid.B", 999_999_999);
        let late = waiting_entry("wamid.A", 1_000_000_000);
        assert!(early < late, "{early} < {late}");
    }

    #[test]
    fn an_older_live_entry_puts_a_message_behind() {
        let older = waiting_entry("wamid.1", 1_000);
        let mine = waiting_entry("wamid.2", 1_001);
        let newer = waiting_entry("wamid.3", 1_002);
        let list = vec![newer.clone(), older.clone()];
        assert_eq!(
            place_in_line(&list, &mine, 1_010, HOLD),
            Place::Behind { listed: false }
        );
        let listed = vec![older, mine.clone()];
        assert_eq!(
            place_in_line(&listed, &mine, 1_010, HOLD),
            Place::Behind { listed: true }
        );
        // Only newer ones wait: this message is next, and leaves the list.
        let list = vec![newer.clone(), mine.clone()];
        assert_eq!(
            place_in_line(&list, &mine, 1_010, HOLD),
            Place::Next {
                remaining: vec![newer]
            }
        );
    }

    #[test]
    fn an_entry_expires_at_its_timestamp_plus_the_hold() {
        let older = waiting_entry("wamid.1", 1_000);
        let mine = waiting_entry("wamid.2", 1_250);
        let list = vec![older.clone()];
        assert!(matches!(
            place_in_line(&list, &mine, 1_299, HOLD),
            Place::Behind { .. }
        ));
        // Expired entries no longer count and are dropped from the list.
        assert_eq!(
            place_in_line(&list, &mine, 1_300, HOLD),
            Place::Next { remaining: vec![] }
        );
        assert!(
            !is_live(&older, 1_000, Duration::ZERO),
            "hold 0: ordering off"
        );
        assert!(!is_live("not an entry", 0, HOLD));
    }
}
