//! Condition and update expressions: the fixed ones as constants (each names the
//! `:values` it needs), the helpers that fill `#name` placeholders and progress values,
//! and the idempotency token of a transaction.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};

use super::item::{Item, n, s};
use crate::state::Progress;

// ---------------------------------------------------------------- message item

/// Claim a message: take its lease, and on first sight create its bookkeeping
/// (`:token`, `:lease_until`, `:ttl`, `:false`, `:zero`).
pub(super) const CLAIM_MESSAGE: &str = "SET #holder = :token, #lease_until = :lease_until, \
    #ttl = if_not_exists(#ttl, :ttl), #done = if_not_exists(#done, :false), \
    #sent = if_not_exists(#sent, :zero), \
    #notice_sent = if_not_exists(#notice_sent, :false)";

/// [`CLAIM_MESSAGE`] for text for the engine: the turn begins with this write, which
/// records the token of the attempt that began it (kept if an earlier one did).
pub(super) const CLAIM_TURN_MESSAGE: &str = "SET #holder = :token, #lease_until = :lease_until, \
    #ttl = if_not_exists(#ttl, :ttl), #done = if_not_exists(#done, :false), \
    #sent = if_not_exists(#sent, :zero), \
    #notice_sent = if_not_exists(#notice_sent, :false), \
    #started = if_not_exists(#started, :token)";

/// A message can be claimed when new, or not answered and its lease over (`:now`).
/// `#holder = :token` only matters for an SDK retry of this very request.
pub(super) const MESSAGE_CLAIMABLE: &str = "attribute_not_exists(#pk) OR \
    (#done = :false AND (#lease_until <= :now OR #holder = :token))";

/// The attempt (`:token`) still holds the message, and it is not answered (`:false`).
pub(super) const MESSAGE_HELD: &str = "#holder = :token AND #done = :false";

/// Hand a message claim back: its lease ends now (`:zero`).
pub(super) const RELEASE_MESSAGE: &str = "SET #lease_until = :zero";

/// [`RELEASE_MESSAGE`] for a turn this attempt's claim began: it did not begin after all.
pub(super) const RELEASE_TURN_MESSAGE: &str = "SET #lease_until = :zero REMOVE #started";

/// Answered: done (`:true`), released (`:zero`), no reply text kept.
pub(super) const MARK_MESSAGE_DONE: &str = "SET #done = :true, #lease_until = :zero REMOVE #parts";

// ---------------------------------------------------------------- sender item

/// The sender lease is free (ended by `:now`, or never taken) or already ours
/// (`:token`).
pub(super) const SENDER_LEASE_FREE: &str =
    "(attribute_not_exists(#lease_until) OR #lease_until <= :now OR #holder = :token)";

/// Take the sender lease (`:token`, `:lease_until`). The item must outlive the lease
/// even if its session is long expired (`:ttl`).
pub(super) const SET_SENDER_LEASE: &str =
    "SET #holder = :token, #lease_until = :lease_until, #ttl = :ttl";

/// Put `:entries` on the waiting list (`:one` bumps its version); the item lives at
/// least until `:ttl`.
pub(super) const JOIN_WAITING_LIST: &str =
    "ADD #waiting :entries, #waiting_version :one SET #ttl = if_not_exists(#ttl, :ttl)";

/// Take `:entries` off the waiting list (`:one` bumps its version).
pub(super) const LEAVE_WAITING_LIST: &str = "ADD #waiting_version :one DELETE #waiting :entries";

/// Write the session (`:session_id`, `:mode`, `:created_at`, `:updated_at`).
pub(super) const SET_SESSION: &str = "SET #session_id = :session_id, #mode = :mode, \
    #created_at = :created_at, #updated_at = :updated_at";

// ---------------------------------------------------------------- helpers

/// The progress assignments (after `SET`), with a `REMOVE` clause for what is absent:
/// `#parts` when there are none, `#started` when the turn did not begin. A begun turn
/// keeps the token of the attempt that began it (`:token`, which the caller sets), so a
/// later attempt can tell "begun before me" from its own claim's write.
pub(super) fn progress_assignments(progress: &Progress, values: &mut Item) -> String {
    values.insert(":sent".into(), n(u64::from(progress.sent)));
    values.insert(
        ":notice_sent".into(),
        AttributeValue::Bool(progress.notice_sent),
    );
    let mut set = String::from("#sent = :sent, #notice_sent = :notice_sent");
    let mut remove = Vec::new();
    if progress.started {
        set.push_str(", #started = if_not_exists(#started, :token)");
    } else {
        remove.push("#started");
    }
    if progress.parts.is_empty() {
        remove.push("#parts");
    } else {
        let parts = progress.parts.iter().map(s).collect();
        values.insert(":parts".into(), AttributeValue::L(parts));
        set.push_str(", #parts = :parts");
    }
    if !remove.is_empty() {
        set.push_str(" REMOVE ");
        set.push_str(&remove.join(", "));
    }
    set
}

/// The `#name` placeholder of each attribute.
pub(super) fn names(attributes: &[&str]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|a| (format!("#{a}"), (*a).to_string()))
        .collect()
}

/// Makes an SDK retry of a transaction that did commit succeed instead of failing its
/// own condition (DynamoDB remembers the token for 10 minutes). At most 36 chars.
pub(super) fn request_token(op: &str, token: &str, ours: bool) -> String {
    let digest = Sha256::digest(format!("{op}\0{token}\0{ours}").as_bytes());
    hex::encode(&digest[..16])
}
