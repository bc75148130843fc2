//! What `finish` and `abandon` write: one transaction settling the message items and
//! the sender item (session, lease, waiting list), retried without the sender lease
//! when that lease was taken over meanwhile.

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::DynamoStore;
use super::errors::{build_error, cancellation, classify};
use super::expressions::{
    LEAVE_WAITING_LIST, MARK_MESSAGE_DONE, MESSAGE_HELD, SET_SESSION, names, progress_assignments,
    request_token,
};
use super::item::{
    CREATED_AT, DONE, HOLDER, Item, LEASE_UNTIL, MODE, NOTICE_SENT, PARTS, PK, SENT, SESSION_ID,
    STARTED, TTL, UPDATED_AT, WAITING, WAITING_VERSION, message_pk, n, s, sender_pk,
};
use crate::domain::SessionRecord;
use crate::state::{Attempt, Progress, StateError, is_live, waiting_entry};

/// What `finish` / `abandon` does to the sender's waiting list.
enum LineChange {
    None,
    /// Put these entries on the list.
    Join(Vec<String>),
    /// Take these entries off the list.
    Leave(Vec<String>),
}

/// What `finish` / `abandon` makes of one message item.
enum Settled<'a> {
    Done,
    /// Released for redelivery with this progress.
    Pending(&'a Progress),
}

impl DynamoStore {
    /// `finish` (`progress` `None`) / `abandon`: one transaction over the message items
    /// and the sender item; if only the sender lease was lost, write the session anyway
    /// and leave that lease to its new holder (as `MemoryStore`).
    pub(super) async fn settle(
        &self,
        op: &'static str,
        attempt: &Attempt<'_>,
        progress: Option<&Progress>,
        session: &SessionRecord,
        now: u64,
    ) -> Result<(), StateError> {
        let mut messages = vec![(
            attempt.message_id,
            progress.map_or(Settled::Done, Settled::Pending),
        )];
        let mut waiting = Vec::new();
        // A failure the user was told of holds nobody back.
        let listed = progress.is_some_and(|p| !p.notice_sent);
        if listed {
            waiting.push(waiting_entry(attempt.message_id, attempt.timestamp));
        }
        // Merged messages go back only when their turn did not begin.
        let released = progress.filter(|p| !p.started).map(|p| Progress {
            notice_sent: p.notice_sent,
            ..Progress::default()
        });
        for merged in attempt.merged {
            match &released {
                // Part of the reply that answers them went out: they are done.
                None => messages.push((merged.message_id, Settled::Done)),
                Some(released) => {
                    messages.push((merged.message_id, Settled::Pending(released)));
                    if listed {
                        waiting.push(waiting_entry(merged.message_id, merged.timestamp));
                    }
                }
            }
        }
        waiting.retain(|entry| is_live(entry, now, self.order_hold));
        // Merged messages answered by this reply leave the waiting list (they were on it
        // if they waited before joining the turn).
        let answered: Vec<String> = if released.is_none() {
            attempt
                .merged
                .iter()
                .map(|m| waiting_entry(m.message_id, m.timestamp))
                .collect()
        } else {
            Vec::new()
        };
        // One update cannot both add to and delete from the list: an abandon that joins
        // its message and removes merged ones does the removal in a second request.
        let (line, leave_after) = match (waiting.is_empty(), answered.is_empty()) {
            (true, true) => (LineChange::None, None),
            (true, false) => (LineChange::Leave(answered), None),
            (false, true) => (LineChange::Join(waiting), None),
            (false, false) => (LineChange::Join(waiting), Some(answered)),
        };
        self.settle_transaction(op, attempt, &messages, session, &line)
            .await?;
        if let Some(entries) = leave_after {
            self.leave_line(attempt, entries).await?;
        }
        Ok(())
    }

