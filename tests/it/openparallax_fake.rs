//! A fake OpenParallax engine for tests: a real WebSocket server (and a hand-written
//! `POST /api/login` route on the same port) on 127.0.0.1. Everything it observes
//! (client frames, login attempts, refused upgrades) is reported back to the test
//! body, where the assertions are made.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::engine::OpenParallaxEngine;

pub const PASSWORD: &str = "correct horse battery staple";
pub const SESSION: &str = "wa-15550001111";

/// One thing the fake engine does after it has read the client's message.
#[derive(Clone)]
pub enum Step {
    Json(Value),
    Raw(&'static str),
    Ping,
    /// Never answer: keep the connection open until the client goes away.
    Hold,
    /// Close the WebSocket.
    Close,
    /// The run works this long (tools, sub-agents, an approval) before its next
    /// event. As in the real engine, the run goes on if the client goes away
    /// meanwhile: its later events wait for the next socket that sends a message on
    /// the same session (`internal/web/websocket.go`, `internal/engine/broadcaster.go`).
    Work(Duration),
}

pub type Script = Arc<dyn Fn(&str) -> Vec<Step> + Send + Sync>;

pub struct State {
    script: Script,
    frames: mpsc::UnboundedSender<Value>,
    logins: AtomicUsize,
    refused_upgrades: AtomicUsize,
    /// `Some(token)`: the engine requires `Cookie: op_session=token`.
    valid_token: Mutex<Option<String>>,
    /// Events of runs whose socket went away, per session, for the next socket.
    orphaned: Mutex<std::collections::HashMap<String, Vec<Step>>>,
    /// Runs that went through all their steps (with or without their socket).
    finished_runs: AtomicUsize,
}

pub struct Fake {
    pub url: String,
    pub state: Arc<State>,
    pub frames: mpsc::UnboundedReceiver<Value>,
}

impl Fake {
    pub async fn start(script: impl Fn(&str) -> Vec<Step> + Send + Sync + 'static) -> Fake {
        Fake::start_with_auth(script, None).await
    }

    pub async fn start_with_auth(
        script: impl Fn(&str) -> Vec<Step> + Send + Sync + 'static,
        token: Option<&str>,
    ) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            script: Arc::new(script),
            frames: tx,
            logins: AtomicUsize::new(0),
            refused_upgrades: AtomicUsize::new(0),
            valid_token: Mutex::new(token.map(str::to_string)),
            orphaned: Mutex::new(std::collections::HashMap::new()),
            finished_runs: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Fake {
            url: format!("ws://{addr}/api/ws"),
            state,
            frames: rx,
        }
    }

    pub fn logins(&self) -> usize {
        self.state.logins.load(Ordering::SeqCst)
    }

    /// Runs that ran to their end, whether or not anyone was still listening.
    pub fn finished_runs(&self) -> usize {
        self.state.finished_runs.load(Ordering::SeqCst)
    }

    /// Events of abandoned runs waiting for the next socket on `session`.
    pub fn orphaned_events(&self, session: &str) -> usize {
        self.state
            .orphaned
            .lock()
            .expect("lock")
            .get(session)
            .map_or(0, Vec::len)
    }

    /// Whether the client sent another message frame (without waiting).
    pub fn has_frame(&mut self) -> bool {
        self.frames.try_recv().is_ok()
    }

    pub fn refused_upgrades(&self) -> usize {
        self.state.refused_upgrades.load(Ordering::SeqCst)
    }

    /// The engine restarted: it issues, and accepts, a new session token.
    pub fn rotate_token(&self, token: &str) {
        *self.state.valid_token.lock().expect("lock") = Some(token.to_string());
    }

    /// The next message frame the client sent.
    pub async fn next_frame(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(5), self.frames.recv())
            .await
            .expect("a client frame within 5 s")
            .expect("the fake is alive")
    }

    pub fn engine(&self, password: Option<&str>, timeout: Duration) -> OpenParallaxEngine {
        OpenParallaxEngine::new(
            reqwest::Client::new(),
            self.url.clone(),
            password.map(Secret::new),
            timeout,
        )
    }
}

/// Route one connection by its request line: the login or the WebSocket.
async fn serve(stream: TcpStream, state: Arc<State>) {
    let mut head = [0u8; 5];
    loop {
        match stream.peek(&mut head).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= head.len() => break,
            Ok(_) => tokio::task::yield_now().await,
        }
    }
    if head.starts_with(b"POST ") {
        login(stream, &state).await;
    } else {
        websocket(stream, state).await;
    }
}

