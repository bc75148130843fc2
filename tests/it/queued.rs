//! Queued turns: the webhook answers 200 before the engine is asked, a worker runs
//! the turn. The in-process queue (`serve` without a queue URL) with the OpenParallax
//! fake, whose runs go on after their socket closes; and an SQS FIFO queue on
//! moto_server whose jobs reach the Lambda entry as SQS events.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use crate::openparallax_fake::*;
use serde_json::{Value, json};
use whatsapp_webhook::commands::{LOST_TEXT, SLOW_TEXT};
use whatsapp_webhook::queue::SqsQueue;
use whatsapp_webhook::server::lambda_event;
use whatsapp_webhook::state::{Attempt, Begin, DynamoStore, SessionStore};

const LEASE: Duration = Duration::from_secs(660);
const IDLE: Duration = Duration::from_secs(720 * 3600);

/// A fake whose n-th run (counting from 0) follows `runs(n, session)`.
async fn fake_by_run(runs: impl Fn(usize, &str) -> Vec<Step> + Send + Sync + 'static) -> Fake {
    Fake::by_run(runs).start().await
}

async fn queued_with(fake: &Fake, timeout: Duration) -> Harness {
    let h = Harness::builder()
        .engine(Arc::new(fake.engine(None, timeout)))
        .queued_local()
        .build()
        .await;
    h.graph_accepts().await;
    h
}

/// Queued on in-process queues, with an engine that holds its first turn.
async fn gated_queued() -> (Arc<GatedEngine>, Harness) {
    let engine = Arc::new(GatedEngine::default());
    let h = Harness::builder()
        .engine(engine.clone())
        .queued_local()
        .build()
        .await;
    h.graph_accepts().await;
    (engine, h)
}

#[tokio::test]
async fn the_webhook_answers_before_the_engine_and_a_worker_sends_the_reply() {
    let (engine, h) = gated_queued().await;
    let body = text_message("15557654321", "wamid.Q1", "hello");
    assert_eq!(status(&h.post_json(&body).await), 200);
    // The turn is held inside the engine: the webhook did not wait for it.
    engine.first_turn_started().await;
    assert!(h.sent_bodies().await.is_empty());
    engine.open();
    eventually("the reply", async || h.sent_bodies().await == ["re: hello"]).await;
    // Meta's redelivery of a queued message is answered 200 and not answered again.
    assert_eq!(status(&h.post_json(&body).await), 200);
    eventually("the queue is empty", async || match h.app.dispatch() {
        whatsapp_webhook::app::Dispatch::Local(q) => q.is_empty(),
        _ => false,
    })
    .await;
    assert_eq!(engine.texts(), ["hello"]);
    assert_eq!(h.sent_bodies().await, ["re: hello"]);
}

