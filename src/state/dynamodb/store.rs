//! [`DynamoStore`]: the [`SessionStore`] on one DynamoDB table, every write conditioned
//! on the attempt's lease token.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use super::errors::*;
use super::expressions::*;
use super::item::*;
use super::{
    Attempt, Begin, Claim, DEDUP_RETENTION, DEFAULT_ORDER_HOLD, Item, Place, Progress,
    SessionRecord, SessionStore, StateError, is_live, place_in_line, waiting_entry,
};

/// A granted sender lease.
struct Leased {
    session: Option<SessionRecord>,
    /// The waiting list left behind (other messages, all newer).
    waiting: Vec<String>,
}

/// What one conditioned UpdateItem on the sender item did.
enum SenderUpdate {
    /// The lease is ours: the item after the update.
    Taken(Item),
    /// The lease is held, or the waiting list is not as expected: the item as it was.
    Refused(Item),
}

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

    /// Claim the message item: [`Claim::Claimed`] with what earlier attempts achieved,
    /// or answered already ([`Claim::Done`]), or held by another attempt ([`Claim::Busy`]).
    async fn claim_message(&self, attempt: &Attempt<'_>, now: u64) -> Result<Claim, StateError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, message_pk(attempt.message_id))
            .update_expression(
                "SET #holder = :token, #lease_until = :lease_until, \
                 #ttl = if_not_exists(#ttl, :ttl), #done = if_not_exists(#done, :false), \
                 #sent = if_not_exists(#sent, :zero), \
                 #notice_sent = if_not_exists(#notice_sent, :false)",
            )
            // `#holder = :token` only matters for an SDK retry of this very request.
            .condition_expression(
                "attribute_not_exists(#pk) OR \
                 (#done = :false AND (#lease_until <= :now OR #holder = :token))",
            )
            .set_expression_attribute_names(Some(names(&[
                PK,
                HOLDER,
                LEASE_UNTIL,
                TTL,
                DONE,
                SENT,
                NOTICE_SENT,
            ])))
            .expression_attribute_values(":token", s(attempt.token))
            .expression_attribute_values(":lease_until", n(now + self.lease.as_secs()))
            .expression_attribute_values(":ttl", n(now + DEDUP_RETENTION.as_secs()))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes().ok_or_else(|| no_attributes("message"))?;
                Ok(Claim::Claimed(read_progress(item)?))
            }
            Err(SdkError::ServiceError(e)) => match e.err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    let done = match failed.item() {
                        Some(old) => get_bool(old, DONE)?.unwrap_or(false),
                        None => return Err(no_attributes("message (condition failed)")),
                    };
                    Ok(if done { Claim::Done } else { Claim::Busy })
                }
                _ => Err(classify("UpdateItem", &SdkError::ServiceError(e))),
            },
            Err(e) => Err(classify("UpdateItem", &e)),
        }
    }

    /// Lease the sender; `None` when another attempt holds it or an older message is
    /// waiting (then this message is put on the waiting list).
    ///
    /// The usual case is one request, conditioned on a free lease and an empty waiting
    /// list. When the list is not empty, the item returned by the failed condition says
    /// whether this message is next; if so, a second request takes the lease and
    /// rewrites the list, conditioned on its version.
    async fn lease_sender(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
    ) -> Result<Option<Leased>, StateError> {
        let idle = self.session_idle_ttl.as_secs();
        let mine = waiting_entry(attempt.message_id, attempt.timestamp);
        let mut old = match self.take_sender(attempt, now, None).await? {
            SenderUpdate::Taken(item) => {
                let session = read_session(&item)?.filter(|s| s.updated_at + idle > now);
                return Ok(Some(Leased {
                    session,
                    waiting: Vec::new(),
                }));
            }
            SenderUpdate::Refused(old) => old,
        };
        // A few rounds against concurrent list writers, then give up as busy.
        for _ in 0..3 {
            let leased_to_other = get_u64(&old, LEASE_UNTIL)?.is_some_and(|until| until > now)
                && get_str(&old, HOLDER)? != Some(attempt.token);
            let waiting = get_string_set(&old, WAITING)?;
            match place_in_line(&waiting, &mine, now, self.order_hold) {
                Place::Next { remaining } if !leased_to_other => {
                    let version = get_u64(&old, WAITING_VERSION)?;
                    match self
                        .take_sender(attempt, now, Some((version, remaining.clone())))
                        .await?
                    {
                        SenderUpdate::Taken(item) => {
                            let session =
                                read_session(&item)?.filter(|s| s.updated_at + idle > now);
                            return Ok(Some(Leased {
                                session,
                                waiting: remaining,
                            }));
                        }
                        SenderUpdate::Refused(newer) => old = newer,
                    }
                }
                Place::Behind { listed: true } => return Ok(None),
                _ => {
                    if !waiting.contains(&mine) {
                        self.wait_in_line(attempt, &[mine], now).await?;
                    }
                    return Ok(None);
                }
            }
        }
        self.wait_in_line(attempt, &[mine], now).await?;
        Ok(None)
    }

    /// One UpdateItem taking the sender lease. `list` is `None` for "the list must be
    /// empty", else the version seen and the list to write.
    async fn take_sender(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
        list: Option<(Option<u64>, Vec<String>)>,
    ) -> Result<SenderUpdate, StateError> {
        let lease = self.lease.as_secs();
        let idle = self.session_idle_ttl.as_secs();
        let lease_free =
            "(attribute_not_exists(#lease_until) OR #lease_until <= :now OR #holder = :token)";
        // The item must outlive our lease even if its session is long expired.
        let set_lease = "SET #holder = :token, #lease_until = :lease_until, #ttl = :ttl";
        let mut values = Item::from([
            (":token".to_string(), s(attempt.token)),
            (":lease_until".to_string(), n(now + lease)),
            (":ttl".to_string(), n(now + idle + lease)),
            (":now".to_string(), n(now)),
        ]);
        let mut attributes = vec![HOLDER, LEASE_UNTIL, TTL, WAITING];
        let (update, condition) = match list {
            None => (
                set_lease.to_string(),
                format!("{lease_free} AND attribute_not_exists(#waiting)"),
            ),
            Some((version, remaining)) => {
                attributes.push(WAITING_VERSION);
                values.insert(":next_version".into(), n(version.unwrap_or(0) + 1));
                let version_check = match version {
                    Some(v) => {
                        values.insert(":version".into(), n(v));
                        "#waiting_version = :version"
                    }
                    None => "attribute_not_exists(#waiting_version)",
                };
                let update = if remaining.is_empty() {
                    format!("{set_lease}, #waiting_version = :next_version REMOVE #waiting")
                } else {
                    values.insert(":waiting".into(), AttributeValue::Ss(remaining));
                    format!("{set_lease}, #waiting_version = :next_version, #waiting = :waiting")
                };
                (update, format!("{lease_free} AND {version_check}"))
            }
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, sender_pk(attempt.sender))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names(&attributes)))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(SenderUpdate::Taken(
                out.attributes()
                    .ok_or_else(|| no_attributes("sender"))?
                    .clone(),
            )),
            Err(SdkError::ServiceError(e)) => match e.err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => Ok(
                    SenderUpdate::Refused(failed.item().cloned().unwrap_or_default()),
                ),
                _ => Err(classify("UpdateItem", &SdkError::ServiceError(e))),
            },
            Err(e) => Err(classify("UpdateItem", &e)),
        }
    }

    /// Put `entries` on the sender's waiting list (entries already too old are left out).
    async fn wait_in_line(
        &self,
        attempt: &Attempt<'_>,
        entries: &[String],
        now: u64,
    ) -> Result<(), StateError> {
        let live: Vec<String> = entries
            .iter()
            .filter(|e| is_live(e, now, self.order_hold))
            .cloned()
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, sender_pk(attempt.sender))
            .update_expression(
                "ADD #waiting :entries, #waiting_version :one SET #ttl = if_not_exists(#ttl, :ttl)",
            )
            .set_expression_attribute_names(Some(names(&[WAITING, WAITING_VERSION, TTL])))
            .expression_attribute_values(":entries", AttributeValue::Ss(live))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(
                ":ttl",
                n(now + self.session_idle_ttl.as_secs() + self.lease.as_secs()),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("UpdateItem", &e))
    }

    /// Hand the message claim back at once, so its redelivery need not wait out our
    /// lease while the sender is busy.
    async fn release_message(&self, attempt: &Attempt<'_>) -> Result<(), StateError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, message_pk(attempt.message_id))
            .update_expression("SET #lease_until = :zero")
            .condition_expression("#holder = :token AND #done = :false")
            .set_expression_attribute_names(Some(names(&[LEASE_UNTIL, HOLDER, DONE])))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":token", s(attempt.token))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already someone else's: nothing of ours to release.
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(classify("UpdateItem", &e)),
        }
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
                "SET #done = :true, #lease_until = :zero REMOVE #parts".to_string()
            }
            Settled::Pending(progress) => format!(
                "SET #lease_until = :zero, {}",
                progress_assignments(progress, &mut values)
            ),
        };
        let mut attributes = vec![HOLDER, DONE, LEASE_UNTIL, PARTS];
        if matches!(settled, Settled::Pending(_)) {
            attributes.extend([SENT, NOTICE_SENT]);
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key(PK, message_pk(message_id))
            .update_expression(expression)
            .condition_expression("#holder = :token AND #done = :false")
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
        const SET_SESSION: &str = "SET #session_id = :session_id, #mode = :mode, \
             #created_at = :created_at, #updated_at = :updated_at";
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

    /// `finish` (`progress` `None`) / `abandon`: one transaction over the message items
    /// and the sender item; if only the sender lease was lost, write the session anyway
    /// and leave that lease to its new holder (as `MemoryStore`).
    async fn settle(
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
        if progress.is_some() {
            waiting.push(waiting_entry(attempt.message_id, attempt.timestamp));
        }
        let released = progress.filter(|p| p.sent == 0).map(|p| Progress {
            notice_sent: p.notice_sent,
            ..Progress::default()
        });
        for merged in attempt.merged {
            match &released {
                // Part of the reply that answers them went out: they are done.
                None => messages.push((merged.message_id, Settled::Done)),
                Some(released) => {
                    messages.push((merged.message_id, Settled::Pending(released)));
                    waiting.push(waiting_entry(merged.message_id, merged.timestamp));
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
            .update_expression("ADD #waiting_version :one DELETE #waiting :entries")
            .set_expression_attribute_names(Some(names(&[WAITING, WAITING_VERSION])))
            .expression_attribute_values(":entries", AttributeValue::Ss(entries))
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("UpdateItem", &e))
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
            let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                e.as_service_error()
            else {
                return Err(classify("TransactWriteItems", &e));
            };
            let codes = cancellation_codes(cancelled.cancellation_reasons(), cancelled.message());
            let failed =
                |i: usize| codes.get(i).map(String::as_str) == Some("ConditionalCheckFailed");
            if (0..sender_index).any(failed) {
                return Err(StateError::LostLease);
            }
            if !(ours && failed(sender_index)) {
                return Err(cancelled_error(&codes));
            }
        }
        Err(StateError::Unavailable(
            "TransactWriteItems: sender update cancelled twice".into(),
        ))
    }
}

/// What `finish` / `abandon` does to the sender's waiting list.
enum LineChange {
    None,
    Join(Vec<String>),
    Leave(Vec<String>),
}

/// What `finish` / `abandon` makes of one message item.
enum Settled<'a> {
    Done,
    /// Released for redelivery with this progress.
    Pending(&'a Progress),
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
            Some(Leased { session, waiting }) => Ok(Begin::Ready {
                session,
                progress,
                waiting,
            }),
            None => {
                self.release_message(attempt).await?;
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
            .condition_expression("#holder = :token AND #done = :false")
            .set_expression_attribute_names(Some(names(&[HOLDER, DONE, SENT, NOTICE_SENT, PARTS])))
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
}
