//! DynamoDB [`SessionStore`]: same semantics as [`super::MemoryStore`], durable across
//! Lambda instances.
//!
//! # Single-table design
//!
//! One table, partition key `pk` (String) only, no sort key, on-demand billing
//! (PAY_PER_REQUEST), DynamoDB TTL on the attribute `ttl`. Two kinds of items:
//!
//! **Sender item**, `pk = "sender#<sender key>"` (phone digits or user id):
//!
//! | attribute     | type | meaning                                                    |
//! |---------------|------|------------------------------------------------------------|
//! | `session_id`  | S    | current session id (absent until the first answer)         |
//! | `mode`        | S    | `normal` or `otr`                                          |
//! | `created_at`  | N    | unix seconds the session started                           |
//! | `updated_at`  | N    | unix seconds of the last turn                              |
//! | `holder`      | S    | lease token of the attempt answering this sender (removed on release) |
//! | `lease_until` | N    | unix seconds the sender lease ends (removed on release)    |
//! | `ttl`         | N    | `updated_at + session idle ttl + lease` (`begin` sets `now + idle ttl + lease`, so the item outlives the lease) |
//! | `waiting`     | SS   | waiting list: `<timestamp, 12 digits>#<message hash>` of messages that wait for their turn (absent when empty) |
//! | `waiting_version` | N | bumped on every change of `waiting`, so a rewrite of the list is conditioned on it |
//!
//! **User link item**, `pk = "user#<business-scoped user id>"`: `sender` (S, the sender
//! key of the same person, written when a message carries both a phone number and a user
//! id) and `ttl`; lets a username user keep their session once Meta stops sending the
//! phone number.
//!
//! **Message item**, `pk = "msg#" + message_key(message id)`: a hash, so the table never
//! holds a WhatsApp message id (wamid):
//!
//! | attribute     | type   | meaning                                                    |
//! |---------------|--------|------------------------------------------------------------|
//! | `done`        | BOOL   | answered; later deliveries send nothing                    |
//! | `holder`      | S      | lease token of the attempt answering this message          |
//! | `lease_until` | N      | unix seconds the message lease ends (0: released)          |
//! | `parts`       | L of S | the split reply, only while a normal-mode reply is pending |
//! | `sent`        | N      | reply parts the Graph API accepted                         |
//! | `notice_sent` | BOOL   | the "assistant unavailable" notice went out                |
//! | `ttl`         | N      | first claim + `DEDUP_RETENTION` (10 days, longer than Meta's 7-day redelivery) |
//!
//! DynamoDB TTL deletes expired items late (up to days), so reads filter: a session
//! whose `updated_at + idle ttl <= now` is treated as absent. `finish` removes `parts`,
//! and the handler never saves `parts` for OTR sessions, so no reply text outlives
//! its delivery.
//!
//! # Order
//!
//! The sender lease is granted by one UpdateItem conditioned on a free lease *and* an
//! empty waiting list. When the list is not empty, the failed condition returns the
//! item; if no live entry is older than this message, a second UpdateItem takes the
//! lease and rewrites the list without this message's entry and without expired ones,
//! conditioned on `waiting_version`. A message that must wait adds its entry (`ADD`)
//! before handing its claim back; `abandon` adds the failed message's entry in its
//! transaction; entries older than the order hold are ignored and dropped at the next
//! rewrite. See [`super`] ("Order").
//!
//! # Requests per message
//!
//! * `begin`: 2 × UpdateItem (claim the message, returning its progress; lease the
//!   sender, returning its session). A busy sender adds two UpdateItems (join the
//!   waiting list, hand the message claim back at once); a message that waited adds
//!   one (the lease with the list rewritten).
//! * `claim` (a rapid-fire message joining a turn): 1 × UpdateItem.
//! * `save_progress`: 1 × UpdateItem.
//! * `finish` / `abandon`: 1 × TransactWriteItems (message items + sender). Only when
//!   the sender lease was taken over meanwhile does a second transaction write the
//!   session without touching the other attempt's lease; an abandoned combined turn
//!   whose reply was under way adds an UpdateItem taking its merged messages off the
//!   waiting list.
//!
//! * `move_session` (a user's number change): 2 requests, a consistent GetItem of the
//!   old sender item and one TransactWriteItems (session written on the new sender item
//!   unless it has a live one, removed from the old); 1 (the GetItem) when there is
//!   nothing to move. See `moving.rs`.
//!
//! So an ordinary message costs 3 requests. Every write is conditioned on the
//! attempt's lease token; a failed condition means [`StateError::LostLease`].
//!
//! # Client
//!
//! [`dynamo_client`] sets [`timeout_config`] (connect 2 s, per attempt 3 s, whole
//! operation 8 s) and the SDK's standard retry mode with at most 3 attempts
//! ([`retry_config`]), so an unreachable DynamoDB fails the request within seconds
//! instead of holding the webhook until Meta's own timeout.
//!
//! # Files
//!
//! This file holds [`DynamoStore`] and its [`SessionStore`] implementation. `begin.rs`
//! claims messages and leases senders, `settle.rs` writes `finish` / `abandon`,
//! `moving.rs` moves a session to a user's new number, `item.rs` names and reads item
//! attributes, `expressions.rs` holds the condition and update expressions, `errors.rs`
//! turns SDK errors into [`StateError`]s and `admin.rs` creates the table and the client.

