//! The pipeline: one HTTP request in, one response out, the same in serve and Lambda mode.
//!
//! A POST answers 200 only after every message in it was answered (a Lambda is
//! frozen once it responds), 503 when another delivery holds a message, and 500
//! when something failed for now, so that Meta redelivers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};

use super::payload::{
    Change, ChangeValue, Content, Entry, Envelope, InboundMessage, RawMessage, Status,
};
use super::rapid_fire::{Joined, SenderQueues, Waiter, Wake};
use super::signature::{SIGNATURE_HEADER, SignatureCheck, check_signature};
use super::verify::{Verification, verify_subscription};
use crate::allowlist::{AllowList, mask};
use crate::commands::{Command, UNAVAILABLE_TEXT, UNSUPPORTED_TEXT};
use crate::config::{Secret, WhatsAppConfig};
use crate::engine::{Engine, EngineError, Mode, Turn};
use crate::format::{FENCE_HEADROOM, Format, convert, rebalance_fences};
use crate::graph::{Messenger, Recipient, SendError};
use crate::split::{MAX_PART_UTF16, split_reply};
use crate::state::{
    Attempt, Begin, Claim, Merged, Progress, SessionRecord, SessionStore, StateError, message_key,
    waiting_entry,
};

/// Unix seconds; injected so tests can move time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The handler's settings, taken from `channels.whatsapp`.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub phone_number_id: String,
    pub verify_token: Secret,
    pub app_secrets: Vec<Secret>,
    pub allowed_numbers: AllowList,
    /// Username users let in by their business-scoped user id.
    pub allowed_user_ids: Vec<String>,
    /// Quote the user's message in the first part of the reply.
    pub reply_threading: bool,
    /// How the engine's Markdown is rendered.
    pub format: Format,
    pub read_receipts: bool,
    pub unsupported_reply: bool,
    /// How long a message waits for another message of the same sender to be answered
    /// before the delivery is answered 503.
    pub sender_wait: Duration,
    /// Longest reply part, in UTF-16 code units.
    pub max_part_units: usize,
    /// How long a sender's first text waits for quick follow-up lines to join its
    /// turn (in this process); zero: only lines that arrive during a turn are combined.
    pub combine_window: Duration,
}

impl AppOptions {
    /// The defaults of `channels.whatsapp` for one phone number: everyone allowed,
    /// WhatsApp formatting, read receipts and the non-text notice on, no threading, no
    /// combine window.
    pub fn new(phone_number_id: &str, verify_token: Secret, app_secrets: Vec<Secret>) -> Self {
        AppOptions {
            phone_number_id: phone_number_id.to_string(),
            verify_token,
            app_secrets,
            allowed_numbers: AllowList::default(),
            allowed_user_ids: Vec::new(),
            reply_threading: false,
            format: Format::WhatsApp,
            read_receipts: true,
            unsupported_reply: true,
            sender_wait: Duration::from_secs(5),
            max_part_units: MAX_PART_UTF16,
            combine_window: Duration::ZERO,
        }
    }

    pub fn from_config(c: &WhatsAppConfig) -> Self {
        AppOptions {
            allowed_numbers: c.allowed_numbers.clone(),
            allowed_user_ids: c.allowed_user_ids.clone(),
            reply_threading: c.reply_threading,
            format: c.format,
            read_receipts: c.read_receipts,
            unsupported_reply: c.unsupported_reply,
            combine_window: c.combine_window,
            ..AppOptions::new(
                &c.phone_number_id,
                c.verify_token.clone(),
                c.app_secrets.clone(),
            )
        }
    }
}

/// Everything a request needs, built once at start and shared by reference.
pub struct App {
    options: AppOptions,
    store: Arc<dyn SessionStore>,
    engine: Arc<dyn Engine>,
    messenger: Arc<dyn Messenger>,
    clock: Clock,
    /// User ids whose link to a number this process already wrote.
    linked_users: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Requests waiting while another request of this process answers their sender.
    rapid_fire: SenderQueues<Prepared, Outcome>,
}

/// How one message ended, ordered by what it means for the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Answered now, answered before, or needing no answer: 200.
    Settled,
    /// Held by another delivery: 503.
    Busy,
    /// Failed for now, progress kept: 500.
    Failed,
}

/// What the adapter does with a message once it holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Command(Command),
    /// A text for the engine.
    Turn,
    Notice(&'static str),
}

