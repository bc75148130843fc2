//! A tap on a Tier 3 Approve / Deny button. It is answered at once, not behind the
//! sender's turn that waits for it (that would wait for itself), and costs no state:
//! the button id is signed and names the action, the decision, its owner and when it
//! expires ([`crate::domain::approval`]).

use super::runner::TurnRunner;
use super::{Accepted, Action, Outcome};
use crate::commands::{APPROVAL_EXPIRED_TEXT, DECISION_FAILED_TEXT};
use crate::domain::{ButtonVerdict, mask, read_button};

impl TurnRunner {
    /// Check the tap against its sender and the time, and pass the decision to the
    /// engine. A redelivered tap sends the decision again, which the engine ignores
    /// (nothing waits for it any more).
    pub async fn decide(&self, message: &Accepted) -> Outcome {
        let Action::Approval(button) = &message.action else {
            return Outcome::Settled;
        };
        let Some(reply) = self
            .decision_reply(button, &message.state_key, &message.msg_ref)
            .await
        else {
            return Outcome::Settled;
        };
        match self.messenger.send_text(&message.sender, reply).await {
            Ok(()) => Outcome::Settled,
            Err(e) if e.is_permanent() => Outcome::Settled,
            Err(e) => {
                tracing::warn!(error = %e, msg = %message.msg_ref, "could not answer the approval tap; Meta delivers it again");
                Outcome::Failed
            }
        }
    }

    /// Pass a decision on to the engine: an engine request, counted as one.
    async fn pass_decision(
        &self,
        action_id: &str,
        decision: crate::domain::Decision,
    ) -> Result<(), crate::engine::EngineError> {
        let asked = tokio::time::Instant::now();
        let result = self.engine.decide(action_id, decision).await;
        self.metrics
            .engine_request(asked.elapsed(), result.is_err());
        result
    }

    /// What to tell the user about their tap, if anything (a passed-on decision is
    /// answered by the turn it unblocks).
    pub(super) async fn decision_reply(
        &self,
        button: &str,
        owner: &str,
        msg_ref: &str,
    ) -> Option<&'static str> {
        let keys = self.options.approval_keys.current();
        match read_button(&keys, button, owner, self.now()) {
            ButtonVerdict::Valid {
                action_id,
                decision,
            } => match self.pass_decision(&action_id, decision).await {
                Ok(()) => {
                    tracing::info!(msg = %msg_ref, decision = decision.as_str(), "approval decided in WhatsApp");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, msg = %msg_ref, "could not pass the approval decision to the engine");
                    Some(DECISION_FAILED_TEXT)
                }
            },
            ButtonVerdict::Expired { .. } => Some(APPROVAL_EXPIRED_TEXT),
            ButtonVerdict::Invalid | ButtonVerdict::NotApproval => {
                // Altered, signed with a retired key, or tapped by another sender.
                tracing::warn!(msg = %msg_ref, from = %mask(owner), "approval tap refused: not a button this sender was sent");
                None
            }
        }
    }
}
