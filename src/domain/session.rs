//! A sender's conversation with the engine: its id and its mode.

use serde::{Deserialize, Serialize};

/// Conversation mode of a session. `Otr` (Off-The-Record) means nothing of the
/// conversation may be stored anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Normal,
    Otr,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Otr => "otr",
        }
    }
}

/// The session a sender's turns go to (the engine's `session_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub mode: Mode,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last turn; the session expires `session_idle_ttl` after it.
    pub updated_at: u64,
}

impl SessionRecord {
    /// A fresh session with a random id, as `/new` and `/otr` start.
    pub fn start(mode: Mode, now: u64) -> Self {
        SessionRecord {
            id: uuid::Uuid::new_v4().to_string(),
            mode,
            created_at: now,
            updated_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_session_has_a_new_id_each_time() {
        let a = SessionRecord::start(Mode::Otr, 7);
        let b = SessionRecord::start(Mode::Otr, 7);
        assert_ne!(a.id, b.id);
        assert_eq!((a.mode, a.created_at, a.updated_at), (Mode::Otr, 7, 7));
    }
}
