//! The OpenParallax engine's own chat protocol: JSON frames over the WebSocket of
//! its web UI (`ws(s)://HOST:PORT/api/ws`, `internal/web/websocket.go`).
//!
//! One turn:
//! 1. (remote engines only) `POST /api/login {"password":"..."}` on the same host
//!    and port answers with a `Set-Cookie: op_session=...`; the cookie is cached
//!    in the engine and sent as `Cookie:` on every WebSocket upgrade. The engine
//!    issues a new one when it restarts, so a 401/403 upgrade answer triggers one
//!    fresh login and one retry.
//! 2. Open the WebSocket and send
//!    `{"type":"message","session_id":"..","content":"..","mode":"normal"|"otr"}`.
//!    The engine creates unknown session ids itself, so ours are used as they are.
//! 3. Read events until `response_complete` or `error` for this session; events
//!    of other sessions (the engine broadcasts some to every socket) and unknown
//!    types are ignored. The reply is `response_complete.content`, or the
//!    concatenated `llm_token` texts when that is empty. An `error` event (nested
//!    `{"error":{"code","message"}}` or flat `{"code","message"}`) becomes
//!    [`EngineError::Reported`]; an `error` without a session id is also ours,
//!    since the engine reports problems with the request itself that way.
//!
//! The whole turn (login included) runs within the configured timeout.
//!
//! Tier 3 approvals cannot be answered from WhatsApp. When a
//! `tier3_approval_required` event for the session arrives, the adapter keeps
//! waiting for the final response and then prepends [`APPROVAL_NOTICE`] and a
//! blank line to the reply (once, however many such events came), so the user
//! learns why the answer took long or what is still pending in the app.
//!
//! A new WebSocket is opened for every turn: on Lambda the container is frozen
//! between invocations, so a socket kept across turns would mostly be found dead,
//! and one connection per turn keeps the engine's per-connection state trivial.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{APPROVAL_NOTICE, Engine, EngineError, Notices, Turn, json_problem};
use crate::domain::{Mode, Secret};

/// Name of the engine's session cookie.
const COOKIE_NAME: &str = "op_session";
/// Bound on the polite close after the final event (outside the turn timeout,
/// so a slow close never costs an answer that has already arrived).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct OpenParallaxEngine {
    http: reqwest::Client,
    /// The WebSocket and login URLs, or why the configured URL is unusable.
    endpoints: Result<Endpoints, String>,
    password: Option<Secret>,
    timeout: Duration,
    /// The `op_session=...` pair from the last login. Held while logging in, so
    /// concurrent turns wait for one login instead of each doing their own.
    cookie: Mutex<Option<Secret>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints {
    ws: String,
    login: String,
}

/// How a WebSocket upgrade attempt ended, when it did not fail outright.
enum Upgrade {
    Open(Box<Socket>),
    /// The engine answered the upgrade with 401 or 403.
    Unauthorized(u16),
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
struct LoginRequest<'a> {
    password: &'a str,
}

