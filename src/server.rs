//! Run the [`App`] as a local HTTP server (`serve`) or as a Lambda function.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::App;

/// Largest POST body accepted: Lambda's own request cap (6 MB) is the ceiling in
/// the cloud, and a 1000-update batch from Meta is far below it.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Serve until the process gets Ctrl-C or SIGTERM; in-flight requests finish first.
pub async fn serve(app: Arc<App>, listener: TcpListener) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let app = app.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle_incoming(app, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down: finishing requests in flight");
                break;
            }
        }
    }
    graceful.shutdown().await;
    Ok(())
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

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Bind the local server's port on all interfaces (ngrok forwards to it).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
}

/// Convert an API Gateway / Function URL request into the app's request type.
pub fn from_lambda(request: lambda_http::Request) -> Request<Bytes> {
    let (parts, body) = request.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(t) => Bytes::from(t),
        lambda_http::Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    Request::from_parts(parts, bytes)
}

/// Convert the app's response into what lambda_http returns to API Gateway.
pub fn to_lambda(response: Response<Bytes>) -> Response<lambda_http::Body> {
    response.map(|b| match String::from_utf8(b.to_vec()) {
        Ok(text) => lambda_http::Body::Text(text),
        Err(e) => lambda_http::Body::Binary(e.into_bytes()),
    })
}

/// One Lambda invocation: the app is built once per container and borrowed here.
pub async fn lambda_handler(
    app: &App,
    request: lambda_http::Request,
) -> Result<Response<lambda_http::Body>, Infallible> {
    Ok(to_lambda(app.handle(from_lambda(request)).await))
}

/// Run as a Lambda function until the runtime stops the process.
pub async fn run_lambda(app: Arc<App>) -> Result<(), lambda_http::Error> {
    lambda_http::run(lambda_http::service_fn(
        move |request: lambda_http::Request| {
            let app = app.clone();
            async move { lambda_handler(&app, request).await }
        },
    ))
    .await
}
