//! STUB (replaced by the tier3-buttons branch).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub action_id: String,
    pub tool_name: String,
    pub reasoning: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}
