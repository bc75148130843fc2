//! Robustness of the Lambda entry against hostile HTTP events: random strings (any
//! Unicode, control bytes, the characters a URI cannot carry) in a v2 event's
//! `rawQueryString`, `rawPath`, method and header names and values, and in a v1 REST
//! event's path and query parameters. `server::lambda_event` must answer every one
//! with an HTTP status below 500, never panic (a caught panic would answer 500) and
//! never fail the invocation.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use whatsapp_webhook::app::{App, AppOptions};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::graph::DryRunMessenger;
use whatsapp_webhook::server::lambda_event;
use whatsapp_webhook::wiring::in_memory_app;

fn app() -> App {
    in_memory_app(
        AppOptions {
            sender_wait: Duration::from_millis(100),
            ..AppOptions::new(
                "123456123456123",
                Secret::new("local-verify-token"),
                vec![Secret::new("whatsapp-webhook-test-secret")],
            )
        },
        Arc::new(DryRunMessenger),
    )
}

/// Strings heavy in what breaks URIs and headers, mixed with any Unicode.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        "[\"{}|^ <>`\\\\#%?&=\\[\\]\u{0}-\u{1f}\u{7f}é😀a/]{0,40}",
        Just(
            "hub.mode=subscribe&hub.verify_token=local-verify-token&hub.challenge=1&x=\"{}|^ b"
                .to_string()
        ),
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        nasty(),
    ]
}

fn v2_event(method: &str, path: &str, query: &str, header: (&str, &str), host: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"host": host, header.0: header.1},
        "requestContext": {
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "173.252.95.10", "userAgent": "ua"},
            "requestId": "id", "routeKey": "$default", "stage": "$default",
            "time": "27/Nov/2026:16:00:00 +0000", "timeEpoch": 1795795200000u64
        },
        "body": query,
        "isBase64Encoded": false
    })
}

fn v1_event(method: &str, path: &str, key: &str, value: &str, header: (&str, &str)) -> Value {
    json!({
        "resource": "/webhook",
        "path": path,
        "httpMethod": method,
        "headers": {"Host": "abcdef1234.execute-api.us-east-1.amazonaws.com", header.0: header.1},
        "multiValueHeaders": {header.0: [header.1]},
        "queryStringParameters": {key: value, "hub.mode": "subscribe"},
        "multiValueQueryStringParameters": {key: [value, value], "hub.mode": ["subscribe"]},
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {"stage": "prod", "httpMethod": method, "path": path,
                           "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com"},
        "body": null,
        "isBase64Encoded": false
    })
}

fn check(rt: &tokio::runtime::Runtime, app: &Arc<App>, event: Value) -> Result<(), TestCaseError> {
    let app = app.clone();
    let answer = rt.block_on(async move {
        tokio::spawn(async move { lambda_event(&app, event, None).await }).await
    });
    let answer = answer.map_err(|e| TestCaseError::fail(format!("lambda_event panicked: {e}")))?;
    let status = answer["statusCode"]
        .as_u64()
        .ok_or_else(|| TestCaseError::fail(format!("no statusCode in {answer}")))?;
    prop_assert!((200..500).contains(&status), "status {status}: {answer}");
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn random_v2_events_always_get_an_http_status_below_500() {
    let (rt, app) = (runtime(), Arc::new(app()));
    let strategy = (method(), nasty(), nasty(), (nasty(), nasty()), nasty());
    runner()
        .run(&strategy, |(method, path, query, (name, value), host)| {
            check(
                &rt,
                &app,
                v2_event(&method, &path, &query, (&name, &value), &host),
            )?;
            // The webhook's own path with the random query, too.
            check(
                &rt,
                &app,
                v2_event(&method, "/webhook", &query, (&name, &value), &host),
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn random_v1_events_always_get_an_http_status_below_500() {
    let (rt, app) = (runtime(), Arc::new(app()));
    let strategy = (method(), nasty(), nasty(), nasty(), (nasty(), nasty()));
    runner()
        .run(&strategy, |(method, path, key, value, (name, header))| {
            check(
                &rt,
                &app,
                v1_event(&method, &path, &key, &value, (&name, &header)),
            )?;
            check(
                &rt,
                &app,
                v1_event("GET", "/webhook", &key, &value, (&name, &header)),
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
