//! In-process fakes for tests, benches and fuzz targets (feature `test-util`; never in
//! the shipped binary): messengers that accept or record, engines that answer from a
//! closure or hold a turn, a clock a test moves, and signed webhook requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use http::Request;

use crate::domain::{Clock, Recipient};
use crate::engine::{Engine, EngineError, Turn};
use crate::graph::{Messenger, ReplyButton, SendError};
use crate::webhook::signature::sign;

/// A signed webhook POST to `/webhook`, as Meta sends it.
pub fn signed_post(app_secret: &str, body: impl Into<Bytes>) -> Request<Bytes> {
    let body: Bytes = body.into();
    Request::post("/webhook")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(app_secret, &body))
        .body(body)
        .expect("a valid request")
}

/// Accepts every message and sends nothing.
#[derive(Debug, Default)]
pub struct NoopMessenger;

#[async_trait]
impl Messenger for NoopMessenger {
    async fn send_text(&self, _to: &Recipient, _body: &str) -> Result<(), SendError> {
        Ok(())
    }
    async fn send_buttons(
        &self,
        _to: &Recipient,
        _body: &str,
        _buttons: &[ReplyButton],
    ) -> Result<(), SendError> {
        Ok(())
    }
    async fn mark_read_typing(&self, _message_id: &str) -> Result<(), SendError> {
        Ok(())
    }
}

/// One call a [`RecordingMessenger`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Text {
        to: String,
        body: String,
    },
    /// A text quoting the user's message `reply_to`.
    Reply {
        to: String,
        body: String,
        reply_to: String,
    },
    /// An interactive message with reply buttons, as (id, title).
    Buttons {
        to: String,
        body: String,
        buttons: Vec<(String, String)>,
    },
    Read {
        message_id: String,
    },
}

/// Records every call; refuses (transiently) the sends (texts and buttons) whose body
/// contains a given needle, a given number of times.
#[derive(Debug, Default)]
pub struct RecordingMessenger {
    sent: Mutex<Vec<Sent>>,
    refuse: Mutex<Option<(String, usize)>>,
}

impl RecordingMessenger {
    /// Refuse the next `times` sends whose body contains `needle` (Graph code 131000).
    pub fn refuse(&self, needle: &str, times: usize) {
        *self.refuse.lock().expect("refuse lock") = Some((needle.to_string(), times));
    }
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("sent lock").clone()
    }
    /// The bodies of the texts accepted, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.sent()
            .into_iter()
            .filter_map(|s| match s {
                Sent::Text { body, .. } | Sent::Reply { body, .. } => Some(body),
                Sent::Buttons { .. } | Sent::Read { .. } => None,
            })
            .collect()
    }
    fn record(&self, sent: Sent) -> Result<(), SendError> {
        if let Sent::Text { body, .. } | Sent::Reply { body, .. } | Sent::Buttons { body, .. } =
            &sent
        {
            let mut refuse = self.refuse.lock().expect("refuse lock");
            if let Some((needle, times)) = refuse.as_mut()
                && *times > 0
                && body.contains(needle.as_str())
            {
                *times -= 1;
                return Err(SendError::Transient {
                    detail: "HTTP 503".into(),
                    code: Some(131000),
                    fbtrace_id: None,
                    retry_after: None,
                });
            }
        }
        self.sent.lock().expect("sent lock").push(sent);
        Ok(())
    }
}

#[async_trait]
impl Messenger for RecordingMessenger {
    async fn send_text(&self, to: &Recipient, body: &str) -> Result<(), SendError> {
        self.record(Sent::Text {
            to: to.key().to_string(),
            body: body.to_string(),
        })
    }
    async fn send_reply(
        &self,
        to: &Recipient,
        body: &str,
        reply_to: &str,
    ) -> Result<(), SendError> {
        self.record(Sent::Reply {
            to: to.key().to_string(),
            body: body.to_string(),
            reply_to: reply_to.to_string(),
        })
    }
    async fn send_buttons(
        &self,
        to: &Recipient,
        body: &str,
        buttons: &[ReplyButton],
    ) -> Result<(), SendError> {
        self.record(Sent::Buttons {
            to: to.key().to_string(),
            body: body.to_string(),
            buttons: buttons
                .iter()
                .map(|b| (b.id.clone(), b.title.clone()))
                .collect(),
        })
    }
    async fn mark_read_typing(&self, message_id: &str) -> Result<(), SendError> {
        self.record(Sent::Read {
            message_id: message_id.to_string(),
        })
    }
}

