//! The built-in engine for local runs: replies with the user's text unchanged.

use async_trait::async_trait;

use super::{Engine, EngineError, Turn};

#[derive(Debug, Default, Clone, Copy)]
pub struct EchoEngine;

#[async_trait]
impl Engine for EchoEngine {
    async fn reply(&self, turn: &Turn<'_>) -> Result<String, EngineError> {
        Ok(turn.text.to_string())
    }
}
