//! Test harness: the real [`App`] with a wiremock server standing in for both the
//! Graph API and the HTTP engine (one server, so the order of their calls is visible),
//! memory state, and signed Meta-shaped payloads from `tests/fixtures/` (copies of
//! the shapes Meta documents).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use serde_json::{Value, json};
use whatsapp_webhook::app::{App, AppOptions, Dispatch};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::engine::{Engine, HttpEngine};
use whatsapp_webhook::graph::{GraphClient, Messenger, RetryPolicy};
use whatsapp_webhook::queue::{LocalQueue, SqsQueue};
use whatsapp_webhook::state::{MemoryStore, SessionStore};
use whatsapp_webhook::testing::signed_post;
pub use whatsapp_webhook::testing::{GatedEngine, TestClock};
use whatsapp_webhook::turn::TurnRunner;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const ACCESS_TOKEN: &str = "test-access-token";
pub const PHONE_NUMBER_ID: &str = "123456123456123";
pub const MESSAGES_PATH: &str = "/v21.0/123456123456123/messages";
pub const ENGINE_PATH: &str = "/engine/reply";

pub fn options() -> AppOptions {
    AppOptions::new(
        PHONE_NUMBER_ID,
        Secret::new(VERIFY_TOKEN),
        vec![Secret::new(APP_SECRET)],
    )
}

pub struct Harness {
    pub app: Arc<App>,
    pub server: Arc<MockServer>,
    pub clock: TestClock,
}

/// How the app under test dispatches turns (sync when `None`).
pub type MakeDispatch = Box<dyn FnOnce(Arc<TurnRunner>) -> Dispatch>;

pub struct HarnessBuilder {
    dispatch: Option<MakeDispatch>,
    options: AppOptions,
    store: Option<Arc<dyn SessionStore>>,
    engine: Option<Arc<dyn Engine>>,
    retry: RetryPolicy,
    clock: TestClock,
    server: Option<Arc<MockServer>>,
}

impl HarnessBuilder {
    pub fn options(mut self, f: impl FnOnce(&mut AppOptions)) -> Self {
        f(&mut self.options);
        self
    }
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }
    pub fn engine(mut self, engine: Arc<dyn Engine>) -> Self {
        self.engine = Some(engine);
        self
    }
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Queued mode on in-process queues (as `serve` without a queue URL), retrying
    /// failed turns at once.
    pub fn queued_local(mut self) -> Self {
        self.dispatch = Some(Box::new(|runner| {
            Dispatch::Local(Arc::new(
                LocalQueue::new(runner, 1000).with_retry_delay(|_| Duration::ZERO),
            ))
        }));
        self
    }
    /// Queued mode on an SQS queue.
    pub fn queued_sqs(mut self, queue: SqsQueue) -> Self {
        self.dispatch = Some(Box::new(move |_| Dispatch::Sqs(queue)));
        self
    }
    /// Reuse a mock server (its mocks and recorded requests), e.g. across a "restart".
    pub fn server(mut self, server: Arc<MockServer>) -> Self {
        self.server = Some(server);
        self
    }

    /// Build, with the Graph API accepting everything and the engine echoing.
    pub async fn start(self) -> Harness {
        let h = self.build().await;
        h.graph_accepts().await;
        h.engine_echoes().await;
        h
    }

    pub async fn build(self) -> Harness {
        let server = match self.server {
            Some(s) => s,
            None => Arc::new(MockServer::start().await),
        };
        let client = reqwest::Client::new();
        let messenger: Arc<dyn Messenger> = Arc::new(GraphClient::new(
            client.clone(),
            &server.uri(),
            "v21.0",
            PHONE_NUMBER_ID,
            Secret::new(ACCESS_TOKEN),
            self.retry,
        ));
        let engine = self.engine.unwrap_or_else(|| {
            Arc::new(HttpEngine::new(
                client,
                format!("{}{ENGINE_PATH}", server.uri()),
                Some(Secret::new("engine-token").into()),
                Duration::from_secs(5),
            ))
        });
        let store = self.store.unwrap_or_else(|| {
            Arc::new(MemoryStore::new(
                Duration::from_secs(40),
                Duration::from_secs(720 * 3600),
            ))
        });
        let mut app = App::new(self.options, store, engine, messenger, self.clock.clock());
        if let Some(dispatch) = self.dispatch {
            app = app.with_dispatch(dispatch);
        }
        Harness {
            app: Arc::new(app),
            server,
            clock: self.clock,
        }
    }
}

