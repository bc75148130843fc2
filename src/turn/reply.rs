//! One turn, once its messages are held: run the command, notice or engine turn,
//! render and split the reply, send the parts with progress recorded (normal mode
//! only), and settle the message in the store.

use super::runner::TurnRunner;
use super::{Action, Delivery, Outcome};
use crate::commands::{Command, LOST_TEXT, SLOW_TEXT, UNAVAILABLE_TEXT};
use crate::domain::{
    ApprovalRequest, Decision, Mode, Recipient, SessionRecord, approval_body, button_id, mask,
};
use crate::engine::{APPROVAL_NOTICE, EngineError, Notice, Turn};
use crate::format::{FENCE_HEADROOM, convert, rebalance_fences};
use crate::graph::{ReplyButton, SendError};
use crate::split::split_reply;
use crate::state::{Attempt, Progress, StateError};

/// One message being answered.
pub(super) struct TurnState<'a> {
    pub attempt: Attempt<'a>,
    pub msg_ref: &'a str,
    pub now: u64,
    pub session: SessionRecord,
    pub progress: Progress,
}

impl TurnRunner {
    pub(super) async fn answer(
        &self,
        turn: &mut TurnState<'_>,
        to: &Recipient,
        action: Action,
        read_id: &str,
        delivery: Delivery,
    ) -> Outcome {
        let parts = if turn.progress.is_lost() {
            // Its turn began and its reply is gone: never ask the engine again.
            tracing::warn!(msg = %turn.msg_ref, to = %mask(to.key()), "a turn began but its answer was lost; telling the user");
            return self.tell_and_finish(turn, to, LOST_TEXT).await;
        } else if turn.progress.parts.is_empty() {
            match self.reply_parts(turn, to, action, read_id, delivery).await {
                Ok(parts) => parts,
                Err(outcome) => return outcome,
            }
        } else {
            // A redelivery of a normal-mode reply that was cut short: resume it.
            std::mem::take(&mut turn.progress.parts)
        };
        self.send_parts(turn, to, parts).await
    }

    /// The reply to send, or the outcome if the turn ends here.
    async fn reply_parts(
        &self,
        turn: &mut TurnState<'_>,
        to: &Recipient,
        action: Action,
        read_id: &str,
        delivery: Delivery,
    ) -> Result<Vec<String>, Outcome> {
        let text = match action {
            Action::Command(command) => {
                match command {
                    Command::New => turn.session = SessionRecord::start(Mode::Normal, turn.now),
                    Command::Otr => turn.session = SessionRecord::start(Mode::Otr, turn.now),
                    Command::Help => {}
                }
                tracing::info!(from = %mask(to.key()), msg = %turn.msg_ref, command = ?command, "command");
                return Ok(vec![command.confirmation().to_string()]);
            }
            Action::Notice(notice) => return Ok(vec![notice.to_string()]),
            Action::Approval(button) => {
                let reply = self
                    .decision_reply(&button, turn.attempt.sender, turn.msg_ref)
                    .await;
                return Ok(reply.into_iter().map(str::to_string).collect());
            }
            Action::Turn(text) => text,
        };
        if self.options.read_receipts
            && let Err(e) = self.messenger.mark_read_typing(read_id).await
        {
            tracing::warn!(error = %e, msg = %turn.msg_ref, "read receipt / typing indicator failed");
        }
        let request = Turn {
            session_id: &turn.session.id,
            mode: turn.session.mode,
            text: &text,
            from: to.key(),
            message_id: turn.attempt.message_id,
        };
        // The claim recorded that this turn began; every later write keeps it.
        turn.progress.started = true;
        let asked = tokio::time::Instant::now();
        let answer = self
            .ask_engine(&request, to, turn.attempt.sender, turn.msg_ref)
            .await;
        self.metrics
            .engine_request(asked.elapsed(), answer.is_err());
        let error = match answer {
            Ok(reply) => return Ok(self.render(&reply)),
            Err(error) => error,
        };
        let mode = turn.session.mode.as_str();
        if error.may_have_started() {
            tracing::error!(error = %error, msg = %turn.msg_ref, mode, "engine failed after taking the turn; it is not asked again");
            let notice = match error {
                EngineError::Timeout(_) => SLOW_TEXT,
                _ => UNAVAILABLE_TEXT,
            };
            return Err(self.tell_and_finish(turn, to, notice).await);
        }
        // The engine never took the turn: asking again is safe.
        turn.progress.started = false;
        let transient = error.is_transient();
        let last = match delivery {
            Delivery::Webhook => !transient,
            Delivery::Queued { last, .. } => last || !transient,
        };
        tracing::error!(error = %error, transient, last, msg = %turn.msg_ref, mode, "engine did not take the turn");
        if last {
            return Err(self.tell_and_finish(turn, to, UNAVAILABLE_TEXT).await);
        }
        if delivery == Delivery::Webhook {
            // Meta's redelivery asks again; the user knows meanwhile, and is not held up.
            self.tell(turn, to, UNAVAILABLE_TEXT).await;
        }
        Err(self.abandon(turn).await)
    }

