//! A server process killed between two parts of a split reply: Meta's redelivery to a
//! fresh process completes the reply, and no part is accepted twice. Runs the real
//! binary with DynamoDB state on moto_server.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::fixture;
use serde_json::{Value, json};
use whatsapp_webhook::webhook::signature::sign;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-webhook");
const SECRET: &str = "crash-test-secret";

fn start_server(config: &std::path::Path) -> Child {
    let mut child = crate::moto::serve_command(BIN, config, SECRET)
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let _ = crate::moto::wait_ready(&mut child);
    child
}

fn paragraph(label: &str) -> String {
    format!(
        "{label} {}",
        "lorem ipsum dolor sit amet ".repeat(120).trim()
    )
}

#[tokio::test]
async fn killed_mid_reply_then_redelivered_sends_every_part_once() {
    let moto = crate::moto::shared();
    let table = crate::moto::fresh_table(&crate::moto::client(&moto.endpoint)).await;
    let graph = MockServer::start().await;
    let reply = [paragraph("ALPHA"), paragraph("BRAVO"), paragraph("CHARLIE")].join("\n\n");
    Mock::given(method("POST"))
        .and(path("/reply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "reply": reply })))
        .mount(&graph)
        .await;
    // The first attempt at part two hangs: the process dies while waiting on it.
    let bravo_seen = Arc::new(AtomicUsize::new(0));
    let seen = bravo_seen.clone();
    Mock::given(method("POST"))
        .and(path("/v21.0/123456123456123/messages"))
        .respond_with(move |req: &wiremock::Request| {
            let ok =
                ResponseTemplate::new(200).set_body_json(json!({"messages":[{"id":"wamid.OUT"}]}));
            if String::from_utf8_lossy(&req.body).contains("BRAVO")
                && seen.fetch_add(1, Ordering::SeqCst) == 0
            {
                ok.set_delay(Duration::from_secs(600))
            } else {
                ok
            }
        })
        .mount(&graph)
        .await;

    let port = crate::moto::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "channels:\n  whatsapp:\n    phone_number_id: '123456123456123'\n    verify_token: v\n    webhook_port: {port}\n    \
             graph_api_base: '{g}'\n    read_receipts: false\nengine:\n  kind: http\n  url: '{g}/reply'\n\
             state:\n  kind: dynamodb\n  table: '{table}'\n  endpoint_url: '{m}'\n  lease_secs: 2\n",
            g = graph.uri(),
            m = moto.endpoint
        ),
    )
    .expect("config");

    let body = serde_json::to_vec(&fixture("text.json")).expect("json");
    let url = format!("http://127.0.0.1:{port}/webhook");
    let client = reqwest::Client::new();
    let deliver = {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        move || {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move {
                client
                    .post(&url)
                    .header("x-hub-signature-256", sign(SECRET, &body))
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        }
    };

    let mut first = start_server(&config);
    let in_flight = tokio::spawn(deliver());
    // Wait until part two is on the wire, then kill the process.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bravo_seen.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "part two never reached the Graph API"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill");
    let _ = first.wait();
    assert!(
        in_flight.await.expect("join").is_err(),
        "Meta saw no answer from the dead process"
    );

    // Meta redelivers to a fresh process; 503 while the dead holder's lease runs out.
    let mut second = start_server(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut statuses = Vec::new();
    loop {
        let status = deliver().await.expect("delivery");
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(
            status, 503,
            "only 'come back later' while the lease holds: {statuses:?}"
        );
        assert!(Instant::now() < deadline, "never resumed: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = second.kill();
    let _ = second.wait();

    let texts: Vec<String> = graph
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/messages"))
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .map(|b| {
            b["text"]["body"]
                .as_str()
                .unwrap_or_default()
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    // BRAVO twice: the hung attempt was never accepted, the resumed one was.
    assert_eq!(texts, vec!["ALPHA", "BRAVO", "BRAVO", "CHARLIE"]);
    let engine_calls = graph
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/reply")
        .count();
    assert_eq!(
        engine_calls, 1,
        "the stored reply was resumed, the engine not asked again"
    );
}