mod admin;
mod begin;
mod errors;
mod expressions;
mod item;
mod moving;
mod settle;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

pub use admin::{aws_sdk_config, create_table, dynamo_client, retry_config, timeout_config};
use begin::SenderLease;
use errors::{classify, is_condition_failed};
use expressions::{MESSAGE_HELD, names, progress_assignments};
use item::{
    DONE, HOLDER, Item, NOTICE_SENT, PARTS, PK, SENDER, SENT, STARTED, TTL, message_pk, n, s,
    user_pk,
};

use super::{
    Attempt, Begin, Claim, DEFAULT_ORDER_HOLD, Progress, SessionMove, SessionRecord, SessionStore,
    StateError,
};

/// The DynamoDB [`SessionStore`]: one table, laid out as the module doc describes.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    lease: Duration,
    session_idle_ttl: Duration,
    order_hold: Duration,
}

impl DynamoStore {
    pub fn new(client: Client, table: String, lease: Duration, session_idle_ttl: Duration) -> Self {
        DynamoStore {
            client,
            table,
            lease,
            session_idle_ttl,
            order_hold: DEFAULT_ORDER_HOLD,
        }
    }

    /// How long an unanswered message holds back newer ones (see [`super`], "Order").
    pub fn with_order_hold(mut self, order_hold: Duration) -> Self {
        self.order_hold = order_hold;
        self
    }
}

#[async_trait]
impl SessionStore for DynamoStore {
    async fn begin(&self, attempt: &Attempt<'_>, now: u64) -> Result<Begin, StateError> {
        let progress = match self.claim_message(attempt, now).await? {
            Claim::Claimed(progress) => progress,
            Claim::Done => return Ok(Begin::Done),
            Claim::Busy => return Ok(Begin::MessageBusy),
        };
        match self.lease_sender(attempt, now).await? {
            Some(SenderLease { session, waiting }) => Ok(Begin::Ready {
                session,
                progress,
                waiting,
            }),
            None => {
                self.release_message(attempt, progress.started).await?;
                Ok(Begin::SenderBusy)
            }
        }
    }

    async fn claim(&self, attempt: &Attempt<'_>, now: u64) -> Result<Claim, StateError> {
        self.claim_message(attempt, now).await
    }

    async fn save_progress(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
    ) -> Result<(), StateError> {
        let mut values = Item::from([
            (":token".to_string(), s(attempt.token)),
            (":false".to_string(), AttributeValue::Bool(false)),
        ]);
        let expression = format!("SET {}", progress_assignments(progress, &mut values));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, message_pk(attempt.message_id))
            .update_expression(expression)
            .condition_expression(MESSAGE_HELD)
            .set_expression_attribute_names(Some(names(&[
                HOLDER,
                DONE,
                SENT,
                NOTICE_SENT,
                PARTS,
                STARTED,
            ])))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(StateError::LostLease),
            Err(e) => Err(classify("UpdateItem", &e)),
        }
    }

    async fn finish(
        &self,
        attempt: &Attempt<'_>,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError> {
        self.settle("finish", attempt, None, session, now).await
    }

    async fn abandon(
        &self,
        attempt: &Attempt<'_>,
        progress: &Progress,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError> {
        self.settle("abandon", attempt, Some(progress), session, now)
            .await
    }

    async fn link_user(&self, user_id: &str, sender: &str, now: u64) -> Result<(), StateError> {
        let ttl = now + self.session_idle_ttl.as_secs() + self.lease.as_secs();
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, user_pk(user_id))
            .item(SENDER, s(sender))
            .item(TTL, n(ttl))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("PutItem", &e))
    }

    async fn linked_sender(&self, user_id: &str) -> Result<Option<String>, StateError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, user_pk(user_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("GetItem", &e))?;
        Ok(out
            .item()
            .and_then(|item| item.get(SENDER))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }

    async fn move_session(
        &self,
        from: &str,
        to: &str,
        now: u64,
    ) -> Result<SessionMove, StateError> {
        self.move_sender_session(from, to, now).await
    }
}
