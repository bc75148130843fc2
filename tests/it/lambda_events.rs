//! Every sample event in `events/` through the Lambda entry (`server::lambda_event`,
//! `lambda_http` parsing included), checking the status each is documented to answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use whatsapp_webhook::app::{App, AppOptions};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::graph::DryRunMessenger;
use whatsapp_webhook::server::lambda_event;
use whatsapp_webhook::wiring::in_memory_app;

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
        if name == "verify-ok" {
            assert_eq!(response["body"], "1158201444", "verify-ok body");
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
