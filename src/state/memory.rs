//! In-process [`SessionStore`]: the local default and the test double. Same
//! semantics as the DynamoDB store, minus durability across processes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Attempt, Begin, Claim, DEFAULT_ORDER_HOLD, Place, Progress, SessionMove, SessionStore,
    StateError, is_live, message_key, place_in_line, waiting_entry,
};
use crate::domain::SessionRecord;

#[derive(Debug, Clone)]
struct MessageItem {
    done: bool,
    holder: String,
    lease_until: u64,
    /// `progress.started` is derived from this: the token of the attempt that began
    /// the turn (as the DynamoDB item's `started`).
    progress: Progress,
    started_by: Option<String>,
}

impl MessageItem {
    /// The progress as the attempt `token` sees it.
    fn progress_for(&self, token: &str) -> Progress {
        Progress {
            started: self.started_by.as_deref().is_some_and(|by| by != token),
            ..self.progress.clone()
        }
    }

    /// Store `progress` written by the attempt `token`.
    fn record(&mut self, progress: &Progress, token: &str) {
        self.progress = Progress {
            started: false,
            ..progress.clone()
        };
        if !progress.started {
            self.started_by = None;
        } else if self.started_by.is_none() {
            self.started_by = Some(token.to_string());
        }
    }
}

#[derive(Debug, Clone, Default)]
struct SenderItem {
    session: Option<SessionRecord>,
    holder: Option<String>,
    lease_until: u64,
    /// Entries ([`waiting_entry`]) of messages waiting for their turn.
    waiting: Vec<String>,
}

#[derive(Debug, Default)]
struct Tables {
    messages: HashMap<String, MessageItem>,
    senders: HashMap<String, SenderItem>,
    /// user id → sender key
    users: HashMap<String, String>,
}

#[derive(Debug)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    lease: Duration,
    session_idle_ttl: Duration,
    order_hold: Duration,
}

impl MemoryStore {
    pub fn new(lease: Duration, session_idle_ttl: Duration) -> Self {
        MemoryStore {
            tables: Mutex::new(Tables::default()),
            lease,
            session_idle_ttl,
            order_hold: DEFAULT_ORDER_HOLD,
        }
    }

    /// How long an unanswered message holds back newer ones (see [`super`], "Order").
    pub fn with_order_hold(mut self, order_hold: Duration) -> Self {
        self.order_hold = order_hold;
        self
    }

    fn tables(&self) -> Result<std::sync::MutexGuard<'_, Tables>, StateError> {
        self.tables
            .lock()
            .map_err(|_| StateError::Unavailable("memory store poisoned".into()))
    }

    /// The stored session of `sender`, if any (for tests and diagnostics).
    pub fn session(&self, sender: &str) -> Option<SessionRecord> {
        self.tables
            .lock()
            .ok()?
            .senders
            .get(sender)
            .and_then(|s| s.session.clone())
    }
}

fn holds_message(tables: &Tables, key: &str, token: &str) -> bool {
    tables
        .messages
        .get(key)
        .is_some_and(|m| !m.done && m.holder == token)
}

/// The keys of the attempt's message and its merged ones, if the attempt holds them all.
fn held_keys(tables: &Tables, attempt: &Attempt<'_>) -> Result<Vec<String>, StateError> {
    let keys: Vec<String> = std::iter::once(attempt.message_id)
        .chain(attempt.merged.iter().map(|m| m.message_id))
        .map(message_key)
        .collect();
    if keys
        .iter()
        .all(|key| holds_message(tables, key, attempt.token))
    {
        Ok(keys)
    } else {
        Err(StateError::LostLease)
    }
}

