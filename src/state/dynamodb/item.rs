//! The table's items as data: attribute names, the keys of the three item kinds, value
//! helpers, and reading attributes back (a wrong or missing one is [`StateError::Corrupt`]).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::Mode;
use crate::domain::SessionRecord;
use crate::state::{Progress, StateError, message_key};

/// One item's attributes, as the SDK sends and returns them.
pub(super) type Item = HashMap<String, AttributeValue>;

/// Attribute names: all go through `#name` placeholders, as several (`ttl`, `mode`,
/// `session_id`…) are or may become DynamoDB reserved words.
pub(super) const PK: &str = "pk";
pub(super) const DONE: &str = "done";
pub(super) const HOLDER: &str = "holder";
pub(super) const LEASE_UNTIL: &str = "lease_until";
pub(super) const TTL: &str = "ttl";
pub(super) const PARTS: &str = "parts";
pub(super) const SENT: &str = "sent";
pub(super) const NOTICE_SENT: &str = "notice_sent";
pub(super) const STARTED: &str = "started";
pub(super) const SESSION_ID: &str = "session_id";
pub(super) const MODE: &str = "mode";
pub(super) const CREATED_AT: &str = "created_at";
pub(super) const UPDATED_AT: &str = "updated_at";
pub(super) const SENDER: &str = "sender";
pub(super) const WAITING: &str = "waiting";
pub(super) const WAITING_VERSION: &str = "waiting_version";

// ---------------------------------------------------------------- keys and values

/// The message item's key: a hash of the message id, never the id itself.
pub(super) fn message_pk(message_id: &str) -> AttributeValue {
    s(format!("msg#{}", message_key(message_id)))
}

/// The link from a username user's business-scoped id to their sender key.
pub(super) fn user_pk(user_id: &str) -> AttributeValue {
    s(format!("user#{user_id}"))
}

/// The sender item's key (phone digits or user id).
pub(super) fn sender_pk(sender: &str) -> AttributeValue {
    s(format!("sender#{sender}"))
}

/// A string value.
pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number value.
pub(super) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

// ---------------------------------------------------------------- reading items

/// What earlier attempts achieved, from a message item; `token` is the reading
/// attempt's (a turn it began itself does not count as begun before).
pub(super) fn read_progress(item: &Item, token: &str) -> Result<Progress, StateError> {
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
        started: get_str(item, STARTED)?.is_some_and(|by| by != token),
    })
}

/// The session of a sender item; `None` before its first answer. The caller filters
/// out an expired one.
pub(super) fn read_session(item: &Item) -> Result<Option<SessionRecord>, StateError> {
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

pub(super) fn get_str<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, StateError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(value)) => Ok(Some(value)),
        Some(_) => Err(wrong_type(name, "a string")),
    }
}

pub(super) fn get_u64(item: &Item, name: &str) -> Result<Option<u64>, StateError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(value)) => value
            .parse()
            .map(Some)
            .map_err(|_| wrong_type(name, "a whole number")),
        Some(_) => Err(wrong_type(name, "a number")),
    }
}

pub(super) fn get_string_set(item: &Item, name: &str) -> Result<Vec<String>, StateError> {
    match item.get(name) {
        None => Ok(Vec::new()),
        Some(AttributeValue::Ss(values)) => Ok(values.clone()),
        Some(_) => Err(wrong_type(name, "a string set")),
    }
}

pub(super) fn get_bool(item: &Item, name: &str) -> Result<Option<bool>, StateError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(wrong_type(name, "a boolean")),
    }
}

// ---------------------------------------------------------------- corrupt items

// Corrupt messages name the attribute, never its value (it may be reply text).
fn wrong_type(name: &str, expected: &str) -> StateError {
    StateError::Corrupt(format!("attribute `{name}` is not {expected}"))
}

fn missing(name: &str) -> StateError {
    StateError::Corrupt(format!("attribute `{name}` is missing"))
}

pub(super) fn no_attributes(what: &str) -> StateError {
    StateError::Corrupt(format!(
        "DynamoDB returned no attributes for the {what} item"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = read_progress(&item, "t")
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("parts") && !err.contains("private"), "{err}");
    }
}
