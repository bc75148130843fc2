//! The HTTP edge: one request in, one response out, the same in serve and Lambda mode.
//! Routing, the verification GET, the signature check, and the status code.
//!
//! Sync mode: a POST answers 200 only after every message in it was answered (a
//! Lambda is frozen once it responds), 503 when another delivery holds a message, and
//! 500 when something failed for now, so that Meta redelivers. Queued mode: 200 once
//! every message is on the turn queue, 503 when the in-process queue is full, 500
//! when the queue could not be reached. In both modes a tap on a Tier 3 approval
//! button goes to the engine at once: the sender's turn that waits for it is ahead of
//! it in any queue.
//!
//! The senders of one POST (Meta batches up to 1000 messages) are answered, or
//! queued, [`MAX_SENDERS_AT_ONCE`] at a time, each sender's messages in order. In
//! Lambda a sync POST starts no sender after [`sync_start_by`]: those are answered 500
//! and come again with Meta's redelivery, which skips the ones already answered.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use tokio::time::Instant;

use super::payload::Envelope;
use super::rapid_fire::{Joined, Waiter, Wake};
use super::signature::{SIGNATURE_HEADER, SignatureCheck, check_signature};
use super::verify::{Verification, verify_subscription};
use super::walk::collect_messages;
use crate::app::{App, Dispatch};
use crate::queue::{QueueError, TurnQueue};
use crate::turn::{Accepted, Action, Outcome};

/// Most senders of one POST answered (sync) or queued at once. Each holds a turn: an
/// engine request and a few Graph API calls, a state-store claim. 16 answers a
/// 1000-sender batch 16 times faster than one at a time while keeping this delivery's
/// share of the Graph API's per-number throughput (80 messages/s by default), the
/// engine's concurrent turns and the HTTP connections modest.
pub const MAX_SENDERS_AT_ONCE: usize = 16;

/// The latest instant a sync POST starts another sender's turn, given the time `left`
/// in the Lambda invocation and `turn_budget`, the longest one turn may take (the
/// engine timeout plus sending; [`App::with_sync_turn_budget`]).
///
/// A turn started later could be cut off by the function timeout: its sender is not
/// started, the POST answers 500, and Meta's redelivery answers it (the senders this
/// POST answered are settled and skipped then: no duplicates). But the template's
/// function timeout (29 s) is itself sized for one turn at the full engine timeout
/// (25 s), so that rule alone would start nothing after the first instant, and a
/// redelivery, spending that instant on senders already answered, would never get
/// further. So at least the first half of the time left is always for starting turns:
/// every delivery answers new senders, and a sender started late is cut off only if
/// the engine takes nearly its full timeout. Serve mode has no deadline.
pub fn sync_start_by(left: Duration, turn_budget: Duration) -> Instant {
    Instant::now() + left - turn_budget.min(left / 2)
}

