//! What `begin` and `claim` write: claim the message item, lease the sender item (the
//! waiting list decides who is next), and hand a message claim back while the sender is busy.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::DynamoStore;
use super::errors::{classify, is_condition_failed};
use super::expressions::{
    CLAIM_MESSAGE, CLAIM_TURN_MESSAGE, JOIN_WAITING_LIST, MESSAGE_CLAIMABLE, MESSAGE_HELD,
    RELEASE_MESSAGE, RELEASE_TURN_MESSAGE, SENDER_LEASE_FREE, SET_SENDER_LEASE, names,
};
use super::item::{
    DONE, HOLDER, Item, LEASE_UNTIL, NOTICE_SENT, PK, SENT, STARTED, TTL, WAITING, WAITING_VERSION,
    get_bool, get_str, get_string_set, get_u64, message_pk, n, no_attributes, read_progress,
    read_session, s, sender_pk,
};
use crate::state::{
    Attempt, Claim, DEDUP_RETENTION, Place, Progress, SessionRecord, StateError, is_live,
    place_in_line, waiting_entry,
};

/// A granted sender lease.
pub(super) struct SenderLease {
    /// The sender's session, `None` when there is none or it expired.
    pub(super) session: Option<SessionRecord>,
    /// The waiting list left behind (entries of newer messages).
    pub(super) waiting: Vec<String>,
}

/// The outcome of one UpdateItem taking the sender lease.
enum LeaseAttempt {
    /// The lease is ours: the sender item after the update.
    Taken(Item),
    /// The lease is held, or the waiting list is not as expected: the sender item
    /// before (empty when there was none).
    Refused(Item),
}

/// What taking the sender lease expects of the waiting list, and leaves there.
enum WaitingList {
    /// The list must be empty (absent), and stays so.
    MustBeEmpty,
    /// The list must still be at `seen_version` (`None`: never written); it becomes
    /// `remaining`.
    Rewrite {
        seen_version: Option<u64>,
        remaining: Vec<String>,
    },
}

