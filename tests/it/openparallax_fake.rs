//! A fake OpenParallax engine for tests: a real WebSocket server (and the login route
//! on the same port) on 127.0.0.1 that behaves as the engine's source does (HEAD
//! 6e965b6; paths are in `openparallax/openparallax`):
//! - each message becomes a run with an engine-made id `msg-N`, announced to every
//!   socket by a `log_entry` `ws_message_received` before its events
//!   (`internal/web/websocket.go` `handleWSMessage`, `internal/web/server.go`
//!   `broadcastLogEntry`);
//! - a run's events go to every socket subscribed to its session, a socket being
//!   subscribed once it sent a message on it; the run goes on when its socket closes
//!   or sends `cancel` (`internal/engine/engine_tools.go`, `broadcaster.go`);
//! - the agent runs one message at a time for the whole engine, and holds one more
//!   (`processCh`, `cmd/agent/internal_agent.go`): with two or more waiting while a
//!   run waits for a tool result, the agent's stream reader blocks, the result never
//!   arrives, and the engine is wedged;
//! - Tier 3: `tier3_approval_required` with `tier3_approval{action_id, tool_name,
//!   reasoning, timeout_secs}`; the run blocks until any socket sends
//!   `tier3_decision` or the timeout passes (a deny, with no event) (`tier3.go`);
//! - login exists only with a password; otherwise `POST /api/login` falls through
//!   to the web UI's page (`server.go`);
//! - every `/api/*` request, the upgrade included, takes a token from one per-IP
//!   bucket (`limit` a minute, refilled continuously); a refusal is a bare
//!   `429 rate limit exceeded` (`middleware.go`).
//!
//! Everything it observes is reported back to the test body, where the assertions
//! are made.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::engine::OpenParallaxEngine;

pub const PASSWORD: &str = "correct horse battery staple";
pub const SESSION: &str = "wa-15550001111";

/// One thing a run does.
#[derive(Clone)]
pub enum Step {
    /// An event of the run; `session_id` and `message_id` are filled in when absent
    /// (give them to make an event of another session or run).
    Json(Value),
    /// A text frame, as it is, to the run's session.
    Raw(&'static str),
    /// A WebSocket ping to the run's session.
    Ping,
    /// The run works this long (tools, sub-agents) before its next event.
    Work(Duration),
    /// The run never ends (and, as in the engine, holds up every later run).
    Hold,
    /// The engine drops the socket that sent the message; the run goes on.
    Close,
    /// Ask for approval (fields of `tier3_approval`; `action_id` filled in when
    /// absent), wait for a decision or the timeout, then go on with either branch.
    Tier3 {
        approval: Value,
        approved: Vec<Step>,
        denied: Vec<Step>,
    },
}

pub type Script = Arc<dyn Fn(&str) -> Vec<Step> + Send + Sync>;

/// One open WebSocket as the engine sees it.
struct Conn {
    out: mpsc::UnboundedSender<Message>,
    sessions: HashSet<String>,
}

struct Bucket {
    tokens: f64,
    limit: f64,
    last: Instant,
}

pub struct State {
    script: Script,
    frames: mpsc::UnboundedSender<Value>,
    info_logs: bool,
    /// `Some(token)`: login is routed and the upgrade needs `op_session=token`.
    valid_token: Mutex<Option<String>>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    /// The agent: one run at a time, engine-wide.
    agent: tokio::sync::Mutex<()>,
    pending: Mutex<HashMap<String, oneshot::Sender<bool>>>,
    decisions: Mutex<Vec<(String, String)>>,
    cancels: Mutex<Vec<String>>,
    bucket: Mutex<Bucket>,
    logins: AtomicUsize,
    upgrades: AtomicUsize,
    refused_upgrades: AtomicUsize,
    rate_limited: AtomicUsize,
    finished_runs: AtomicUsize,
    /// Messages forwarded to the agent and not yet taken by it.
    queued_runs: AtomicUsize,
}

pub struct Fake {
    pub url: String,
    pub state: Arc<State>,
    /// The `message` frames clients sent, in order.
    pub frames: mpsc::UnboundedReceiver<Value>,
}

pub struct FakeBuilder {
    script: Script,
    token: Option<String>,
    info_logs: bool,
    per_minute: f64,
}

impl FakeBuilder {
    /// The engine listens off localhost with a password: login is routed.
    pub fn password(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// The engine's logger fell back to a no-op: no `log_entry` broadcasts.
    pub fn without_logs(mut self) -> Self {
        self.info_logs = false;
        self
    }

    /// Requests a minute per IP (the engine: 60).
    pub fn rate_limit(mut self, per_minute: f64) -> Self {
        self.per_minute = per_minute;
        self
    }

    pub async fn start(self) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            script: self.script,
            frames: tx,
            info_logs: self.info_logs,
            valid_token: Mutex::new(self.token),
            conns: Mutex::default(),
            next_id: AtomicU64::new(1),
            agent: tokio::sync::Mutex::new(()),
            pending: Mutex::default(),
            decisions: Mutex::default(),
            cancels: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: self.per_minute,
                limit: self.per_minute,
                last: Instant::now(),
            }),
            logins: AtomicUsize::new(0),
            upgrades: AtomicUsize::new(0),
            refused_upgrades: AtomicUsize::new(0),
            rate_limited: AtomicUsize::new(0),
            finished_runs: AtomicUsize::new(0),
            queued_runs: AtomicUsize::new(0),
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
}