impl App {
    /// Answer one HTTP request. Never panics on input; every refusal says why.
    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        self.handle_until(request, None).await
    }

    /// [`App::handle`] within a Lambda invocation: in sync mode, no sender's turn
    /// starts after `start_by` ([`sync_start_by`]; `None`: no limit).
    pub async fn handle_until(
        &self,
        request: Request<Bytes>,
        start_by: Option<Instant>,
    ) -> Response<Bytes> {
        self.refresh_secrets().await;
        let response = self.route(request, start_by).await;
        self.metrics.webhook(response.status().as_u16());
        response
    }

    async fn route(&self, request: Request<Bytes>, start_by: Option<Instant>) -> Response<Bytes> {
        let path = request.uri().path();
        if !is_webhook_path(path) {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the webhook is at /webhook",
            );
        }
        match *request.method() {
            Method::GET => self.verify(request.uri().query()),
            Method::POST => self.receive(&request, start_by).await,
            _ => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
                response
            }
        }
    }

    fn verify(&self, query: Option<&str>) -> Response<Bytes> {
        match verify_subscription(query, self.options.verify_token.current().expose()) {
            Verification::Accepted(challenge) => {
                // Meta verifies rarely, but anyone may call it: no log line per call.
                tracing::debug!("webhook verification accepted");
                text(StatusCode::OK, challenge)
            }
            Verification::Missing(name) => text(StatusCode::BAD_REQUEST, format!("missing {name}")),
            Verification::Refused => {
                tracing::warn!("webhook verification refused: wrong hub.verify_token or hub.mode");
                text(StatusCode::FORBIDDEN, "verify token mismatch")
            }
        }
    }

    async fn receive(
        &self,
        request: &Request<Bytes>,
        start_by: Option<Instant>,
    ) -> Response<Bytes> {
        let body = request.body();
        let app_secrets = self.options.app_secrets.current();
        if !app_secrets.is_empty() {
            let mut headers = request.headers().get_all(SIGNATURE_HEADER).iter();
            let header = headers.next().map(|v| v.as_bytes());
            if headers.next().is_some() {
                // Meta sends one; which of several to trust would be a guess.
                tracing::warn!("POST with more than one X-Hub-Signature-256 refused");
                return text(StatusCode::BAD_REQUEST, "more than one X-Hub-Signature-256");
            }
            match check_signature(header, body, &app_secrets) {
                SignatureCheck::Valid => {}
                SignatureCheck::Missing => {
                    tracing::warn!("POST without X-Hub-Signature-256 refused");
                    return text(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
                }
                SignatureCheck::Invalid => {
                    tracing::warn!("POST with a wrong X-Hub-Signature-256 refused");
                    return text(StatusCode::FORBIDDEN, "invalid X-Hub-Signature-256");
                }
            }
        }
        let envelope: Envelope<'_> = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(category = ?e.classify(), line = e.line(), column = e.column(), "POST body refused: not a webhook JSON object");
                return text(
                    StatusCode::BAD_REQUEST,
                    "body is not a JSON webhook payload",
                );
            }
        };
        let mut messages = collect_messages(&envelope, &self.options.phone_number_id);
        // Meta may batch several messages of one sender: answer them in the order written.
        messages.sort_by_key(|m| m.timestamp);
        let mut by_sender: Vec<(String, Vec<Accepted>)> = Vec::new();
        let mut taps = Vec::new();
        for message in messages {
            let Some(accepted) = self
                .senders
                .accept(message, self.options.unsupported_reply)
                .await
            else {
                continue;
            };
            self.metrics.messages.inc();
            if matches!(accepted.action, Action::Approval(_)) {
                // The sender's turn waits for this tap: it cannot queue behind it.
                taps.push(accepted);
                continue;
            }
            match by_sender.iter_mut().find(|(k, _)| *k == accepted.state_key) {
                Some((_, batch)) => batch.push(accepted),
                None => by_sender.push((accepted.state_key.clone(), vec![accepted])),
            }
        }
        let mut worst = Outcome::Settled;
        for tap in &taps {
            worst = worst.max(self.turns.decide(tap).await);
        }
        let outcome = match &self.dispatch {
            Dispatch::Sync => self.serve_senders(by_sender, start_by).await,
            Dispatch::Local(queue) => enqueue_all(queue.as_ref(), by_sender).await,
            Dispatch::Sqs(queue) => enqueue_all(queue, by_sender).await,
        };
        worst = worst.max(outcome);
        match worst {
            Outcome::Settled => text(StatusCode::OK, "ok"),
            Outcome::Busy => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "a message is being answered by another delivery; retry later",
            ),
            Outcome::Failed => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "temporary failure; retry later",
            ),
        }
    }

    /// Answer the senders of this request, [`MAX_SENDERS_AT_ONCE`] at a time, each
    /// sender's messages in order; the worst outcome. A sender not started by
    /// `start_by` is left untouched (nothing claimed) and counts as failed: Meta
    /// delivers the POST again.
    async fn serve_senders(
        &self,
        by_sender: Vec<(String, Vec<Accepted>)>,
        start_by: Option<Instant>,
    ) -> Outcome {
        let outcomes: Vec<Option<Outcome>> = stream::iter(by_sender)
            .map(|(state_key, batch)| async move {
                if start_by.is_some_and(|start_by| Instant::now() > start_by) {
                    return None;
                }
                Some(self.serve_sender(&state_key, batch).await)
            })
            .buffer_unordered(MAX_SENDERS_AT_ONCE)
            .collect()
            .await;
        let not_started = outcomes.iter().filter(|o| o.is_none()).count();
        if not_started > 0 {
            tracing::warn!(
                senders = not_started,
                "no time left in the invocation to start these senders' turns; answered 500 so Meta delivers them again"
            );
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Failed))
            .fold(Outcome::Settled, Outcome::max)
    }

    /// Answer one sender's messages of this request. If another request of this
    /// process is answering the same sender, hand them over and wait: they are
    /// answered in its next turn, rapid-fire texts combined.
    async fn serve_sender(&self, state_key: &str, batch: Vec<Accepted>) -> Outcome {
        let (leader, mine, mut others) = match self.rapid_fire.join(state_key, batch) {
            Joined::Lead(leader, mine) => {
                if !self.options.combine_window.is_zero() && mine.iter().any(Accepted::is_turn) {
                    // Give quick follow-up lines a moment to arrive and join this turn.
                    tokio::time::sleep(self.options.combine_window).await;
                }
                (leader, mine, Vec::new())
            }
            Joined::Wait(woken) => match woken.await {
                Ok(Wake::Answered(outcome)) => return outcome,
                Ok(Wake::Lead { items, others }) => {
                    (self.rapid_fire.resume(state_key), items, others)
                }
                // The leading request was cancelled before answering ours.
                Err(_) => return Outcome::Failed,
            },
        };
        // Messages handed over until now (during the window, or behind the previous
        // leader's turn) are answered by this turn too.
        others.extend(leader.take_waiting());
        let mut tagged: Vec<(usize, Accepted)> = mine.into_iter().map(|p| (0, p)).collect();
        let mut replies = Vec::with_capacity(others.len());
        for (index, Waiter { items, reply }) in others.into_iter().enumerate() {
            tagged.extend(items.into_iter().map(|p| (index + 1, p)));
            replies.push(reply);
        }
        // Stable: equal timestamps keep their arrival order.
        tagged.sort_by_key(|(_, p)| p.timestamp);
        // A redelivery that arrived while its first delivery waited here is the same
        // message: answer it once, and tell both requests the same outcome.
        let mut unique: Vec<&Accepted> = Vec::with_capacity(tagged.len());
        let mut answered_as = Vec::with_capacity(tagged.len());
        for (_, p) in &tagged {
            match unique.iter().position(|u| u.id == p.id) {
                Some(index) => {
                    self.metrics.duplicates.inc();
                    answered_as.push(index);
                }
                None => {
                    answered_as.push(unique.len());
                    unique.push(p);
                }
            }
        }
        let outcomes = self
            .turns
            .answer_in_order(&unique, crate::turn::Delivery::Webhook)
            .await;
        let mut worst = vec![Outcome::Settled; replies.len() + 1];
        for ((owner, _), index) in tagged.iter().zip(answered_as) {
            worst[*owner] = worst[*owner].max(outcomes[index]);
        }
        for (reply, outcome) in replies.into_iter().zip(worst.iter().skip(1)) {
            reply.answer(*outcome);
        }
        leader.hand_over();
        worst[0]
    }
}

