//! The documented HTTP engine contract:
//! `POST {url}` with `{"session_id","mode","text","from","message_id","channel":"whatsapp"}`
//! (and `Authorization: Bearer` when a token is configured); the engine answers
//! 200 `{"reply":"..."}`.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, Turn, json_problem};
use crate::domain::{Mode, Rotating, Secret};

pub struct HttpEngine {
    client: reqwest::Client,
    url: String,
    token: Option<Rotating<Secret>>,
    timeout: Duration,
}

#[derive(Serialize)]
struct EngineRequest<'a> {
    session_id: &'a str,
    mode: Mode,
    text: &'a str,
    from: &'a str,
    message_id: &'a str,
    channel: &'static str,
}

#[derive(Deserialize)]
struct EngineResponse {
    #[serde(default)]
    reply: Option<String>,
}

impl HttpEngine {
    /// `client` is shared with the rest of the process: built once at start.
    pub fn new(
        client: reqwest::Client,
        url: String,
        token: Option<Rotating<Secret>>,
        timeout: Duration,
    ) -> Self {
        HttpEngine {
            client,
            url,
            token,
            timeout,
        }
    }
}

#[async_trait]
impl Engine for HttpEngine {
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError> {
        let body = EngineRequest {
            session_id: turn.session_id,
            mode: turn.mode,
            text: turn.text,
            from: turn.from,
            message_id: turn.message_id,
            channel: "whatsapp",
        };
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.current().expose());
        }
        let response = request.send().await.map_err(|e| self.classify(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(EngineError::Status(status.as_u16()));
        }
        let bytes = response.bytes().await.map_err(|e| self.classify(e))?;
        let parsed: EngineResponse = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::BadReply(format!(
                "expected {{\"reply\":\"...\"}}: {}",
                json_problem(&e)
            ))
        })?;
        Ok(parsed.reply.unwrap_or_default())
    }
}

impl HttpEngine {
    fn classify(&self, error: reqwest::Error) -> EngineError {
        if error.is_timeout() {
            EngineError::Timeout(self.timeout)
        } else if !error.is_connect() {
            // The request may have reached the engine: treat it as a turn begun.
            EngineError::BadReply(format!("connection failed: {}", error.without_url()))
        } else {
            // Without the URL: it may carry credentials in its query.
            EngineError::Unreachable(error.without_url().to_string())
        }
    }
}
