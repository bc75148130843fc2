//! One sender's messages, in order: claim each in the state store (waiting briefly
//! while another message of the sender is answered), combine consecutive fresh texts
//! into one turn, and hand each turn to [`super::reply`].

use std::sync::Arc;
use std::time::Duration;

use super::reply::TurnState;
use super::{Accepted, Action, Delivery, Outcome};
use crate::domain::{Clock, Mode, Rotating, Secret, SessionRecord, mask};
use crate::engine::Engine;
use crate::format::Format;
use crate::graph::Messenger;
use crate::metrics::Metrics;
use crate::state::{Attempt, Begin, Claim, Merged, SessionStore, StateError, waiting_entry};

/// Most messages answered by one combined turn; more wait for the next turn.
pub const MAX_COMBINED: usize = 10;

/// What a turn needs of `channels.whatsapp` (a part of [`crate::app::AppOptions`]).
#[derive(Debug, Clone)]
pub struct TurnOptions {
    pub reply_threading: bool,
    pub format: Format,
    pub read_receipts: bool,
    /// How long a message waits for another message of its sender to be answered.
    pub sender_wait: Duration,
    /// Longest reply part, in UTF-16 code units.
    pub max_part_units: usize,
    /// Keys that sign Tier 3 approval buttons (the app secrets); empty: approvals
    /// are announced with a text notice instead of buttons.
    pub approval_keys: Rotating<Vec<Secret>>,
}

pub struct TurnRunner {
    pub(super) options: TurnOptions,
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) engine: Arc<dyn Engine>,
    pub(super) messenger: Arc<dyn Messenger>,
    clock: Clock,
    pub(super) metrics: Arc<Metrics>,
}

impl TurnRunner {
    pub fn new(
        options: TurnOptions,
        store: Arc<dyn SessionStore>,
        engine: Arc<dyn Engine>,
        messenger: Arc<dyn Messenger>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        TurnRunner {
            options,
            store,
            engine,
            messenger,
            clock,
            metrics,
        }
    }

    /// The metrics this runner records into (its app's).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The process is about to be frozen (a Lambda invocation ended).
    pub async fn park(&self) {
        self.engine.park().await;
    }

    pub(super) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Answer one sender's messages in order, one turn at a time; consecutive fresh
    /// texts become one combined turn. Returns one outcome per message. A queue
    /// worker's messages stop at the first that is not settled (the rest: `Failed`,
    /// untouched), so the queue redelivers them in order.
    pub async fn answer_in_order(&self, batch: &[&Accepted], delivery: Delivery) -> Vec<Outcome> {
        // One token for the whole batch: a message claimed for a combined turn but left
        // out of it is claimed again by the next turn without waiting out a lease.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut wait = true;
        while outcomes.len() < batch.len() {
            if let Delivery::Queued {
                start_by: Some(start_by),
                ..
            } = delivery
                && tokio::time::Instant::now() > start_by
            {
                tracing::warn!(
                    left = batch.len() - outcomes.len(),
                    "no time left for another turn; leaving the rest to the queue"
                );
                outcomes.resize(batch.len(), Outcome::Failed);
                break;
            }
            let rest = &batch[outcomes.len()..];
            let answered = self.answer_next(rest, &token, wait, delivery).await;
            // Once one message is not answered, later ones only take their place in the
            // waiting list: waiting for the sender again would fail the same way.
            wait = answered.iter().all(|o| *o == Outcome::Settled);
            outcomes.extend(answered);
            if !wait && matches!(delivery, Delivery::Queued { .. }) {
                outcomes.resize(batch.len(), Outcome::Failed);
            }
        }
        outcomes
    }

