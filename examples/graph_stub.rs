//! A fast Graph API stand-in for load tests (scripts/bench.sh): answers every POST
//! with 200 and a `messages` id, the way Meta accepts a message, and counts them.
//!
//! `cargo run --release --example graph_stub -- [PORT [DELAY_MS]]` (default 9445,
//! 127.0.0.1 only; DELAY_MS holds each message POST that long before answering).
//! `GET /count` answers the number of POSTs so far; `POST /reset` sets it to 0.
//! One thread: it must stay out of the way of the server under test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const ACCEPTED: &str = r#"{"messaging_product":"whatsapp","contacts":[{"input":"15557654321","wa_id":"15557654321"}],"messages":[{"id":"wamid.STUB"}]}"#;

async fn answer(
    count: &AtomicU64,
    delay: Duration,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // Read the body whole, as the real API does, before answering.
    let _ = request.into_body().collect().await;
    let (status, body) = match (method, path.as_str()) {
        (Method::GET, "/count") => (
            StatusCode::OK,
            Bytes::from(count.load(Ordering::Relaxed).to_string()),
        ),
        (Method::POST, "/reset") => {
            count.store(0, Ordering::Relaxed);
            (StatusCode::OK, Bytes::from_static(b"0"))
        }
        (Method::POST, _) => {
            count.fetch_add(1, Ordering::Relaxed);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            (StatusCode::OK, Bytes::from_static(ACCEPTED.as_bytes()))
        }
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn main() -> std::io::Result<()> {
    let usage = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "usage: graph_stub [PORT [DELAY_MS]]",
        )
    };
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next() {
        Some(p) => p.parse().map_err(|_| usage())?,
        None => 9445,
    };
    let delay = match args.next() {
        Some(d) => Duration::from_millis(d.parse().map_err(|_| usage())?),
        None => Duration::ZERO,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        println!("graph stub listening on http://127.0.0.1:{port}");
        let count = Arc::new(AtomicU64::new(0));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let count = count.clone();
            let service = hyper::service::service_fn(move |request| {
                let count = count.clone();
                async move { Ok::<_, Infallible>(answer(&count, delay, request).await) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
