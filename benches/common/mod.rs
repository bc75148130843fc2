//! Shared by the benches: the app with in-process fakes, and webhook bodies with a
//! fresh message id each time (a repeated id is deduplicated and skips the work).
//!
//! Not every bench uses every item.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use serde_json::Value;

use whatsapp_webhook::app::App;
use whatsapp_webhook::config::{self, LOCAL_DEFAULTS_YAML, RunMode};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::engine::{EchoEngine, Engine};
use whatsapp_webhook::state::{MemoryStore, unix_now};
use whatsapp_webhook::testing::{EmptyEngine, NoopMessenger};

/// The documented test app secret (the one that signs `events/`).
pub const SECRET: &str = "whatsapp-webhook-test-secret";
pub const PHONE_NUMBER_ID: &str = "123456123456123";
pub const VERIFY_TOKEN: &str = "local-verify-token";

const TEXT_FIXTURE: &str = include_str!("../../tests/fixtures/text.json");
const STATUS_FIXTURE: &str = include_str!("../../tests/fixtures/status-delivered.json");
/// The id of the message in `tests/fixtures/text.json`, replaced per body.
const FIXTURE_ID: &str = "wamid.SAMPLE.text.0001";
const ID_MARK: &str = "@@ID@@";

/// An engine that never replies: the turn ends without any outgoing message.
#[derive(Clone, Copy, Debug)]
pub enum EngineKind {
    /// Replies nothing: measures the inbound path only.
    Empty,
    /// Replies with the text: the whole handler, one outgoing message per text.
    Echo,
}

/// The app as `make run` configures it (the built-in defaults with the test secret:
/// open allow list, read receipts on), with a memory store, the chosen engine and a
/// no-op messenger. The options come from the config loader, as in the binary.
pub fn app(engine: EngineKind) -> App {
    let engine: Arc<dyn Engine> = match engine {
        EngineKind::Empty => Arc::new(EmptyEngine),
        EngineKind::Echo => Arc::new(EchoEngine),
    };
    let env = |name: &str| (name == "WHATSAPP_APP_SECRET").then(|| SECRET.to_string());
    let config = config::load(Some(LOCAL_DEFAULTS_YAML), RunMode::Serve, &env)
        .expect("built-in defaults load");
    assert_eq!(config.app.phone_number_id, PHONE_NUMBER_ID);
    assert_eq!(*config.app.app_secrets.current(), vec![Secret::new(SECRET)]);
    let mut options = config.app.clone();
    options.sender_wait = Duration::from_secs(1);
    App::new(
        options,
        Arc::new(MemoryStore::new(
            config.state.lease,
            config.state.session_idle_ttl,
        )),
        engine,
        Arc::new(NoopMessenger),
        Arc::new(unix_now),
    )
}

/// A current-thread runtime: `App::handle` needs one for its (never taken) sleeps.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Counter behind every generated message id, shared by all bodies of the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> String {
    format!(
        "wamid.BENCH.{:016}",
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// Templates, compact JSON as Meta sends it, with [`ID_MARK`] where the id goes.
pub struct Bodies {
    text: String,
    batch_parts: (String, String, String),
}

impl Bodies {
    pub fn new() -> Self {
        let fixture: Value = serde_json::from_str(TEXT_FIXTURE).expect("text fixture");
        let text = serde_json::to_string(&fixture)
            .expect("json")
            .replace(FIXTURE_ID, ID_MARK);
        assert!(text.contains(ID_MARK), "fixture id not found");
        // The batch: the same envelope, its `messages` array holding N messages.
        let message = &fixture["entry"][0]["changes"][0]["value"]["messages"][0];
        let message = serde_json::to_string(message)
            .expect("json")
            .replace(FIXTURE_ID, ID_MARK);
        let mut envelope = fixture.clone();
        envelope["entry"][0]["changes"][0]["value"]["messages"] = Value::String("@@MSGS@@".into());
        let envelope = serde_json::to_string(&envelope).expect("json");
        let (head, tail) = envelope.split_once("\"@@MSGS@@\"").expect("placeholder");
        Bodies {
            text,
            batch_parts: (format!("{head}["), message, format!("]{tail}")),
        }
    }

    /// One text message with a fresh id.
    pub fn text(&self) -> String {
        self.text.replace(ID_MARK, &next_id())
    }

    /// One webhook POST holding `n` text messages of one sender, each with a fresh id.
    pub fn batch(&self, n: usize) -> String {
        let (head, message, tail) = &self.batch_parts;
        let mut body = String::with_capacity(head.len() + tail.len() + n * (message.len() + 16));
        body.push_str(head);
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&message.replace(ID_MARK, &next_id()));
        }
        body.push_str(tail);
        body
    }
}

/// `tests/fixtures/status-delivered.json` as it is on disk.
pub fn status_body() -> &'static str {
    STATUS_FIXTURE
}

/// A signed webhook POST, as Meta sends it (signing is the sender's cost: do it
/// outside the timed part).
pub fn signed_post(body: impl Into<Bytes>) -> Request<Bytes> {
    whatsapp_webhook::testing::signed_post(SECRET, body)
}

/// Meta's subscription check.
pub fn verify_get() -> Request<Bytes> {
    Request::builder()
        .method(Method::GET)
        .uri(format!(
            "/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .body(Bytes::new())
        .expect("request")
}
