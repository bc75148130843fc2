//! The binary and the local server as a user meets them: start-up errors, real
//! HTTP on a socket, body limits.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use whatsapp_webhook::app::AppOptions;
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::graph::DryRunMessenger;
use whatsapp_webhook::server::{MAX_BODY_BYTES, serve};
use whatsapp_webhook::wiring::in_memory_app;

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-webhook");

fn run_with_config(yaml: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().expect("run binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_line_naming(stderr: &str, field: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line, got: {stderr}");
    assert!(lines[0].contains(field), "names {field}: {stderr}");
    assert!(lines[0].contains("fix:"), "says the fix: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn bad_config_stops_with_one_line_naming_the_field() {
    // (YAML, environment, the field the error line must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "channels: {whatsapp: {verify_token: v, allow_unsigned: true}}",
            &[],
            "phone_number_id",
        ),
        (
            "channels: {whatsapp: {phone_number_id: '1', verify_token: '', allow_unsigned: true}}",
            &[],
            "verify_token",
        ),
        (
            "channels: {whatsapp: {phone_number_id: '1', verify_token: v, access_token_env: MY_TOKEN, allow_unsigned: true}}",
            &[],
            "MY_TOKEN",
        ),
        (
            "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true}}\nengine: {kind: gpt}",
            &[],
            "engine.kind",
        ),
        (
            "channels: {whatsapp: {phone_number_id: '1', verify_token: v, allow_unsigned: true, webhook_port: http}}",
            &[],
            "webhook_port",
        ),
    ];
    for (yaml, envs, field) in cases {
        let (code, stderr) = run_with_config(yaml, envs);
        assert_eq!(code, Some(1), "{yaml}: {stderr}");
        assert_one_line_naming(&stderr, field);
    }
}

#[test]
fn secrets_never_appear_in_startup_errors() {
    let (code, stderr) = run_with_config(
        "channels: {whatsapp: {phone_number_id: '1', verify_token: super-secret-verify, allow_unsigned: true}}\nengine: {kind: http}",
        &[("WHATSAPP_ACCESS_TOKEN", "EAAG-secret-token")],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("engine.url"), "{stderr}");
    assert!(!stderr.contains("super-secret-verify") && !stderr.contains("EAAG-secret-token"));
}

fn serve_options() -> AppOptions {
    AppOptions {
        read_receipts: false,
        sender_wait: Duration::from_secs(1),
        ..AppOptions::new(
            "123456123456123",
            Secret::new("tok"),
            vec![Secret::new("s")],
        )
    }
}

async fn start_server() -> (String, tokio::task::JoinHandle<()>) {
    let app = in_memory_app(serve_options(), Arc::new(DryRunMessenger));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/webhook", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = serve(Arc::new(app), listener).await;
    });
    (url, task)
}

#[tokio::test]
async fn local_server_answers_verify_over_http() {
    let (url, task) = start_server().await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=42"
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "42");
    task.abort();
}

#[tokio::test]
async fn oversized_body_is_413_and_server_keeps_serving() {
    let (url, task) = start_server().await;
    let client = reqwest::Client::new();
    let big = vec![b'a'; MAX_BODY_BYTES + 1];
    let r = client.post(&url).body(big).send().await.expect("request");
    assert_eq!(r.status().as_u16(), 413);
    // A chunked body without Content-Length is cut off at the limit too.
    assert_eq!(
        chunked_post_status(&url, MAX_BODY_BYTES + 1024 * 1024).await,
        413
    );
    let r = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=7"
        ))
        .send()
        .await
        .expect("still serving");
    assert_eq!(r.status().as_u16(), 200);
    task.abort();
}

