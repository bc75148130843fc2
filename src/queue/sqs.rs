//! The SQS FIFO queue of queued turns: the webhook sends, a worker (the Lambda's SQS
//! event, or [`SqsQueue::poll`] in `serve`) runs the jobs.
//!
//! - `MessageGroupId`: a hash of the sender's state key, so one sender's turns run one
//!   at a time and in order across every instance, and the queue's metadata holds no
//!   phone number.
//! - `MessageDeduplicationId`: the hash of WhatsApp's message id, so a Meta
//!   redelivery within SQS's 5-minute window is dropped by the queue itself (later
//!   ones find the message done or begun in the state store).
//! - A job that must come again gets a short visibility timeout
//!   ([`super::retry_delay`]); the queue's own is longer than a whole turn.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use futures_util::FutureExt;

use super::worker::{Delivered, run_batch};
use super::{Job, QueueError, TurnQueue, retry_delay};
use crate::state::message_key;
use crate::turn::{Accepted, TurnRunner};

/// Most entries in one SendMessageBatch / DeleteMessageBatch (SQS's limit).
const SQS_BATCH: usize = 10;
/// Long polling: one ReceiveMessage waits this long for jobs.
const POLL_WAIT_SECS: i32 = 20;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    /// Longest a turn may take (engine timeout plus sending): no turn starts with
    /// less time than this left in the invocation.
    turn_budget: Duration,
}

/// One job as the queue delivered it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: String,
    pub receipt_handle: String,
    pub receive_count: u32,
    /// When SQS took the job (`SentTimestamp`, unix ms), for the queue-wait metric.
    pub sent_at_ms: Option<u64>,
}

/// The receive count SQS reports (`ApproximateReceiveCount`), 1 when absent.
fn receive_count(count: Option<&String>) -> u32 {
    count.and_then(|c| c.parse().ok()).unwrap_or(1)
}

impl Received {
    /// A record of a Lambda SQS event.
    pub fn from_record(record: &aws_lambda_events::sqs::SqsMessage) -> Self {
        Received {
            body: record.body.clone().unwrap_or_default(),
            receipt_handle: record.receipt_handle.clone().unwrap_or_default(),
            receive_count: receive_count(record.attributes.get("ApproximateReceiveCount")),
            sent_at_ms: record
                .attributes
                .get("SentTimestamp")
                .and_then(|t| t.parse().ok()),
        }
    }
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: String, turn_budget: Duration) -> Self {
        SqsQueue {
            client,
            queue_url,
            turn_budget,
        }
    }

    pub fn turn_budget(&self) -> Duration {
        self.turn_budget
    }

    /// Delete the settled jobs (a poller must; Lambda deletes what its response does
    /// not name as failed).
    pub async fn delete(&self, jobs: &[&Received]) {
        for chunk in jobs.chunks(SQS_BATCH) {
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, j)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&j.receipt_handle)
                        .build()
                        .ok()
                })
                .collect();
            let result = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(out) if out.failed().is_empty() => {}
                Ok(out) => {
                    tracing::warn!(
                        failed = out.failed().len(),
                        "some settled jobs were not deleted; their redelivery finds them done"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "settled jobs were not deleted; their redelivery finds them done")
                }
            }
        }
    }

    /// Let jobs that must come again do so after a short pause instead of the queue's
    /// whole visibility timeout.
    pub async fn retry_soon(&self, jobs: &[&Received]) {
        for job in jobs {
            let delay = retry_delay(job.receive_count).as_secs() as i32;
            if let Err(e) = self
                .client
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(&job.receipt_handle)
                .visibility_timeout(delay)
                .send()
                .await
            {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not shorten a failed job's visibility; it comes back after the queue's timeout");
            }
        }
    }

    /// `serve` with a queue URL: receive jobs and run them until `stop` resolves; a
    /// batch under way is finished first.
    pub async fn poll(&self, runner: Arc<TurnRunner>, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let received = tokio::select! {
                _ = &mut stop => return,
                received = self.receive() => received,
            };
            let jobs = match received {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "could not receive turns; trying again shortly");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            if jobs.is_empty() {
                continue;
            }
            let settled = run_received(&runner, &jobs, None).await;
            let (done, again): (Vec<_>, Vec<_>) = jobs.iter().zip(settled).partition(|(_, s)| *s);
            let done: Vec<&Received> = done.into_iter().map(|(j, _)| j).collect();
            let again: Vec<&Received> = again.into_iter().map(|(j, _)| j).collect();
            self.delete(&done).await;
            self.retry_soon(&again).await;
        }
    }

    async fn receive(&self) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(SQS_BATCH as i32)
            .wait_time_seconds(POLL_WAIT_SECS)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| {
                QueueError::Unavailable(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
            })?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let attribute = |name| m.attributes().and_then(|a| a.get(&name));
                Some(Received {
                    body: m.body()?.to_string(),
                    receipt_handle: m.receipt_handle()?.to_string(),
                    receive_count: receive_count(attribute(
                        MessageSystemAttributeName::ApproximateReceiveCount,
                    )),
                    sent_at_ms: attribute(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|t| t.parse().ok()),
                })
            })
            .collect())
    }
}

/// Run jobs as SQS delivered them; which were settled ([`run_batch`]). A batch that
/// panics settles none: every job of it comes again.
pub async fn run_received(
    runner: &TurnRunner,
    jobs: &[Received],
    start_by: Option<tokio::time::Instant>,
) -> Vec<bool> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for sent in jobs.iter().filter_map(|j| j.sent_at_ms) {
        // Clocks may disagree by a little: a job "from the future" waited zero.
        let waited = Duration::from_millis(now_ms.saturating_sub(sent));
        runner.metrics().queue_wait.record(waited);
    }
    let delivered: Vec<Delivered<'_>> = jobs
        .iter()
        .map(|j| Delivered {
            body: &j.body,
            receive_count: j.receive_count,
        })
        .collect();
    match AssertUnwindSafe(run_batch(runner, &delivered, start_by))
        .catch_unwind()
        .await
    {
        Ok(settled) => settled,
        Err(_) => {
            // Not the panic's message: it may quote a user's text.
            tracing::error!(
                jobs = jobs.len(),
                "a batch of queued turns panicked; every job of it comes again"
            );
            vec![false; jobs.len()]
        }
    }
}

#[async_trait]
impl TurnQueue for SqsQueue {
    async fn enqueue(&self, batch: Vec<Accepted>) -> Result<(), QueueError> {
        for chunk in batch.chunks(SQS_BATCH) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, message)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(Job::to_json(message))
                        .message_group_id(message_key(&message.state_key))
                        .message_deduplication_id(message_key(&message.id))
                        .build()
                        .ok()
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    QueueError::Unavailable(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
                })?;
            if !out.failed().is_empty() {
                // Meta delivers again; the ones that did go are deduplicated by id.
                return Err(QueueError::Unavailable(format!(
                    "{} of {} turns not queued",
                    out.failed().len(),
                    chunk.len()
                )));
            }
        }
        Ok(())
    }
}
