//! In-process [`SessionStore`]: the local default and the test double. Same
//! semantics as the DynamoDB store, minus durability across processes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{Attempt, Begin, Progress, SessionRecord, SessionStore, StateError, message_key};

#[derive(Debug, Clone)]
struct MessageItem {
    done: bool,
    holder: String,
    lease_until: u64,
    progress: Progress,
}

#[derive(Debug, Clone, Default)]
struct SenderItem {
    session: Option<SessionRecord>,
    holder: Option<String>,
    lease_until: u64,
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
}

impl MemoryStore {
    pub fn new(lease: Duration, session_idle_ttl: Duration) -> Self {
        MemoryStore {
            tables: Mutex::new(Tables::default()),
            lease,
            session_idle_ttl,
        }
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

#[async_trait]
impl SessionStore for MemoryStore {
    async fn begin(&self, attempt: &Attempt<'_>, now: u64) -> Result<Begin, StateError> {
        let lease_until = now + self.lease.as_secs();
        let mut tables = self.tables()?;
        let key = message_key(attempt.message_id);
        let progress = match tables.messages.get_mut(&key) {
            Some(item) if item.done => return Ok(Begin::Done),
            Some(item) if item.lease_until > now => return Ok(Begin::MessageBusy),
            Some(item) => {
                item.holder = attempt.token.to_string();
                item.lease_until = lease_until;
                item.progress.clone()
            }
            None => {
                tables.messages.insert(
                    key.clone(),
                    MessageItem {
                        done: false,
                        holder: attempt.token.to_string(),
                        lease_until,
                        progress: Progress::default(),
                    },
                );
                Progress::default()
            }
        };
        let sender = tables
            .senders
            .entry(attempt.sender.to_string())
            .or_default();
        if sender.lease_until > now && sender.holder.as_deref() != Some(attempt.token) {
            // Let the message go at once, so its redelivery need not wait out our lease.
            if let Some(item) = tables.messages.get_mut(&key) {
                item.lease_until = 0;
            }
            return Ok(Begin::SenderBusy);
        }
        sender.holder = Some(attempt.token.to_string());
        sender.lease_until = lease_until;
        let idle = self.session_idle_ttl.as_secs();
        let session = sender.session.clone().filter(|s| s.updated_at + idle > now);
        Ok(Begin::Ready { session, progress })
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
                item.progress = progress.clone();
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
        let key = message_key(attempt.message_id);
        if !holds_message(&tables, &key, attempt.token) {
            return Err(StateError::LostLease);
        }
        if let Some(item) = tables.messages.get_mut(&key) {
            item.done = true;
            item.lease_until = 0;
            // Done messages keep no reply text.
            item.progress = Progress::default();
        }
        release_sender(&mut tables, attempt, session);
        Ok(())
    }

    async fn abandon(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
        session: &SessionRecord,
        _now: u64,
    ) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let key = message_key(attempt.message_id);
        if !holds_message(&tables, &key, attempt.token) {
            return Err(StateError::LostLease);
        }
        if let Some(item) = tables.messages.get_mut(&key) {
            item.lease_until = 0;
            item.progress = progress.clone();
        }
        release_sender(&mut tables, attempt, session);
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