#[tokio::test]
async fn a_slow_agent_run_is_answered_in_serve_queued_mode() {
    // Longer than the sync test below allows (1 s), well inside the queued budget.
    let fake = fake_by_run(|_, session| {
        vec![
            Step::Work(Duration::from_secs(2)),
            complete(session, "worth the wait"),
        ]
    })
    .await;
    let h = queued_with(&fake, Duration::from_secs(30)).await;
    let started = tokio::time::Instant::now();
    let response = h
        .post_json(&text_message("15557654321", "wamid.S1", "think hard"))
        .await;
    assert_eq!(status(&response), 200);
    assert!(
        h.sent_bodies().await.is_empty(),
        "acknowledged before the run ended"
    );
    eventually("the reply", async || {
        h.sent_bodies().await == ["worth the wait"]
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn one_senders_turns_keep_their_order_whatever_their_latency() {
    // Three turns of one sender; the engine takes 3 s, 1 s and 0 s. Each message
    // arrives once the engine holds the previous one, so none is combined.
    let mut fake = fake_by_run(|run, session| {
        let work = [3, 1, 0][run.min(2)];
        vec![
            Step::Work(Duration::from_secs(work)),
            complete(session, &format!("answer {}", run + 1)),
        ]
    })
    .await;
    let h = queued_with(&fake, Duration::from_secs(30)).await;
    let from = "15557654321";
    for (n, text) in ["one", "two", "three"].iter().enumerate() {
        let id = format!("wamid.O{n}");
        let at = 1_700_000_000 + n as u64;
        assert_eq!(
            status(&h.post_json(&text_message_at(from, &id, text, at)).await),
            200
        );
        let frame = fake.next_frame().await;
        assert_eq!(frame["content"], *text, "one turn per message, in order");
    }
    eventually("three replies", async || h.sent_bodies().await.len() == 3).await;
    assert_eq!(h.sent_bodies().await, ["answer 1", "answer 2", "answer 3"]);
}

#[tokio::test]
async fn two_senders_turns_run_at_once() {
    // The first sender's turn is held in the engine; the second sender's is not
    // queued behind it (the OpenParallax engine itself takes one turn at a time, see
    // `approvals::other_senders_wait_their_turn_without_wedging_the_engine`).
    let (engine, h) = gated_queued().await;
    h.post_json(&text_message("15550000001", "wamid.A", "slow"))
        .await;
    engine.first_turn_started().await;
    h.post_json(&text_message("15550000002", "wamid.B", "quick"))
        .await;
    eventually("the second sender's reply", async || {
        h.sent_bodies().await == ["re: quick"]
    })
    .await;
    engine.open();
    eventually("the first sender's reply", async || {
        h.sent_bodies().await == ["re: quick", "re: slow"]
    })
    .await;
}

#[tokio::test]
async fn a_sync_turn_that_times_out_is_settled_once_and_never_asked_again() {
    let mut fake = fake_by_run(|_, session| {
        vec![
            Step::Work(Duration::from_secs(3)),
            complete(session, "late answer"),
        ]
    })
    .await;
    let h = Harness::builder()
        .engine(Arc::new(fake.engine(None, Duration::from_secs(1))))
        .build()
        .await;
    h.graph_accepts().await;
    let body = text_message("15557654321", "wamid.T1", "long job");
    assert_eq!(status(&h.post_json(&body).await), 200, "settled, not 500");
    assert_eq!(h.sent_bodies().await, [SLOW_TEXT]);
    let frame = fake.next_frame().await;
    assert_eq!(frame["content"], "long job");
    // Meta's redelivery: no second run.
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert!(!fake.has_frame(), "the engine was asked once");
    assert_eq!(h.sent_bodies().await, [SLOW_TEXT]);
    // As the real engine, the run went on after the adapter stopped waiting (and
    // told the engine so); its late reply reached the socket and was dropped.
    let session = frame["session_id"].as_str().unwrap();
    assert_eq!(fake.cancels(), [session]);
    eventually("the abandoned run ends", async || fake.finished_runs() == 1).await;
    assert_eq!(h.sent_bodies().await, [SLOW_TEXT]);
}

// ---------------------------------------------------------------- SQS (moto)

struct SqsSetup {
    /// Keeps the shared moto_server running.
    _moto: Arc<crate::moto::MotoServer>,
    h: Harness,
    sqs: aws_sdk_sqs::Client,
    url: String,
    store: Arc<DynamoStore>,
}

async fn sqs_setup() -> SqsSetup {
    let moto = crate::moto::shared();
    let dynamo = crate::moto::client(&moto.endpoint);
    let table = crate::moto::fresh_table(&dynamo).await;
    let store = Arc::new(DynamoStore::new(dynamo, table, LEASE, IDLE));
    let sqs = crate::moto::sqs_client(&moto.endpoint);
    let url = crate::moto::fresh_fifo_queue(&sqs).await;
    let queue = SqsQueue::new(sqs.clone(), url.clone(), Duration::from_secs(660));
    let h = Harness::builder()
        .store(store.clone())
        .queued_sqs(queue)
        .start()
        .await;
    SqsSetup {
        _moto: moto,
        h,
        sqs,
        url,
        store,
    }
}

impl SqsSetup {
    /// Receive what the queue holds, as the Lambda SQS event it would be.
    async fn event(&self) -> Value {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let records: Vec<Value> = out
            .messages()
            .iter()
            .map(|m| {
                let attributes: serde_json::Map<String, Value> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_string(), Value::from(v.as_str())))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:turns.fifo",
                    "awsRegion": "us-east-1"
                })
            })
            .collect();
        json!({ "Records": records })
    }

    async fn run(&self, event: &Value) -> Value {
        lambda_event(&self.h.app, event.clone(), None).await
    }
}

