//! Run the [`App`] as a local HTTP server (`serve`) or as a Lambda function.
//!
//! In Lambda mode every event gets an answer, never an invocation error: an HTTP event
//! is read by [`http_event`] (not `lambda_http`, whose conversion panics on some URIs;
//! why there), and a panic inside the pipeline is caught here (HTTP: 500) or in
//! [`run_received`] (SQS: every job of the batch comes again). The release profile
//! unwinds (`panic = "unwind"` in Cargo.toml), so catching works in the shipped binary.

pub mod http_event;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::{App, Dispatch};
use crate::queue::sqs::{Received, run_received};
use crate::webhook::edge::{sync_start_by, text};
use aws_lambda_events::sqs::SqsEvent;

/// Largest POST body accepted: Lambda's own request cap (6 MB) is the ceiling in
/// the cloud, and a 1000-update batch from Meta is far below it.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Limits of the local server (`serve.*` in the config): every connection is bounded
/// in time and number, so slow or idle clients cannot hold the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request head must arrive within this time; it also closes a keep-alive
    /// connection that sits idle this long (hyper starts the timer whenever it waits
    /// for a head).
    pub header_timeout: std::time::Duration,
    /// Connections open at once; beyond it new ones wait in the listen backlog.
    pub max_connections: usize,
    /// After SIGTERM: how long requests in flight may take to finish. Idle and
    /// half-sent connections are closed at once.
    pub shutdown_grace: std::time::Duration,
    /// Answer `GET /metrics` with the app's metrics in the Prometheus text format
    /// (`serve.metrics`; off by default: the port is often exposed through a tunnel).
    pub metrics: bool,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: std::time::Duration::from_secs(10),
            max_connections: 256,
            shutdown_grace: SHUTDOWN_GRACE,
            metrics: false,
        }
    }
}

/// Largest request head: Meta's are a few hundred bytes; hyper's default (about
/// 400 KB) let 300 half-sent heads hold 115 MB.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serve with the default limits until the process gets Ctrl-C or SIGTERM.
pub async fn serve(app: Arc<App>, listener: TcpListener) -> std::io::Result<()> {
    serve_until(app, listener, ServeLimits::default(), shutdown_signal()).await
}

/// Serve until `shutdown` resolves; then stop accepting, close idle and half-sent
/// connections, and give requests in flight `limits.shutdown_grace` to finish.
pub async fn serve_until(
    app: Arc<App>,
    listener: TcpListener,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let max = limits
        .max_connections
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = 0u32;
    loop {
        // A free slot first: at the cap, new connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slot else {
            break; // the semaphore is never closed
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_errors = 0;
                stream
            }
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning, and
                // log the first error of a run only.
                if accept_errors == 0 {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                accept_errors = accept_errors.saturating_add(1);
                let pause = std::time::Duration::from_millis(10u64 << accept_errors.min(7));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut shutdown => break,
                }
                continue;
            }
        };
        tokio::spawn(serve_connection(
            app.clone(),
            stream,
            limits,
            closed.clone(),
            slot,
        ));
    }
    tracing::info!("shutting down: finishing requests in flight");
    let _ = closing.send(true);
    // Every connection gives its slot back when it ends.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs(),
            "requests still in flight after the shutdown grace; closing"
        );
    }
    Ok(())
}

/// One connection, until it ends or the server shuts down: then it closes at once if
/// no request is in flight on it (idle, or a head still arriving), else it finishes
/// that request (within the caller's grace).
async fn serve_connection(
    app: Arc<App>,
    stream: tokio::net::TcpStream,
    limits: ServeLimits,
    mut closed: tokio::sync::watch::Receiver<bool>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = in_flight.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let response = if limits.metrics && request.uri().path() == METRICS_PATH {
                metrics_response(&app, request.method())
            } else {
                handle_incoming(app, request).await
            };
            counter.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = closed.wait_for(|closed| *closed) => {}
    }
    if in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        return; // dropped: closed at once
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// How long a shutting-down `serve` waits for queued turns still running.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`serve`], plus the queued-turn worker of this process: with an SQS queue, a
/// poller that runs its jobs; at shutdown, in-process turns get [`SHUTDOWN_GRACE`] to
/// finish (those still waiting then are lost and logged), and the poller finishes
/// its batch (jobs not settled come back from the queue).
pub async fn serve_with_turns(
    app: Arc<App>,
    listener: TcpListener,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let poller = match app.dispatch() {
        Dispatch::Sqs(queue) => {
            let (queue, runner) = (queue.clone(), app.turns().clone());
            let mut stopped = stopped.clone();
            Some(tokio::spawn(async move {
                queue
                    .poll(runner, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            }))
        }
        _ => None,
    };
    let served = serve_until(app.clone(), listener, limits, shutdown_signal()).await;
    let _ = stop.send(true);
    if let Dispatch::Local(queue) = app.dispatch() {
        let lost = queue.drain(SHUTDOWN_GRACE).await;
        if lost > 0 {
            tracing::error!(
                lost,
                "shutting down with queued turns unanswered; their senders get no reply"
            );
        }
    }
    if let Some(poller) = poller {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, poller).await;
    }
    served
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Read the body (refusing oversized ones before reading them) and hand it to the app.
pub async fn handle_incoming(app: Arc<App>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let too_large = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES as u64);
    if too_large {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let (parts, body) = request.into_parts();
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Err(_) => return plain(StatusCode::BAD_REQUEST, "could not read the body"),
    };
    // Its own task: when the client (Meta) hangs up on a slow answer, hyper drops this
    // future, but the delivery must still finish and release its leases.
    let request = Request::from_parts(parts, bytes);
    let response = match tokio::spawn(async move { app.handle(request).await }).await {
        Ok(response) => response,
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    };
    response.map(Full::new)
}