    async fn settle_transaction(
        &self,
        op: &'static str,
        attempt: &Attempt<'_>,
        messages: &[(&str, Settled<'_>)],
        session: &SessionRecord,
        line: &LineChange,
    ) -> Result<(), StateError> {
        let sender_index = messages.len();
        for ours in [true, false] {
            let mut request = self
                .client
                .transact_write_items()
                .client_request_token(request_token(op, attempt.token, ours));
            for (message_id, settled) in messages {
                request =
                    request.transact_items(self.settle_message(attempt, message_id, settled)?);
            }
            let result = request
                .transact_items(self.settle_sender(attempt, session, line, ours)?)
                .send()
                .await;
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let cancelled = cancellation(&e)?;
            let failed = |i: usize| cancelled.condition_failed(i);
            if (0..sender_index).any(failed) {
                return Err(StateError::LostLease);
            }
            if !(ours && failed(sender_index)) {
                return Err(cancelled.error());
            }
        }
        Err(StateError::Unavailable(
            "TransactWriteItems: sender update cancelled twice".into(),
        ))
    }

    /// One message item of `finish` / `abandon`, conditioned on the attempt's lease.
    fn settle_message(
        &self,
        attempt: &Attempt<'_>,
        message_id: &str,
        settled: &Settled<'_>,
    ) -> Result<TransactWriteItem, StateError> {
        let mut values = Item::from([
            (":token".to_string(), s(attempt.token)),
            (":false".to_string(), AttributeValue::Bool(false)),
            (":zero".to_string(), n(0)),
        ]);
        let expression = match settled {
            // Done messages keep no reply text.
            Settled::Done => {
                values.insert(":true".into(), AttributeValue::Bool(true));
                MARK_MESSAGE_DONE.to_string()
            }
            Settled::Pending(progress) => format!(
                "SET #lease_until = :zero, {}",
                progress_assignments(progress, &mut values)
            ),
        };
        let mut attributes = vec![HOLDER, DONE, LEASE_UNTIL, PARTS];
        if matches!(settled, Settled::Pending(_)) {
            attributes.extend([SENT, NOTICE_SENT, STARTED]);
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, message_pk(message_id))
            .update_expression(expression)
            .condition_expression(MESSAGE_HELD)
            .set_expression_attribute_names(Some(names(&attributes)))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The sender-item half: write the session, put `waiting` on the waiting list, and
    /// release the lease when `ours`.
    fn settle_sender(
        &self,
        attempt: &Attempt<'_>,
        session: &SessionRecord,
        line: &LineChange,
        ours: bool,
    ) -> Result<TransactWriteItem, StateError> {
        let ttl = session.updated_at + self.session_idle_ttl.as_secs() + self.lease.as_secs();
        let mut values = Item::from([
            (":session_id".to_string(), s(&session.id)),
            (":mode".to_string(), s(session.mode.as_str())),
            (":created_at".to_string(), n(session.created_at)),
            (":updated_at".to_string(), n(session.updated_at)),
            (":ttl".to_string(), n(ttl)),
        ]);
        let mut attributes = vec![SESSION_ID, MODE, CREATED_AT, UPDATED_AT, TTL];
        let add_waiting = match line {
            LineChange::None => "",
            LineChange::Join(entries) | LineChange::Leave(entries) => {
                values.insert(":waiting".into(), AttributeValue::Ss(entries.clone()));
                values.insert(":one".into(), n(1));
                attributes.extend([WAITING, WAITING_VERSION]);
                if matches!(line, LineChange::Join(_)) {
                    " ADD #waiting :waiting, #waiting_version :one"
                } else {
                    " ADD #waiting_version :one DELETE #waiting :waiting"
                }
            }
        };
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, sender_pk(attempt.sender));
        let update = if ours {
            values.insert(":token".into(), s(attempt.token));
            attributes.extend([HOLDER, LEASE_UNTIL]);
            update
                .update_expression(format!(
                    "{SET_SESSION}, #ttl = :ttl REMOVE #holder, #lease_until{add_waiting}"
                ))
                .condition_expression("#holder = :token")
        } else {
            // The current holder's `begin` set a TTL covering its lease: keep it.
            update.update_expression(format!(
                "{SET_SESSION}, #ttl = if_not_exists(#ttl, :ttl){add_waiting}"
            ))
        };
        let update = update
            .set_expression_attribute_names(Some(names(&attributes)))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Take `entries` off the sender's waiting list.
    async fn leave_line(
        &self,
        attempt: &Attempt<'_>,
        entries: Vec<String>,
    ) -> Result<(), StateError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, sender_pk(attempt.sender))
            .update_expression(LEAVE_WAITING_LIST)
            .set_expression_attribute_names(Some(names(&[WAITING, WAITING_VERSION])))
            .expression_attribute_values(":entries", AttributeValue::Ss(entries))
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("UpdateItem", &e))
    }
}
