//! Outgoing messages through the WhatsApp Cloud (Graph) API.
//!
//! [`Messenger`] is the port; [`GraphClient`] the real adapter (one reqwest client,
//! bounded retries of transient failures) and [`DryRunMessenger`] the local stand-in
//! used when no access token is configured.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::domain::{Recipient, Rotating, Secret, mask};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Retrying cannot help (outside the 24 h window, bad token, bad parameter...).
    #[error(
        "Graph API refused the message: HTTP {status}, code {code:?}, fbtrace_id {fbtrace_id:?}"
    )]
    Permanent {
        status: u16,
        code: Option<i64>,
        fbtrace_id: Option<String>,
    },
    /// Worth trying again later (throttling, 5xx, timeouts, connection errors).
    #[error(
        "Graph API failed for now: {detail} (code {}, fbtrace_id {})",
        show(code),
        show(fbtrace_id)
    )]
    Transient {
        detail: String,
        code: Option<i64>,
        fbtrace_id: Option<String>,
        retry_after: Option<Duration>,
    },
}

/// An optional value for an error line: the value, or `none`.
fn show<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "none".to_string(), T::to_string)
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Permanent { .. })
    }
}

#[async_trait]
pub trait Messenger: Send + Sync {
    /// Send one text message; `Ok` once the Graph API accepted it.
    async fn send_text(&self, to: &Recipient, body: &str) -> Result<(), SendError>;
    /// Send one text message quoting the user's message `reply_to` (a WhatsApp reply).
    async fn send_reply(
        &self,
        to: &Recipient,
        body: &str,
        reply_to: &str,
    ) -> Result<(), SendError> {
        let _ = reply_to;
        self.send_text(to, body).await
    }
    /// Send one interactive message: `body` with reply buttons (WhatsApp takes 1 to 3,
    /// titles of at most 20 characters, ids of at most 256); a tap comes back as an
    /// `interactive` `button_reply` carrying the button's id and title.
    async fn send_buttons(
        &self,
        to: &Recipient,
        body: &str,
        buttons: &[ReplyButton],
    ) -> Result<(), SendError>;
    /// Mark an inbound message read and show the typing indicator (one call).
    async fn mark_read_typing(&self, message_id: &str) -> Result<(), SendError>;
}

/// One reply button of an interactive message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyButton {
    /// Comes back in the tap's `button_reply.id`.
    pub id: String,
    /// The label shown (at most 20 characters).
    pub title: String,
}

/// How long and how often transient Graph failures are retried within one delivery.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Delay before the second attempt; each later one waits 4 times longer (Meta's advice).
    pub base_delay: Duration,
    /// Never wait past this much in total, so a Lambda ends inside its timeout.
    pub budget: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::ZERO,
        budget: Duration::ZERO,
    };
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            budget: Duration::from_secs(4),
        }
    }
}

pub struct GraphClient {
    client: reqwest::Client,
    messages_url: String,
    token: Rotating<Secret>,
    retry: RetryPolicy,
}

#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphErrorDetail,
}

#[derive(Deserialize)]
struct GraphErrorDetail {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

/// Graph error codes that mean "later may work": throttling and temporary outages.
const TRANSIENT_CODES: &[i64] = &[
    1, 2, 4, 17, 341, 80007, 130429, 131000, 131016, 131056, 133004,
];

impl GraphClient {
    pub fn new(
        client: reqwest::Client,
        base: &str,
        version: &str,
        phone_number_id: &str,
        token: impl Into<Rotating<Secret>>,
        retry: RetryPolicy,
    ) -> Self {
        GraphClient {
            client,
            messages_url: format!("{base}/{version}/{phone_number_id}/messages"),
            token: token.into(),
            retry,
        }
    }

    async fn post_once(&self, body: &serde_json::Value) -> Result<(), SendError> {
        let response = self
            .client
            .post(&self.messages_url)
            .bearer_auth(self.token.current().expose())
            .json(body)
            .send()
            .await
            .map_err(|e| SendError::Transient {
                detail: e.without_url().to_string(),
                code: None,
                fbtrace_id: None,
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.unwrap_or_default();
        let (code, fbtrace_id) = match serde_json::from_slice::<GraphErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.fbtrace_id),
            Err(_) => (None, None),
        };
        let transient = status.as_u16() == 429
            || status.is_server_error()
            || code.is_some_and(|c| TRANSIENT_CODES.contains(&c));
        if transient {
            Err(SendError::Transient {
                detail: format!("HTTP {}", status.as_u16()),
                code,
                fbtrace_id,
                retry_after,
            })
        } else {
            Err(SendError::Permanent {
                status: status.as_u16(),
                code,
                fbtrace_id,
            })
        }
    }

