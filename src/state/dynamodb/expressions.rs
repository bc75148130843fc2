//! Pieces of condition and update expressions shared by the store's requests.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use sha2::{Digest, Sha256};

use super::item::*;
use super::{Item, Progress};

/// The progress assignments (after `SET`), with `REMOVE #parts` when there are none.
pub(super) fn progress_assignments(progress: &Progress, values: &mut Item) -> &'static str {
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

// ---------------------------------------------------------------- reading items
