//! The OpenParallax engine's own chat protocol: JSON frames over the WebSocket of
//! its web UI (`ws(s)://HOST:PORT/api/ws`, `internal/web/websocket.go`), the only
//! way into the engine from another machine.
//!
//! One process keeps one socket ([`connection`]) for every turn and session, so a
//! busy adapter stays far below the engine's per-IP limit on `/api/*`. One turn:
//! 1. (engines that listen off localhost with a password) `POST /api/login
//!    {"password"}` sets an `op_session` cookie, sent on the upgrade; once per
//!    process, again after a 401/403 (the engine issues a new token when it
//!    restarts). An engine without a login route (localhost, or no password) answers
//!    with its web page or 404: the adapter warns once and goes on without a cookie.
//! 2. Send `{"type":"message","session_id","content","mode":"normal"|"otr"}` and
//!    wait for the run's events, routed to this turn by session and the run's
//!    engine-made id ([`router`]), until `response_complete` or a final `error`.
//! 3. A 429 on the login or the upgrade (the engine sends no `Retry-After`; a proxy
//!    may) is retried with a bounded backoff within the turn's time; if the time runs
//!    out the turn was never taken, so it may be asked again.
//!
//! The reply is `response_complete.content`, or the streamed `llm_token` texts when
//! that is empty. Errors are decided by code, never by `recoverable` (the agent sends
//! `false` even when a reply follows): `STREAM_ERROR` and `COMPACTION_FAILED` are
//! followed by a `response_complete` (`internal/agent/loop.go`), so the turn keeps
//! waiting; every other code ends the run.
//!
//! Giving up (the turn's time ran out) sends `cancel`, which only ends the engine's
//! wait for this socket: the run goes on (`internal/engine/engine_tools.go`
//! `ProcessMessageForWeb`), and its late events are recognised as stale.
//!
//! A Tier 3 approval request (`tier3_approval_required`) goes to the turn runner as a
//! [`Notice::Approval`]; any socket may answer it with `tier3_decision`
//! ([`Engine::decide`], `handleTier3Decision`).

mod connection;
mod endpoints;
mod router;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{APPROVAL_NOTICE, Engine, EngineError, Notice, Notices, Turn, json_problem};
use crate::domain::{ApprovalRequest, Decision, Mode, Rotating, Secret};
use connection::{Connection, lock};
use endpoints::{COOKIE_NAME, Endpoints, session_cookie};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// First wait after a 429; doubled each time, at most [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Bound on the polite close of a parked socket.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// Time a Tier 3 decision may take to reach the engine.
const DECISION_BUDGET: Duration = Duration::from_secs(10);
/// Error codes after which the agent still sends a `response_complete`
/// (`internal/agent/loop.go`); every other code ends the run.
const CONTINUING_ERRORS: &[&str] = &["STREAM_ERROR", "COMPACTION_FAILED"];

pub struct OpenParallaxEngine {
    http: reqwest::Client,
    /// The WebSocket and login URLs, or why the configured URL is unusable.
    endpoints: Result<Endpoints, String>,
    password: Option<Rotating<Secret>>,
    timeout: Duration,
    /// The shared socket and what the login found. Held while connecting, so
    /// concurrent turns wait for one connection instead of each opening their own.
    link: tokio::sync::Mutex<Link>,
    /// One turn at a time goes to the engine. Its agent runs one message at a time
    /// anyway, and holds only one more (`processCh` in `cmd/agent/internal_agent.go`):
    /// a further message, sent while a run waits for a tool result (a Tier 3
    /// approval), blocks the agent's stream and wedges it for good.
    turn_slot: tokio::sync::Semaphore,
    /// Turns waiting for [`Self::turn_slot`].
    waiting: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Link {
    connection: Option<Arc<Connection>>,
    login: Login,
}

#[derive(Default)]
enum Login {
    #[default]
    Unknown,
    /// The `op_session=...` pair from the last login.
    Cookie(Secret),
    /// The engine has no login route: it listens on localhost or has no password.
    NotRouted,
}

/// Why a login or upgrade did not succeed.
enum Refusal {
    /// 429: try again after the given time, or a backoff.
    RateLimited(Option<Duration>),
    /// 401 or 403 on the upgrade.
    Unauthorized(u16),
    Failed(EngineError),
}

impl From<EngineError> for Refusal {
    fn from(error: EngineError) -> Self {
        Refusal::Failed(error)
    }
}

#[derive(Serialize)]
struct ClientMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: &'a str,
    content: &'a str,
    mode: Mode,
}

