//! The small types every part of the adapter speaks: who a message is from or goes
//! to (numbers, user ids, the allow-list), the session a conversation belongs to,
//! values that must never reach a log, and the approvals asked of a user (their message
//! and tamper-proof reply buttons). Nothing here imports an adapter (`state`,
//! `engine`, `graph`, `webhook`, `server`) or `config`: they all depend on this.

pub mod approval;
pub mod phone;
pub mod secret;
pub mod session;

pub use approval::{
    APPROVE_TITLE, ApprovalRequest, ButtonVerdict, DENY_TITLE, Decision, approval_body, button_id,
    is_approval_button, read_button,
};
pub use phone::{AllowList, Recipient, canonical_number, digits, mask};
pub use secret::{Rotating, Secret};
pub use session::{Mode, SessionRecord};

/// Unix seconds now; injected so tests can move time.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;
