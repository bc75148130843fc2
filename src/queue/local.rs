//! In-process turn queues (`serve` in queued mode without `turns.queue_url`): one
//! task per busy sender drains that sender's messages in order, a turn at a time;
//! different senders run at once. Consecutive texts waiting together are one turn.
//!
//! Bounded: at most `limit` messages wait in all (the webhook answers 503 beyond
//! that, and Meta delivers again). Not durable: messages waiting here when the
//! process dies are lost (they were acknowledged to Meta); see [`LocalQueue::drain`]
//! for what a clean shutdown does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{MAX_ATTEMPTS, QueueError, TurnQueue, retry_delay};
use crate::turn::{Accepted, Delivery, Outcome, TurnRunner};

/// Most messages waiting in all in-process queues.
pub const DEFAULT_LIMIT: usize = 1000;

pub struct LocalQueue {
    shared: Arc<Shared>,
}

struct Shared {
    runner: Arc<TurnRunner>,
    waiting: Mutex<Waiting>,
    /// Sender tasks running.
    active: AtomicUsize,
    /// Told when the last sender task ends.
    idle: Notify,
    limit: usize,
    retry_delay: fn(u32) -> Duration,
}

#[derive(Default)]
struct Waiting {
    /// Busy senders (each with a running task) and their waiting messages.
    senders: HashMap<String, VecDeque<Pending>>,
    count: usize,
}

struct Pending {
    message: Accepted,
    /// Earlier tries of this message.
    attempts: u32,
    /// When it was queued (the queue-wait metric).
    since: tokio::time::Instant,
}

impl LocalQueue {
    pub fn new(runner: Arc<TurnRunner>, limit: usize) -> Self {
        LocalQueue {
            shared: Arc::new(Shared {
                runner,
                waiting: Mutex::new(Waiting::default()),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                limit,
                retry_delay,
            }),
        }
    }

    /// The pause before a failed message is tried again (tests shorten it).
    pub fn with_retry_delay(mut self, delay: fn(u32) -> Duration) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.retry_delay = delay;
        }
        self
    }

    /// Messages waiting or being answered.
    pub fn len(&self) -> usize {
        self.shared.waiting.lock().map_or(0, |w| w.count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait up to `grace` for every queued turn to end (at shutdown, after the server
    /// stopped taking requests). Returns how many messages were still waiting: they
    /// are lost with the process, their senders get no answer.
    pub async fn drain(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.active.load(Ordering::SeqCst) == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.len();
            }
        }
    }
}

#[async_trait]
impl TurnQueue for LocalQueue {
    async fn enqueue(&self, batch: Vec<Accepted>) -> Result<(), QueueError> {
        let Some(key) = batch.first().map(|m| m.state_key.clone()) else {
            return Ok(());
        };
        let spawn = {
            let mut waiting = self
                .shared
                .waiting
                .lock()
                .map_err(|_| QueueError::Unavailable("queue lock poisoned".into()))?;
            if waiting.count + batch.len() > self.shared.limit {
                return Err(QueueError::Full);
            }
            waiting.count += batch.len();
            let busy = waiting.senders.contains_key(&key);
            let line = waiting.senders.entry(key.clone()).or_default();
            let since = tokio::time::Instant::now();
            line.extend(batch.into_iter().map(|message| Pending {
                message,
                attempts: 0,
                since,
            }));
            !busy
        };
        if spawn {
            self.shared.active.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(run_sender(self.shared.clone(), key));
        }
        Ok(())
    }
}

/// Answer `key`'s messages until none wait, then end (and forget the sender).
async fn run_sender(shared: Arc<Shared>, key: String) {
    loop {
        let batch: Vec<Pending> = {
            let Ok(mut waiting) = shared.waiting.lock() else {
                break;
            };
            // An empty line: the sender is forgotten under the lock, so the next
            // message starts a new task.
            let line = waiting.senders.remove(&key).unwrap_or_default();
            if line.is_empty() {
                break;
            }
            // Keep the sender marked busy while its turn runs.
            waiting.senders.insert(key.clone(), VecDeque::new());
            line.into()
        };
        for pending in &batch {
            shared
                .runner
                .metrics()
                .queue_wait
                .record(pending.since.elapsed());
        }
        let messages: Vec<&Accepted> = batch.iter().map(|p| &p.message).collect();
        let last = batch[0].attempts + 1 >= MAX_ATTEMPTS;
        let outcomes = shared
            .runner
            .answer_in_order(
                &messages,
                Delivery::Queued {
                    last,
                    start_by: None,
                },
            )
            .await;
        let mut again: Vec<Pending> = Vec::new();
        let mut finished = 0;
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            if outcome == Outcome::Settled {
                finished += 1;
            } else {
                again.push(Pending {
                    attempts: pending.attempts + 1,
                    ..pending
                });
            }
        }
        if let Some(first) = again.first() {
            tokio::time::sleep((shared.retry_delay)(first.attempts)).await;
        }
        let Ok(mut waiting) = shared.waiting.lock() else {
            break;
        };
        waiting.count -= finished;
        let line = waiting.senders.entry(key.clone()).or_default();
        for pending in again.into_iter().rev() {
            line.push_front(pending);
        }
    }
    if shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.idle.notify_waiters();
    }
}