fn failures(response: &Value) -> usize {
    response["batchItemFailures"]
        .as_array()
        .expect("a partial batch response")
        .len()
}

#[tokio::test]
async fn an_sqs_job_reaches_the_lambda_entry_and_a_duplicate_is_answered_once() {
    let s = sqs_setup().await;
    let body = text_message("15557654321", "wamid.SQS1", "hello queue");
    assert_eq!(status(&s.h.post_json(&body).await), 200);
    assert!(s.h.engine_calls().await.is_empty(), "queued, not answered");
    // Meta's redelivery within SQS's deduplication window adds no job.
    assert_eq!(status(&s.h.post_json(&body).await), 200);
    let event = s.event().await;
    assert_eq!(event["Records"].as_array().unwrap().len(), 1);
    let record = &event["Records"][0];
    assert_eq!(
        record["attributes"]["MessageGroupId"]
            .as_str()
            .map(str::len),
        Some(32)
    );
    assert!(
        !record["attributes"].to_string().contains("15557654321"),
        "no phone number in the queue's metadata"
    );
    assert_eq!(failures(&s.run(&event).await), 0);
    assert_eq!(s.h.sent_bodies().await, ["echo: hello queue"]);
    // SQS delivers at least once: the same record again changes nothing.
    assert_eq!(failures(&s.run(&event).await), 0);
    assert_eq!(s.h.engine_calls().await.len(), 1);
    assert_eq!(s.h.sent_bodies().await, ["echo: hello queue"]);
}

#[tokio::test]
async fn a_turn_whose_worker_died_is_not_asked_again() {
    let s = sqs_setup().await;
    let body = text_message("15557654321", "wamid.SQS2", "do the thing");
    assert_eq!(status(&s.h.post_json(&body).await), 200);
    let event = s.event().await;
    // A worker took the job, began the turn and died (no finish, no release).
    let dead = Attempt {
        message_id: "wamid.SQS2",
        sender: "15557654321",
        token: "dead-worker",
        timestamp: 1_700_000_000,
        starts_turn: true,
        merged: &[],
    };
    assert!(matches!(
        s.store.begin(&dead, s.h.clock.now()).await.unwrap(),
        Begin::Ready { .. }
    ));
    // While its lease runs, the redelivered job waits (and is reported failed).
    assert_eq!(failures(&s.run(&event).await), 1);
    s.h.clock.advance(LEASE.as_secs() + 1);
    assert_eq!(failures(&s.run(&event).await), 0);
    assert!(s.h.engine_calls().await.is_empty(), "never asked again");
    assert_eq!(s.h.sent_bodies().await, [LOST_TEXT]);
}

#[tokio::test]
async fn a_failed_job_stops_its_senders_later_jobs_but_not_other_senders() {
    let s = sqs_setup().await;
    // The engine is down for one text (503: it never took the turn).
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path(ENGINE_PATH))
        .and(wiremock::matchers::body_partial_json(
            json!({"text": "first"}),
        ))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .with_priority(1)
        .mount(&s.h.server)
        .await;
    let a = "15550000001";
    let b = "15550000002";
    let batch = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
    "messaging_product": "whatsapp",
    "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
    "contacts": [{"wa_id": a, "profile": {"name": "A"}}, {"wa_id": b, "profile": {"name": "B"}}],
    "messages": [
        {"from": a, "id": "wamid.F1", "timestamp": "1700000000", "type": "text", "text": {"body": "first"}},
        {"from": a, "id": "wamid.F2", "timestamp": "1700000001", "type": "text", "text": {"body": "/help"}},
        {"from": b, "id": "wamid.F3", "timestamp": "1700000002", "type": "text", "text": {"body": "other"}}
    ]}}]}]});
    assert_eq!(status(&s.h.post_json(&batch).await), 200);
    let event = s.event().await;
    let response = s.run(&event).await;
    // A's first job failed quietly (a retry follows), its later job waits behind it;
    // B's turn ran.
    assert_eq!(failures(&response), 2, "{response}");
    assert_eq!(s.h.sent_bodies().await, ["echo: other"]);
}