/// Hand each sender's messages to the turn queue, [`MAX_SENDERS_AT_ONCE`] senders at
/// once (one queue's senders are independent: an SQS FIFO group each); the worst
/// outcome.
async fn enqueue_all(queue: &dyn TurnQueue, by_sender: Vec<(String, Vec<Accepted>)>) -> Outcome {
    stream::iter(by_sender)
        .map(|(_, batch)| enqueue(queue, batch))
        .buffer_unordered(MAX_SENDERS_AT_ONCE)
        .fold(Outcome::Settled, |worst, outcome| async move {
            worst.max(outcome)
        })
        .await
}

/// Hand one sender's messages to the turn queue.
async fn enqueue(queue: &dyn TurnQueue, batch: Vec<Accepted>) -> Outcome {
    let refs: Vec<String> = batch.iter().map(|m| m.msg_ref.clone()).collect();
    match queue.enqueue(batch).await {
        Ok(()) => {
            tracing::info!(msgs = ?refs, "queued");
            Outcome::Settled
        }
        Err(e @ QueueError::Full) => {
            tracing::warn!(error = %e, msgs = ?refs, "not queued: full; Meta delivers again");
            Outcome::Busy
        }
        Err(e) => {
            tracing::error!(error = %e, msgs = ?refs, "not queued; Meta delivers again");
            Outcome::Failed
        }
    }
}

/// API Gateway stages and Function URLs may prefix the path; the last segment decides.
fn is_webhook_path(path: &str) -> bool {
    path == "/" || path.trim_end_matches('/').ends_with("/webhook")
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The verification answer echoes a caller's string: never let a browser sniff it.
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_path_may_carry_a_stage_prefix() {
        for ok in [
            "/",
            "/webhook",
            "/webhook/",
            "/prod/webhook",
            "/a/b/webhook",
        ] {
            assert!(is_webhook_path(ok), "{ok}");
        }
        for no in ["/webhooks", "/hook", "/webhook/x", ""] {
            assert!(!is_webhook_path(no), "{no}");
        }
    }

    #[test]
    fn a_sync_post_keeps_a_turn_budget_but_at_least_half_its_time_for_starting() {
        let secs = Duration::from_secs;
        let now = Instant::now();
        // A function timeout with room for more turns than one: the full budget.
        let start_by = sync_start_by(secs(300), secs(29));
        assert!(start_by >= now + secs(271) && start_by <= Instant::now() + secs(271));
        // The template's 29 s for a 25 s engine (+ 4 s sending): half of it.
        let start_by = sync_start_by(secs(29), secs(29));
        assert!(start_by >= now + Duration::from_millis(14_500));
        assert!(start_by <= Instant::now() + Duration::from_millis(14_500));
        // No time left: nothing starts.
        assert!(sync_start_by(Duration::ZERO, secs(29)) <= Instant::now());
    }
}
