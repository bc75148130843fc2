//! Walking Meta's payload: every entry, change and message of one POST, leniently.
//! Statuses and errors are logged (masked); messages for another phone number id or
//! another object type are skipped; one unreadable part never hides the rest.

use super::payload::{Change, ChangeValue, Entry, Envelope, InboundMessage, RawMessage, Status};
use crate::domain::mask;

/// The messages of `envelope` meant for `phone_number_id`, in payload order.
pub fn collect_messages(envelope: &Envelope<'_>, phone_number_id: &str) -> Vec<InboundMessage> {
    let mut out = Vec::new();
    if envelope
        .object
        .as_deref()
        .is_some_and(|o| o != "whatsapp_business_account")
    {
        tracing::info!("ignoring webhook for another object type");
        return out;
    }
    for raw_entry in &envelope.entry {
        let Ok(entry) = serde_json::from_str::<Entry<'_>>(raw_entry.get()) else {
            tracing::warn!("skipping unreadable entry");
            continue;
        };
        for raw_change in &entry.changes {
            let Ok(change) = serde_json::from_str::<Change<'_>>(raw_change.get()) else {
                tracing::warn!("skipping unreadable change");
                continue;
            };
            if change.field.as_deref() != Some("messages") {
                tracing::debug!(field = ?change.field, "ignoring change of another field");
                continue;
            }
            let Some(value) = change
                .value
                .and_then(|v| serde_json::from_str::<ChangeValue<'_>>(v.get()).ok())
            else {
                tracing::warn!("skipping change with an unreadable value");
                continue;
            };
            let for_number = value
                .metadata
                .as_ref()
                .and_then(|m| m.phone_number_id.as_deref());
            if for_number != Some(phone_number_id) {
                tracing::warn!(
                    phone_number_id = for_number.map(mask).as_deref().unwrap_or("none"),
                    "ignoring change for another phone_number_id"
                );
                continue;
            }
            for error in &value.errors {
                tracing::warn!(
                    code = error.code.unwrap_or_default(),
                    title = error.title.as_deref().unwrap_or_default(),
                    "webhook reported an error"
                );
            }
            for raw_status in &value.statuses {
                log_status(raw_status.get());
            }
            for raw_message in &value.messages {
                match serde_json::from_str::<RawMessage>(raw_message.get())
                    .map(RawMessage::into_inbound)
                {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => tracing::warn!("skipping message without a sender"),
                    Err(e) => {
                        tracing::warn!(category = ?e.classify(), line = e.line(), column = e.column(), "skipping unreadable message")
                    }
                }
            }
        }
    }
    out
}

fn log_status(raw: &str) {
    let Ok(status) = serde_json::from_str::<Status>(raw) else {
        tracing::warn!("skipping unreadable status");
        return;
    };
    let recipient = status
        .recipient_id
        .as_deref()
        .or(status.recipient_user_id.as_deref())
        .map(mask)
        .unwrap_or_default();
    let state = status.status.as_deref().unwrap_or("unknown");
    if state == "failed" {
        for error in &status.errors {
            tracing::warn!(to = %recipient, code = error.code.unwrap_or_default(), title = error.title.as_deref().unwrap_or_default(), "outgoing message failed");
        }
        if status.errors.is_empty() {
            tracing::warn!(to = %recipient, "outgoing message failed");
        }
    } else {
        tracing::debug!(to = %recipient, status = state, "status update");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Recipient;
    use crate::webhook::payload::Content;

    const NUMBER_ID: &str = "123456123456123";

    fn walk(body: &str, number_id: &str) -> Vec<InboundMessage> {
        let envelope: Envelope<'_> = serde_json::from_str(body).expect("envelope");
        collect_messages(&envelope, number_id)
    }

    fn change(messages: &str) -> String {
        format!(
            r#"{{"field":"messages","value":{{"metadata":{{"phone_number_id":"{NUMBER_ID}"}},"messages":[{messages}]}}}}"#
        )
    }

    #[test]
    fn every_entry_and_change_is_walked_and_broken_parts_are_skipped() {
        let text = |id: &str| {
            format!(
                r#"{{"id":"{id}","from":"15550001111","timestamp":"5","type":"text","text":{{"body":"hi"}}}}"#
            )
        };
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[
                {{"changes":[{}, {{"field":"statuses"}}, 7]}},
                "not an entry",
                {{"changes":[{}]}}
            ]}}"#,
            change(&format!("{}, {{\"id\": 3}}, {{\"id\":\"x\"}}", text("A"))),
            change(&text("B")),
        );
        let messages = walk(&body, NUMBER_ID);
        let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            ["A", "B"],
            "unreadable and sender-less messages skipped"
        );
        assert_eq!(messages[0].sender, Recipient::Phone("15550001111".into()));
        assert_eq!(messages[0].timestamp, 5);
        assert_eq!(messages[0].content, Content::Text("hi".into()));
    }

    #[test]
    fn other_phone_numbers_and_objects_are_ignored() {
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"changes":[{}]}}]}}"#,
            change(r#"{"id":"A","from":"1555","type":"text","text":{"body":"hi"}}"#)
        );
        assert_eq!(walk(&body, NUMBER_ID).len(), 1);
        assert!(walk(&body, "999").is_empty());
        let page = body.replace("whatsapp_business_account", "page");
        assert!(walk(&page, NUMBER_ID).is_empty());
    }
}
