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
//! So an ordinary message costs 3 requests. Every write is conditioned on the
//! attempt's lease token; a failed condition means [`StateError::LostLease`].
//!
//! # Client
//!
//! [`dynamo_client`] sets [`timeout_config`] (connect 2 s, per attempt 3 s, whole
//! operation 8 s) and the SDK's standard retry mode with at most 3 attempts
//! ([`retry_config`]), so an unreachable DynamoDB fails the request within seconds
//! instead of holding the webhook until Meta's own timeout.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus, TransactWriteItem, Update,
};
use sha2::{Digest, Sha256};

use super::{
    Attempt, Begin, Claim, DEDUP_RETENTION, DEFAULT_ORDER_HOLD, Place, Progress, SessionRecord,
    SessionStore, StateError, is_live, message_key, place_in_line, waiting_entry,
};
use crate::domain::Mode;

type Item = HashMap<String, AttributeValue>;

/// A granted sender lease: the session, and the waiting list left behind.
type Leased = (Option<SessionRecord>, Vec<String>);

/// Attribute names: all go through `#name` placeholders, as several (`ttl`, `mode`,
/// `session_id`…) are or may become DynamoDB reserved words.
const PK: &str = "pk";
const DONE: &str = "done";
const HOLDER: &str = "holder";
const LEASE_UNTIL: &str = "lease_until";
const TTL: &str = "ttl";
const PARTS: &str = "parts";
const SENT: &str = "sent";
const NOTICE_SENT: &str = "notice_sent";
const SESSION_ID: &str = "session_id";
const MODE: &str = "mode";
const CREATED_AT: &str = "created_at";
const UPDATED_AT: &str = "updated_at";
const SENDER: &str = "sender";
const WAITING: &str = "waiting";
const WAITING_VERSION: &str = "waiting_version";

const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
];

/// Connect 2 s, one attempt 3 s, the whole operation (retries included) 8 s.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build()
}

/// The SDK's standard retry (exponential backoff with jitter, throttling-aware), at
/// most 3 attempts.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(3)
}

/// The one DynamoDB client of the process: credentials and region from the standard
/// chain (Lambda environment, `AWS_PROFILE`, SSO…), `endpoint_url` for local
/// DynamoDB-compatible servers.
pub async fn dynamo_client(endpoint_url: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeout_config())
        .retry_config(retry_config());
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    Client::new(&loader.load().await)
}

/// Create the table (key `pk` String, on-demand) and enable TTL on `ttl`. Returns
/// `Ok(false)` when the table already exists; TTL is still switched on if it is off,
/// so a run interrupted between the two steps is repaired by running it again.
pub async fn create_table(client: &Client, table: &str) -> Result<bool, StateError> {
    let created = match describe_status(client, table).await? {
        Some(_) => false,
        None => {
            let result = client
                .create_table()
                .table_name(table)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(PK)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(build_error)?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(PK)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(build_error)?,
                )
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            match result {
                Ok(_) => true,
                // Created concurrently by someone else: fine.
                Err(e) if e.code() == Some("ResourceInUseException") => false,
                Err(e) => return Err(classify("CreateTable", &e)),
            }
        }
    };
    wait_active(client, table).await?;
    ensure_ttl(client, table).await?;
    Ok(created)
}

/// `None` when the table does not exist. Also checks the key schema, so a table made
/// for something else fails here rather than on every message.
async fn describe_status(client: &Client, table: &str) -> Result<Option<TableStatus>, StateError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let Some(desc) = out.table() else {
                return Err(StateError::Corrupt(
                    "DescribeTable returned no table".into(),
                ));
            };
            let keys = desc.key_schema();
            let key_ok = keys.len() == 1
                && keys[0].attribute_name() == PK
                && keys[0].key_type() == &KeyType::Hash;
            if !key_ok {
                return Err(StateError::Corrupt(format!(
                    "table {table} exists with another key schema; expected partition key `{PK}` only"
                )));
            }
            Ok(Some(
                desc.table_status().cloned().unwrap_or(TableStatus::Active),
            ))
        }
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(classify("DescribeTable", &e)),
    }
}

