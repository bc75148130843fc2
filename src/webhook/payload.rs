//! Meta's webhook payload, read leniently: the envelope must be JSON of the right
//! shape, but one unreadable message, status or change is logged and skipped, so it
//! cannot hold back the rest of a batch. Unknown fields are ignored.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::{Recipient, digits};

#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default, borrow)]
    pub entry: Vec<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct Entry<'a> {
    #[serde(default, borrow)]
    pub changes: Vec<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct Change<'a> {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default, borrow)]
    pub value: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct ChangeValue<'a> {
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default, borrow)]
    pub messages: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    pub statuses: Vec<&'a RawValue>,
    #[serde(default)]
    pub errors: Vec<GraphError>,
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub phone_number_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphError {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub recipient_id: Option<String>,
    #[serde(default)]
    pub recipient_user_id: Option<String>,
    #[serde(default)]
    pub errors: Vec<GraphError>,
}

/// One inbound message as Meta sends it (the fields this adapter reads).
#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub id: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub from_user_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: Option<TextBody>,
    #[serde(default)]
    pub interactive: Option<Interactive>,
    #[serde(default)]
    pub button: Option<TemplateButton>,
    #[serde(default)]
    pub system: Option<SystemBody>,
}

#[derive(Debug, Deserialize)]
pub struct TextBody {
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize)]
pub struct Interactive {
    /// `button_reply`, `list_reply`, `nfm_reply` (a completed flow),
    /// `call_permission_reply`...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub button_reply: Option<Choice>,
    #[serde(default)]
    pub list_reply: Option<Choice>,
}

#[derive(Debug, Deserialize)]
pub struct Choice {
    /// The id the business gave the button or row.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub title: String,
}

/// A `system` message's `system` object. Its `body` ("User X changed from A to B")
/// names the user and both numbers: it is never read.
#[derive(Debug, Deserialize)]
pub struct SystemBody {
    /// `user_changed_number` (`customer_changed_number` before Graph API v12),
    /// `user_changed_user_id`...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The user's new WhatsApp id (their new number) after a number change.
    #[serde(default)]
    pub wa_id: Option<String>,
    /// The new id as Graph API versions before v12 sent it (a string or a number).
    #[serde(default)]
    pub new_wa_id: Option<serde_json::Value>,
}

impl SystemBody {
    /// The new number (digits) of a number change; `None` for other system messages.
    fn new_number(self) -> Option<String> {
        if !matches!(
            self.kind.as_deref(),
            Some("user_changed_number" | "customer_changed_number")
        ) {
            return None;
        }
        let legacy = match self.new_wa_id {
            Some(serde_json::Value::String(id)) => Some(id),
            Some(serde_json::Value::Number(id)) => Some(id.to_string()),
            _ => None,
        };
        self.wa_id
            .into_iter()
            .chain(legacy)
            .map(|id| digits(&id))
            .find(|d| !d.is_empty())
    }
}

#[derive(Debug, Deserialize)]
pub struct TemplateButton {
    #[serde(default)]
    pub text: String,
}

/// What a message asks of the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text typed by the user, or the title of a list choice or template button.
    Text(String),
    /// A tap on a reply button of an interactive message: the button's id and title.
    Reply { id: String, title: String },
    /// A type this adapter cannot read (image, audio, location...): gets a notice.
    NonText(String),
    /// Needs no answer: reactions, deletions, edits, flow and call-permission replies,
    /// `unsupported`, `system`, and unknown shapes. The kind, for logs.
    Silent(String),
    /// The user's WhatsApp account moved to another number (digits): their session
    /// follows them.
    NumberChanged(String),
}

/// A message after parsing, with its sender resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    pub id: String,
    pub sender: Recipient,
    /// The business-scoped user id, when Meta sent one (also for phone senders).
    pub user_id: Option<String>,
    /// Unix seconds (0 if Meta's string was unreadable).
    pub timestamp: u64,
    pub content: Content,
}