/// Never has a reply (the engine's empty answer): the cheapest turn, for benchmarks.
#[derive(Debug, Default)]
pub struct EmptyEngine;

#[async_trait]
impl Engine for EmptyEngine {
    async fn reply(&self, _turn: &Turn<'_>) -> Result<String, EngineError> {
        Ok(String::new())
    }
}

type Script = dyn Fn(&Turn<'_>) -> Result<String, EngineError> + Send + Sync;

/// An engine that answers from a closure and records every turn's text.
pub struct ScriptedEngine {
    script: Box<Script>,
    texts: Mutex<Vec<String>>,
}

impl ScriptedEngine {
    pub fn new(
        script: impl Fn(&Turn<'_>) -> Result<String, EngineError> + Send + Sync + 'static,
    ) -> Self {
        ScriptedEngine {
            script: Box::new(script),
            texts: Mutex::default(),
        }
    }
    /// Answers `re: <text>`.
    pub fn echo() -> Self {
        ScriptedEngine::new(|turn| Ok(format!("re: {}", turn.text)))
    }
    /// Always answers with `reply` (empty: no reply).
    pub fn replying(reply: &str) -> Self {
        let reply = reply.to_string();
        ScriptedEngine::new(move |_| Ok(reply.clone()))
    }
    /// The texts the engine was asked, in order.
    pub fn texts(&self) -> Vec<String> {
        self.texts.lock().expect("texts lock").clone()
    }
}

#[async_trait]
impl Engine for ScriptedEngine {
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError> {
        self.texts
            .lock()
            .expect("texts lock")
            .push(turn.text.to_string());
        (self.script)(turn)
    }
}

/// An engine that records each turn's text and answers "re: <text>", holding the
/// first turn until [`GatedEngine::open`], so a test can act while a turn is running.
pub struct GatedEngine {
    texts: Mutex<Vec<String>>,
    first_started: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

impl Default for GatedEngine {
    fn default() -> Self {
        GatedEngine {
            texts: Mutex::default(),
            first_started: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

impl GatedEngine {
    /// Wait until the first turn reached the engine.
    pub async fn first_turn_started(&self) {
        self.first_started.notified().await;
    }
    /// Let the held first turn answer.
    pub fn open(&self) {
        self.gate.add_permits(1);
    }
    pub fn texts(&self) -> Vec<String> {
        self.texts.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Engine for GatedEngine {
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError> {
        let first = {
            let mut texts = self.texts.lock().expect("texts lock");
            texts.push(turn.text.to_string());
            texts.len() == 1
        };
        if first {
            // `notify_one` keeps the wake-up if the test is not waiting yet.
            self.first_started.notify_one();
            let _permit = self.gate.acquire().await;
        }
        Ok(format!("re: {}", turn.text))
    }
}

/// A clock tests move forward.
#[derive(Clone)]
pub struct TestClock(pub Arc<AtomicU64>);

impl Default for TestClock {
    fn default() -> Self {
        TestClock::new()
    }
}

impl TestClock {
    /// 2026-11-27, a fixed unix time.
    pub fn new() -> Self {
        TestClock(Arc::new(AtomicU64::new(1_795_795_200)))
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// This clock as the app's [`Clock`].
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recording_messenger_records_buttons_and_can_refuse_them() {
        let m = RecordingMessenger::default();
        let to = Recipient::Phone("15557654321".into());
        let buttons = [ReplyButton {
            id: "t3:a:1:a1:00".into(),
            title: "Approve".into(),
        }];
        m.refuse("Approve?", 1);
        assert!(m.send_buttons(&to, "Approve?", &buttons).await.is_err());
        m.send_buttons(&to, "Approve?", &buttons).await.unwrap();
        assert_eq!(
            m.sent(),
            [Sent::Buttons {
                to: "15557654321".into(),
                body: "Approve?".into(),
                buttons: vec![("t3:a:1:a1:00".into(), "Approve".into())],
            }]
        );
        assert!(m.bodies().is_empty(), "bodies() lists texts only");
        assert_eq!(NoopMessenger.send_buttons(&to, "x", &buttons).await, Ok(()));
    }
}