/// The part every event has.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    session_id: Option<String>,
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
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorPayload {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl OpenParallaxEngine {
    /// `http` is shared with the rest of the process (built once at start) and is
    /// used for the login only. `ws_url` is the engine's `ws(s)://HOST:PORT/api/ws`
    /// (a bare `ws(s)://HOST:PORT` or an `http(s)://` URL is accepted too).
    /// Without a password no login is attempted: a localhost engine needs none.
    pub fn new(
        http: reqwest::Client,
        ws_url: String,
        password: Option<Secret>,
        timeout: Duration,
    ) -> Self {
        OpenParallaxEngine {
            http,
            endpoints: Endpoints::from_url(&ws_url),
            password,
            timeout,
            cookie: Mutex::new(None),
        }
    }

    async fn turn(
        &self,
        turn: &Turn<'_>,
        endpoints: &Endpoints,
        notices: Option<&Notices>,
    ) -> Result<Reply, EngineError> {
        let cookie = self.cookie(endpoints, None).await?;
        let mut socket = match self.upgrade(endpoints, cookie.as_ref()).await? {
            Upgrade::Open(socket) => socket,
            Upgrade::Unauthorized(status) => {
                if self.password.is_none() {
                    return Err(EngineError::Unreachable(format!(
                        "the engine refused the WebSocket with HTTP {status}: \
                         it requires a login, configure the engine password"
                    )));
                }
                let fresh = self.cookie(endpoints, cookie.as_ref()).await?;
                match self.upgrade(endpoints, fresh.as_ref()).await? {
                    Upgrade::Open(socket) => socket,
                    Upgrade::Unauthorized(status) => {
                        return Err(EngineError::Unreachable(format!(
                            "the engine refused the WebSocket with HTTP {status} \
                             even after a fresh login"
                        )));
                    }
                }
            }
        };

        let frame = serde_json::to_string(&ClientMessage {
            kind: "message",
            session_id: turn.session_id,
            content: turn.text,
            mode: turn.mode,
        })
        .map_err(|e| EngineError::BadReply(format!("could not encode the message: {e}")))?;
        socket.send(Message::text(frame)).await.map_err(|e| {
            EngineError::Unreachable(format!("could not send the message to the engine: {e}"))
        })?;

        let text = read_reply(&mut socket, turn.session_id, notices).await?;
        Ok(Reply { socket, text })
    }

    /// The cookie to send, logging in first when there is none yet. `stale` is a
    /// cookie the engine just refused: unless another turn has already replaced
    /// it, log in again.
    async fn cookie(
        &self,
        endpoints: &Endpoints,
        stale: Option<&Secret>,
    ) -> Result<Option<Secret>, EngineError> {
        let Some(password) = &self.password else {
            return Ok(None);
        };
        let mut cached = self.cookie.lock().await;
        if let Some(current) = cached.as_ref()
            && stale.is_none_or(|stale| stale != current)
        {
            return Ok(Some(current.clone()));
        }
        *cached = None;
        let fresh = self.login(endpoints, password).await?;
        *cached = Some(fresh.clone());
        Ok(Some(fresh))
    }

    async fn login(&self, endpoints: &Endpoints, password: &Secret) -> Result<Secret, EngineError> {
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
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(EngineError::Unreachable(format!(
                "the engine refused the login with HTTP {}: check the configured engine password",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            // Before any turn: a failed login never started one.
            return Err(EngineError::Unreachable(format!(
                "the engine login answered HTTP {}",
                status.as_u16()
            )));
        }
        response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(session_cookie)
            .ok_or_else(|| {
                EngineError::Unreachable(format!(
                    "the engine login answered without an {COOKIE_NAME} cookie"
                ))
            })
    }

    async fn upgrade(
        &self,
        endpoints: &Endpoints,
        cookie: Option<&Secret>,
    ) -> Result<Upgrade, EngineError> {
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
            Ok((socket, _response)) => Ok(Upgrade::Open(Box::new(socket))),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    Ok(Upgrade::Unauthorized(status))
                } else {
                    Err(EngineError::Unreachable(format!(
                        "the engine refused the WebSocket with HTTP {status}"
                    )))
                }
            }
            Err(tungstenite::Error::Io(e)) => Err(EngineError::Unreachable(format!(
                "cannot connect to the engine: {e}"
            ))),
            Err(e) => Err(EngineError::Unreachable(format!(
                "WebSocket handshake with the engine failed: {e}"
            ))),
        }
    }
}

struct Reply {
    socket: Box<Socket>,
    text: String,
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
}