impl Fake {
    pub fn builder(script: impl Fn(&str) -> Vec<Step> + Send + Sync + 'static) -> FakeBuilder {
        FakeBuilder {
            script: Arc::new(script),
            token: None,
            info_logs: true,
            per_minute: 60.0,
        }
    }

    pub async fn start(script: impl Fn(&str) -> Vec<Step> + Send + Sync + 'static) -> Fake {
        Fake::builder(script).start().await
    }

    /// A script that also gets the run's number (0 for the first run).
    pub fn by_run(runs: impl Fn(usize, &str) -> Vec<Step> + Send + Sync + 'static) -> FakeBuilder {
        let count = AtomicUsize::new(0);
        Fake::builder(move |session| runs(count.fetch_add(1, Ordering::SeqCst), session))
    }

    pub async fn start_with_auth(
        script: impl Fn(&str) -> Vec<Step> + Send + Sync + 'static,
        token: Option<&str>,
    ) -> Fake {
        let builder = Fake::builder(script);
        match token {
            Some(token) => builder.password(token).start().await,
            None => builder.start().await,
        }
    }

    /// Requests to `/api/login`, refused or not.
    pub fn logins(&self) -> usize {
        self.state.logins.load(Ordering::SeqCst)
    }

    /// WebSocket upgrades the engine accepted.
    pub fn upgrades(&self) -> usize {
        self.state.upgrades.load(Ordering::SeqCst)
    }

    /// Upgrades refused with 401 (no or a stale cookie).
    pub fn refused_upgrades(&self) -> usize {
        self.state.refused_upgrades.load(Ordering::SeqCst)
    }

    /// Requests refused with 429.
    pub fn rate_limited(&self) -> usize {
        self.state.rate_limited.load(Ordering::SeqCst)
    }

    /// Runs that went through all their steps, whether or not anyone listened.
    pub fn finished_runs(&self) -> usize {
        self.state.finished_runs.load(Ordering::SeqCst)
    }

    /// `(action_id, decision)` of every `tier3_decision` frame, in order.
    pub fn decisions(&self) -> Vec<(String, String)> {
        self.state.decisions.lock().expect("lock").clone()
    }

    /// Approval requests still waiting for a decision.
    pub fn pending_approvals(&self) -> usize {
        self.state.pending.lock().expect("lock").len()
    }

    /// Sessions named by `cancel` frames, in order.
    pub fn cancels(&self) -> Vec<String> {
        self.state.cancels.lock().expect("lock").clone()
    }

    /// Open WebSockets.
    pub fn open_sockets(&self) -> usize {
        self.state.conns.lock().expect("lock").len()
    }

    /// Whether a client sent another message frame (without waiting).
    pub fn has_frame(&mut self) -> bool {
        self.frames.try_recv().is_ok()
    }

    /// The engine restarted: it issues, and accepts, a new session token.
    pub fn rotate_token(&self, token: &str) {
        *self.state.valid_token.lock().expect("lock") = Some(token.to_string());
    }

    /// The per-IP bucket is empty now (earlier requests used it up).
    pub fn use_up_rate_limit(&self) {
        let mut bucket = self.state.bucket.lock().expect("lock");
        bucket.tokens = 0.0;
        bucket.last = Instant::now();
    }

    /// The engine (or a NAT on the way) drops every socket; runs go on.
    pub fn drop_sockets(&self) {
        for conn in self.state.conns.lock().expect("lock").values() {
            let _ = conn.out.send(Message::Close(None));
        }
    }

    /// The next message frame a client sent.
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
            password.map(|p| Secret::new(p).into()),
            timeout,
        )
    }
}