async fn wait_active(client: &Client, table: &str) -> Result<(), StateError> {
    // On-demand tables usually turn ACTIVE within seconds; give up after ~2 minutes.
    for _ in 0..120 {
        match describe_status(client, table).await? {
            Some(TableStatus::Active) => return Ok(()),
            Some(_) | None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Err(StateError::Unavailable(format!(
        "table {table} did not become ACTIVE in time"
    )))
}

async fn ensure_ttl(client: &Client, table: &str) -> Result<(), StateError> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| classify("DescribeTimeToLive", &e))?;
    let status = current
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    let result = client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        // Enabled concurrently: DynamoDB answers "TimeToLive is already enabled".
        Err(e)
            if e.code() == Some("ValidationException")
                && e.message().is_some_and(|m| m.contains("already enabled")) =>
        {
            Ok(())
        }
        Err(e) => Err(classify("UpdateTimeToLive", &e)),
    }
}

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

    /// Claim the message item. `Err(Ok(begin))` is a final answer (Done / MessageBusy).
    async fn claim_message(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
    ) -> Result<Result<Progress, Begin>, StateError> {
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
                Ok(Ok(read_progress(item)?))
            }
            Err(SdkError::ServiceError(e)) => match e.err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    let done = match failed.item() {
                        Some(old) => get_bool(old, DONE)?.unwrap_or(false),
                        None => return Err(no_attributes("message (condition failed)")),
                    };
                    Ok(Err(if done {
                        Begin::Done
                    } else {
                        Begin::MessageBusy
                    }))
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
            Ok(item) => {
                let session = read_session(&item)?.filter(|s| s.updated_at + idle > now);
                return Ok(Some((session, Vec::new())));
            }
            Err(old) => old,
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
                        Ok(item) => {
                            let session =
                                read_session(&item)?.filter(|s| s.updated_at + idle > now);
                            return Ok(Some((session, remaining)));
                        }
                        Err(newer) => old = newer,
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

    /// One UpdateItem taking the sender lease: `Ok(item after)`, or `Err(item before)`
    /// when the lease is held or the waiting list is not as expected. `list` is `None`
    /// for "the list must be empty", else the version seen and the list to write.
    async fn take_sender(
        &self,
        attempt: &Attempt<'_>,
        now: u64,
        list: Option<(Option<u64>, Vec<String>)>,
    ) -> Result<Result<Item, Item>, StateError> {
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
            Ok(out) => Ok(Ok(out
                .attributes()
                .ok_or_else(|| no_attributes("sender"))?
                .clone())),
            Err(SdkError::ServiceError(e)) => match e.err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    Ok(Err(failed.item().cloned().unwrap_or_default()))
                }
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
            Ok(progress) => progress,
            Err(answer) => return Ok(answer),
        };
        match self.lease_sender(attempt, now).await? {
            Some((session, waiting)) => Ok(Begin::Ready {
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
        Ok(match self.claim_message(attempt, now).await? {
            Ok(progress) => Claim::Claimed(progress),
            Err(Begin::Done) => Claim::Done,
            Err(_) => Claim::Busy,
        })
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

// ---------------------------------------------------------------- expressions

/// The progress assignments (after `SET`), with `REMOVE #parts` when there are none.
fn progress_assignments(progress: &Progress, values: &mut Item) -> &'static str {
    values.insert(":sent".into(), n(u64::from(progress.sent)));
    values.insert(
        ":notice_sent".into(),
        AttributeValue::Bool(progress.notice_sent),
    );
    if progress.parts.is_empty() {
        "#sent = :sent, #notice_sent = :notice_sent REMOVE #parts"
    } else {
        let parts = progress.parts.iter().map(s).collect();
        values.insert(":parts".into(), AttributeValue::L(parts));
        "#sent = :sent, #notice_sent = :notice_sent, #parts = :parts"
    }
}

fn names(attributes: &[&str]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|a| (format!("#{a}"), (*a).to_string()))
        .collect()
}

fn message_pk(message_id: &str) -> AttributeValue {
    s(format!("msg#{}", message_key(message_id)))
}

/// The link from a username user's business-scoped id to their sender key.
fn user_pk(user_id: &str) -> AttributeValue {
    s(format!("user#{user_id}"))
}

fn sender_pk(sender: &str) -> AttributeValue {
    s(format!("sender#{sender}"))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Makes an SDK retry of a transaction that did commit succeed instead of failing its
/// own condition (DynamoDB remembers the token for 10 minutes). At most 36 chars.
fn request_token(op: &str, token: &str, ours: bool) -> String {
    let digest = Sha256::digest(format!("{op}\0{token}\0{ours}").as_bytes());
    hex::encode(&digest[..16])
}

// ---------------------------------------------------------------- reading items

fn read_progress(item: &Item) -> Result<Progress, StateError> {
    let parts = match item.get(PARTS) {
        None => Vec::new(),
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| match v {
                AttributeValue::S(part) => Ok(part.clone()),
                _ => Err(wrong_type(PARTS, "a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type(PARTS, "a list of strings")),
    };
    let sent = match get_u64(item, SENT)? {
        None => 0,
        Some(sent) => u32::try_from(sent).map_err(|_| wrong_type(SENT, "a small count"))?,
    };
    Ok(Progress {
        parts,
        sent,
        notice_sent: get_bool(item, NOTICE_SENT)?.unwrap_or(false),
    })
}

fn read_session(item: &Item) -> Result<Option<SessionRecord>, StateError> {
    let Some(id) = get_str(item, SESSION_ID)? else {
        return Ok(None);
    };
    let mode = match get_str(item, MODE)? {
        Some("normal") => Mode::Normal,
        Some("otr") => Mode::Otr,
        _ => return Err(wrong_type(MODE, "\"normal\" or \"otr\"")),
    };
    let required = |name| get_u64(item, name)?.ok_or_else(|| missing(name));
    Ok(Some(SessionRecord {
        id: id.to_string(),
        mode,
        created_at: required(CREATED_AT)?,
        updated_at: required(UPDATED_AT)?,
    }))
}

fn get_str<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, StateError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(value)) => Ok(Some(value)),
        Some(_) => Err(wrong_type(name, "a string")),
    }
}

fn get_u64(item: &Item, name: &str) -> Result<Option<u64>, StateError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(value)) => value
            .parse()
            .map(Some)
            .map_err(|_| wrong_type(name, "a whole number")),
        Some(_) => Err(wrong_type(name, "a number")),
    }
}

