//! Per-sender session state and per-message exactly-once bookkeeping.
//!
//! Every inbound message goes through [`SessionStore::begin`] (claim the message id,
//! then take the sender's lease), and ends with [`SessionStore::finish`] (answered:
//! mark done, release the sender, persist the session) or [`SessionStore::abandon`]
//! (failed for now: release both leases, keep the progress for Meta's redelivery).
//! A claim carries a lease: a holder that dies is overtaken once the lease expires.

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::engine::Mode;

pub mod dynamodb;
pub mod memory;

pub use dynamodb::DynamoStore;
pub use memory::MemoryStore;

/// How long a message id is remembered: longer than Meta's 7-day redelivery window.
pub const DEDUP_RETENTION: Duration = Duration::from_secs(10 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub mode: Mode,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last turn; the session expires `session_idle_ttl` after it.
    pub updated_at: u64,
}

/// What earlier attempts at one message achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The reply, split; stored for normal sessions only, never in OTR.
    pub parts: Vec<String>,
    /// How many reply parts the Graph API accepted.
    pub sent: u32,
    /// The "assistant unavailable" notice already went out for this message.
    pub notice_sent: bool,
}

/// One attempt at one inbound message.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub message_id: &'a str,
    /// The sender's state key (phone digits or user id).
    pub sender: &'a str,
    /// Unique per attempt: later writes only succeed while this attempt holds the leases.
    pub token: &'a str,
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
    /// Claim the message and lease its sender; see [`Begin`].
    async fn begin(&self, attempt: &Attempt<'_>, now: u64) -> Result<Begin, StateError>;
    /// Record how far the reply got, so a redelivery resumes instead of repeating.
    async fn save_progress(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
    ) -> Result<(), StateError>;
    /// The message is answered: mark it done, persist the session, release the sender.
    async fn finish(
        &self,
        attempt: &Attempt<'_>,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError>;
    /// The message failed for now: keep `progress`, persist the session, release both
    /// leases at once so Meta's redelivery can resume.
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
}

/// The stored key of a message id: a hash, so the table keeps no message ids
/// beyond what deduplication needs.
pub fn message_key(message_id: &str) -> String {
    let digest = Sha256::digest(message_id.as_bytes());
    hex::encode(&digest[..16])
}

/// Unix seconds, from the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
