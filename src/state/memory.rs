//! In-process [`SessionStore`]: the local default (`serve`, `make run`) and the test
//! double. Same semantics as the DynamoDB store, minus durability across processes.
//!
//! # Local/dev only; bounded
//!
//! Nothing survives a restart, and nothing is shared between processes: use DynamoDB
//! for anything that must not answer a message twice. The tables are bounded, by age
//! and by count ([`MemoryLimits`]):
//!
//! * **Settled messages** (answered, or merged into a turn that began) are forgotten
//!   once settled longer than max(lease, order hold, [`SETTLED_RETENTION`] = 24 h).
//!   Meta redelivers an unacknowledged message for up to 7 days, but a message that was
//!   settled was also acknowledged (200); what comes back later is a rare duplicate.
//!   The DynamoDB store remembers 10 days ([`super::DEDUP_RETENTION`]); a dev server
//!   need not. **What is lost:** a redelivery of a message more than 24 h after it was
//!   answered (or after it was evicted by count) is taken for a new message and
//!   answered again.
//! * **Unsettled messages** (failed for now, their progress kept for Meta's
//!   redelivery) are forgotten only after max(lease, order hold,
//!   [`super::DEDUP_RETENTION`] = 10 days) without an attempt: past Meta's 7-day
//!   redelivery window, nothing comes back for them.
//! * **Held messages** (leased to a running attempt) are never forgotten.
//! * **Count:** at most [`MemoryLimits::messages`] (100,000) message records. Over the
//!   cap, the oldest settled ones go first, down to 7/8 of the cap; held and unsettled
//!   ones are never evicted for space, so many failures at once can hold the table
//!   above its cap (until their 10 days are over).
//! * **Senders** are forgotten when their session has expired (`session_idle_ttl`,
//!   already treated as absent on read), nobody holds their lease and no message
//!   waits in their line (order hold). Over [`MemoryLimits::senders`] (100,000), the
//!   idle ones with the oldest session go first: that user's next message starts a
//!   fresh session, as after an idle expiry.
//! * **User links** expire like the DynamoDB item (linked + idle ttl + lease); over
//!   [`MemoryLimits::users`] (100,000) the oldest link goes first: that username user,
//!   if Meta no longer sends their number, starts a fresh session.
//!
//! Eviction is amortised: a write sweeps the tables (O(entries)) only when a table is
//! over its cap, or at most once per [`SWEEP_INTERVAL_SECS`] of the callers' clock
//! (`now`). A count sweep frees at least 1/8 of the cap, so the next one comes after as
//! many new entries; a sweep that cannot get under the cap (everything held or
//! unsettled) waits for 1/8 of the cap more entries before the next one.
//!
//! Measured by `cargo bench --bench memory_store`: 100,000 answered messages of 1,000
//! senders hold 20.4 MB of heap (about 200 bytes per message record); 250,000 stay
//! at 20.4 MB (99,988 records), where the same store without bounds holds 75.9 MB.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Attempt, Begin, Claim, DEDUP_RETENTION, DEFAULT_ORDER_HOLD, Place, Progress, SessionMove,
    SessionStore, StateError, is_live, message_key, place_in_line, waiting_entry,
};
use crate::domain::SessionRecord;

/// How long a settled message is remembered by default (at least the lease and the
/// order hold): a redelivery after that is answered again (see the module doc).
pub const SETTLED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// At most one age sweep per this many seconds of the callers' `now`.
pub const SWEEP_INTERVAL_SECS: u64 = 60;

/// The bounds of a [`MemoryStore`]; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Message records kept; over it, settled ones are evicted, oldest first.
    pub messages: usize,
    /// Sender records (session, lease, waiting list) kept; over it, idle ones with the
    /// oldest session are evicted.
    pub senders: usize,
    /// User links kept; over it, the oldest are evicted.
    pub users: usize,
    /// How long a settled message is remembered (at least the lease and order hold).
    pub settled_retention: Duration,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            messages: 100_000,
            senders: 100_000,
            users: 100_000,
            settled_retention: SETTLED_RETENTION,
        }
    }
}

/// How many records each table holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entries {
    pub messages: usize,
    pub senders: usize,
    pub users: usize,
}

#[derive(Debug, Clone)]
struct MessageItem {
    done: bool,
    holder: String,
    lease_until: u64,
    /// The callers' `now` at the last claim, settlement or release: its age.
    touched_at: u64,
    /// `progress.started` is derived from this: the token of the attempt that began
    /// the turn (as the DynamoDB item's `started`).
    progress: Progress,
    started_by: Option<String>,
}

impl MessageItem {
    /// Answered at `now`: a done message keeps no reply text, and nothing but what
    /// deduplication needs (no holder, no turn token), so it costs little to remember.
    fn settle(&mut self, now: u64) {
        *self = MessageItem {
            done: true,
            holder: String::new(),
            lease_until: 0,
            touched_at: now,
            progress: Progress::default(),
            started_by: None,
        };
    }