/// POST `total` bytes with chunked transfer encoding over a raw socket; the status line's code.
async fn chunked_post_status(url: &str, total: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/webhook");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head =
        format!("POST /webhook HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break; // the server stopped reading: its answer is waiting
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = vec![0u8; 128];
    let n = stream.read(&mut response).await.expect("read status");
    let line = String::from_utf8_lossy(&response[..n]).to_string();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Meta hangs up on a slow answer: the delivery must still finish (reply sent, leases
/// released), so the redelivery finds it answered instead of held.
#[tokio::test]
async fn a_client_hanging_up_does_not_abandon_the_delivery() {
    use whatsapp_webhook::graph::{GraphClient, RetryPolicy};
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(400)))
        .mount(&graph)
        .await;
    let app = in_memory_app(
        serve_options(),
        Arc::new(GraphClient::new(
            reqwest::Client::new(),
            &graph.uri(),
            "v21.0",
            "123456123456123",
            Secret::new("t"),
            RetryPolicy::NONE,
        )),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/webhook", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = serve(Arc::new(app), listener).await;
    });
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text.json"),
    )
    .expect("fixture");
    let signature = whatsapp_webhook::webhook::signature::sign("s", &body);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    let first = impatient
        .post(&url)
        .header("x-hub-signature-256", &signature)
        .body(body.clone())
        .send()
        .await;
    assert!(first.is_err(), "the client gave up before the answer");
    // The reply still reaches the Graph API…
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while graph
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the reply was never sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and the redelivery finds the message answered (waiting out the send), not held.
    let again = reqwest::Client::new()
        .post(&url)
        .header("x-hub-signature-256", &signature)
        .body(body)
        .send()
        .await
        .expect("redelivery");
    let status = again.status().as_u16();
    assert!(status == 200 || status == 503, "{status}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut status = status;
    while status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "still held after the send finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = reqwest::Client::new()
            .post(&url)
            .header("x-hub-signature-256", &signature)
            .body(
                std::fs::read(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/fixtures/text.json"),
                )
                .expect("fixture"),
            )
            .send()
            .await
            .expect("redelivery")
            .status()
            .as_u16();
    }
    assert_eq!(
        graph.received_requests().await.unwrap_or_default().len(),
        1,
        "sent once"
    );
    task.abort();
}

// ------------------------------------------------------------------ limits

/// A server with `limits`, stopped when `stop` is sent; returns its address.
async fn limited_server(
    limits: whatsapp_webhook::server::ServeLimits,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let app = in_memory_app(serve_options(), Arc::new(DryRunMessenger));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ =
            whatsapp_webhook::server::serve_until(Arc::new(app), listener, limits, shutdown).await;
    });
    (addr, stop, task)
}

fn limits(header_secs: u64, max_connections: usize) -> whatsapp_webhook::server::ServeLimits {
    whatsapp_webhook::server::ServeLimits {
        header_timeout: Duration::from_secs(header_secs),
        max_connections,
        shutdown_grace: Duration::from_secs(5),
        metrics: false,
    }
}

/// Whether the server closed `stream` (read returns 0 or an error) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
            Err(_) => return false,
        }
    }
}

const VERIFY: &[u8] =
    b"GET /webhook?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=7 HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn a_slow_or_idle_client_is_cut_off_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let (addr, _stop, _task) = limited_server(limits(1, 16)).await;
    // Slow loris: a head that never ends.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /webhook HTTP/1.1\r\nHost: x\r\nX-a: ")
        .await
        .expect("write");
    // Idle: connected, nothing sent.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)).await,
        "slow loris held"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "idle held"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _stop, _task) = limited_server(limits(30, 2)).await;
    let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    third.write_all(VERIFY).await.expect("write");
    let mut buf = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "served past the cap"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(second);
}

#[tokio::test]
async fn shutdown_closes_idle_and_half_sent_connections_at_once() {
    use tokio::io::AsyncWriteExt;
    let (addr, stop, task) = limited_server(limits(30, 16)).await;
    let mut half = tokio::net::TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Make sure both are accepted before the shutdown.
    let mut probe = tokio::net::TcpStream::connect(addr).await.expect("connect");
    probe.write_all(VERIFY).await.expect("write");
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        let _ = probe.read(&mut buf).await;
    }

    stop.send(()).expect("stop");

    // Well inside the 30 s header timeout and the 5 s grace.
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("the server stopped without waiting for them")
        .expect("joined");
    assert!(closed_within(&mut half, Duration::from_secs(1)).await);
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
}
