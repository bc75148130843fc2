//! The real binary in Lambda mode, under a Runtime API of our own: the process boots
//! from the environment of `scripts/lambda-local.env` (as `make watch` runs it), polls
//! `/invocation/next`, answers every event in `events/` with its documented status
//! through `lambda_runtime` and `server::lambda_event`, and sends replies to a Graph API stub.
//! What the in-process test of `lambda_events` cannot show: the runtime loop, the
//! start-up from environment variables alone, and the binary's own wiring.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::lambda_events::events_dir;

const PREFIX: &str = "/2018-06-01/runtime";

/// What the function posted back: `(kind, request id, body)`, kind `response`,
/// `error` or `init-error`.
type Posted = (String, String, Value);

struct RuntimeApi {
    /// `(request id, event JSON)` still to hand out.
    events: Mutex<VecDeque<(String, String)>>,
    posted: mpsc::UnboundedSender<Posted>,
}

impl RuntimeApi {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return status(StatusCode::NOT_FOUND);
        };
        if request.method() == Method::GET && rest == "/invocation/next" {
            let next = self.events.lock().expect("events lock").pop_front();
            let Some((id, event)) = next else {
                // No more events: the long poll stays open, as Lambda's does.
                return std::future::pending().await;
            };
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis()
                + 29_000;
            return Response::builder()
                .header("lambda-runtime-aws-request-id", id)
                .header("lambda-runtime-deadline-ms", deadline.to_string())
                .header(
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:whatsapp-webhook",
                )
                .header(
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000",
                )
                .body(Full::new(Bytes::from(event)))
                .expect("a valid response");
        }
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let posted = match rest.strip_prefix("/invocation/") {
            Some(tail) => match tail.rsplit_once('/') {
                Some((id, kind @ ("response" | "error"))) => {
                    (kind.to_string(), id.to_string(), body)
                }
                _ => return status(StatusCode::NOT_FOUND),
            },
            None if rest == "/init/error" => ("init-error".into(), String::new(), body),
            None => return status(StatusCode::NOT_FOUND),
        };
        let _ = self.posted.send(posted);
        status(StatusCode::ACCEPTED)
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// Serve the Runtime API on a free loopback port; returns `host:port`.
async fn start_runtime_api(api: Arc<RuntimeApi>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let api = api.clone();
            let service = hyper::service::service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.answer(request).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    address
}

/// Kills the function when the test ends, however it ends.
struct Function(Child);

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `NAME=value` lines of an env file (comments and blank lines skipped).
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("env file")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn the_binary_answers_every_sample_event_under_a_lambda_runtime() {
    let expected = crate::lambda_events::expected();
    let events = expected
        .iter()
        .map(|(name, _)| {
            let event = std::fs::read_to_string(events_dir().join(format!("{name}.json")))
                .expect("event file");
            (name.clone(), event)
        })
        .collect();
    let (posted, mut received) = mpsc::unbounded_channel();
    let api = Arc::new(RuntimeApi {
        events: Mutex::new(events),
        posted,
    });
    let runtime_api = start_runtime_api(api).await;
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"messages": [{"id": "wamid.OUT"}]})),
        )
        .mount(&graph)
        .await;

    let mut command = Command::new(env!("CARGO_BIN_EXE_whatsapp-webhook"));
    command
        .env_clear()
        .envs(env_file(&root().join("scripts/lambda-local.env")))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "whatsapp-webhook")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/whatsapp-webhook")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_REGION", "us-east-1")
        .env("WHATSAPP_GRAPH_API_BASE", graph.uri())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _function = Function(command.spawn().expect("start the binary"));

    for (name, want) in &expected {
        let (kind, id, body) = tokio::time::timeout(Duration::from_secs(60), received.recv())
            .await
            .unwrap_or_else(|_| panic!("no answer to {name} within 60 s"))
            .expect("the runtime API is up");
        assert_eq!(
            (kind.as_str(), id.as_str()),
            ("response", name.as_str()),
            "{body}"
        );
        assert_eq!(body["statusCode"], *want, "event {name}: {body}");
    }
    let sent: Vec<Value> = graph
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect();
    assert!(
        sent.iter()
            .any(|b| b["text"]["body"] == "What time do you open tomorrow?"),
        "the text event's echo went to the Graph API: {sent:?}"
    );
}