/// Where `serve` answers with its metrics when `serve.metrics` is on.
pub const METRICS_PATH: &str = "/metrics";

/// `GET /metrics`: the Prometheus text format.
fn metrics_response(app: &App, method: &http::Method) -> Response<Full<Bytes>> {
    if method != http::Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(app.metrics().prometheus())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Bind the local server's port on all interfaces (ngrok forwards to it).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
}

/// Run as a Lambda function until the runtime stops the process. One function
/// serves both event kinds, told apart by their shape: API Gateway / Function URL
/// requests (the webhook) and SQS batches (the queued-turn worker).
pub async fn run_lambda(app: Arc<App>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let app = app.clone();
            async move {
                app.metrics()
                    .set_function(&event.context.env_config.function_name);
                let start_by = start_by(&app, event.context.deadline);
                Ok::<_, Infallible>(lambda_event(&app, event.payload, start_by).await)
            }
        },
    ))
    .await
}

/// The latest instant a turn may start and still end before the invocation's
/// `deadline_ms` (unix milliseconds, from the runtime): for an SQS batch of queued
/// turns, the queue's turn budget before it; for a sync webhook POST, see
/// [`sync_start_by`]. `None` for the in-process queue (not in Lambda).
fn start_by(app: &App, deadline_ms: u64) -> Option<tokio::time::Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    match app.dispatch() {
        Dispatch::Sqs(queue) => {
            Some(tokio::time::Instant::now() + left.saturating_sub(queue.turn_budget()))
        }
        Dispatch::Sync => Some(sync_start_by(left, app.sync_turn_budget())),
        Dispatch::Local(_) => None,
    }
}

/// One Lambda event: an SQS batch of queued turns, or an HTTP request.
pub async fn lambda_event(
    app: &App,
    payload: serde_json::Value,
    start_by: Option<tokio::time::Instant>,
) -> serde_json::Value {
    let answer = if is_sqs_event(&payload) {
        // A worker's Graph token and engine secret may have rotated too.
        app.refresh_secrets().await;
        sqs_event(app, payload, start_by).await
    } else {
        http_response_json(http_event(app, payload, start_by).await)
    };
    // The runtime freezes the process once the answer is out.
    app.turns().park().await;
    // One EMF line (or a few, past 100 latencies) per invocation, before the freeze.
    app.metrics().emit_emf();
    answer
}

/// An HTTP event's answer; a panic on the way is answered 500 (Meta delivers again).
/// A sync POST starts no sender's turn after `start_by`.
async fn http_event(
    app: &App,
    payload: serde_json::Value,
    start_by: Option<tokio::time::Instant>,
) -> Response<Bytes> {
    let answer = async move {
        match http_event::to_request(payload) {
            Ok(request) => app.handle_until(request, start_by).await,
            Err(http_event::EventError::Unknown(problem)) => {
                tracing::error!(error = %problem, "event is neither an HTTP request nor an SQS batch");
                text(StatusCode::BAD_REQUEST, "unknown event")
            }
            Err(e) => {
                tracing::warn!(problem = %e, "HTTP event refused");
                text(e.status(), e.answer())
            }
        }
    };
    match AssertUnwindSafe(answer).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            // The panic's own message may quote a user's text: it is not logged here
            // (the panic hook logs where it happened).
            tracing::error!("the webhook pipeline panicked; answered 500 so Meta delivers again");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

fn is_sqs_event(payload: &serde_json::Value) -> bool {
    payload["Records"]
        .as_array()
        .and_then(|records| records.first())
        .is_some_and(|record| record["eventSource"] == "aws:sqs")
}

/// An SQS batch: run the jobs, answer which must come again (`batchItemFailures`,
/// the partial batch response); Lambda deletes the rest.
async fn sqs_event(
    app: &App,
    payload: serde_json::Value,
    start_by: Option<tokio::time::Instant>,
) -> serde_json::Value {
    let records = match serde_json::from_value::<SqsEvent>(payload) {
        Ok(event) => event.records,
        Err(e) => {
            tracing::error!(error = %crate::engine::json_problem(&e), "unreadable SQS event");
            Vec::new()
        }
    };
    let jobs: Vec<Received> = records.iter().map(Received::from_record).collect();
    let settled = run_received(app.turns(), &jobs, start_by).await;
    match app.dispatch() {
        Dispatch::Sqs(queue) => {
            let again: Vec<&Received> = jobs
                .iter()
                .zip(&settled)
                .filter(|(_, settled)| !**settled)
                .map(|(job, _)| job)
                .collect();
            queue.retry_soon(&again).await;
        }
        _ => tracing::warn!("an SQS batch reached a function without turns.queue_url"),
    }
    let failures: Vec<serde_json::Value> = records
        .iter()
        .zip(settled)
        .filter(|(_, settled)| !settled)
        .map(|(r, _)| serde_json::json!({"itemIdentifier": r.message_id.clone().unwrap_or_default()}))
        .collect();
    serde_json::json!({ "batchItemFailures": failures })
}

/// The response object API Gateway (payload 1.0 and 2.0) and Function URLs take.
fn http_response_json(response: Response<Bytes>) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = response
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.into())))
        .collect();
    let status = response.status().as_u16();
    // The app's bodies are short texts it wrote itself.
    let body = String::from_utf8_lossy(response.body());
    serde_json::json!({
        "statusCode": status, "headers": headers, "body": body, "isBase64Encoded": false
    })
}