    /// Tell the user `notice` once per message (`progress.notice_sent`).
    async fn tell(&self, turn: &mut TurnState<'_>, to: &Recipient, notice: &str) -> bool {
        if turn.progress.notice_sent {
            return true;
        }
        match self.messenger.send_text(to, notice).await {
            Ok(()) => {
                turn.progress.notice_sent = true;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, msg = %turn.msg_ref, "could not send the notice");
                false
            }
        }
    }

    /// Tell the user and settle the message; if the notice cannot be sent, release it
    /// for a later attempt (which tells them instead of asking again).
    async fn tell_and_finish(
        &self,
        turn: &mut TurnState<'_>,
        to: &Recipient,
        notice: &str,
    ) -> Outcome {
        if self.tell(turn, to, notice).await {
            self.finish(turn).await
        } else {
            self.abandon(turn).await
        }
    }

    /// The engine's Markdown as WhatsApp parts: converted, split, code fences closed at
    /// each cut and reopened in the next part.
    fn render(&self, reply: &str) -> Vec<String> {
        let text = convert(reply, self.options.format);
        if text.contains("```") {
            let room = self
                .options
                .max_part_units
                .saturating_sub(FENCE_HEADROOM)
                .max(1);
            rebalance_fences(split_reply(&text, room))
        } else {
            split_reply(&text, self.options.max_part_units)
        }
    }

    /// Ask the engine, sending its interim notices to the user while it works.
    async fn ask_engine(
        &self,
        request: &Turn<'_>,
        to: &Recipient,
        owner: &str,
        msg_ref: &str,
    ) -> Result<String, EngineError> {
        let (notices, mut pending) = tokio::sync::mpsc::unbounded_channel();
        let reply = self.engine.reply_with_notices(request, &notices);
        tokio::pin!(reply);
        let mut told_to_use_the_app = false;
        loop {
            tokio::select! {
                result = &mut reply => return result,
                Some(notice) = pending.recv() => {
                    let sent = match notice {
                        Notice::Text(text) => self.messenger.send_text(to, &text).await,
                        Notice::Approval(approval) => {
                            match self.approval_buttons(&approval, owner) {
                                Some(buttons) => {
                                    tracing::info!(msg = %msg_ref, to = %mask(to.key()), "approval asked in WhatsApp");
                                    let body = approval_body(&approval);
                                    self.messenger.send_buttons(to, &body, &buttons).await
                                }
                                None if told_to_use_the_app => Ok(()),
                                None => {
                                    told_to_use_the_app = true;
                                    self.messenger.send_text(to, APPROVAL_NOTICE).await
                                }
                            }
                        }
                    };
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, msg = %msg_ref, "could not send an interim notice");
                    }
                }
            }
        }
    }

    /// Approve / Deny buttons whose ids only `owner` can use, valid as long as the
    /// engine waits; `None` when approvals are not asked in WhatsApp (or cannot be).
    fn approval_buttons(
        &self,
        approval: &ApprovalRequest,
        owner: &str,
    ) -> Option<Vec<ReplyButton>> {
        let keys = self.options.approval_keys.current();
        if keys.is_empty() {
            return None;
        }
        let expires_at = self.now() + approval.timeout_secs;
        let button = |decision: Decision| {
            Some(ReplyButton {
                id: button_id(&keys, decision, &approval.action_id, owner, expires_at)?,
                title: decision.title().to_string(),
            })
        };
        let buttons = vec![button(Decision::Approve)?, button(Decision::Deny)?];
        Some(buttons)
    }

    async fn send_parts(
        &self,
        turn: &mut TurnState<'_>,
        to: &Recipient,
        parts: Vec<String>,
    ) -> Outcome {
        // OTR replies are never stored: a redelivery asks the engine again.
        let keep_text = turn.session.mode == Mode::Normal;
        let first = turn.progress.sent as usize;
        if keep_text && parts.len() > first + 1 && turn.progress.parts.is_empty() {
            // Several parts to go: store them first, so a crash mid-reply can resume.
            turn.progress.parts = parts.clone();
            if let Err(e) = self
                .store
                .save_progress(&turn.attempt, &turn.progress)
                .await
            {
                tracing::error!(error = %e, msg = %turn.msg_ref, "could not store the reply; nothing sent");
                return self.abandon_after(turn, e).await;
            }
        }
        for (index, part) in parts.iter().enumerate().skip(first) {
            let sent = if index == 0 && self.options.reply_threading {
                self.messenger
                    .send_reply(to, part, turn.attempt.message_id)
                    .await
            } else {
                self.messenger.send_text(to, part).await
            };
            match sent {
                Ok(()) => {
                    turn.progress.sent += 1;
                    let more = index + 1 < parts.len();
                    if more
                        && keep_text
                        && let Err(e) = self
                            .store
                            .save_progress(&turn.attempt, &turn.progress)
                            .await
                    {
                        tracing::error!(error = %e, msg = %turn.msg_ref, "could not record reply progress");
                        return self.abandon_after(turn, e).await;
                    }
                }
                Err(e @ SendError::Permanent { .. }) => {
                    // Retrying cannot help (e.g. 131047 outside the 24 h window): settle.
                    tracing::warn!(error = %e, msg = %turn.msg_ref, to = %mask(to.key()), part = index + 1, "reply refused by the Graph API");
                    turn.progress = Progress::default();
                    return self.finish(turn).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, msg = %turn.msg_ref, part = index + 1, of = parts.len(), "reply part not sent; leaving it for redelivery");
                    if keep_text {
                        turn.progress.parts = parts;
                    } else {
                        turn.progress.sent = 0;
                        turn.progress.parts.clear();
                    }
                    return self.abandon(turn).await;
                }
            }
        }
        tracing::info!(msg = %turn.msg_ref, to = %mask(to.key()), parts = parts.len(), mode = turn.session.mode.as_str(), "answered");
        self.finish(turn).await
    }

    async fn finish(&self, turn: &TurnState<'_>) -> Outcome {
        match self
            .store
            .finish(&turn.attempt, &turn.session, turn.now)
            .await
        {
            Ok(()) => Outcome::Settled,
            Err(e) => {
                tracing::error!(error = %e, msg = %turn.msg_ref, "could not mark the message answered");
                Outcome::Failed
            }
        }
    }

    async fn abandon(&self, turn: &TurnState<'_>) -> Outcome {
        if let Err(e) = self
            .store
            .abandon(&turn.attempt, &turn.progress, &turn.session, turn.now)
            .await
        {
            // The leases expire on their own; the redelivery resumes after that.
            tracing::error!(error = %e, msg = %turn.msg_ref, "could not release the message");
        }
        Outcome::Failed
    }

    async fn abandon_after(&self, turn: &TurnState<'_>, error: StateError) -> Outcome {
        match error {
            StateError::LostLease => Outcome::Failed,
            _ => self.abandon(turn).await,
        }
    }
}
