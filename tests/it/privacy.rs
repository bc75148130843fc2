//! A full run of the binary in serve mode, at debug log level, with real secrets and
//! personal data flowing through it: none of them may appear in any log line.

use std::process::{Command, Stdio};

use crate::helpers::fixture;
use serde_json::json;
use whatsapp_webhook::webhook::signature::sign;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-webhook");
const ACCESS_TOKEN: &str = "EAAGtoken-0123456789-secret";
const APP_SECRET: &str = "app-secret-abcdef-987";
const VERIFY_TOKEN: &str = "verify-token-xyz-654";
const ENGINE_TOKEN: &str = "engine-bearer-token-321";
const USER_TEXT: &str = "my card number is 4111 1111 1111 1111";
const REPLY_TEXT: &str = "I will never repeat your card number";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn logs_hold_no_secret_text_or_full_number() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v21.0/123456123456123/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages":[{"id":"wamid.OUT"}]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/reply"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"reply": REPLY_TEXT})))
        .mount(&server)
        .await;

    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "channels:\n  whatsapp:\n    phone_number_id: '123456123456123'\n    verify_token: '{VERIFY_TOKEN}'\n    \
             webhook_port: {port}\n    graph_api_base: '{uri}'\nengine:\n  kind: http\n  url: '{uri}/reply'\n  token_env: ENGINE_TOKEN\n",
            uri = server.uri()
        ),
    )
    .expect("write config");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("WHATSAPP_ACCESS_TOKEN", ACCESS_TOKEN)
        .env("WHATSAPP_APP_SECRET", APP_SECRET)
        .env("ENGINE_TOKEN", ENGINE_TOKEN)
        .env("LOG_LEVEL", "debug")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");

    let (log, reader) = crate::moto::wait_ready(&mut child);

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhook");
    let verify = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
        ))
        .send()
        .await
        .expect("verify");
    assert_eq!(verify.status().as_u16(), 200);
    let wrong = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1"
        ))
        .send()
        .await
        .expect("verify");
    assert_eq!(wrong.status().as_u16(), 403);

    let mut text = fixture("text.json");
    text["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = json!(USER_TEXT);
    let mut otr = text.clone();
    otr["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = json!("/otr");
    otr["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = json!("wamid.OTR");
    let mut after = text.clone();
    after["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = json!("wamid.AFTER");
    let mut malformed_text = text.clone();
    malformed_text["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = json!(USER_TEXT);
    for body in [
        &text,
        &otr,
        &after,
        &fixture("status-failed.json"),
        &malformed_text,
        &fixture("system-number-changed.json"),
        &fixture("edit.json"),
        &fixture("flow-reply.json"),
    ] {
        let bytes = serde_json::to_vec(body).expect("json");
        let r = client
            .post(&url)
            .header("x-hub-signature-256", sign(APP_SECRET, &bytes))
            .body(bytes)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 200);
    }
    let bad = client
        .post(&url)
        .header("x-hub-signature-256", "sha256=00")
        .body(USER_TEXT)
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status().as_u16(), 403);
    let not_json = format!("{{\"object\": \"{USER_TEXT}");
    let r = client
        .post(&url)
        .header("x-hub-signature-256", sign(APP_SECRET, not_json.as_bytes()))
        .body(not_json)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);

    let _ = child.kill();
    let _ = child.wait();
    reader.join().expect("reader");
    let mut logs = log.lock().expect("log").join("\n");
    if let Some(mut stderr) = child.stderr.take() {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        logs.push_str(&rest);
    }
    assert!(
        logs.contains("answered"),
        "the run really answered messages:\n{logs}"
    );
    assert!(
        logs.contains("1555***4321"),
        "numbers appear masked:\n{logs}"
    );
    for secret in [
        ACCESS_TOKEN,
        APP_SECRET,
        VERIFY_TOKEN,
        ENGINE_TOKEN,
        USER_TEXT,
        "4111",
        REPLY_TEXT,
        "15557654321",
        // The number change's old and new numbers, the edited text, the flow's answers.
        "16505551234",
        "12195555358",
        "Ada Lovelace",
        "open on Friday",
        "FLOW-TOKEN-1",
        "wamid.SAMPLE",
        "wamid.OTR",
    ] {
        assert!(!logs.contains(secret), "log holds {secret:?}:\n{logs}");
    }
}
