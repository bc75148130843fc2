//! Every sample event in `events/` through the Lambda entry (`server::lambda_event`,
//! event parsing included), checking the status each is documented to answer; and a
//! panic in the pipeline answered (HTTP 500, SQS: every job fails) instead of failing
//! the invocation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use whatsapp_webhook::app::{App, AppOptions};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::graph::DryRunMessenger;
use whatsapp_webhook::server::lambda_event;
use whatsapp_webhook::testing::ScriptedEngine;
use whatsapp_webhook::webhook::signature::sign;
use whatsapp_webhook::wiring::in_memory_app;

use crate::helpers::{APP_SECRET, Harness, text_message};

pub(crate) fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("events")
}

/// The app as `make run` configures it: test secret, local verify token, echo engine.
fn local_app() -> App {
    in_memory_app(
        AppOptions {
            sender_wait: Duration::from_secs(1),
            ..AppOptions::new(
                "123456123456123",
                Secret::new("local-verify-token"),
                vec![Secret::new("whatsapp-webhook-test-secret")],
            )
        },
        Arc::new(DryRunMessenger),
    )
}

/// `(event name, HTTP status)` of every line of `events/expected-status.txt`.
pub(crate) fn expected() -> Vec<(String, u16)> {
    let text = std::fs::read_to_string(events_dir().join("expected-status.txt"))
        .expect("expected-status.txt");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, status) = l.split_once(' ').expect("name status");
            (name.to_string(), status.trim().parse().expect("status"))
        })
        .collect()
}

#[tokio::test]
async fn every_event_answers_its_documented_status() {
    let app = local_app();
    let cases = expected();
    assert!(
        cases.len() >= 13,
        "events/expected-status.txt lists every event"
    );
    for (name, want) in cases {
        let json =
            std::fs::read_to_string(events_dir().join(format!("{name}.json"))).expect("event file");
        let event = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let response = lambda_event(&app, event, None).await;
        assert_eq!(response["statusCode"], want, "event {name}");
        if name.contains("verify") && want == 200 {
            assert_eq!(response["body"], "1158201444", "{name} body");
        }
    }
}

#[tokio::test]
async fn every_event_file_is_listed() {
    let listed: Vec<String> = expected().into_iter().map(|(n, _)| n).collect();
    for entry in std::fs::read_dir(events_dir()).expect("events dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                listed.contains(&stem),
                "{stem}.json is not in expected-status.txt"
            );
        }
    }
}

/// An engine that panics when asked about "boom" (a bug in the pipeline, as far as
/// the Lambda entry can tell) and echoes anything else.
fn exploding_engine() -> Arc<ScriptedEngine> {
    Arc::new(ScriptedEngine::new(|turn| {
        if turn.text.contains("boom") {
            panic!("the engine blew up");
        }
        Ok(format!("re: {}", turn.text))
    }))
}

/// `events/text.json` carrying `body`, signed with the harness's app secret.
pub(crate) fn signed_event(body: &Value) -> Value {
    let json = std::fs::read_to_string(events_dir().join("text.json")).expect("text.json");
    let mut event: Value = serde_json::from_str(&json).expect("text.json is JSON");
    let body = body.to_string();
    event["headers"]["x-hub-signature-256"] = sign(APP_SECRET, body.as_bytes()).into();
    event["body"] = body.into();
    event
}

#[tokio::test]
async fn a_panic_in_the_pipeline_is_answered_500_and_the_next_message_is_served() {
    let h = Harness::builder()
        .engine(exploding_engine())
        .options(|o| o.sender_wait = Duration::from_millis(200))
        .start()
        .await;
    let boom = signed_event(&text_message("15557654321", "wamid.BOOM1", "boom"));
    let response = lambda_event(&h.app, boom, None).await;
    assert_eq!(response["statusCode"], 500, "{response}");
    assert_eq!(response["body"], "internal error");
    // The function goes on: another sender's message is answered.
    let hello = signed_event(&text_message("15550001111", "wamid.OK1", "hello"));
    let response = lambda_event(&h.app, hello, None).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(h.sent_bodies().await, ["re: hello"]);
    // The panicked turn's sender lease is not released (as after a crash): that
    // sender gets 503 until it expires, then is answered again.
    h.clock.advance(3600);
    let later = signed_event(&text_message("15557654321", "wamid.OK2", "later"));
    let response = lambda_event(&h.app, later, None).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(h.sent_bodies().await, ["re: hello", "re: later"]);
}

fn sqs_record(message_id: &str, text: &str, phone: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let job = json!({
        "id": format!("wamid.{message_id}"), "phone": phone, "timestamp": now,
        "state_key": phone, "msg_ref": message_id, "kind": "turn", "text": text
    });
    json!({
        "messageId": message_id,
        "receiptHandle": format!("handle-{message_id}"),
        "body": job.to_string(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:turns.fifo",
        "awsRegion": "us-east-1"
    })
}

#[tokio::test]
async fn a_panic_in_an_sqs_batch_fails_every_item_of_it() {
    let h = Harness::builder().engine(exploding_engine()).start().await;
    let event = json!({"Records": [
        sqs_record("m-1", "boom", "15557654321"),
        sqs_record("m-2", "hello", "15550001111"),
    ]});
    let response = lambda_event(&h.app, event, None).await;
    assert_eq!(
        response,
        json!({"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]})
    );
}