impl DynamoStore {
    /// Claim the message item: [`Claim::Claimed`] with what earlier attempts achieved,
    /// [`Claim::Done`] when it was answered, [`Claim::Busy`] when another attempt holds it.
    pub(super) async fn claim_message(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
    ) -> Result<Claim, StateError> {
        // The item before the claim: what earlier attempts achieved (none when new).
        let mut attributes = vec![PK, HOLDER, LEASE_UNTIL, TTL, DONE, SENT, NOTICE_SENT];
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, message_pk(attempt.message_id))
            .condition_expression(MESSAGE_CLAIMABLE);
        if attempt.starts_turn {
            attributes.push(STARTED);
            request = request.update_expression(CLAIM_TURN_MESSAGE);
        } else {
            request = request.update_expression(CLAIM_MESSAGE);
        }
        let result = request
            .set_expression_attribute_names(Some(names(&attributes)))
            .expression_attribute_values(":token", s(attempt.token))
            .expression_attribute_values(":lease_until", n(now + self.lease.as_secs()))
            .expression_attribute_values(":ttl", n(now + DEDUP_RETENTION.as_secs()))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Claim::Claimed(match out.attributes() {
                Some(before) if !before.is_empty() => read_progress(before, attempt.token)?,
                _ => Progress::default(),
            })),
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
    pub(super) async fn lease_sender(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
    ) -> Result<Option<SenderLease>, StateError> {
        let mine = waiting_entry(attempt.message_id, attempt.timestamp);
        let mut old = match self
            .take_sender(attempt, now, WaitingList::MustBeEmpty)
            .await?
        {
            LeaseAttempt::Taken(item) => {
                return Ok(Some(SenderLease {
                    session: self.live_session(&item, now)?,
                    waiting: Vec::new(),
                }));
            }
            LeaseAttempt::Refused(old) => old,
        };
        // A few rounds against concurrent list writers, then give up as busy.
        for _ in 0..3 {
            let leased_to_other = get_u64(&old, LEASE_UNTIL)?.is_some_and(|until| until > now)
                && get_str(&old, HOLDER)? != Some(attempt.token);
            let waiting = get_string_set(&old, WAITING)?;
            match place_in_line(&waiting, &mine, now, self.order_hold) {
                Place::Next { remaining } if !leased_to_other => {
                    let rewrite = WaitingList::Rewrite {
                        seen_version: get_u64(&old, WAITING_VERSION)?,
                        remaining: remaining.clone(),
                    };
                    match self.take_sender(attempt, now, rewrite).await? {
                        LeaseAttempt::Taken(item) => {
                            return Ok(Some(SenderLease {
                                session: self.live_session(&item, now)?,
                                waiting: remaining,
                            }));
                        }
                        LeaseAttempt::Refused(newer) => old = newer,
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

    /// The session of a sender item, unless it has been idle too long.
    pub(super) fn live_session(
        &self,
        item: &Item,
        now: u64,
    ) -> Result<Option<SessionRecord>, StateError> {
        let idle = self.session_idle_ttl.as_secs();
        Ok(read_session(item)?.filter(|s| s.updated_at + idle > now))
    }

    /// One UpdateItem taking the sender lease, with `list` as the condition on the
    /// waiting list and what to write there.
    async fn take_sender(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
        list: WaitingList,
    ) -> Result<LeaseAttempt, StateError> {
        let lease = self.lease.as_secs();
        let idle = self.session_idle_ttl.as_secs();
        let mut values = Item::from([
            (":token".to_string(), s(attempt.token)),
            (":lease_until".to_string(), n(now + lease)),
            (":ttl".to_string(), n(now + idle + lease)),
            (":now".to_string(), n(now)),
        ]);
        let mut attributes = vec![HOLDER, LEASE_UNTIL, TTL, WAITING];
        let (update, condition) = match list {
            WaitingList::MustBeEmpty => (
                SET_SENDER_LEASE.to_string(),
                format!("{SENDER_LEASE_FREE} AND attribute_not_exists(#waiting)"),
            ),
            WaitingList::Rewrite {
                seen_version,
                remaining,
            } => {
                attributes.push(WAITING_VERSION);
                values.insert(":next_version".into(), n(seen_version.unwrap_or(0) + 1));
                let version_check = match seen_version {
                    Some(v) => {
                        values.insert(":version".into(), n(v));
                        "#waiting_version = :version"
                    }
                    None => "attribute_not_exists(#waiting_version)",
                };
                let update = if remaining.is_empty() {
                    format!("{SET_SENDER_LEASE}, #waiting_version = :next_version REMOVE #waiting")
                } else {
                    values.insert(":waiting".into(), AttributeValue::Ss(remaining));
                    format!(
                        "{SET_SENDER_LEASE}, #waiting_version = :next_version, #waiting = :waiting"
                    )
                };
                (update, format!("{SENDER_LEASE_FREE} AND {version_check}"))
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
            Ok(out) => Ok(LeaseAttempt::Taken(
                out.attributes()
                    .ok_or_else(|| no_attributes("sender"))?
                    .clone(),
            )),
            Err(SdkError::ServiceError(e)) => match e.err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => Ok(
                    LeaseAttempt::Refused(failed.item().cloned().unwrap_or_default()),
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
            .update_expression(JOIN_WAITING_LIST)
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
    pub(super) async fn release_message(
        &self,
        attempt: &Attempt<'_>,
        started_before: bool,
    ) -> Result<(), StateError> {
        // A turn this claim began did not begin after all; one begun before stays so.
        let (expression, attributes) = if attempt.starts_turn && !started_before {
            (
                RELEASE_TURN_MESSAGE,
                vec![LEASE_UNTIL, HOLDER, DONE, STARTED],
            )
        } else {
            (RELEASE_MESSAGE, vec![LEASE_UNTIL, HOLDER, DONE])
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, message_pk(attempt.message_id))
            .update_expression(expression)
            .condition_expression(MESSAGE_HELD)
            .set_expression_attribute_names(Some(names(&attributes)))
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
}