impl State {
    fn allow_request(&self) -> bool {
        let mut bucket = self.bucket.lock().expect("lock");
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed * bucket.limit / 60.0).min(bucket.limit);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.rate_limited.fetch_add(1, Ordering::SeqCst);
            false
        }
    }

    /// To every socket subscribed to `session`.
    fn broadcast(&self, session: &str, message: Message) {
        for conn in self.conns.lock().expect("lock").values() {
            if conn.sessions.contains(session) {
                let _ = conn.out.send(message.clone());
            }
        }
    }

    /// To every socket (the engine's log hook).
    fn log(&self, event: &str, data: Value) {
        if !self.info_logs {
            return;
        }
        let entry = json!({"type": "log_entry", "entry": {
            "timestamp": "2026-12-06T00:00:00Z", "level": "info", "event": event, "data": data}});
        let message = Message::text(entry.to_string());
        for conn in self.conns.lock().expect("lock").values() {
            let _ = conn.out.send(message.clone());
        }
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

const TOO_MANY: &str = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 20\r\nConnection: close\r\n\r\nrate limit exceeded\n";

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
    } else if !state.allow_request() {
        state.logins.fetch_add(1, Ordering::SeqCst);
        TOO_MANY.to_string()
    } else {
        state.logins.fetch_add(1, Ordering::SeqCst);
        let token = state.valid_token.lock().expect("lock").clone();
        match token {
            // No login route: the request falls through to the web UI's index page.
            None => {
                let page = "<!doctype html><html><body><div id=\"app\"></div></body></html>";
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
            }
            Some(token) if body["password"] == PASSWORD => format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: theme=dark; Path=/\r\n\
                 Set-Cookie: op_session={token}; Path=/; HttpOnly; SameSite=Strict\r\n\
                 Content-Type: application/json\r\nContent-Length: 11\r\n\
                 Connection: close\r\n\r\n{{\"ok\":true}}"
            ),
            Some(_) => {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            }
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
        let refuse = |status: http::StatusCode, body: &str| -> ErrorResponse {
            http::Response::builder()
                .status(status)
                .body(Some(body.to_string()))
                .expect("response")
        };
        // The engine's middleware: the rate limit first, then the cookie.
        if !checker.allow_request() {
            return Err(refuse(
                http::StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded\n",
            ));
        }
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
            Err(refuse(http::StatusCode::UNAUTHORIZED, "unauthorized\n"))
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    state.upgrades.fetch_add(1, Ordering::SeqCst);
    let (mut sink, mut stream) = ws.split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    state.conns.lock().expect("lock").insert(
        id,
        Conn {
            out: out.clone(),
            sessions: HashSet::new(),
        },
    );
    state.log("ws_connected", json!({"remote": "127.0.0.1"}));
    tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
    });

    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        match frame["type"].as_str().unwrap_or_default() {
            "message" => start_run(&state, id, frame),
            "cancel" => {
                let session = frame["session_id"].as_str().unwrap_or_default();
                state
                    .cancels
                    .lock()
                    .expect("lock")
                    .push(session.to_string());
            }
            "tier3_decision" => {
                let action = frame["action_id"].as_str().unwrap_or_default().to_string();
                let decision = frame["decision"].as_str().unwrap_or_default().to_string();
                if let Some(waiting) = state.pending.lock().expect("lock").remove(&action) {
                    let _ = waiting.send(decision == "approve");
                }
                state
                    .decisions
                    .lock()
                    .expect("lock")
                    .push((action, decision));
            }
            "ping" => {
                let _ = out.send(Message::text(json!({"type": "pong"}).to_string()));
            }
            other => {
                let error = json!({"type": "error", "session_id": "", "message_id": "",
                    "error": {"code": "UNKNOWN_TYPE", "message": format!("unknown message type: {other}")}});
                let _ = out.send(Message::text(error.to_string()));
            }
        }
    }
    // A closed socket is unsubscribed; its runs go on (`unregisterConn`).
    state.conns.lock().expect("lock").remove(&id);
}