impl OpenParallaxEngine {
    async fn run(&self, turn: &Turn<'_>, notices: Option<&Notices>) -> Result<String, EngineError> {
        let endpoints = self
            .endpoints
            .as_ref()
            .map_err(|e| EngineError::Unreachable(e.clone()))?;
        let Reply { mut socket, text } =
            match tokio::time::timeout(self.timeout, self.turn(turn, endpoints, notices)).await {
                Ok(outcome) => outcome?,
                // Dropping the socket closes it; the engine then cancels the run.
                Err(_) => return Err(EngineError::Timeout(self.timeout)),
            };
        // Best effort: the answer is in hand whatever happens here.
        let _ = tokio::time::timeout(CLOSE_GRACE, WebSocketStream::close(&mut socket, None)).await;
        Ok(text)
    }
}

/// Read events until the final one for `session_id`. A Tier 3 approval request is
/// announced through `notices` at once; without a channel the notice goes in front
/// of the reply text instead.
async fn read_reply(
    socket: &mut Socket,
    session_id: &str,
    notices: Option<&Notices>,
) -> Result<String, EngineError> {
    let mut tokens = String::new();
    let mut approval_requested = false;
    let mut prepend_notice = false;
    // Pings are answered by tungstenite itself while reading.
    while let Some(message) = socket.next().await {
        let message = message.map_err(|e| {
            EngineError::BadReply(format!("connection failed before the final event: {e}"))
        })?;
        let value: serde_json::Value = match &message {
            Message::Text(text) => serde_json::from_str(text.as_str()),
            Message::Binary(bytes) => serde_json::from_slice(bytes),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        }
        .map_err(|e| EngineError::BadReply(format!("event is not JSON: {}", json_problem(&e))))?;
        let envelope = Envelope::deserialize(&value).map_err(|e| {
            EngineError::BadReply(format!("event without a type: {}", json_problem(&e)))
        })?;
        let ours = envelope.session_id.as_deref() == Some(session_id);
        match envelope.kind.as_str() {
            "llm_token" if ours => {
                let event = TokenEvent::deserialize(&value).map_err(|e| bad("llm_token", e))?;
                if let Some(text) = event.text.and_then(|t| t.text) {
                    tokens.push_str(&text);
                }
            }
            "tier3_approval_required" if ours => match notices {
                Some(channel) => {
                    if !approval_requested {
                        let _ = channel.send(APPROVAL_NOTICE.to_string());
                    }
                    approval_requested = true;
                    prepend_notice = false;
                }
                None => {
                    approval_requested = true;
                    prepend_notice = true;
                }
            },
            "response_complete" if ours => {
                let event =
                    CompleteEvent::deserialize(&value).map_err(|e| bad("response_complete", e))?;
                let content = event
                    .response_complete
                    .and_then(|payload| payload.content)
                    .unwrap_or_default();
                let text = if content.trim().is_empty() {
                    tokens
                } else {
                    content
                };
                return Ok(with_notice(text, prepend_notice));
            }
            // An error without a session id is about our request itself.
            "error" if ours || envelope.session_id.as_deref().is_none_or(str::is_empty) => {
                let event = ErrorEvent::deserialize(&value).map_err(|e| bad("error", e))?;
                let (code, message) = match event.error {
                    Some(nested) => (nested.code, nested.message),
                    None => (event.code, event.message),
                };
                return Err(EngineError::Reported {
                    code: code.unwrap_or_else(|| "UNKNOWN".into()),
                    message: message.unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    Err(EngineError::BadReply(
        "the engine closed the connection before the final event".into(),
    ))
}

fn bad(kind: &str, error: serde_json::Error) -> EngineError {
    EngineError::BadReply(format!("malformed {kind} event: {}", json_problem(&error)))
}

fn with_notice(text: String, approval_requested: bool) -> String {
    match (approval_requested, text.is_empty()) {
        (false, _) => text,
        (true, true) => APPROVAL_NOTICE.to_string(),
        (true, false) => format!("{APPROVAL_NOTICE}\n\n{text}"),
    }
}

/// `op_session=VALUE` from one `Set-Cookie` header value, if it is that cookie.
fn session_cookie(set_cookie: &str) -> Option<Secret> {
    let pair = set_cookie.split(';').next()?.trim();
    let (name, value) = pair.split_once('=')?;
    let value = value.trim();
    (name.trim() == COOKIE_NAME && !value.is_empty())
        .then(|| Secret::new(format!("{COOKIE_NAME}={value}")))
}

impl Endpoints {
    /// `ws(s)://HOST:PORT/api/ws` and the matching `http(s)://HOST:PORT/api/login`.
    /// A root path means `/api/ws`; a path ending in `/ws` (behind a prefix) logs
    /// in at the sibling `/login`; any other path logs in at `/api/login`.
    fn from_url(url: &str) -> Result<Endpoints, String> {
        let unusable = "the engine URL must look like ws://HOST:PORT/api/ws or wss://HOST/api/ws";
        let mut ws = Url::parse(url).map_err(|_| unusable.to_string())?;
        let (ws_scheme, http_scheme) = match ws.scheme() {
            "ws" | "http" => ("ws", "http"),
            "wss" | "https" => ("wss", "https"),
            _ => return Err(unusable.into()),
        };
        if ws.host_str().is_none_or(str::is_empty) {
            return Err(unusable.into());
        }
        ws.set_scheme(ws_scheme)
            .map_err(|()| unusable.to_string())?;
        if ws.path() == "/" || ws.path().is_empty() {
            ws.set_path("/api/ws");
        }
        let mut login = ws.clone();
        login
            .set_scheme(http_scheme)
            .map_err(|()| unusable.to_string())?;
        let login_path = match ws.path().strip_suffix("/ws") {
            Some(prefix) => format!("{prefix}/login"),
            None => "/api/login".to_string(),
        };
        login.set_path(&login_path);
        login.set_query(None);
        login.set_fragment(None);
        ws.set_fragment(None);
        Ok(Endpoints {
            ws: ws.to_string(),
            login: login.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(url: &str) -> Endpoints {
        match Endpoints::from_url(url) {
            Ok(endpoints) => endpoints,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn derives_the_login_url_from_the_websocket_url() {
        assert_eq!(
            endpoints("ws://engine.local:3100/api/ws"),
            Endpoints {
                ws: "ws://engine.local:3100/api/ws".into(),
                login: "http://engine.local:3100/api/login".into(),
            }
        );
        assert_eq!(
            endpoints("wss://agent.example.com/api/ws"),
            Endpoints {
                ws: "wss://agent.example.com/api/ws".into(),
                login: "https://agent.example.com/api/login".into(),
            }
        );
    }

    #[test]
    fn accepts_bare_hosts_http_schemes_and_prefixes() {
        assert_eq!(
            endpoints("ws://10.0.0.5:3100"),
            Endpoints {
                ws: "ws://10.0.0.5:3100/api/ws".into(),
                login: "http://10.0.0.5:3100/api/login".into(),
            }
        );
        assert_eq!(
            endpoints("https://example.com/op/api/ws"),
            Endpoints {
                ws: "wss://example.com/op/api/ws".into(),
                login: "https://example.com/op/api/login".into(),
            }
        );
    }

    #[test]
    fn rejects_other_urls() {
        for url in ["", "engine:3100", "ftp://host/api/ws", "ws://", "/api/ws"] {
            assert!(Endpoints::from_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn picks_the_session_cookie() {
        let pick = |header: &str| session_cookie(header).map(|c| c.expose().to_string());
        assert_eq!(
            pick("op_session=abc123; Path=/; HttpOnly; SameSite=Strict").as_deref(),
            Some("op_session=abc123")
        );
        assert_eq!(pick("other=1; Path=/"), None);
        assert_eq!(pick("op_session=; Max-Age=0"), None);
    }

    #[test]
    fn the_notice_goes_first_once() {
        assert_eq!(with_notice("hi".into(), false), "hi");
        assert_eq!(
            with_notice("hi".into(), true),
            format!("{APPROVAL_NOTICE}\n\nhi")
        );
        assert_eq!(with_notice(String::new(), true), APPROVAL_NOTICE);
    }
}