    /// Neither held nor remembered any longer at `now`: settled `settled_for` seconds
    /// ago, or released unsettled `released_for` seconds ago.
    fn forgotten(&self, now: u64, settled_for: u64, released_for: u64) -> bool {
        let keep = if self.done { settled_for } else { released_for };
        self.lease_until <= now && self.touched_at.saturating_add(keep) <= now
    }

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

impl SenderItem {
    /// Nobody holds the sender and no message waits in its line at `now`.
    fn idle(&self, now: u64, hold: Duration) -> bool {
        self.lease_until <= now && !self.waiting.iter().any(|e| is_live(e, now, hold))
    }
}

#[derive(Debug, Clone)]
struct UserLink {
    sender: String,
    linked_at: u64,
}

#[derive(Debug, Default)]
struct Tables {
    messages: HashMap<String, MessageItem>,
    senders: HashMap<String, SenderItem>,
    /// user id → sender key
    users: HashMap<String, UserLink>,
    /// The `now` of the last sweep.
    swept_at: u64,
    /// A table longer than this is swept at the next write (its cap, or more when the
    /// last sweep could not get under the cap).
    sweep_over: Entries,
}

impl Tables {
    fn entries(&self) -> Entries {
        Entries {
            messages: self.messages.len(),
            senders: self.senders.len(),
            users: self.users.len(),
        }
    }
}

#[derive(Debug)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    lease: Duration,
    session_idle_ttl: Duration,
    order_hold: Duration,
    limits: MemoryLimits,
}

impl MemoryStore {
    pub fn new(lease: Duration, session_idle_ttl: Duration) -> Self {
        let limits = MemoryLimits::default();
        MemoryStore {
            tables: Mutex::new(Tables {
                sweep_over: caps(&limits),
                ..Tables::default()
            }),
            lease,
            session_idle_ttl,
            order_hold: DEFAULT_ORDER_HOLD,
            limits,
        }
    }

    /// Other bounds than [`MemoryLimits::default`] (caps below 1 count as 1).
    pub fn with_limits(mut self, limits: MemoryLimits) -> Self {
        self.limits = limits;
        if let Ok(tables) = self.tables.get_mut() {
            tables.sweep_over = caps(&limits);
        }
        self
    }

    /// How many records each table holds now (for tests, benches and diagnostics).
    pub fn entries(&self) -> Entries {
        self.tables.lock().map(|t| t.entries()).unwrap_or_default()
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

    /// After a write at `now`: sweep when a table is over its threshold or the last
    /// sweep is [`SWEEP_INTERVAL_SECS`] old, so a request costs O(1) amortised.
    fn tend(&self, tables: &mut Tables, now: u64) {
        let len = tables.entries();
        let over = tables.sweep_over;
        let due = now >= tables.swept_at.saturating_add(SWEEP_INTERVAL_SECS);
        if due
            || len.messages > over.messages
            || len.senders > over.senders
            || len.users > over.users
        {
            self.sweep(tables, now);
        }
    }

    /// Forget what is past its age, then evict the oldest evictable records of every
    /// table over its cap, down to 7/8 of the cap.
    fn sweep(&self, tables: &mut Tables, now: u64) {
        tables.swept_at = tables.swept_at.max(now);
        let floor = self.lease.max(self.order_hold);
        let settled_for = floor.max(self.limits.settled_retention).as_secs();
        let released_for = floor.max(DEDUP_RETENTION).as_secs();
        let idle = self.session_idle_ttl.as_secs();
        let hold = self.order_hold;
        let link_for = idle.saturating_add(self.lease.as_secs());
        tables
            .messages
            .retain(|_, m| !m.forgotten(now, settled_for, released_for));
        tables.senders.retain(|_, s| {
            let expired = s
                .session
                .as_ref()
                .is_none_or(|s| s.updated_at.saturating_add(idle) <= now);
            !(expired && s.idle(now, hold))
        });
        tables
            .users
            .retain(|_, u| u.linked_at.saturating_add(link_for) > now);

        let limits = caps(&self.limits);
        evict_oldest(&mut tables.messages, limits.messages, |m| {
            (m.done && m.lease_until <= now).then_some(m.touched_at)
        });
        evict_oldest(&mut tables.senders, limits.senders, |s| {
            s.idle(now, hold)
                .then(|| s.session.as_ref().map_or(0, |s| s.updated_at))
        });
        evict_oldest(&mut tables.users, limits.users, |u| Some(u.linked_at));
        fit(&mut tables.messages);
        fit(&mut tables.senders);
        fit(&mut tables.users);
        let len = tables.entries();
        tables.sweep_over = Entries {
            messages: next_sweep(limits.messages, len.messages),
            senders: next_sweep(limits.senders, len.senders),
            users: next_sweep(limits.users, len.users),
        };
    }
}

/// The caps of `limits`, at least 1 each.
fn caps(limits: &MemoryLimits) -> Entries {
    Entries {
        messages: limits.messages.max(1),
        senders: limits.senders.max(1),
        users: limits.users.max(1),
    }
}

/// A count sweep frees (or, failing that, waits for) this many entries.
fn slack(cap: usize) -> usize {
    (cap / 8).max(1)
}

/// The length over which the next sweep comes: the cap, unless the table is over it
/// (nothing evictable): then 1/8 of the cap later, so sweeps stay amortised.
fn next_sweep(cap: usize, len: usize) -> usize {
    if len <= cap { cap } else { len + slack(cap) }
}

/// Give back the room of a table that grew (removals leave tombstones, and enough of
/// them make an insert double the table) to over twice what it holds.
fn fit<V>(map: &mut HashMap<String, V>) {
    if map.capacity() > 2 * map.len().max(1024) {
        map.shrink_to_fit();
    }
}

/// If `map` is over `cap`, remove its oldest evictable entries (`age`: `Some(order)`
/// when evictable) until it is 1/8 of the cap under it, or nothing evictable is left.
fn evict_oldest<V>(map: &mut HashMap<String, V>, cap: usize, age: impl Fn(&V) -> Option<u64>) {
    if map.len() <= cap {
        return;
    }
    let excess = map.len() - (cap - slack(cap).min(cap - 1));
    let mut candidates: Vec<(u64, &String)> = map
        .iter()
        .filter_map(|(key, value)| age(value).map(|at| (at, key)))
        .collect();
    if candidates.len() > excess {
        candidates.select_nth_unstable(excess);
        candidates.truncate(excess);
    }
    let doomed: Vec<String> = candidates.into_iter().map(|(_, k)| k.clone()).collect();
    for key in doomed {
        map.remove(&key);
    }
    // Removals leave tombstones that can make later inserts double the table: copy it
    // into one sized for the cap (O(entries), as this sweep already was).
    let mut fresh = HashMap::with_capacity(cap.max(map.len()));
    fresh.extend(std::mem::take(map));
    *map = fresh;
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
            item.touched_at = now;
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
                    touched_at: now,
                    progress: Progress::default(),
                    started_by: attempt.starts_turn.then(|| token.to_string()),
                },
            );
            Claim::Claimed(Progress::default())
        }
    }
}

