//! The bot's own metrics through the public surface: the EMF line a Lambda invocation
//! writes (shape, values, and no private data: no phone number, text or message id),
//! Graph errors by kind, queue wait of an SQS batch, and `serve`'s `/metrics`
//! endpoint (404 unless enabled, Prometheus text when enabled).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use whatsapp_webhook::app::{App, AppOptions};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::engine::EngineError;
use whatsapp_webhook::graph::DryRunMessenger;
use whatsapp_webhook::metrics::NAMESPACE;
use whatsapp_webhook::server::{ServeLimits, lambda_event, serve_until};
use whatsapp_webhook::testing::ScriptedEngine;
use whatsapp_webhook::wiring::in_memory_app;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;
use crate::lambda_events::signed_event;

const PHONE: &str = "15551234567";
const TEXT: &str = "my private words";
const MESSAGE_ID: &str = "wamid.PRIVATEID42";
const FUNCTION: &str = "stack-Function-ABC123";

/// The EMF lines `app` writes, captured instead of printed.
fn capture_emf(app: &App) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    app.metrics().set_function(FUNCTION);
    app.metrics()
        .set_emf_sink(Box::new(move |line| sink.lock().unwrap().push(line.into())));
    lines
}

/// The one EMF line written since the last call, parsed; checked for its shape.
fn one_line(lines: &Mutex<Vec<String>>) -> Value {
    let taken: Vec<String> = std::mem::take(&mut *lines.lock().unwrap());
    assert_eq!(taken.len(), 1, "one EMF line per invocation: {taken:?}");
    for private in [PHONE, "1234567", TEXT, "private", MESSAGE_ID, "PRIVATEID42"] {
        assert!(!taken[0].contains(private), "{private} in {}", taken[0]);
    }
    let line: Value = serde_json::from_str(&taken[0]).expect("an EMF line is JSON");
    let directive = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], NAMESPACE);
    assert_eq!(directive["Dimensions"], json!([["Function"]]));
    assert!(line["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(line["Function"], FUNCTION);
    // Every key is a declared metric (a number or a list of numbers), the dimension or
    // `_aws`: nothing else can carry a value from the request.
    let declared: Vec<&str> = directive["Metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| m["Name"].as_str().expect("name"))
        .collect();
    for (key, value) in line.as_object().expect("object") {
        if key == "_aws" || key == "Function" {
            continue;
        }
        assert!(declared.contains(&key.as_str()), "{key} is not declared");
        let numeric = value.is_u64()
            || value
                .as_array()
                .is_some_and(|a| a.len() <= 100 && a.iter().all(Value::is_u64));
        assert!(numeric, "{key}: {value}");
    }
    line
}

#[tokio::test]
async fn a_lambda_turn_writes_one_emf_line_with_its_counts_and_no_private_data() {
    let h = Harness::start().await;
    let lines = capture_emf(&h.app);
    let event = signed_event(&text_message(PHONE, MESSAGE_ID, TEXT));
    let response = lambda_event(&h.app, event.clone(), None).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(h.sent_bodies().await, [format!("echo: {TEXT}")]);
    let line = one_line(&lines);
    assert_eq!(line["Messages"], 1);
    assert_eq!(line["Turns"], 1);
    assert_eq!(line["EngineCalls"], 1);
    // The read receipt and the reply.
    assert_eq!(line["GraphCalls"], 2);
    assert_eq!(line["Webhook200"], 1);
    assert_eq!(line["TurnLatency"].as_array().unwrap().len(), 1);
    assert_eq!(line["EngineLatency"].as_array().unwrap().len(), 1);
    for absent in [
        "EngineFailures",
        "GraphErrors",
        "DuplicatesSkipped",
        "QueueWait",
    ] {
        assert!(line.get(absent).is_none(), "{absent} was zero: left out");
    }

    // Meta's redelivery: a duplicate, skipped; the counts are this invocation's only.
    let response = lambda_event(&h.app, event, None).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    let line = one_line(&lines);
    assert_eq!(line["DuplicatesSkipped"], 1);
    assert_eq!(line["Webhook200"], 1);
    assert!(line.get("Turns").is_none(), "{line}");

    // A refused signature counts as a 4xx delivery.
    let mut forged = signed_event(&text_message(PHONE, "wamid.X", TEXT));
    forged["headers"]["x-hub-signature-256"] = json!(format!("sha256={}", "0".repeat(64)));
    let response = lambda_event(&h.app, forged, None).await;
    assert_eq!(response["statusCode"], 403, "{response}");
    assert_eq!(one_line(&lines)["Webhook4xx"], 1);
    assert_eq!(
        h.app.metrics().turns.total(),
        1,
        "totals are kept for /metrics"
    );
}

#[tokio::test]
async fn graph_errors_are_counted_by_kind_and_engine_failures_counted() {
    let engine = Arc::new(ScriptedEngine::new(|turn| {
        if turn.text.contains("fail") {
            Err(EngineError::Status(502))
        } else {
            Ok("ok".into())
        }
    }));
    let h = Harness::builder()
        .engine(engine)
        .options(|o| o.read_receipts = false)
        .build()
        .await;
    // Outside the 24 h window: a permanent refusal with Meta's code 131047.
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": {"code": 131047, "message": "Re-engagement message", "fbtrace_id": "T"}}),
        ))
        .mount(&h.server)
        .await;
    let lines = capture_emf(&h.app);
    let event = signed_event(&text_message(PHONE, MESSAGE_ID, TEXT));
    lambda_event(&h.app, event, None).await;
    let line = one_line(&lines);
    assert_eq!(line["GraphCalls"], 1);
    assert_eq!(line["GraphErrors"], 1);
    assert_eq!(line["GraphErrorsWindow"], 1);

    // An engine that answers 502: a failure (the notice it causes is refused too).
    let event = signed_event(&text_message("15550001111", "wamid.F1", "please fail"));
    lambda_event(&h.app, event, None).await;
    let line = one_line(&lines);
    assert_eq!(line["EngineCalls"], 1);
    assert_eq!(line["EngineFailures"], 1);
    assert_eq!(line["TurnsFailed"], 1, "{line}");
    assert_eq!(line["Webhook500"], 1, "{line}");
}

