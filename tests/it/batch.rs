//! One POST carrying many senders (Meta batches up to 1000 messages): the senders are
//! answered at once, a bounded number at a time, each sender's own messages in order;
//! in Lambda, senders not started before the invocation's budget runs out are handed
//! back (500) and answered, once, by Meta's redelivery.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use whatsapp_webhook::app::App;
use whatsapp_webhook::commands::UNSUPPORTED_TEXT;
use whatsapp_webhook::engine::{Engine, EngineError, Turn};
use whatsapp_webhook::server::lambda_event;
use whatsapp_webhook::state::MemoryStore;
use whatsapp_webhook::testing::{RecordingMessenger, ScriptedEngine, Sent};
use whatsapp_webhook::webhook::edge::MAX_SENDERS_AT_ONCE;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;
use crate::lambda_events::signed_event;

/// Holds every turn until [`HeldEngine::open`], counting the turns in flight and the
/// most at once; records what each sender asked, in order; answers "re: <text>".
struct HeldEngine {
    in_flight: AtomicUsize,
    most: AtomicUsize,
    asked: Mutex<Vec<(String, String)>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl HeldEngine {
    fn new() -> Arc<Self> {
        Arc::new(HeldEngine {
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            asked: Mutex::default(),
            open: tokio::sync::watch::channel(false).0,
        })
    }
    fn open(&self) {
        self.open.send_replace(true);
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// What each sender asked, in order.
    fn asked(&self) -> BTreeMap<String, Vec<String>> {
        let mut by_sender: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (from, text) in self.asked.lock().expect("asked lock").iter() {
            by_sender
                .entry(from.clone())
                .or_default()
                .push(text.clone());
        }
        by_sender
    }
    fn turns(&self) -> usize {
        self.asked.lock().expect("asked lock").len()
    }
}

#[async_trait]
impl Engine for HeldEngine {
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError> {
        self.asked
            .lock()
            .expect("asked lock")
            .push((turn.from.to_string(), turn.text.to_string()));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(format!("re: {}", turn.text))
    }
}

/// A sync app with nothing outside the process: memory state, `engine`, a recording
/// messenger.
fn in_process(engine: Arc<HeldEngine>) -> (Arc<App>, Arc<RecordingMessenger>) {
    let messenger = Arc::new(RecordingMessenger::default());
    let store = Arc::new(MemoryStore::new(
        Duration::from_secs(40),
        Duration::from_secs(720 * 3600),
    ));
    let app = App::new(
        options(),
        store,
        engine,
        messenger.clone(),
        TestClock::new().clock(),
    );
    (Arc::new(app), messenger)
}

/// The texts (replies and notices) each recipient got, in order.
fn texts_by_recipient(messenger: &RecordingMessenger) -> BTreeMap<String, Vec<String>> {
    let mut by_recipient: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sent in messenger.sent() {
        if let Sent::Text { to, body } | Sent::Reply { to, body, .. } = sent {
            by_recipient.entry(to).or_default().push(body);
        }
    }
    by_recipient
}

/// The phone number of sender `i`.
fn number(i: usize) -> String {
    format!("4477009{i:05}")
}

/// One POST with `messages` as (sender index, message id, text or `None` for an
/// image), in one change of one entry.
fn batch(messages: &[(usize, String, Option<String>)]) -> Value {
    let mut payload = fixture("text.json");
    let value = &mut payload["entry"][0]["changes"][0]["value"];
    let mut senders: Vec<usize> = messages.iter().map(|(s, _, _)| *s).collect();
    senders.dedup();
    value["contacts"] = senders
        .iter()
        .map(|s| json!({"profile": {"name": "User"}, "wa_id": number(*s)}))
        .collect();
    value["messages"] = messages
        .iter()
        .enumerate()
        .map(|(n, (s, id, text))| {
            let mut m =
                json!({"from": number(*s), "id": id, "timestamp": (1_764_240_000 + n).to_string()});
            match text {
                Some(text) => {
                    m["type"] = json!("text");
                    m["text"] = json!({"body": text});
                }
                None => {
                    m["type"] = json!("image");
                    m["image"] = json!({"mime_type": "image/jpeg", "id": "1111222233334444"});
                }
            }
            m
        })
        .collect();
    payload
}

/// One text from each of `senders` senders.
fn one_text_each(senders: usize) -> Value {
    let messages: Vec<_> = (0..senders)
        .map(|s| (s, format!("wamid.B{s}"), Some(format!("hi {s}"))))
        .collect();
    batch(&messages)
}

/// A one-off measurement, not a check (no timed assertions): a 1000-sender POST
/// against a Graph API answering each call after 100 ms. Run by hand:
/// `cargo test --test it batch::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_a_thousand_sender_batch_against_a_slow_graph() {
    let h = Harness::builder()
        .engine(Arc::new(ScriptedEngine::echo()))
        .build()
        .await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messages": [{"id": "wamid.OUT"}]}))
                .set_delay(Duration::from_millis(100)),
        )
        .mount(&h.server)
        .await;
    let body = one_text_each(1000);
    let started = std::time::Instant::now();
    let response = h.post_json(&body).await;
    let took = started.elapsed();
    assert_eq!(status(&response), 200);
    assert_eq!(h.sent_texts().await.len(), 1000);
    eprintln!("1000 senders, Graph 100 ms per call: answered in {took:?}");
}

