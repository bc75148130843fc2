//! `move_session`: a session follows its user to a new sender key (WhatsApp's number
//! change) in two requests: a strongly consistent GetItem of the old sender item (its
//! session attributes only), then one TransactWriteItems of two updates:
//!
//! * the new sender item gets the session (and a TTL covering it), on condition that it
//!   has no live session (`session_id` absent, or `updated_at` older than the idle TTL);
//!   its lease and waiting list are left alone (an update, not a Put, so an item that
//!   holds a lease keeps it);
//! * the old sender item loses its session attributes, on condition that they are the
//!   ones read (a turn that finished in between wins; the move is read again).
//!
//! So a move costs 2 requests (1 read, 1 transactional write of 2 items); when the old
//! key has no live session, 1 (the read); when the new key has a session of its own,
//! 2 and nothing is written.

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use super::DynamoStore;
use super::errors::{build_error, cancellation, classify};
use super::expressions::{SET_SESSION, names, request_token};
use super::item::{CREATED_AT, Item, MODE, PK, SESSION_ID, TTL, UPDATED_AT, n, s, sender_pk};
use crate::domain::SessionRecord;
use crate::state::{SessionMove, StateError};

/// The new item has no live session (`:cutoff`: `now - idle ttl`).
const NO_LIVE_SESSION: &str = "attribute_not_exists(#session_id) OR #updated_at <= :cutoff";

/// The old item still has the session read (`:session_id`, `:updated_at`).
const SESSION_UNCHANGED: &str = "#session_id = :session_id AND #updated_at = :updated_at";

/// Drop the session from the old item.
const REMOVE_SESSION: &str = "REMOVE #session_id, #mode, #created_at, #updated_at";

/// How often a move is read again when the old session changed under it.
const ATTEMPTS: usize = 3;

impl DynamoStore {
    pub(super) async fn move_sender_session(
        &self,
        from: &str,
        to: &str,
        now: u64,
    ) -> Result<SessionMove, StateError> {
        if from == to {
            return Ok(SessionMove::NothingToMove);
        }
        for _ in 0..ATTEMPTS {
            let Some(session) = self.read_live_session(from, now).await? else {
                return Ok(SessionMove::NothingToMove);
            };
            // An SDK retry of a transaction that did commit succeeds instead of finding
            // the new number's session in its way; `now` is part of the request.
            let token = format!(
                "{from}\0{to}\0{}\0{}\0{now}",
                session.id, session.updated_at
            );
            let result = self
                .client
                .transact_write_items()
                .client_request_token(request_token("move", &token, true))
                .transact_items(self.give_session(to, &session, now)?)
                .transact_items(self.take_session(from, &session)?)
                .send()
                .await;
            let e = match result {
                Ok(_) => return Ok(SessionMove::Moved),
                Err(e) => e,
            };
            let cancelled = cancellation(&e)?;
            let failed = |i: usize| cancelled.condition_failed(i);
            if failed(0) {
                return Ok(SessionMove::Kept);
            }
            if !failed(1) {
                return Err(cancelled.error());
            }
        }
        Err(StateError::Unavailable(
            "TransactWriteItems: session move cancelled repeatedly".into(),
        ))
    }

    /// The live session of sender key `sender`, read strongly consistent.
    async fn read_live_session(
        &self,
        sender: &str,
        now: u64,
    ) -> Result<Option<SessionRecord>, StateError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, sender_pk(sender))
            .consistent_read(true)
            .projection_expression("#session_id, #mode, #created_at, #updated_at")
            .set_expression_attribute_names(Some(names(&[
                SESSION_ID, MODE, CREATED_AT, UPDATED_AT,
            ])))
            .send()
            .await
            .map_err(|e| classify("GetItem", &e))?;
        match out.item() {
            Some(item) => self.live_session(item, now),
            None => Ok(None),
        }
    }

    /// Write `session` on the sender item `to`, unless it has a live session.
    fn give_session(
        &self,
        to: &str,
        session: &SessionRecord,
        now: u64,
    ) -> Result<TransactWriteItem, StateError> {
        let idle = self.session_idle_ttl.as_secs();
        let ttl = session.updated_at + idle + self.lease.as_secs();
        let values = Item::from([
            (":session_id".to_string(), s(&session.id)),
            (":mode".to_string(), s(session.mode.as_str())),
            (":created_at".to_string(), n(session.created_at)),
            (":updated_at".to_string(), n(session.updated_at)),
            (":ttl".to_string(), n(ttl)),
            (":cutoff".to_string(), n(now.saturating_sub(idle))),
        ]);
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, sender_pk(to))
            .update_expression(format!("{SET_SESSION}, #ttl = :ttl"))
            .condition_expression(NO_LIVE_SESSION)
            .set_expression_attribute_names(Some(names(&[
                SESSION_ID, MODE, CREATED_AT, UPDATED_AT, TTL,
            ])))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Remove `session` from the sender item `from`, if it is still there.
    fn take_session(
        &self,
        from: &str,
        session: &SessionRecord,
    ) -> Result<TransactWriteItem, StateError> {
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, sender_pk(from))
            .update_expression(REMOVE_SESSION)
            .condition_expression(SESSION_UNCHANGED)
            .set_expression_attribute_names(Some(names(&[
                SESSION_ID, MODE, CREATED_AT, UPDATED_AT,
            ])))
            .expression_attribute_values(":session_id", s(&session.id))
            .expression_attribute_values(":updated_at", n(session.updated_at))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}