/// Claim the message item `key` for `attempt` (new, or its lease expired, or ours
/// already); the progress before the claim.
fn claim_message(
    tables: &mut Tables,
    key: &str,
    attempt: &Attempt<'_>,
    now: u64,
    lease_until: u64,
) -> Claim {
    let token = attempt.token;
    match tables.messages.get_mut(key) {
        Some(item) if item.done => Claim::Done,
        Some(item) if item.lease_until > now && item.holder != token => Claim::Busy,
        Some(item) => {
            item.holder = token.to_string();
            item.lease_until = lease_until;
            let before = item.progress_for(token);
            if attempt.starts_turn && item.started_by.is_none() {
                item.started_by = Some(token.to_string());
            }
            Claim::Claimed(before)
        }
        None => {
            tables.messages.insert(
                key.to_string(),
                MessageItem {
                    done: false,
                    holder: token.to_string(),
                    lease_until,
                    progress: Progress::default(),
                    started_by: attempt.starts_turn.then(|| token.to_string()),
                },
            );
            Claim::Claimed(Progress::default())
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn begin(&self, attempt: &Attempt<'_>, now: u64) -> Result<Begin, StateError> {
        let lease_until = now + self.lease.as_secs();
        let mut tables = self.tables()?;
        let key = message_key(attempt.message_id);
        let progress = match claim_message(&mut tables, &key, attempt, now, lease_until) {
            Claim::Done => return Ok(Begin::Done),
            Claim::Busy => return Ok(Begin::MessageBusy),
            Claim::Claimed(progress) => progress,
        };
        let mine = waiting_entry(attempt.message_id, attempt.timestamp);
        let sender = tables
            .senders
            .entry(attempt.sender.to_string())
            .or_default();
        let leased_to_other =
            sender.lease_until > now && sender.holder.as_deref() != Some(attempt.token);
        let place = place_in_line(&sender.waiting, &mine, now, self.order_hold);
        let behind = matches!(place, Place::Behind { .. });
        match place {
            Place::Next { remaining } if !leased_to_other => sender.waiting = remaining,
            Place::Behind { listed: true } => {}
            _ => {
                // Wait in line, so no newer message overtakes this one.
                if is_live(&mine, now, self.order_hold) && !sender.waiting.contains(&mine) {
                    sender.waiting.push(mine);
                }
            }
        }
        if leased_to_other || behind {
            // Let the message go at once, so its redelivery need not wait out our lease;
            // its turn did not begin.
            if let Some(item) = tables.messages.get_mut(&key) {
                item.lease_until = 0;
                if attempt.starts_turn && !progress.started {
                    item.started_by = None;
                }
            }
            return Ok(Begin::SenderBusy);
        }
        let sender = tables
            .senders
            .entry(attempt.sender.to_string())
            .or_default();
        sender.holder = Some(attempt.token.to_string());
        sender.lease_until = lease_until;
        let idle = self.session_idle_ttl.as_secs();
        let session = sender.session.clone().filter(|s| s.updated_at + idle > now);
        Ok(Begin::Ready {
            session,
            progress,
            waiting: sender.waiting.clone(),
        })
    }

    async fn claim(&self, attempt: &Attempt<'_>, now: u64) -> Result<Claim, StateError> {
        let mut tables = self.tables()?;
        let key = message_key(attempt.message_id);
        Ok(claim_message(
            &mut tables,
            &key,
            attempt,
            now,
            now + self.lease.as_secs(),
        ))
    }

    async fn save_progress(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
    ) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let key = message_key(attempt.message_id);
        match tables.messages.get_mut(&key) {
            Some(item) if !item.done && item.holder == attempt.token => {
                item.record(progress, attempt.token);
                Ok(())
            }
            _ => Err(StateError::LostLease),
        }
    }

    async fn finish(
        &self,
        attempt: &Attempt<'_>,
        session: &SessionRecord,
        _now: u64,
    ) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let keys = held_keys(&tables, attempt)?;
        for key in &keys {
            if let Some(item) = tables.messages.get_mut(key) {
                item.done = true;
                item.lease_until = 0;
                // Done messages keep no reply text.
                item.progress = Progress::default();
            }
        }
        release_sender(&mut tables, attempt, session);
        leave_line(&mut tables, attempt);
        Ok(())
    }

    async fn abandon(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let keys = held_keys(&tables, attempt)?;
        let mut waiting = Vec::new();
        if !progress.notice_sent {
            waiting.push(waiting_entry(attempt.message_id, attempt.timestamp));
        }
        if progress.started {
            leave_line(&mut tables, attempt);
        }
        for (index, key) in keys.iter().enumerate() {
            let Some(item) = tables.messages.get_mut(key) else {
                continue;
            };
            item.lease_until = 0;
            if index == 0 {
                item.record(progress, attempt.token);
            } else if progress.started {
                item.done = true;
                item.progress = Progress::default();
            } else {
                let released = Progress {
                    notice_sent: progress.notice_sent,
                    ..Progress::default()
                };
                item.record(&released, attempt.token);
                if !progress.notice_sent {
                    let merged = attempt.merged[index - 1];
                    waiting.push(waiting_entry(merged.message_id, merged.timestamp));
                }
            }
        }
        release_sender(&mut tables, attempt, session);
        let sender = tables
            .senders
            .entry(attempt.sender.to_string())
            .or_default();
        for entry in waiting {
            if is_live(&entry, now, self.order_hold) && !sender.waiting.contains(&entry) {
                sender.waiting.push(entry);
            }
        }
        Ok(())
    }

    async fn link_user(&self, user_id: &str, sender: &str, _now: u64) -> Result<(), StateError> {
        self.tables()?
            .users
            .insert(user_id.to_string(), sender.to_string());
        Ok(())
    }

    async fn linked_sender(&self, user_id: &str) -> Result<Option<String>, StateError> {
        Ok(self.tables()?.users.get(user_id).cloned())
    }

    async fn move_session(
        &self,
        from: &str,
        to: &str,
        now: u64,
    ) -> Result<SessionMove, StateError> {
        if from == to {
            return Ok(SessionMove::NothingToMove);
        }
        let idle = self.session_idle_ttl.as_secs();
        let live =
            |s: &Option<SessionRecord>| s.as_ref().is_some_and(|s| s.updated_at + idle > now);
        let mut tables = self.tables()?;
        let Some(session) = tables
            .senders
            .get(from)
            .filter(|s| live(&s.session))
            .and_then(|s| s.session.clone())
        else {
            return Ok(SessionMove::NothingToMove);
        };
        let target = tables.senders.entry(to.to_string()).or_default();
        if live(&target.session) {
            return Ok(SessionMove::Kept);
        }
        target.session = Some(session);
        if let Some(old) = tables.senders.get_mut(from) {
            old.session = None;
        }
        Ok(SessionMove::Moved)
    }
}

/// The merged messages of `attempt` are answered: they no longer wait in line.
fn leave_line(tables: &mut Tables, attempt: &Attempt<'_>) {
    if let Some(sender) = tables.senders.get_mut(attempt.sender) {
        let done: Vec<String> = attempt
            .merged
            .iter()
            .map(|m| waiting_entry(m.message_id, m.timestamp))
            .collect();
        sender.waiting.retain(|entry| !done.contains(entry));
    }
}

fn release_sender(tables: &mut Tables, attempt: &Attempt<'_>, session: &SessionRecord) {
    let sender = tables
        .senders
        .entry(attempt.sender.to_string())
        .or_default();
    sender.session = Some(session.clone());
    if sender.holder.as_deref() == Some(attempt.token) {
        sender.holder = None;
        sender.lease_until = 0;
    }
}