/// A message that needs an answer, with what to do and whose state it touches.
struct Prepared {
    message: InboundMessage,
    state_key: String,
    msg_ref: String,
    action: Action,
}

impl Prepared {
    fn text(&self) -> &str {
        match &self.message.content {
            Content::Text(text) => text,
            _ => "",
        }
    }
}

/// Most messages answered by one combined turn; more wait for the next turn.
const MAX_COMBINED: usize = 10;

impl App {
    pub fn new(
        options: AppOptions,
        store: Arc<dyn SessionStore>,
        engine: Arc<dyn Engine>,
        messenger: Arc<dyn Messenger>,
        clock: Clock,
    ) -> Self {
        App {
            options,
            store,
            engine,
            messenger,
            clock,
            linked_users: Default::default(),
            rapid_fire: SenderQueues::default(),
        }
    }

    /// How many requests wait, in this process, for a turn of their sender to end
    /// (observability and tests).
    pub fn waiting_requests(&self) -> usize {
        self.rapid_fire.waiting()
    }

    /// Answer one HTTP request. Never panics on input; every refusal says why.
    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        let path = request.uri().path();
        if !is_webhook_path(path) {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the webhook is at /webhook",
            );
        }
        match *request.method() {
            Method::GET => self.verify(request.uri().query()),
            Method::POST => self.receive(&request).await,
            _ => {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
                response
            }
        }
    }

    fn verify(&self, query: Option<&str>) -> Response<Bytes> {
        match verify_subscription(query, self.options.verify_token.expose()) {
            Verification::Accepted(challenge) => {
                tracing::info!("webhook verification accepted");
                text(StatusCode::OK, challenge)
            }
            Verification::Missing(name) => text(StatusCode::BAD_REQUEST, format!("missing {name}")),
            Verification::Refused => {
                tracing::warn!("webhook verification refused: wrong hub.verify_token or hub.mode");
                text(StatusCode::FORBIDDEN, "verify token mismatch")
            }
        }
    }

    async fn receive(&self, request: &Request<Bytes>) -> Response<Bytes> {
        let body = request.body();
        if !self.options.app_secrets.is_empty() {
            let header = request
                .headers()
                .get(SIGNATURE_HEADER)
                .map(|v| v.as_bytes());
            match check_signature(header, body, &self.options.app_secrets) {
                SignatureCheck::Valid => {}
                SignatureCheck::Missing => {
                    tracing::warn!("POST without X-Hub-Signature-256 refused");
                    return text(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
                }
                SignatureCheck::Invalid => {
                    tracing::warn!("POST with a wrong X-Hub-Signature-256 refused");
                    return text(StatusCode::FORBIDDEN, "invalid X-Hub-Signature-256");
                }
            }
        }
        let envelope: Envelope<'_> = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(category = ?e.classify(), line = e.line(), column = e.column(), "POST body refused: not a webhook JSON object");
                return text(
                    StatusCode::BAD_REQUEST,
                    "body is not a JSON webhook payload",
                );
            }
        };
        let mut messages = self.collect_messages(&envelope);
        // Meta may batch several messages of one sender: answer them in the order written.
        messages.sort_by_key(|m| m.timestamp);
        let mut by_sender: Vec<(String, Vec<Prepared>)> = Vec::new();
        for message in messages {
            let Some(prepared) = self.prepare(message).await else {
                continue;
            };
            match by_sender.iter_mut().find(|(k, _)| *k == prepared.state_key) {
                Some((_, batch)) => batch.push(prepared),
                None => by_sender.push((prepared.state_key.clone(), vec![prepared])),
            }
        }
        let mut worst = Outcome::Settled;
        for (state_key, batch) in by_sender {
            worst = worst.max(self.serve_sender(&state_key, batch).await);
        }
        match worst {
            Outcome::Settled => text(StatusCode::OK, "ok"),
            Outcome::Busy => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "a message is being answered by another delivery; retry later",
            ),
            Outcome::Failed => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "temporary failure; retry later",
            ),
        }
    }

    /// Walk every entry and change; log statuses and errors; return the messages in order.
    fn collect_messages(&self, envelope: &Envelope<'_>) -> Vec<InboundMessage> {
        let mut out = Vec::new();
        if envelope
            .object
            .as_deref()
            .is_some_and(|o| o != "whatsapp_business_account")
        {
            tracing::info!("ignoring webhook for another object type");
            return out;
        }
        for raw_entry in &envelope.entry {
            let Ok(entry) = serde_json::from_str::<Entry<'_>>(raw_entry.get()) else {
                tracing::warn!("skipping unreadable entry");
                continue;
            };
            for raw_change in &entry.changes {
                let Ok(change) = serde_json::from_str::<Change<'_>>(raw_change.get()) else {
                    tracing::warn!("skipping unreadable change");
                    continue;
                };
                if change.field.as_deref() != Some("messages") {
                    tracing::debug!(field = ?change.field, "ignoring change of another field");
                    continue;
                }
                let Some(value) = change
                    .value
                    .and_then(|v| serde_json::from_str::<ChangeValue<'_>>(v.get()).ok())
                else {
                    tracing::warn!("skipping change with an unreadable value");
                    continue;
                };
                let phone_number_id = value
                    .metadata
                    .as_ref()
                    .and_then(|m| m.phone_number_id.as_deref());
                if phone_number_id != Some(self.options.phone_number_id.as_str()) {
                    tracing::warn!(
                        phone_number_id = phone_number_id.map(mask).as_deref().unwrap_or("none"),
                        "ignoring change for another phone_number_id"
                    );
                    continue;
                }
                for error in &value.errors {
                    tracing::warn!(
                        code = error.code.unwrap_or_default(),
                        title = error.title.as_deref().unwrap_or_default(),
                        "webhook reported an error"
                    );
                }
                for raw_status in &value.statuses {
                    log_status(raw_status.get());
                }
                for raw_message in &value.messages {
                    match serde_json::from_str::<RawMessage>(raw_message.get())
                        .map(RawMessage::into_inbound)
                    {
                        Ok(Some(m)) => out.push(m),
                        Ok(None) => tracing::warn!("skipping message without a sender"),
                        Err(e) => {
                            tracing::warn!(category = ?e.classify(), line = e.line(), column = e.column(), "skipping unreadable message")
                        }
                    }
                }
            }
        }
        out
    }

    /// Check the sender and read the message: `None` when it needs no answer.
    async fn prepare(&self, message: InboundMessage) -> Option<Prepared> {
        let sender = message.sender.key();
        let state_key = self.state_key(&message).await;
        let msg_ref = short_ref(&message.id);
        if !self.is_allowed(&message.sender, &state_key) {
            tracing::info!(from = %mask(sender), msg = %msg_ref, "dropped: sender not in allowed_numbers / allowed_user_ids");
            return None;
        }
        let action = match &message.content {
            Content::Text(t) if t.trim().is_empty() => return None,
            Content::Text(t) => match Command::parse(t) {
                Some(c) => Action::Command(c),
                None => Action::Turn,
            },
            Content::NonText(kind) if self.options.unsupported_reply => {
                tracing::info!(from = %mask(sender), msg = %msg_ref, kind = %kind, "non-text message");
                Action::Notice(UNSUPPORTED_TEXT)
            }
            Content::NonText(kind) | Content::Silent(kind) => {
                tracing::info!(from = %mask(sender), msg = %msg_ref, kind = %kind, "message needs no answer");
                return None;
            }
        };
        Some(Prepared {
            message,
            state_key,
            msg_ref,
            action,
        })
    }

    /// Answer one sender's messages of this request. If another request of this
    /// process is answering the same sender, hand them over and wait: they are
    /// answered in its next turn, rapid-fire texts combined.
    async fn serve_sender(&self, state_key: &str, batch: Vec<Prepared>) -> Outcome {
        let (leader, mine, mut others) = match self.rapid_fire.join(state_key, batch) {
            Joined::Lead(leader, mine) => {
                if !self.options.combine_window.is_zero()
                    && mine.iter().any(|p| p.action == Action::Turn)
                {
                    // Give quick follow-up lines a moment to arrive and join this turn.
                    tokio::time::sleep(self.options.combine_window).await;
                }
                (leader, mine, Vec::new())
            }
            Joined::Wait(woken) => match woken.await {
                Ok(Wake::Answered(outcome)) => return outcome,
                Ok(Wake::Lead { items, others }) => {
                    (self.rapid_fire.resume(state_key), items, others)
                }
                // The leading request was cancelled before answering ours.
                Err(_) => return Outcome::Failed,
            },
        };
        // Messages handed over until now (during the window, or behind the previous
        // leader's turn) are answered by this turn too.
        others.extend(leader.take_waiting());
        let mut tagged: Vec<(usize, Prepared)> = mine.into_iter().map(|p| (0, p)).collect();
        let mut replies = Vec::with_capacity(others.len());
        for (index, Waiter { items, reply }) in others.into_iter().enumerate() {
            tagged.extend(items.into_iter().map(|p| (index + 1, p)));
            replies.push(reply);
        }
        // Stable: equal timestamps keep their arrival order.
        tagged.sort_by_key(|(_, p)| p.message.timestamp);
        // A redelivery that arrived while its first delivery waited here is the same
        // message: answer it once, and tell both requests the same outcome.
        let mut unique: Vec<&Prepared> = Vec::with_capacity(tagged.len());
        let mut answered_as = Vec::with_capacity(tagged.len());
        for (_, p) in &tagged {
            match unique.iter().position(|u| u.message.id == p.message.id) {
                Some(index) => answered_as.push(index),
                None => {
                    answered_as.push(unique.len());
                    unique.push(p);
                }
            }
        }
        let outcomes = self.answer_in_order(&unique).await;
        let mut worst = vec![Outcome::Settled; replies.len() + 1];
        for ((owner, _), index) in tagged.iter().zip(answered_as) {
            worst[*owner] = worst[*owner].max(outcomes[index]);
        }
        for (reply, outcome) in replies.into_iter().zip(worst.iter().skip(1)) {
            reply.answer(*outcome);
        }
        leader.hand_over();
        worst[0]
    }

    /// Answer one sender's messages in order, one turn at a time; consecutive fresh
    /// texts become one combined turn. Returns one outcome per message.
    async fn answer_in_order(&self, batch: &[&Prepared]) -> Vec<Outcome> {
        // One token for the whole batch: a message claimed for a combined turn but left
        // out of it is claimed again by the next turn without waiting out a lease.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut wait = true;
        while outcomes.len() < batch.len() {
            let rest = &batch[outcomes.len()..];
            let answered = self.answer_next(rest, &token, wait).await;
            // Once one message is not answered, later ones only take their place in the
            // waiting list: waiting for the sender again would fail the same way.
            wait = answered.iter().all(|o| *o == Outcome::Settled);
            outcomes.extend(answered);
        }
        outcomes
    }

    /// Answer the first message of `rest`, with the fresh texts right after it when it
    /// is a fresh text. Returns the outcomes of the messages it took, in order.
    async fn answer_next(&self, rest: &[&Prepared], token: &str, wait: bool) -> Vec<Outcome> {
        let first = rest[0];
        let attempt = attempt_of(first, token, &[]);
        let begin = if wait {
            self.begin(&attempt).await
        } else {
            self.store.begin(&attempt, (self.clock)()).await
        };
        let sender = first.message.sender.key();
        let (session, progress, mut waiting) = match begin {
            Ok(Begin::Ready {
                session,
                progress,
                waiting,
            }) => (session, progress, waiting),
            Ok(Begin::Done) => {
                tracing::info!(from = %mask(sender), msg = %first.msg_ref, "duplicate delivery of an answered message");
                return vec![Outcome::Settled];
            }
            Ok(Begin::MessageBusy) | Ok(Begin::SenderBusy) => {
                tracing::info!(from = %mask(sender), msg = %first.msg_ref, "busy: held by another delivery or waiting for an older message");
                return vec![Outcome::Busy];
            }
            Err(e) => {
                tracing::error!(error = %e, msg = %first.msg_ref, "state store failed; nothing sent");
                return vec![Outcome::Failed];
            }
        };
        let mut taken = vec![None];
        let mut merged: Vec<&Prepared> = Vec::new();
        if first.action == Action::Turn && progress.is_fresh() {
            for next in &rest[1..] {
                if next.action != Action::Turn || merged.len() + 1 >= MAX_COMBINED {
                    break;
                }
                // Never ahead of an older message waiting elsewhere (another instance,
                // or Meta's redelivery).
                let entry = waiting_entry(&next.message.id, next.message.timestamp);
                waiting.retain(|e| *e != entry);
                if waiting.iter().any(|e| *e < entry) {
                    break;
                }
                let claim = self
                    .store
                    .claim(&attempt_of(next, token, &[]), (self.clock)())
                    .await;
                match claim {
                    Ok(Claim::Claimed(p)) if p.is_fresh() => {
                        merged.push(next);
                        taken.push(None);
                    }
                    Ok(Claim::Done) => taken.push(Some(Outcome::Settled)),
                    Ok(Claim::Busy) => taken.push(Some(Outcome::Busy)),
                    // A reply of its own is under way (resumed by the next turn, which
                    // claims it again with this token), or the store failed.
                    Ok(Claim::Claimed(_)) | Err(_) => break,
                }
            }
        }
        let merged_refs: Vec<Merged<'_>> = merged
            .iter()
            .map(|p| Merged {
                message_id: &p.message.id,
                timestamp: p.message.timestamp,
            })
            .collect();
        let mut turn = TurnState {
            attempt: attempt_of(first, token, &merged_refs),
            msg_ref: first.msg_ref.clone(),
            now: (self.clock)(),
            session: session.unwrap_or_else(|| new_session(Mode::Normal, (self.clock)())),
            progress,
        };
        turn.session.updated_at = turn.now;
        let action = match first.action {
            Action::Command(c) => TurnAction::Command(c),
            Action::Notice(n) => TurnAction::Notice(n),
            Action::Turn if merged.is_empty() => TurnAction::Turn(first.text().to_string()),
            Action::Turn => {
                tracing::info!(from = %mask(sender), msg = %first.msg_ref, messages = merged.len() + 1, "rapid-fire messages combined into one turn");
                let texts: Vec<&str> = std::iter::once(first)
                    .chain(merged.iter().copied())
                    .map(Prepared::text)
                    .collect();
                TurnAction::Turn(texts.join("\n"))
            }
        };
        let last_id = merged
            .last()
            .map_or(first.message.id.as_str(), |p| &p.message.id);
        let outcome = self
            .answer(&mut turn, &first.message.sender, action, last_id)
            .await;
        taken.into_iter().map(|o| o.unwrap_or(outcome)).collect()
    }

    /// Take the message and its sender, waiting a little while another message of
    /// the same sender is answered, so quick successive messages keep their order.
    async fn begin(&self, attempt: &Attempt<'_>) -> Result<Begin, StateError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let begin = self.store.begin(attempt, (self.clock)()).await?;
            if begin != Begin::SenderBusy || started.elapsed() + pause > self.options.sender_wait {
                return Ok(begin);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(800));
        }
    }

    async fn answer(
        &self,
        turn: &mut TurnState<'_>,
        to: &Recipient,
        action: TurnAction,
        read_id: &str,
    ) -> Outcome {
        let parts = if turn.progress.parts.is_empty() {
            match self.reply_parts(turn, to, action, read_id).await {
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
        action: TurnAction,
        read_id: &str,
    ) -> Result<Vec<String>, Outcome> {
        let text = match action {
            TurnAction::Command(command) => {
                match command {
                    Command::New => turn.session = new_session(Mode::Normal, turn.now),
                    Command::Otr => turn.session = new_session(Mode::Otr, turn.now),
                    Command::Help => {}
                }
                tracing::info!(from = %mask(to.key()), msg = %turn.msg_ref, command = ?command, "command");
                return Ok(vec![command.confirmation().to_string()]);
            }
            TurnAction::Notice(notice) => return Ok(vec![notice.to_string()]),
            TurnAction::Turn(text) => text,
        };
        // Marking the latest message read marks the earlier ones read too.
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
        match self.ask_engine(&request, to, &turn.msg_ref).await {
            Ok(reply) => Ok(self.render(&reply)),
            Err(e) => {
                let transient = e.is_transient();
                tracing::error!(error = %e, transient, msg = %turn.msg_ref, mode = turn.session.mode.as_str(), "engine failed");
                if !turn.progress.notice_sent {
                    match self.messenger.send_text(to, UNAVAILABLE_TEXT).await {
                        Ok(()) => turn.progress.notice_sent = true,
                        Err(e) => {
                            tracing::warn!(error = %e, msg = %turn.msg_ref, "could not send the unavailable notice")
                        }
                    }
                }
                if transient {
                    // Keep the message for Meta's redelivery, which asks the engine again.
                    Err(self.abandon(turn).await)
                } else {
                    Err(self.finish(turn).await)
                }
            }
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
        msg_ref: &str,
    ) -> Result<String, EngineError> {
        let (notices, mut pending) = tokio::sync::mpsc::unbounded_channel();
        let reply = self.engine.reply_with_notices(request, &notices);
        tokio::pin!(reply);
        loop {
            tokio::select! {
                result = &mut reply => return result,
                Some(notice) = pending.recv() => {
                    if let Err(e) = self.messenger.send_text(to, &notice).await {
                        tracing::warn!(error = %e, msg = %msg_ref, "could not send an interim notice");
                    }
                }
            }
        }
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

    /// The key the sender's state lives under: the (canonical) phone number when known,
    /// else the phone number linked earlier to the user id, else the user id. A message
    /// carrying both links them, so a user keeps one session when Meta stops sending
    /// the number.
    async fn state_key(&self, message: &InboundMessage) -> String {
        match (&message.sender, &message.user_id) {
            (Recipient::Phone(_), Some(user_id)) => {
                let key = message.sender.state_key();
                if self.remember_link(user_id)
                    && let Err(e) = self.store.link_user(user_id, &key, (self.clock)()).await
                {
                    tracing::warn!(error = %e, "could not link the user id to the number");
                    self.forget_link(user_id);
                }
                key
            }
            (Recipient::UserId(user_id), _) => match self.store.linked_sender(user_id).await {
                Ok(Some(key)) => key,
                Ok(None) => user_id.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not look up the user id's number");
                    user_id.clone()
                }
            },
            (Recipient::Phone(_), None) => message.sender.state_key(),
        }
    }

    /// Whether the link of `user_id` still needs writing (once per process and id).
    fn remember_link(&self, user_id: &str) -> bool {
        let Ok(mut linked) = self.linked_users.lock() else {
            return true;
        };
        if linked.len() >= 100_000 {
            linked.clear(); // bounded memory; at worst a link is written again
        }
        linked.insert(user_id.to_string())
    }

    fn forget_link(&self, user_id: &str) {
        if let Ok(mut linked) = self.linked_users.lock() {
            linked.remove(user_id);
        }
    }

    fn is_allowed(&self, sender: &Recipient, state_key: &str) -> bool {
        // Both lists empty: everyone. Otherwise a sender must be on the list of its kind;
        // a username user linked to an allowed number is that number.
        if self.options.allowed_numbers.is_open() && self.options.allowed_user_ids.is_empty() {
            return true;
        }
        match sender {
            Recipient::Phone(number) => self.options.allowed_numbers.contains(number),
            Recipient::UserId(id) => {
                self.options.allowed_user_ids.iter().any(|a| a == id)
                    || (state_key != id && self.options.allowed_numbers.contains(state_key))
            }
        }
    }
}

/// What one turn does: a command, a notice, or a text (maybe combined) for the engine.
enum TurnAction {
    Command(Command),
    Notice(&'static str),
    Turn(String),
}

fn attempt_of<'a>(p: &'a Prepared, token: &'a str, merged: &'a [Merged<'a>]) -> Attempt<'a> {
    Attempt {
        message_id: &p.message.id,
        sender: &p.state_key,
        token,
        timestamp: p.message.timestamp,
        merged,
    }
}

/// One message being answered.
struct TurnState<'a> {
    attempt: Attempt<'a>,
    msg_ref: String,
    now: u64,
    session: SessionRecord,
    progress: Progress,
}

fn new_session(mode: Mode, now: u64) -> SessionRecord {
    SessionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        mode,
        created_at: now,
        updated_at: now,
    }
}

/// A short, stable reference to a message for logs: a prefix of its stored hash key.
fn short_ref(message_id: &str) -> String {
    let mut key = message_key(message_id);
    key.truncate(12);
    key
}

fn log_status(raw: &str) {
    let Ok(status) = serde_json::from_str::<Status>(raw) else {
        tracing::warn!("skipping unreadable status");
        return;
    };
    let recipient = status
        .recipient_id
        .as_deref()
        .or(status.recipient_user_id.as_deref())
        .map(mask)
        .unwrap_or_default();
    let state = status.status.as_deref().unwrap_or("unknown");
    if state == "failed" {
        for error in &status.errors {
            tracing::warn!(to = %recipient, code = error.code.unwrap_or_default(), title = error.title.as_deref().unwrap_or_default(), "outgoing message failed");
        }
        if status.errors.is_empty() {
            tracing::warn!(to = %recipient, "outgoing message failed");
        }
    } else {
        tracing::debug!(to = %recipient, status = state, "status update");
    }
}

/// API Gateway stages and Function URLs may prefix the path; the last segment decides.
fn is_webhook_path(path: &str) -> bool {
    path == "/" || path.trim_end_matches('/').ends_with("/webhook")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