#[derive(Serialize)]
struct DecisionFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    action_id: &'a str,
    decision: &'static str,
}

#[derive(Serialize)]
struct CancelFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: &'a str,
}

#[derive(Serialize)]
struct LoginRequest<'a> {
    password: &'a str,
}

#[derive(Deserialize)]
struct TokenEvent {
    #[serde(default)]
    text: Option<TokenText>,
}

#[derive(Deserialize)]
struct TokenText {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct CompleteEvent {
    #[serde(default)]
    response_complete: Option<CompletePayload>,
}

#[derive(Deserialize)]
struct CompletePayload {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEvent {
    #[serde(default)]
    error: Option<ErrorPayload>,
}

#[derive(Deserialize)]
struct ErrorPayload {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ApprovalEvent {
    #[serde(default)]
    tier3_approval: Option<ApprovalPayload>,
}

#[derive(Deserialize)]
struct ApprovalPayload {
    #[serde(default)]
    action_id: String,
    #[serde(default)]
    tool_name: String,
    #[serde(default)]
    reasoning: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// The engine's default approval timeout (`internal/engine/tier3.go`).
const DEFAULT_APPROVAL_SECS: u64 = 300;

impl OpenParallaxEngine {
    /// `http` is shared with the rest of the process (built once at start) and is
    /// used for the login only. `ws_url` is the engine's `ws(s)://HOST:PORT/api/ws`
    /// (a bare `ws(s)://HOST:PORT` or an `http(s)://` URL is accepted too).
    /// Without a password no login is attempted: a localhost engine needs none.
    pub fn new(
        http: reqwest::Client,
        ws_url: String,
        password: Option<Rotating<Secret>>,
        timeout: Duration,
    ) -> Self {
        OpenParallaxEngine {
            http,
            endpoints: Endpoints::from_url(&ws_url),
            password,
            timeout,
            link: tokio::sync::Mutex::new(Link::default()),
            turn_slot: tokio::sync::Semaphore::new(1),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Turns of this process waiting for the engine to finish another turn.
    pub fn turns_waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn endpoints(&self) -> Result<&Endpoints, EngineError> {
        self.endpoints
            .as_ref()
            .map_err(|e| EngineError::Unreachable(e.clone()))
    }

    /// The shared socket, (re)connected if it is gone or stopped answering.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Connection>, EngineError> {
        let endpoints = self.endpoints()?;
        let mut link = self.link.lock().await;
        if let Some(connection) = &link.connection
            && connection.check().await
        {
            return Ok(connection.clone());
        }
        link.connection = None;
        let socket = self.connect(&mut link, endpoints, deadline).await?;
        let connection = Arc::new(Connection::start(*socket));
        link.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Log in if needed and open the socket, retrying 429s until `deadline`.
    async fn connect(
        &self,
        link: &mut Link,
        endpoints: &Endpoints,
        deadline: Instant,
    ) -> Result<Box<Socket>, EngineError> {
        let mut refreshed = false;
        let mut backoff = BASE_BACKOFF;
        loop {
            let attempt = async {
                let cookie = self.cookie(link, endpoints).await?;
                self.upgrade(endpoints, cookie.as_ref()).await
            };
            let refusal = match attempt.await {
                Ok(socket) => return Ok(socket),
                Err(refusal) => refusal,
            };
            match refusal {
                Refusal::Failed(error) => return Err(error),
                Refusal::Unauthorized(status) => {
                    if self.password.is_none() {
                        return Err(EngineError::Unreachable(format!(
                            "the engine refused the WebSocket with HTTP {status}: \
                             it requires a login, configure the engine password"
                        )));
                    }
                    if refreshed {
                        return Err(EngineError::Unreachable(format!(
                            "the engine refused the WebSocket with HTTP {status} \
                             even after a fresh login"
                        )));
                    }
                    // A restarted engine issues a new token: log in once more.
                    refreshed = true;
                    link.login = Login::Unknown;
                }
                Refusal::RateLimited(retry_after) => {
                    let wait = retry_after.unwrap_or(backoff);
                    if Instant::now() + wait >= deadline {
                        return Err(EngineError::Unreachable(
                            "the engine kept answering 429 (rate limited) until the turn's time ran out"
                                .into(),
                        ));
                    }
                    tracing::warn!(
                        wait_ms = wait.as_millis() as u64,
                        "the engine answered 429 (rate limited); waiting"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The cookie to send: none without a password or a login route; else the one
    /// from the last login, logging in first when there is none.
    async fn cookie(
        &self,
        link: &mut Link,
        endpoints: &Endpoints,
    ) -> Result<Option<Secret>, Refusal> {
        let Some(password) = &self.password else {
            return Ok(None);
        };
        match &link.login {
            Login::Cookie(cookie) => return Ok(Some(cookie.clone())),
            Login::NotRouted => return Ok(None),
            Login::Unknown => {}
        }
        // The password now: a rotated one is used from the next login on.
        link.login = self.login(endpoints, &password.current()).await?;
        Ok(match &link.login {
            Login::Cookie(cookie) => Some(cookie.clone()),
            _ => None,
        })
    }

    async fn login(&self, endpoints: &Endpoints, password: &Secret) -> Result<Login, Refusal> {
        let response = self
            .http
            .post(&endpoints.login)
            .json(&LoginRequest {
                password: password.expose(),
            })
            .send()
            .await
            .map_err(|e| {
                // Without the URL: it may carry credentials in its query.
                EngineError::Unreachable(format!("engine login failed: {}", e.without_url()))
            })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(Refusal::Failed(EngineError::Unreachable(format!(
                "the engine refused the login with HTTP {status}: check the configured engine password"
            ))));
        }
        if status == 429 {
            return Err(Refusal::RateLimited(retry_after(response.headers())));
        }
        let cookie = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(session_cookie);
        match cookie {
            Some(cookie) if response.status().is_success() => Ok(Login::Cookie(cookie)),
            // The route is missing: the request fell through to the web UI's page (or a
            // proxy's 404). The engine has no login, so none is needed.
            _ if response.status().is_success() || status == 404 || status == 405 => {
                tracing::warn!(
                    status,
                    "the engine has no login route ({COOKIE_NAME} not set): it listens on localhost \
                     or has no password; going on without a cookie (engine.password_env is not needed)"
                );
                Ok(Login::NotRouted)
            }
            // Before any turn: a failed login never started one.
            _ => Err(Refusal::Failed(EngineError::Unreachable(format!(
                "the engine login answered HTTP {status}"
            )))),
        }
    }

    async fn upgrade(
        &self,
        endpoints: &Endpoints,
        cookie: Option<&Secret>,
    ) -> Result<Box<Socket>, Refusal> {
        let mut request = endpoints
            .ws
            .as_str()
            .into_client_request()
            .map_err(|e| EngineError::Unreachable(format!("invalid engine URL: {e}")))?;
        if let Some(cookie) = cookie {
            let mut value = HeaderValue::from_str(cookie.expose()).map_err(|_| {
                EngineError::Unreachable("the engine login returned an unusable cookie".into())
            })?;
            value.set_sensitive(true);
            request.headers_mut().insert(header::COOKIE, value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _response)) => Ok(Box::new(socket)),
            Err(tungstenite::Error::Http(response)) => match response.status().as_u16() {
                status @ (401 | 403) => Err(Refusal::Unauthorized(status)),
                429 => Err(Refusal::RateLimited(retry_after(response.headers()))),
                status => Err(Refusal::Failed(EngineError::Unreachable(format!(
                    "the engine refused the WebSocket with HTTP {status}"
                )))),
            },
            Err(tungstenite::Error::Io(e)) => Err(Refusal::Failed(EngineError::Unreachable(
                format!("cannot connect to the engine: {e}"),
            ))),
            Err(e) => Err(Refusal::Failed(EngineError::Unreachable(format!(
                "WebSocket handshake with the engine failed: {e}"
            )))),
        }
    }

    async fn run(&self, turn: &Turn<'_>, notices: Option<&Notices>) -> Result<String, EngineError> {
        let deadline = Instant::now() + self.timeout;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let slot = tokio::time::timeout_at(deadline, self.turn_slot.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(Ok(_slot)) = slot else {
            // Nothing was sent: the turn was never taken.
            return Err(EngineError::Unreachable(format!(
                "the engine was busy with this process's other turns for {:?}",
                self.timeout
            )));
        };
        let connection = match tokio::time::timeout_at(deadline, self.connection(deadline)).await {
            Ok(connection) => connection?,
            // Nothing was sent: the turn was never taken.
            Err(_) => {
                return Err(EngineError::Unreachable(format!(
                    "could not connect to the engine within {:?}",
                    self.timeout
                )));
            }
        };
        let (events, mut run) = mpsc::unbounded_channel();
        if lock(&connection.router)
            .wait(turn.session_id, events)
            .is_err()
        {
            return Err(EngineError::Unreachable(
                "another turn of this session is waiting for the engine".into(),
            ));
        }
        let mut waiting = Waiting {
            connection: &connection,
            session_id: turn.session_id,
            finished: false,
        };
        let frame = serde_json::to_string(&ClientMessage {
            kind: "message",
            session_id: turn.session_id,
            content: turn.text,
            mode: turn.mode,
        })
        .map_err(|e| EngineError::BadReply(format!("could not encode the message: {e}")))?;
        if let Err(e) = connection.send(Message::text(frame)).await {
            // Not written: no run exists.
            waiting.finished = true;
            return Err(EngineError::Unreachable(format!(
                "could not send the message to the engine: {e}"
            )));
        }
        match tokio::time::timeout_at(deadline, read_run(&mut run, notices)).await {
            Ok(Ok(text)) => {
                waiting.finished = true;
                Ok(text)
            }
            Ok(Err(error)) => {
                waiting.finished = matches!(error, EngineError::Reported { .. });
                Err(error)
            }
            Err(_) => Err(EngineError::Timeout(self.timeout)),
        }
    }
}

/// A turn waiting on its session. When it stops waiting without its run's last
/// event, the run goes on: its later events are stale, and the engine's wait for
/// this socket is cancelled.
struct Waiting<'a> {
    connection: &'a Connection,
    session_id: &'a str,
    finished: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.connection.router).done(self.session_id, self.finished);
        if !self.finished
            && let Ok(frame) = serde_json::to_string(&CancelFrame {
                kind: "cancel",
                session_id: self.session_id,
            })
        {
            self.connection.send_later(Message::text(frame));
        }
    }
}

#[async_trait]
impl Engine for OpenParallaxEngine {
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError> {
        self.run(turn, None).await
    }

    async fn reply_with_notices(
        &self,
        turn: &Turn<'_>,
        notices: &Notices,
    ) -> Result<String, EngineError> {
        self.run(turn, Some(notices)).await
    }

    /// A frozen Lambda must not keep the socket: the engine writes every log line to
    /// every socket, and writes to a peer that stopped reading would end up blocking
    /// them (`broadcastLogEntry`). The next invocation opens a new one.
    async fn park(&self) {
        let mut link = self.link.lock().await;
        let Some(connection) = link.connection.take() else {
            return;
        };
        if lock(&connection.router).is_waiting() {
            link.connection = Some(connection);
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, connection.send(Message::Close(None))).await;
    }

    async fn decide(&self, action_id: &str, decision: Decision) -> Result<(), EngineError> {
        let budget = DECISION_BUDGET.min(self.timeout);
        let deadline = Instant::now() + budget;
        let sent = async {
            let connection = self.connection(deadline).await?;
            let frame = serde_json::to_string(&DecisionFrame {
                kind: "tier3_decision",
                action_id,
                decision: decision.as_str(),
            })
            .map_err(|e| EngineError::BadReply(format!("could not encode the decision: {e}")))?;
            connection.send(Message::text(frame)).await.map_err(|e| {
                EngineError::Unreachable(format!("could not send the decision to the engine: {e}"))
            })
        };
        tokio::time::timeout_at(deadline, sent)
            .await
            .unwrap_or(Err(EngineError::Timeout(budget)))
    }
}

/// Read the run's events until its last one. A Tier 3 approval request goes to
/// `notices` at once; without a channel the notice goes in front of the reply text.
async fn read_run(
    run: &mut mpsc::UnboundedReceiver<Value>,
    notices: Option<&Notices>,
) -> Result<String, EngineError> {
    let mut tokens = String::new();
    let mut asked: Vec<String> = Vec::new();
    while let Some(event) = run.recv().await {
        match event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "llm_token" => {
                let token = TokenEvent::deserialize(&event).map_err(|e| bad("llm_token", e))?;
                if let Some(text) = token.text.and_then(|t| t.text) {
                    tokens.push_str(&text);
                }
            }
            "tier3_approval_required" => {
                let request = approval(&event);
                if asked.contains(&request.action_id) {
                    continue;
                }
                asked.push(request.action_id.clone());
                if let Some(channel) = notices {
                    let _ = channel.send(Notice::Approval(request));
                }
            }
            "response_complete" => {
                let complete =
                    CompleteEvent::deserialize(&event).map_err(|e| bad("response_complete", e))?;
                let content = complete
                    .response_complete
                    .and_then(|payload| payload.content)
                    .unwrap_or_default();
                let text = if content.trim().is_empty() {
                    tokens
                } else {
                    content
                };
                let approval_asked = !asked.is_empty() && notices.is_none();
                return Ok(with_notice(text, approval_asked));
            }
            "error" => {
                let error = ErrorEvent::deserialize(&event).map_err(|e| bad("error", e))?;
                let payload = error.error.unwrap_or(ErrorPayload {
                    code: None,
                    message: None,
                });
                let code = payload.code.unwrap_or_else(|| "UNKNOWN".into());
                if CONTINUING_ERRORS.contains(&code.as_str()) {
                    tracing::warn!(code = %code, "the engine reported an error its run recovers from; waiting for the reply");
                    continue;
                }
                return Err(EngineError::Reported {
                    code,
                    message: payload.message.unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    Err(EngineError::BadReply(
        "the engine connection was lost before the final event".into(),
    ))
}

/// The approval request of a `tier3_approval_required` event (fields the engine
/// left out are empty, the timeout its default).
fn approval(event: &Value) -> ApprovalRequest {
    let payload = ApprovalEvent::deserialize(event)
        .ok()
        .and_then(|e| e.tier3_approval);
    match payload {
        Some(p) => ApprovalRequest {
            action_id: p.action_id,
            tool_name: p.tool_name,
            reasoning: p.reasoning,
            timeout_secs: p.timeout_secs.unwrap_or(DEFAULT_APPROVAL_SECS),
        },
        None => ApprovalRequest {
            action_id: String::new(),
            tool_name: String::new(),
            reasoning: String::new(),
            timeout_secs: DEFAULT_APPROVAL_SECS,
        },
    }
}

/// `Retry-After` in seconds, if a proxy added one (the engine itself never does).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|secs| Duration::from_secs(secs.min(60)))
}

fn bad(kind: &str, error: serde_json::Error) -> EngineError {
    EngineError::BadReply(format!("malformed {kind} event: {}", json_problem(&error)))
}

fn with_notice(text: String, approval_asked: bool) -> String {
    match (approval_asked, text.is_empty()) {
        (false, _) => text,
        (true, true) => APPROVAL_NOTICE.to_string(),
        (true, false) => format!("{APPROVAL_NOTICE}\n\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_notice_goes_first_once() {
        assert_eq!(with_notice("hi".into(), false), "hi");
        assert_eq!(
            with_notice("hi".into(), true),
            format!("{APPROVAL_NOTICE}\n\nhi")
        );
        assert_eq!(with_notice(String::new(), true), APPROVAL_NOTICE);
    }

    #[test]
    fn reads_the_engines_approval_shape() {
        let event = json!({"type": "tier3_approval_required", "session_id": "s", "message_id": "msg-1",
            "tier3_approval": {"action_id": "a1", "tool_name": "shell", "reasoning": "why", "timeout_secs": 120}});
        assert_eq!(
            approval(&event),
            ApprovalRequest {
                action_id: "a1".into(),
                tool_name: "shell".into(),
                reasoning: "why".into(),
                timeout_secs: 120
            }
        );
        assert_eq!(
            approval(&json!({"type": "x"})).timeout_secs,
            DEFAULT_APPROVAL_SECS
        );
    }

    #[test]
    fn a_proxys_retry_after_is_honoured_within_bounds() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(http::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(60)));
    }
}
