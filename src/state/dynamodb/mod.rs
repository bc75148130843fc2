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

//!
//! # Files
//!
//! `store.rs` the store and its requests; `admin.rs` the table and the client;
//! `item.rs` attribute names, keys and decoding; `expressions.rs` shared expression
//! pieces; `errors.rs` SDK errors as [`StateError`]s.

mod admin;
mod errors;
mod expressions;
mod item;
mod store;

pub use admin::{create_table, dynamo_client, retry_config, timeout_config};
pub use store::DynamoStore;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::{
    Attempt, Begin, Claim, DEDUP_RETENTION, DEFAULT_ORDER_HOLD, Place, Progress, SessionRecord,
    SessionStore, StateError, is_live, message_key, place_in_line, waiting_entry,
};

/// An item as the SDK returns it.
type Item = HashMap<String, AttributeValue>;

#[cfg(test)]
mod tests {
    use super::errors::*;
    use super::item::*;
    use super::*;
    use crate::domain::Mode;

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