    async fn post(&self, body: serde_json::Value) -> Result<(), SendError> {
        let started = tokio::time::Instant::now();
        let mut attempt = 1;
        loop {
            let err = match self.post_once(&body).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let SendError::Transient { retry_after, .. } = &err else {
                return Err(err);
            };
            if attempt >= self.retry.max_attempts {
                return Err(err);
            }
            let backoff = self.retry.base_delay * 4u32.saturating_pow(attempt - 1);
            let wait = retry_after.unwrap_or(backoff) + jitter(backoff / 4);
            if started.elapsed() + wait > self.retry.budget {
                return Err(err);
            }
            tracing::warn!(error = %err, attempt, wait_ms = wait.as_millis() as u64, "graph send failed, retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Up to `max` of randomness, so that retries of many senders do not line up.
fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(uuid::Uuid::new_v4().as_u64_pair().0 % nanos)
}

#[async_trait]
impl Messenger for GraphClient {
    async fn send_text(&self, to: &Recipient, body: &str) -> Result<(), SendError> {
        self.post(text_message(to, body, None)).await
    }

    async fn send_reply(
        &self,
        to: &Recipient,
        body: &str,
        reply_to: &str,
    ) -> Result<(), SendError> {
        self.post(text_message(to, body, Some(reply_to))).await
    }

    async fn send_buttons(
        &self,
        to: &Recipient,
        body: &str,
        buttons: &[ReplyButton],
    ) -> Result<(), SendError> {
        self.post(buttons_message(to, body, buttons)).await
    }

    async fn mark_read_typing(&self, message_id: &str) -> Result<(), SendError> {
        self.post(json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": {"type": "text"},
        }))
        .await
    }
}

/// The Graph API body of a message to one user, of `kind` with its `content`: `to` for
/// phone numbers, `recipient` for username users (Meta takes `to` when both are present).
fn addressed(to: &Recipient, kind: &str, content: serde_json::Value) -> serde_json::Value {
    let mut message = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "type": kind,
    });
    message[kind] = content;
    match to {
        Recipient::Phone(d) => message["to"] = json!(d),
        Recipient::UserId(id) => message["recipient"] = json!(id),
    }
    message
}

/// The Graph API body of a text message, quoting `reply_to` when given.
fn text_message(to: &Recipient, body: &str, reply_to: Option<&str>) -> serde_json::Value {
    let mut message = addressed(to, "text", json!({"preview_url": false, "body": body}));
    if let Some(id) = reply_to {
        message["context"] = json!({ "message_id": id });
    }
    message
}

/// The Graph API body of an interactive message with reply buttons.
fn buttons_message(to: &Recipient, body: &str, buttons: &[ReplyButton]) -> serde_json::Value {
    let buttons: Vec<serde_json::Value> = buttons
        .iter()
        .map(|b| json!({"type": "reply", "reply": {"id": b.id, "title": b.title}}))
        .collect();
    addressed(
        to,
        "interactive",
        json!({
            "type": "button",
            "body": {"text": body},
            "action": {"buttons": buttons},
        }),
    )
}

/// Used when no access token is configured: logs what would be sent (never the text).
#[derive(Debug, Default)]
pub struct DryRunMessenger;

#[async_trait]
impl Messenger for DryRunMessenger {
    async fn send_text(&self, to: &Recipient, body: &str) -> Result<(), SendError> {
        tracing::info!(
            to = %mask(to.key()),
            utf16_units = body.encode_utf16().count(),
            "dry run: no access token configured, message not sent"
        );
        Ok(())
    }

    async fn send_buttons(
        &self,
        to: &Recipient,
        body: &str,
        buttons: &[ReplyButton],
    ) -> Result<(), SendError> {
        tracing::info!(
            to = %mask(to.key()),
            utf16_units = body.encode_utf16().count(),
            buttons = buttons.len(),
            "dry run: no access token configured, buttons not sent"
        );
        Ok(())
    }

    async fn mark_read_typing(&self, _message_id: &str) -> Result<(), SendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buttons() -> Vec<ReplyButton> {
        vec![
            ReplyButton {
                id: "t3:a:1:a1:00".into(),
                title: "Approve".into(),
            },
            ReplyButton {
                id: "t3:d:1:a1:00".into(),
                title: "Deny".into(),
            },
        ]
    }

    #[test]
    fn buttons_go_to_a_username_user_as_recipient() {
        let to = Recipient::UserId("US.13491208655302741918".into());
        assert_eq!(
            buttons_message(&to, "Approve?", &buttons()),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "recipient": "US.13491208655302741918",
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "Approve?"},
                    "action": {"buttons": [
                        {"type": "reply", "reply": {"id": "t3:a:1:a1:00", "title": "Approve"}},
                        {"type": "reply", "reply": {"id": "t3:d:1:a1:00", "title": "Deny"}},
                    ]},
                },
            })
        );
    }

    #[test]
    fn texts_keep_their_shape_after_sharing_the_address() {
        assert_eq!(
            text_message(
                &Recipient::Phone("15557654321".into()),
                "hi",
                Some("wamid.1")
            ),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "15557654321",
                "type": "text",
                "text": {"preview_url": false, "body": "hi"},
                "context": {"message_id": "wamid.1"},
            })
        );
        let to_user = text_message(&Recipient::UserId("US.1".into()), "hi", None);
        assert_eq!(to_user["recipient"], "US.1");
        assert!(to_user.get("to").is_none() && to_user.get("context").is_none());
    }

    #[tokio::test]
    async fn dry_run_accepts_buttons() {
        let to = Recipient::Phone("15557654321".into());
        assert_eq!(
            DryRunMessenger
                .send_buttons(&to, "Approve?", &buttons())
                .await,
            Ok(())
        );
    }
}