impl MemoryStore {
    /// [`SessionStore::begin`] on locked tables.
    fn begin_in(&self, tables: &mut Tables, attempt: &Attempt<'_>, now: u64) -> Begin {
        let lease_until = now + self.lease.as_secs();
        let key = message_key(attempt.message_id);
        let progress = match claim_message(tables, &key, attempt, now, lease_until) {
            Claim::Done => return Begin::Done,
            Claim::Busy => return Begin::MessageBusy,
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
            return Begin::SenderBusy;
        }
        let sender = tables
            .senders
            .entry(attempt.sender.to_string())
            .or_default();
        sender.holder = Some(attempt.token.to_string());
        sender.lease_until = lease_until;
        let idle = self.session_idle_ttl.as_secs();
        let session = sender.session.clone().filter(|s| s.updated_at + idle > now);
        Begin::Ready {
            session,
            progress,
            waiting: sender.waiting.clone(),
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn begin(&self, attempt: &Attempt<'_>, now: u64) -> Result<Begin, StateError> {
        let mut tables = self.tables()?;
        let begun = self.begin_in(&mut tables, attempt, now);
        self.tend(&mut tables, now);
        Ok(begun)
    }

    async fn claim(&self, attempt: &Attempt<'_>, now: u64) -> Result<Claim, StateError> {
        let mut tables = self.tables()?;
        let key = message_key(attempt.message_id);
        let lease_until = now + self.lease.as_secs();
        let claim = claim_message(&mut tables, &key, attempt, now, lease_until);
        self.tend(&mut tables, now);
        Ok(claim)
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
        now: u64,
    ) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let keys = held_keys(&tables, attempt)?;
        for key in &keys {
            if let Some(item) = tables.messages.get_mut(key) {
                item.settle(now);
            }
        }
        release_sender(&mut tables, attempt, session);
        leave_line(&mut tables, attempt);
        self.tend(&mut tables, now);
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
            item.touched_at = now;
            if index == 0 {
                item.record(progress, attempt.token);
            } else if progress.started {
                item.settle(now);
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
        self.tend(&mut tables, now);
        Ok(())
    }

    async fn link_user(&self, user_id: &str, sender: &str, now: u64) -> Result<(), StateError> {
        let mut tables = self.tables()?;
        let link = UserLink {
            sender: sender.to_string(),
            linked_at: now,
        };
        tables.users.insert(user_id.to_string(), link);
        self.tend(&mut tables, now);
        Ok(())
    }

    async fn linked_sender(&self, user_id: &str) -> Result<Option<String>, StateError> {
        Ok(self.tables()?.users.get(user_id).map(|u| u.sender.clone()))
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
        self.tend(&mut tables, now);
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

#[cfg(test)]
mod tests;