/// One SQS record of a queued turn, sent to the queue `waited` ago.
fn sqs_record(message_id: &str, waited: Duration) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let job = json!({
        "id": MESSAGE_ID, "phone": PHONE, "timestamp": now.as_secs(),
        "state_key": PHONE, "msg_ref": message_id, "kind": "turn", "text": TEXT
    });
    let sent = (now - waited).as_millis().to_string();
    json!({
        "messageId": message_id,
        "receiptHandle": format!("handle-{message_id}"),
        "body": job.to_string(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": sent},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:turns.fifo",
        "awsRegion": "us-east-1"
    })
}

#[tokio::test]
async fn an_sqs_batch_reports_how_long_its_jobs_waited() {
    let h = Harness::start().await;
    let lines = capture_emf(&h.app);
    let event = json!({"Records": [sqs_record("m-1", Duration::from_secs(3))]});
    let response = lambda_event(&h.app, event, None).await;
    assert_eq!(response, json!({"batchItemFailures": []}));
    let line = one_line(&lines);
    let waits = line["QueueWait"].as_array().expect("QueueWait");
    assert_eq!(waits.len(), 1);
    let waited = waits[0].as_u64().unwrap();
    assert!((3000..60_000).contains(&waited), "{waited} ms");
    assert_eq!(line["Turns"], 1);
    assert!(line.get("Webhook200").is_none(), "no webhook delivery here");
}

fn serve_app() -> App {
    in_memory_app(
        AppOptions {
            read_receipts: false,
            ..AppOptions::new(
                "123456123456123",
                Secret::new("tok"),
                vec![Secret::new("s")],
            )
        },
        Arc::new(DryRunMessenger),
    )
}

/// `serve` on a free port with `/metrics` on or off; the base URL and the stop switch.
async fn serve_with_metrics(metrics: bool) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = ServeLimits {
        metrics,
        ..ServeLimits::default()
    };
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = serve_until(Arc::new(serve_app()), listener, limits, shutdown).await;
    });
    (base, stop)
}

#[tokio::test]
async fn serve_answers_metrics_only_when_enabled() {
    let client = reqwest::Client::new();
    let (base, _stop) = serve_with_metrics(false).await;
    let off = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(off.status().as_u16(), 404);

    let (base, _stop) = serve_with_metrics(true).await;
    let body = text_message(PHONE, MESSAGE_ID, TEXT).to_string();
    let post = client
        .post(format!("{base}/webhook"))
        .header(
            "x-hub-signature-256",
            whatsapp_webhook::webhook::signature::sign("s", body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status().as_u16(), 200);
    let on = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(on.status().as_u16(), 200);
    let content_type = on.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = on.text().await.expect("body");
    for line in [
        "whatsapp_messages_total 1",
        "whatsapp_turns_total 1",
        "whatsapp_webhook_deliveries_total{status=\"200\"} 1",
        "whatsapp_turn_seconds_count 1",
        "# TYPE whatsapp_graph_errors_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    for private in [PHONE, TEXT, MESSAGE_ID] {
        assert!(!text.contains(private), "{private}");
    }
    // The webhook path itself is not the metrics: a GET there is the verification.
    let verify = client
        .get(format!("{base}/webhook"))
        .send()
        .await
        .expect("GET");
    assert_eq!(verify.status().as_u16(), 400);
}

#[tokio::test]
async fn the_in_process_queue_records_each_turns_wait() {
    let h = Harness::builder().queued_local().start().await;
    let body = text_message(PHONE, MESSAGE_ID, TEXT);
    assert_eq!(status(&h.post_json(&body).await), 200);
    eventually("the reply", async || h.sent_bodies().await.len() == 1).await;
    eventually("the turn is counted", async || {
        h.app.metrics().turns.total() == 1
    })
    .await;
    assert_eq!(h.app.metrics().queue_wait.count(), 1);
    assert_eq!(h.app.metrics().messages.total(), 1);
    // Meta's redelivery: queued again, and skipped by the worker as a duplicate.
    assert_eq!(status(&h.post_json(&body).await), 200);
    eventually("the duplicate is skipped", async || {
        h.app.metrics().duplicates.total() == 1
    })
    .await;
    assert_eq!(h.app.metrics().turns.total(), 1);
}