fn get_string_set(item: &Item, name: &str) -> Result<Vec<String>, StateError> {
    match item.get(name) {
        None => Ok(Vec::new()),
        Some(AttributeValue::Ss(values)) => Ok(values.clone()),
        Some(_) => Err(wrong_type(name, "a string set")),
    }
}

fn get_bool(item: &Item, name: &str) -> Result<Option<bool>, StateError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(wrong_type(name, "a boolean")),
    }
}

// Corrupt messages name the attribute, never its value (it may be reply text).
fn wrong_type(name: &str, expected: &str) -> StateError {
    StateError::Corrupt(format!("attribute `{name}` is not {expected}"))
}

fn missing(name: &str) -> StateError {
    StateError::Corrupt(format!("attribute `{name}` is missing"))
}

fn no_attributes(what: &str) -> StateError {
    StateError::Corrupt(format!(
        "DynamoDB returned no attributes for the {what} item"
    ))
}

// ---------------------------------------------------------------- errors

fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(_)) && e.code() == Some("ConditionalCheckFailedException")
}

/// Service errors are described by code and HTTP status only: their messages can echo
/// request values.
fn classify<E, R>(op: &str, e: &SdkError<E, R>) -> StateError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("unknown error");
            if THROTTLING_CODES.contains(&code) {
                StateError::Throttled(format!("{op}: {code}"))
            } else {
                StateError::Unavailable(format!("{op}: {code}"))
            }
        }
        SdkError::TimeoutError(_) => StateError::Unavailable(format!("{op}: timed out")),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StateError::Unavailable(format!("{op}: {}", DisplayErrorContext(e)))
        }
        _ => StateError::Unavailable(format!(
            "{op}: request not sent: {}",
            DisplayErrorContext(e)
        )),
    }
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StateError {
    StateError::Unavailable(format!("request not built: {e}"))
}

/// Reason codes by item, in request order. Some DynamoDB-compatible servers only
/// report them in the message: "… cancellation reasons [None, ConditionalCheckFailed]".
fn cancellation_codes(
    reasons: &[aws_sdk_dynamodb::types::CancellationReason],
    message: Option<&str>,
) -> Vec<String> {
    if !reasons.is_empty() {
        return reasons
            .iter()
            .map(|r| r.code().unwrap_or("None").to_string())
            .collect();
    }
    message
        .and_then(|m| {
            let start = m.rfind('[')?;
            let end = start + m[start..].find(']')?;
            Some(
                m[start + 1..end]
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

fn cancelled_error(codes: &[String]) -> StateError {
    let summary = codes.join(", ");
    let throttled = codes.iter().any(|c| {
        matches!(
            c.as_str(),
            "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded"
        )
    });
    if throttled {
        StateError::Throttled(format!("TransactWriteItems cancelled: [{summary}]"))
    } else {
        StateError::Unavailable(format!("TransactWriteItems cancelled: [{summary}]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_codes_from_message_when_reasons_are_absent() {
        let codes = cancellation_codes(
            &[],
            Some(
                "Transaction cancelled, please refer cancellation reasons for specific reasons [None, ConditionalCheckFailed]",
            ),
        );
        assert_eq!(codes, vec!["None", "ConditionalCheckFailed"]);
    }

    #[test]
    fn session_needs_all_its_attributes() {
        let mut item = Item::new();
        assert_eq!(read_session(&item).ok(), Some(None));
        item.insert(SESSION_ID.into(), s("abc"));
        item.insert(MODE.into(), s("otr"));
        item.insert(CREATED_AT.into(), n(1));
        assert!(matches!(read_session(&item), Err(StateError::Corrupt(_))));
        item.insert(UPDATED_AT.into(), n(2));
        let session = read_session(&item).ok().flatten();
        assert_eq!(
            session.map(|s| (s.mode, s.updated_at)),
            Some((Mode::Otr, 2))
        );
        item.insert(MODE.into(), s("loud"));
        assert!(matches!(read_session(&item), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn corrupt_progress_names_the_attribute_not_the_value() {
        let mut item = Item::new();
        item.insert(PARTS.into(), AttributeValue::L(vec![n(7)]));
        item.insert(SENT.into(), s("private words"));
        let err = read_progress(&item)
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("parts") && !err.contains("private"), "{err}");
    }
}