impl RawMessage {
    /// `None` when the message names no sender at all.
    pub fn into_inbound(self) -> Option<InboundMessage> {
        let phone = self.from.map(|f| digits(&f)).filter(|d| !d.is_empty());
        let user_id = non_empty(self.from_user_id);
        let sender = match (phone, &user_id) {
            (Some(phone), _) => Recipient::Phone(phone),
            (None, Some(user_id)) => Recipient::UserId(user_id.clone()),
            (None, None) => return None,
        };
        let kind = self.kind.unwrap_or_default();
        let content = match kind.as_str() {
            "text" => Content::Text(self.text.map(|t| t.body).unwrap_or_default()),
            "interactive" => match self.interactive {
                Some(Interactive {
                    button_reply: Some(c),
                    ..
                }) => Content::Reply {
                    id: c.id,
                    title: c.title,
                },
                Some(Interactive {
                    list_reply: Some(c),
                    ..
                }) => Content::Text(c.title),
                // A completed flow and a call-permission answer reply to messages this
                // adapter never sends: nothing to say, and "only text" would be wrong.
                Some(Interactive { kind: Some(k), .. })
                    if matches!(k.as_str(), "nfm_reply" | "call_permission_reply") =>
                {
                    Content::Silent(format!("interactive/{k}"))
                }
                _ => Content::NonText(kind),
            },
            "button" => match self.button {
                Some(b) => Content::Text(b.text),
                None => Content::NonText(kind),
            },
            "system" => match self.system.and_then(SystemBody::new_number) {
                Some(number) => Content::NumberChanged(number),
                None => Content::Silent(kind),
            },
            // An edit is not answered: the original message was answered already, and
            // asking the agent again would answer (and act) twice for one request.
            // A deletion (`revoke`) cannot take back an answer either.
            "reaction" | "unsupported" | "request_welcome" | "revoke" | "edit" | "ephemeral"
            | "" => Content::Silent(kind),
            _ => Content::NonText(kind),
        };
        Some(InboundMessage {
            id: self.id,
            sender,
            user_id,
            timestamp: self
                .timestamp
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
            content,
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn content(message: Value) -> Content {
        let raw: RawMessage = serde_json::from_value(message).expect("a message");
        raw.into_inbound().expect("a sender").content
    }

    fn interactive(interactive: Value) -> Value {
        json!({"id": "wamid.1", "from": "15557654321", "type": "interactive", "interactive": interactive})
    }

    #[test]
    fn metas_button_reply_fixture_is_a_reply_with_its_id() {
        let body: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/interactive-button.json"))
                .expect("fixture is JSON");
        let message = body["entry"][0]["changes"][0]["value"]["messages"][0].clone();
        assert_eq!(
            content(message),
            Content::Reply {
                id: "yes-1".into(),
                title: "Yes".into()
            }
        );
    }

    #[test]
    fn a_button_reply_without_an_id_has_an_empty_one() {
        assert_eq!(
            content(interactive(
                json!({"type": "button_reply", "button_reply": {"title": "Yes"}})
            )),
            Content::Reply {
                id: String::new(),
                title: "Yes".into()
            }
        );
    }

    #[test]
    fn list_replies_and_template_buttons_stay_text() {
        let list = interactive(json!({
            "type": "list_reply",
            "list_reply": {"id": "row-1", "title": "Row one", "description": "d"}
        }));
        assert_eq!(content(list), Content::Text("Row one".into()));
        let template = json!({
            "id": "wamid.2", "from": "15557654321", "type": "button",
            "button": {"payload": "p", "text": "Stop promotions"}
        });
        assert_eq!(content(template), Content::Text("Stop promotions".into()));
        let neither = interactive(json!({"type": "other_reply", "other_reply": {}}));
        assert_eq!(content(neither), Content::NonText("interactive".into()));
    }

    /// The first message of a fixture in `tests/fixtures/`.
    fn fixture_message(body: &str) -> Value {
        let body: Value = serde_json::from_str(body).expect("fixture is JSON");
        body["entry"][0]["changes"][0]["value"]["messages"][0].clone()
    }

    #[test]
    fn deletions_edits_and_notices_need_no_answer() {
        for (fixture, kind) in [
            (include_str!("../../tests/fixtures/revoke.json"), "revoke"),
            (include_str!("../../tests/fixtures/edit.json"), "edit"),
            (
                include_str!("../../tests/fixtures/reaction.json"),
                "reaction",
            ),
            (
                include_str!("../../tests/fixtures/unsupported.json"),
                "unsupported",
            ),
            (
                include_str!("../../tests/fixtures/request-welcome.json"),
                "request_welcome",
            ),
        ] {
            assert_eq!(
                content(fixture_message(fixture)),
                Content::Silent(kind.into()),
                "{kind}"
            );
        }
        let ephemeral = json!({"id": "wamid.3", "from": "15557654321", "type": "ephemeral"});
        assert_eq!(content(ephemeral), Content::Silent("ephemeral".into()));
        let user_id_changed = json!({
            "id": "wamid.4", "from": "15557654321", "type": "system",
            "system": {"body": "...", "type": "user_changed_user_id"}
        });
        assert_eq!(content(user_id_changed), Content::Silent("system".into()));
    }

    #[test]
    fn flow_and_call_permission_replies_need_no_answer() {
        let flow = fixture_message(include_str!("../../tests/fixtures/flow-reply.json"));
        assert_eq!(
            content(flow),
            Content::Silent("interactive/nfm_reply".into())
        );
        let call = fixture_message(include_str!(
            "../../tests/fixtures/call-permission-reply.json"
        ));
        assert_eq!(
            content(call),
            Content::Silent("interactive/call_permission_reply".into())
        );
    }

    #[test]
    fn a_number_change_names_the_new_number() {
        let change = fixture_message(include_str!(
            "../../tests/fixtures/system-number-changed.json"
        ));
        assert_eq!(
            content(change),
            Content::NumberChanged("12195555358".into())
        );
        // Before Graph API v12: `customer_changed_number` with `new_wa_id`.
        let legacy = json!({
            "id": "wamid.4", "from": "16505551234", "type": "system",
            "system": {"body": "...", "new_wa_id": 12195555358_u64, "type": "customer_changed_number"}
        });
        assert_eq!(
            content(legacy),
            Content::NumberChanged("12195555358".into())
        );
        let without_number = json!({
            "id": "wamid.5", "from": "16505551234", "type": "system",
            "system": {"body": "...", "type": "user_changed_number"}
        });
        assert_eq!(content(without_number), Content::Silent("system".into()));
    }
}
