//! The one WebSocket a process keeps to the engine, shared by every turn.
//!
//! The engine limits every `/api/*` request per client IP, the upgrade included
//! (`internal/web/middleware.go`: 60 a minute, and 429 without `Retry-After`), so a
//! socket per turn runs into the limit behind a NAT. One socket carries every
//! session's turns: a reader task hands each event to the [`Router`], a writer task
//! sends frames. A socket unused for a while is checked with a ping before a message
//! goes out on it: a Lambda frozen between invocations mostly finds it dead, and a
//! message written to a dead socket would be lost without an error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Socket;
use super::router::Router;
use crate::engine::json_problem;

/// A socket unused this long is pinged before the next message goes out on it.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// How long a pong may take before the socket counts as dead.
const PONG_TIMEOUT: Duration = Duration::from_secs(3);

type Outgoing = (Message, Option<oneshot::Sender<Result<(), String>>>);

pub(super) struct Connection {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    pub(super) router: Arc<Mutex<Router>>,
    /// Counts pongs, so a ping can wait for the next one.
    pongs: watch::Receiver<u64>,
    /// Closed once the reader stops: the socket is gone.
    alive: watch::Receiver<bool>,
    last_used: Mutex<Instant>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    pub(super) fn start(socket: Socket) -> Connection {
        let (mut sink, mut stream) = socket.split();
        let router = Arc::new(Mutex::new(Router::default()));
        let (pong_tx, pongs) = watch::channel(0u64);
        let (alive_tx, alive) = watch::channel(true);
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Outgoing>();

        let mut reading = alive.clone();
        let writer = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = queue.recv() => next,
                    // The reader stopped: the socket is gone, close our half too.
                    _ = reading.wait_for(|alive| !alive) => None,
                };
                let Some((message, sent)) = next else {
                    break;
                };
                let result = sink.send(message).await.map_err(|e| e.to_string());
                let failed = result.is_err();
                if let Some(sent) = sent {
                    let _ = sent.send(result);
                }
                if failed {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let routes = router.clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let value: Result<Value, _> = match message {
                    Ok(Message::Text(text)) => serde_json::from_str(text.as_str()),
                    Ok(Message::Binary(bytes)) => serde_json::from_slice(&bytes),
                    Ok(Message::Pong(_)) => {
                        pong_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                    // tungstenite answers pings itself while reading.
                    Ok(Message::Ping(_) | Message::Frame(_)) => continue,
                    Ok(Message::Close(_)) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "engine connection failed");
                        break;
                    }
                };
                match value {
                    Ok(event) => lock(&routes).route(event),
                    Err(e) => {
                        tracing::warn!(problem = %json_problem(&e), "engine sent an event that is not JSON; ignored")
                    }
                }
            }
            lock(&routes).close_all();
            let _ = alive_tx.send(false);
        });

        Connection {
            outgoing,
            router,
            pongs,
            alive,
            last_used: Mutex::new(Instant::now()),
            reader,
            writer,
        }
    }

    pub(super) fn is_alive(&self) -> bool {
        *self.alive.borrow() && !self.outgoing.is_closed()
    }

    /// Whether the socket still answers: at once if it was used lately, else after
    /// a ping (bounded by [`PONG_TIMEOUT`]).
    pub(super) async fn check(&self) -> bool {
        if !self.is_alive() {
            return false;
        }
        let idle = lock(&self.last_used).elapsed();
        if idle < IDLE_CHECK {
            return true;
        }
        let mut pongs = self.pongs.clone();
        pongs.borrow_and_update();
        if self
            .send(Message::Ping(b"op".to_vec().into()))
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            tokio::time::timeout(PONG_TIMEOUT, pongs.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Send one frame and wait until it is written to the socket.
    pub(super) async fn send(&self, message: Message) -> Result<(), String> {
        let (sent, written) = oneshot::channel();
        self.outgoing
            .send((message, Some(sent)))
            .map_err(|_| "the engine connection is closed".to_string())?;
        let result = written
            .await
            .unwrap_or_else(|_| Err("the engine connection is closed".into()));
        if result.is_ok() {
            *lock(&self.last_used) = Instant::now();
        }
        result
    }

    /// Send a frame without waiting (from `Drop`, where nothing can wait).
    pub(super) fn send_later(&self, message: Message) {
        let _ = self.outgoing.send((message, None));
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// The router's lock; a panic elsewhere never poisons routing for good.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