fn start_run(state: &Arc<State>, conn: u64, frame: Value) {
    let session = frame["session_id"].as_str().unwrap_or_default().to_string();
    let run = format!("msg-{}", state.next_id.fetch_add(1, Ordering::SeqCst));
    if let Some(c) = state.conns.lock().expect("lock").get_mut(&conn) {
        c.sessions.insert(session.clone());
    }
    let content_len = frame["content"].as_str().map_or(0, str::len);
    let _ = state.frames.send(frame);
    state.log(
        "ws_message_received",
        json!({"session": session, "message_id": run, "content_len": content_len}),
    );
    let state = state.clone();
    state.queued_runs.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let _agent = state.agent.lock().await;
        state.queued_runs.fetch_sub(1, Ordering::SeqCst);
        let mut steps: VecDeque<Step> = (state.script)(&session).into();
        while let Some(step) = steps.pop_front() {
            match step {
                Step::Json(mut event) => {
                    if event.get("session_id").is_none() {
                        event["session_id"] = json!(session);
                    }
                    if event.get("message_id").is_none() {
                        event["message_id"] = json!(run);
                    }
                    let to = event["session_id"].as_str().unwrap_or_default().to_string();
                    state.broadcast(&to, Message::text(event.to_string()));
                }
                Step::Raw(text) => state.broadcast(&session, Message::text(text)),
                Step::Ping => state.broadcast(&session, Message::Ping(b"hi".to_vec().into())),
                Step::Work(time) => tokio::time::sleep(time).await,
                Step::Hold => std::future::pending::<()>().await,
                Step::Close => {
                    if let Some(c) = state.conns.lock().expect("lock").get(&conn) {
                        let _ = c.out.send(Message::Close(None));
                    }
                }
                Step::Tier3 {
                    mut approval,
                    approved,
                    denied,
                } => {
                    if approval.get("action_id").is_none() {
                        let n = state.next_id.fetch_add(1, Ordering::SeqCst);
                        approval["action_id"] = json!(format!("act-{n}"));
                    }
                    let action = approval["action_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let timeout = approval["timeout_secs"].as_u64().unwrap_or(300);
                    let (decided, decision) = oneshot::channel();
                    state
                        .pending
                        .lock()
                        .expect("lock")
                        .insert(action.clone(), decided);
                    let event = json!({"type": "tier3_approval_required", "session_id": session,
                        "message_id": run, "tier3_approval": approval});
                    state.broadcast(&session, Message::text(event.to_string()));
                    let approved_now =
                        match tokio::time::timeout(Duration::from_secs(timeout), decision).await {
                            Ok(Ok(yes)) => yes,
                            // A timeout is a deny, with no event.
                            _ => {
                                state.pending.lock().expect("lock").remove(&action);
                                false
                            }
                        };
                    if state.queued_runs.load(Ordering::SeqCst) >= 2 {
                        // The decision (a tool result) can no longer reach the agent.
                        std::future::pending::<()>().await;
                    }
                    let branch = if approved_now { approved } else { denied };
                    for step in branch.into_iter().rev() {
                        steps.push_front(step);
                    }
                }
            }
        }
        state.finished_runs.fetch_add(1, Ordering::SeqCst);
    });
}

pub fn token(session: &str, text: &str) -> Step {
    Step::Json(json!({"type": "llm_token", "session_id": session, "text": {"text": text}}))
}

pub fn complete(session: &str, content: &str) -> Step {
    Step::Json(json!({
        "type": "response_complete",
        "session_id": session,
        "response_complete": {"content": content, "thoughts": []}
    }))
}

/// An `error` event as the engine sends it (`recoverable` as the agent sets it:
/// `false` from the agent loop, `true` for AGENT_UNAVAILABLE).
pub fn error(session: &str, code: &str) -> Step {
    Step::Json(json!({
        "type": "error",
        "session_id": session,
        "error": {"code": code, "message": format!("{code} happened"), "recoverable": code == "AGENT_UNAVAILABLE"}
    }))
}

pub fn action_started(session: &str) -> Step {
    Step::Json(json!({
        "type": "action_started",
        "session_id": session,
        "action_started": {"tool_name": "read_file", "summary": "Reading notes.md"}
    }))
}

/// A Tier 3 request for `execute_command`, then either branch.
pub fn tier3(timeout_secs: u64, approved: Vec<Step>, denied: Vec<Step>) -> Step {
    Step::Tier3 {
        approval: json!({"tool_name": "execute_command", "reasoning": "modifies system configuration",
            "timeout_secs": timeout_secs}),
        approved,
        denied,
    }
}

/// A run that asks for approval to install a package (timing out after
/// `timeout_secs`), then says whether it did.
pub fn install_with_approval(
    timeout_secs: u64,
) -> impl Fn(&str) -> Vec<Step> + Send + Sync + 'static {
    move |session: &str| {
        vec![
            action_started(session),
            tier3(
                timeout_secs,
                vec![complete(session, "Done: the package is installed.")],
                vec![complete(session, "I did not install it.")],
            ),
        ]
    }
}