async fn login(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).await.is_err() {
        return;
    }
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    if reader.read_exact(&mut body).await.is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    let response = if !request_line.starts_with("POST /api/login ") {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    } else {
        state.logins.fetch_add(1, Ordering::SeqCst);
        let token = state.valid_token.lock().expect("lock").clone();
        match token {
            Some(token) if body["password"] == PASSWORD => format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: theme=dark; Path=/\r\n\
                 Set-Cookie: op_session={token}; Path=/; HttpOnly; SameSite=Strict\r\n\
                 Content-Type: application/json\r\nContent-Length: 11\r\n\
                 Connection: close\r\n\r\n{{\"ok\":true}}"
            ),
            _ => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_string(),
        }
    };
    let mut stream = reader.into_inner();
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn websocket(stream: TcpStream, state: Arc<State>) {
    let required = state.valid_token.lock().expect("lock").clone();
    let checker = state.clone();
    // The error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, response: Response| {
        let Some(token) = required else {
            return Ok(response);
        };
        let expected = format!("op_session={token}");
        let presented = request
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|pair| pair.trim() == expected);
        if presented {
            Ok(response)
        } else {
            checker.refused_upgrades.fetch_add(1, Ordering::SeqCst);
            let refusal: ErrorResponse = http::Response::builder()
                .status(http::StatusCode::UNAUTHORIZED)
                .body(Some("unauthorized".to_string()))
                .expect("response");
            Err(refusal)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };

    // The client speaks first: one message frame.
    let frame = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                break serde_json::from_str::<Value>(text.as_str()).unwrap_or(Value::Null);
            }
            Some(Ok(_)) => continue,
            _ => return,
        }
    };
    let session = frame["session_id"].as_str().unwrap_or_default().to_string();
    let _ = state.frames.send(frame);

    // Events of an earlier run on this session that lost its socket come first.
    let leftovers = state
        .orphaned
        .lock()
        .expect("lock")
        .remove(&session)
        .unwrap_or_default();
    let mut steps: std::collections::VecDeque<Step> = leftovers
        .into_iter()
        .chain((state.script)(&session))
        .collect();
    while let Some(step) = steps.pop_front() {
        let sent = match step {
            Step::Work(time) => {
                let client_left = tokio::select! {
                    _ = tokio::time::sleep(time) => false,
                    left = client_gone(&mut ws) => left,
                };
                if client_left {
                    // The run goes on without its socket.
                    let state = state.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(time).await;
                        let mut rest = Vec::new();
                        for step in steps {
                            match step {
                                Step::Work(more) => tokio::time::sleep(more).await,
                                Step::Json(_) | Step::Raw(_) => rest.push(step),
                                _ => {}
                            }
                        }
                        state
                            .orphaned
                            .lock()
                            .expect("lock")
                            .entry(session)
                            .or_default()
                            .extend(rest);
                        state.finished_runs.fetch_add(1, Ordering::SeqCst);
                    });
                    return;
                }
                Ok(())
            }
            Step::Json(value) => ws.send(Message::text(value.to_string())).await,
            Step::Raw(text) => ws.send(Message::text(text)).await,
            Step::Ping => {
                ws.send(Message::Ping(b"are you there".to_vec().into()))
                    .await
            }
            Step::Hold => {
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Step::Close => {
                let _ = ws.close(None).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    state.finished_runs.fetch_add(1, Ordering::SeqCst);
    // Keep the connection open until the client is done with it.
    while let Some(Ok(_)) = ws.next().await {}
}

/// Resolves `true` once the client closed or dropped the socket (frames it sends
/// meanwhile are read and ignored).
async fn client_gone<S>(ws: &mut S) -> bool
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
            Some(Ok(_)) => continue,
        }
    }
}

pub fn token(session: &str, text: &str) -> Step {
    Step::Json(
        json!({"type": "llm_token", "session_id": session, "message_id": "msg-1", "text": {"text": text}}),
    )
}

pub fn complete(session: &str, content: &str) -> Step {
    Step::Json(json!({
        "type": "response_complete",
        "session_id": session,
        "message_id": "msg-1",
        "response_complete": {"content": content, "thoughts": []}
    }))
}

pub fn action_started(session: &str) -> Step {
    Step::Json(json!({
        "type": "action_started",
        "session_id": session,
        "message_id": "msg-1",
        "action_started": {"tool_name": "read_file", "summary": "Reading notes.md"}
    }))
}

pub fn tier3(session: &str) -> Step {
    Step::Json(json!({
        "type": "tier3_approval_required",
        "session_id": session,
        "message_id": "msg-1",
        "action_id": "act-1",
        "tool_name": "execute_command",
        "reasoning": "modifies system configuration",
        "timeout_secs": 300
    }))
}