    /// Answer the first message of `rest`, with the fresh texts right after it when it
    /// is a fresh text. Returns the outcomes of the messages it took, in order.
    async fn answer_next(
        &self,
        rest: &[&Accepted],
        token: &str,
        wait: bool,
        delivery: Delivery,
    ) -> Vec<Outcome> {
        let first = rest[0];
        let attempt = attempt_of(first, token, &[]);
        let begin = if wait {
            self.begin(&attempt).await
        } else {
            self.store.begin(&attempt, self.now()).await
        };
        let sender = first.sender.key();
        let (session, progress, mut waiting) = match begin {
            Ok(Begin::Ready {
                session,
                progress,
                waiting,
            }) => (session, progress, waiting),
            Ok(Begin::Done) => {
                self.metrics.duplicates.inc();
                tracing::info!(from = %mask(sender), msg = %first.msg_ref, "duplicate delivery of an answered message");
                return vec![Outcome::Settled];
            }
            Ok(Begin::MessageBusy) | Ok(Begin::SenderBusy) => {
                tracing::info!(from = %mask(sender), msg = %first.msg_ref, "busy: held by another delivery or waiting for an older message");
                return vec![Outcome::Busy];
            }
            Err(e) => {
                tracing::error!(error = %e, msg = %first.msg_ref, "state store failed; nothing sent");
                return vec![Outcome::Failed];
            }
        };
        let mut taken = vec![None];
        let mut merged: Vec<&Accepted> = Vec::new();
        if first.is_turn() && progress.is_fresh() {
            for next in &rest[1..] {
                if !next.is_turn() || merged.len() + 1 >= MAX_COMBINED {
                    break;
                }
                // Never ahead of an older message waiting elsewhere (another instance,
                // or Meta's redelivery).
                let entry = waiting_entry(&next.id, next.timestamp);
                waiting.retain(|e| *e != entry);
                if waiting.iter().any(|e| *e < entry) {
                    break;
                }
                let claim = self
                    .store
                    .claim(&attempt_of(next, token, &[]), self.now())
                    .await;
                match claim {
                    Ok(Claim::Claimed(p)) if p.is_fresh() => {
                        merged.push(next);
                        taken.push(None);
                    }
                    Ok(Claim::Done) => {
                        self.metrics.duplicates.inc();
                        taken.push(Some(Outcome::Settled));
                    }
                    Ok(Claim::Busy) => taken.push(Some(Outcome::Busy)),
                    // A reply of its own is under way (resumed by the next turn, which
                    // claims it again with this token), or the store failed.
                    Ok(Claim::Claimed(_)) | Err(_) => break,
                }
            }
        }
        let merged_refs: Vec<Merged<'_>> = merged
            .iter()
            .map(|p| Merged {
                message_id: &p.id,
                timestamp: p.timestamp,
            })
            .collect();
        let now = self.now();
        let mut turn = TurnState {
            attempt: attempt_of(first, token, &merged_refs),
            msg_ref: &first.msg_ref,
            now,
            session: session.unwrap_or_else(|| SessionRecord::start(Mode::Normal, now)),
            progress,
        };
        turn.session.updated_at = now;
        let action = match &first.action {
            Action::Turn(_) if !merged.is_empty() => {
                tracing::info!(from = %mask(sender), msg = %first.msg_ref, messages = merged.len() + 1, "rapid-fire messages combined into one turn");
                let texts: Vec<&str> = std::iter::once(first)
                    .chain(merged.iter().copied())
                    .filter_map(|p| match &p.action {
                        Action::Turn(text) => Some(text.as_str()),
                        _ => None,
                    })
                    .collect();
                Action::Turn(texts.join("\n"))
            }
            action => action.clone(),
        };
        // Marking the latest message read marks the earlier ones read too.
        let read_id = merged.last().map_or(first.id.as_str(), |p| &p.id);
        let started = tokio::time::Instant::now();
        let outcome = self
            .answer(&mut turn, &first.sender, action, read_id, delivery)
            .await;
        self.metrics.turns.inc();
        self.metrics.turn_latency.record(started.elapsed());
        if outcome == Outcome::Failed {
            self.metrics.turns_failed.inc();
        }
        taken.into_iter().map(|o| o.unwrap_or(outcome)).collect()
    }

    /// Take the message and its sender, waiting a little while another message of
    /// the same sender is answered, so quick successive messages keep their order.
    async fn begin(&self, attempt: &Attempt<'_>) -> Result<Begin, StateError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let begin = self.store.begin(attempt, self.now()).await?;
            if begin != Begin::SenderBusy || started.elapsed() + pause > self.options.sender_wait {
                return Ok(begin);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(800));
        }
    }
}

fn attempt_of<'a>(p: &'a Accepted, token: &'a str, merged: &'a [Merged<'a>]) -> Attempt<'a> {
    Attempt {
        message_id: &p.id,
        sender: &p.state_key,
        token,
        timestamp: p.timestamp,
        starts_turn: p.is_turn(),
        merged,
    }
}