#[tokio::test]
async fn the_senders_of_one_post_are_answered_at_once_each_in_order() {
    let engine = HeldEngine::new();
    let (app, messenger) = in_process(engine.clone());
    const SENDERS: usize = 50;
    // Each sender: a text, an image (the notice), a text: three turns in order.
    let mut messages = Vec::new();
    for s in 0..SENDERS {
        messages.push((s, format!("wamid.B{s}.1"), Some(format!("first {s}"))));
        messages.push((s, format!("wamid.B{s}.2"), None));
        messages.push((s, format!("wamid.B{s}.3"), Some(format!("second {s}"))));
    }
    let request = whatsapp_webhook::testing::signed_post(APP_SECRET, batch(&messages).to_string());
    let post = tokio::spawn({
        let app = app.clone();
        async move { app.handle(request).await }
    });
    // Today's loop, one sender after another, never has more than one turn held.
    eventually(
        "as many turns held as senders may run at once",
        async || engine.in_flight() == MAX_SENDERS_AT_ONCE,
    )
    .await;
    engine.open();
    let response = post.await.expect("the POST ran");
    assert_eq!(status(&response), 200);
    let most = engine.most.load(Ordering::SeqCst);
    assert!(
        most > 1 && most <= MAX_SENDERS_AT_ONCE,
        "turns at once: {most}"
    );
    let asked = engine.asked();
    assert_eq!(asked.len(), SENDERS);
    let replies = texts_by_recipient(&messenger);
    assert_eq!(replies.len(), SENDERS);
    for s in 0..SENDERS {
        let (first, second) = (format!("first {s}"), format!("second {s}"));
        assert_eq!(asked[&number(s)], [first.as_str(), second.as_str()]);
        assert_eq!(
            replies[&number(s)],
            [
                format!("re: {first}"),
                UNSUPPORTED_TEXT.to_string(),
                format!("re: {second}")
            ],
            "sender {s}'s answers in the order written"
        );
    }
}

#[tokio::test]
async fn senders_not_started_before_the_budget_ends_are_answered_by_the_redelivery() {
    let engine = HeldEngine::new();
    let (app, messenger) = in_process(engine.clone());
    const SENDERS: usize = 40;
    let event = signed_event(&one_text_each(SENDERS));
    let start_by = tokio::time::Instant::now() + Duration::from_secs(1);
    let first = tokio::spawn({
        let (app, event) = (app.clone(), event.clone());
        async move { lambda_event(&app, event, Some(start_by)).await }
    });
    // The first senders start at once; their turns are held until no more may start.
    tokio::time::sleep_until(start_by + Duration::from_millis(1)).await;
    let started = engine.in_flight();
    assert!(
        (1..=MAX_SENDERS_AT_ONCE).contains(&started),
        "started: {started}"
    );
    engine.open();
    let response = first.await.expect("the first delivery ran");
    assert_eq!(response["statusCode"], 500, "{response}");
    assert_eq!(
        engine.turns(),
        started,
        "no sender started after the deadline"
    );
    assert_eq!(texts_by_recipient(&messenger).len(), started);
    // Meta delivers the POST again: the rest are answered, the answered ones skipped.
    let response = lambda_event(&app, event, None).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    let asked = engine.asked();
    assert_eq!(asked.len(), SENDERS);
    let replies = texts_by_recipient(&messenger);
    assert_eq!(replies.len(), SENDERS);
    for s in 0..SENDERS {
        assert_eq!(asked[&number(s)], [format!("hi {s}")], "asked once");
        assert_eq!(
            replies[&number(s)],
            [format!("re: hi {s}")],
            "answered once"
        );
    }
}