impl Harness {
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            dispatch: None,
            options: options(),
            store: None,
            engine: None,
            retry: RetryPolicy::NONE,
            clock: TestClock::new(),
            server: None,
        }
    }

    /// A harness whose Graph API accepts everything and whose engine echoes "echo: <text>".
    pub async fn start() -> Harness {
        Harness::builder().start().await
    }

    pub async fn graph_accepts(&self) {
        Mock::given(method("POST"))
            .and(path(MESSAGES_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"messaging_product":"whatsapp","messages":[{"id":"wamid.OUT"}]}),
            ))
            .mount(&self.server)
            .await;
    }

    pub async fn engine_echoes(&self) {
        Mock::given(method("POST"))
            .and(path(ENGINE_PATH))
            .respond_with(|req: &wiremock::Request| {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let text = body["text"].as_str().unwrap_or_default();
                ResponseTemplate::new(200).set_body_json(json!({"reply": format!("echo: {text}")}))
            })
            .mount(&self.server)
            .await;
    }

    pub async fn engine_replies(&self, reply: &str) {
        Mock::given(method("POST"))
            .and(path(ENGINE_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"reply": reply})))
            .mount(&self.server)
            .await;
    }

    /// Send a signed POST with `body` through the handler.
    pub async fn post(&self, body: &[u8]) -> Response<Bytes> {
        self.app
            .handle(signed_post(APP_SECRET, Bytes::copy_from_slice(body)))
            .await
    }

    pub async fn post_json(&self, body: &Value) -> Response<Bytes> {
        self.post(&serde_json::to_vec(body).expect("serialisable"))
            .await
    }

    pub async fn get(&self, uri: &str) -> Response<Bytes> {
        let request = Request::get(uri).body(Bytes::new()).expect("valid request");
        self.app.handle(request).await
    }

    /// Every request the mock server got, as (path, JSON body), in arrival order.
    pub async fn calls(&self) -> Vec<(String, Value)> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                (r.url.path().to_string(), body)
            })
            .collect()
    }

    /// Bodies of the text messages sent through the Graph API, in order.
    pub async fn sent_texts(&self) -> Vec<Value> {
        self.calls()
            .await
            .into_iter()
            .filter(|(p, b)| p == MESSAGES_PATH && b["type"] == "text")
            .map(|(_, b)| b)
            .collect()
    }

    /// Just the text bodies sent.
    pub async fn sent_bodies(&self) -> Vec<String> {
        self.sent_texts()
            .await
            .iter()
            .map(|b| b["text"]["body"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// What the engine was asked, in order.
    pub async fn engine_calls(&self) -> Vec<Value> {
        self.calls()
            .await
            .into_iter()
            .filter(|(p, _)| p == ENGINE_PATH)
            .map(|(_, b)| b)
            .collect()
    }

    /// The texts the engine was asked, in order.
    pub async fn engine_texts(&self) -> Vec<String> {
        self.engine_calls()
            .await
            .iter()
            .map(|c| c["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A harness whose engine is `GatedEngine` (held first turn) and whose Graph API
    /// accepts everything, shared so requests can run in background tasks.
    pub async fn gated() -> (Arc<GatedEngine>, Arc<Harness>) {
        let engine = Arc::new(GatedEngine::default());
        let h = Harness::builder().engine(engine.clone()).build().await;
        h.graph_accepts().await;
        (engine, Arc::new(h))
    }

    pub async fn read_receipts(&self) -> Vec<Value> {
        self.calls()
            .await
            .into_iter()
            .filter(|(p, b)| p == MESSAGES_PATH && b["status"] == "read")
            .map(|(_, b)| b)
            .collect()
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A Meta-shaped body from `tests/fixtures/`.
pub fn fixture(name: &str) -> Value {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A one-message text payload from `from`, with message id `id`.
pub fn text_message(from: &str, id: &str, body: &str) -> Value {
    let mut payload = fixture("text.json");
    let message = &mut payload["entry"][0]["changes"][0]["value"]["messages"][0];
    message["from"] = json!(from);
    message["id"] = json!(id);
    message["text"]["body"] = json!(body);
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"] = json!(from);
    payload
}

pub fn status(response: &Response<Bytes>) -> u16 {
    response.status().as_u16()
}

pub fn body_text(response: &Response<Bytes>) -> String {
    String::from_utf8_lossy(response.body()).into_owned()
}

/// Graph API responder: refuses (transiently, code 131000) the first `times` text sends
/// whose body contains `needle`, accepts everything else.
pub fn fail_part(needle: &'static str, times: usize) -> impl wiremock::Respond {
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(times));
    move |req: &wiremock::Request| {
        let body = String::from_utf8_lossy(&req.body);
        let refuse = body.contains(needle)
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if refuse {
            ResponseTemplate::new(503)
                .set_body_json(json!({"error":{"code":131000,"fbtrace_id":"TRACE"}}))
        } else {
            ResponseTemplate::new(200).set_body_json(json!({"messages":[{"id":"wamid.OUT"}]}))
        }
    }
}

/// A one-message text payload sent at `timestamp` (unix seconds).
pub fn text_message_at(from: &str, id: &str, body: &str, timestamp: u64) -> Value {
    let mut payload = text_message(from, id, body);
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] =
        json!(timestamp.to_string());
    payload
}

/// Wait (bounded) until `condition` holds; for states a test can observe but not
/// be notified of.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A message whose reply fails is redelivered after a newer message of the same
/// sender arrived: the newer one waits (503) and is answered after it.
pub async fn order_survives_a_failed_delivery(h: &Harness) {
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(fail_part("echo: older", 1))
        .mount(&h.server)
        .await;
    h.engine_echoes().await;
    let from = "15557654321";
    let now = h.clock.now();
    let older = text_message_at(from, "wamid.ORD1", "older", now);
    let newer = text_message_at(from, "wamid.ORD2", "newer", now + 1);
    assert_eq!(status(&h.post_json(&older).await), 500, "reply refused");
    assert_eq!(
        status(&h.post_json(&newer).await),
        503,
        "the newer message waits for the older one"
    );
    h.clock.advance(30);
    assert_eq!(status(&h.post_json(&older).await), 200);
    assert_eq!(status(&h.post_json(&newer).await), 200);
    assert_eq!(
        h.engine_texts().await,
        ["older", "newer"],
        "the stored reply was resumed"
    );
    assert_eq!(
        h.sent_bodies().await,
        ["echo: older", "echo: older", "echo: newer"],
        "one refused send, then both replies in order"
    );
}
