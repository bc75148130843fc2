//! Sender identity and allow policy: under which state key a sender's messages live
//! (canonical number, or the number linked to a username user's id), who is let in
//! (`allowed_numbers`, `allowed_user_ids`), and what an accepted message asks for.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::payload::{Content, InboundMessage};
use crate::commands::{Command, UNSUPPORTED_TEXT};
use crate::domain::{AllowList, Clock, Recipient, is_approval_button, mask};
use crate::state::{SessionStore, message_key};
use crate::turn::{Accepted, Action};

/// Most user links remembered per process before the memory is cleared.
const MAX_REMEMBERED_LINKS: usize = 100_000;

pub struct SenderPolicy {
    allowed_numbers: AllowList,
    allowed_user_ids: Vec<String>,
    store: Arc<dyn SessionStore>,
    clock: Clock,
    /// User ids whose link to a number this process already wrote.
    linked_users: Mutex<HashSet<String>>,
}

impl SenderPolicy {
    pub fn new(
        allowed_numbers: AllowList,
        allowed_user_ids: Vec<String>,
        store: Arc<dyn SessionStore>,
        clock: Clock,
    ) -> Self {
        SenderPolicy {
            allowed_numbers,
            allowed_user_ids,
            store,
            clock,
            linked_users: Mutex::default(),
        }
    }

    /// Check the sender and read the message: `None` when it gets no answer (sender
    /// not allowed, empty text, or a kind that needs none). `unsupported_reply`: a
    /// non-text message gets the "only text" notice.
    pub async fn accept(
        &self,
        message: InboundMessage,
        unsupported_reply: bool,
    ) -> Option<Accepted> {
        let sender = message.sender.key();
        let state_key = self.state_key(&message).await;
        let msg_ref = short_ref(&message.id);
        if !self.is_allowed(&message.sender, &state_key) {
            tracing::info!(from = %mask(sender), msg = %msg_ref, "dropped: sender not in allowed_numbers / allowed_user_ids");
            return None;
        }
        let action = match message.content {
            // Only the button's id decides: a typed "yes" is a message for the agent.
            Content::Reply { id, .. } if is_approval_button(&id) => Action::Approval(id),
            Content::Text(t) | Content::Reply { title: t, .. } if t.trim().is_empty() => {
                return None;
            }
            Content::Text(t) | Content::Reply { title: t, .. } => match Command::parse(&t) {
                Some(c) => Action::Command(c),
                None => Action::Turn(t),
            },
            Content::NonText(kind) if unsupported_reply => {
                tracing::info!(from = %mask(sender), msg = %msg_ref, kind = %kind, "non-text message");
                Action::Notice(UNSUPPORTED_TEXT)
            }
            Content::NonText(kind) | Content::Silent(kind) => {
                tracing::info!(from = %mask(sender), msg = %msg_ref, kind = %kind, "message needs no answer");
                return None;
            }
            Content::NumberChanged(number) => {
                let user_id = message.user_id.as_deref();
                self.follow_number_change(&state_key, user_id, &number, &msg_ref)
                    .await;
                return None;
            }
        };
        Some(Accepted {
            id: message.id,
            sender: message.sender,
            timestamp: message.timestamp,
            state_key,
            msg_ref,
            action,
        })
    }

    /// The key the sender's state lives under: the (canonical) phone number when known,
    /// else the phone number linked earlier to the user id, else the user id. A message
    /// carrying both links them, so a user keeps one session when Meta stops sending
    /// the number.
    async fn state_key(&self, message: &InboundMessage) -> String {
        match (&message.sender, &message.user_id) {
            (Recipient::Phone(_), Some(user_id)) => {
                let key = message.sender.state_key();
                if self.remember_link(user_id)
                    && let Err(e) = self.store.link_user(user_id, &key, (self.clock)()).await
                {
                    tracing::warn!(error = %e, "could not link the user id to the number");
                    self.forget_link(user_id);
                }
                key
            }
            (Recipient::UserId(user_id), _) => match self.store.linked_sender(user_id).await {
                Ok(Some(key)) => key,
                Ok(None) => user_id.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not look up the user id's number");
                    user_id.clone()
                }
            },
            (Recipient::Phone(_), None) => message.sender.state_key(),
        }
    }

    /// WhatsApp moved the user of `from_key` to `new_number`: their session follows
    /// them, if the new number may talk to the bot too (`accept` checked the old one).
    /// A redelivery finds nothing left to move. Sends nothing.
    async fn follow_number_change(
        &self,
        from_key: &str,
        user_id: Option<&str>,
        new_number: &str,
        msg_ref: &str,
    ) {
        let to = Recipient::Phone(new_number.to_string());
        let to_key = to.state_key();
        if !self.is_allowed(&to, &to_key) {
            tracing::info!(from = %mask(from_key), to = %mask(new_number), msg = %msg_ref, "number change: the new number is not in allowed_numbers; session not moved");
            return;
        }
        let now = (self.clock)();
        match self.store.move_session(from_key, &to_key, now).await {
            Ok(outcome) => {
                tracing::info!(from = %mask(from_key), to = %mask(new_number), msg = %msg_ref, outcome = ?outcome, "number change: session follows the user");
            }
            Err(e) => {
                tracing::warn!(from = %mask(from_key), to = %mask(new_number), msg = %msg_ref, error = %e, "number change: could not move the session");
            }
        }
        // A username user's id now stands for the new number.
        if let Some(user_id) = user_id
            && let Err(e) = self.store.link_user(user_id, &to_key, now).await
        {
            tracing::warn!(error = %e, "could not link the user id to the new number");
        }
    }

    /// Whether the link of `user_id` still needs writing (once per process and id).
    fn remember_link(&self, user_id: &str) -> bool {
        let Ok(mut linked) = self.linked_users.lock() else {
            return true;
        };
        if linked.len() >= MAX_REMEMBERED_LINKS {
            linked.clear(); // bounded memory; at worst a link is written again
        }
        linked.insert(user_id.to_string())
    }

    fn forget_link(&self, user_id: &str) {
        if let Ok(mut linked) = self.linked_users.lock() {
            linked.remove(user_id);
        }
    }

    fn is_allowed(&self, sender: &Recipient, state_key: &str) -> bool {
        // Both lists empty: everyone. Otherwise a sender must be on the list of its kind;
        // a username user linked to an allowed number is that number.
        if self.allowed_numbers.is_open() && self.allowed_user_ids.is_empty() {
            return true;
        }
        match sender {
            Recipient::Phone(number) => self.allowed_numbers.contains(number),
            Recipient::UserId(id) => {
                self.allowed_user_ids.iter().any(|a| a == id)
                    || (state_key != id && self.allowed_numbers.contains(state_key))
            }
        }
    }
}

/// A short, stable reference to a message for logs: a prefix of its stored hash key.
fn short_ref(message_id: &str) -> String {
    let mut key = message_key(message_id);
    key.truncate(12);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;
    use std::time::Duration;

    fn policy(numbers: &[&str], user_ids: &[&str]) -> SenderPolicy {
        let numbers: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
        SenderPolicy::new(
            AllowList::parse(&numbers).expect("numbers"),
            user_ids.iter().map(|id| id.to_string()).collect(),
            Arc::new(MemoryStore::new(
                Duration::from_secs(40),
                Duration::from_secs(3600),
            )),
            Arc::new(|| 1_000),
        )
    }

    fn message(sender: Recipient, user_id: Option<&str>, content: Content) -> InboundMessage {
        InboundMessage {
            id: "wamid.ID".into(),
            sender,
            user_id: user_id.map(str::to_string),
            timestamp: 1,
            content,
        }
    }

    fn text(from: &str, body: &str) -> InboundMessage {
        message(
            Recipient::Phone(from.into()),
            None,
            Content::Text(body.into()),
        )
    }

    #[tokio::test]
    async fn reads_commands_turns_and_notices() {
        let p = policy(&[], &[]);
        let turn = p.accept(text("15550001111", "hi"), true).await.unwrap();
        assert_eq!(turn.action, Action::Turn("hi".into()));
        assert_eq!(turn.msg_ref.len(), 12);
        let new = p.accept(text("15550001111", " /NEW "), true).await.unwrap();
        assert_eq!(new.action, Action::Command(Command::New));
        let image = message(
            Recipient::Phone("15550001111".into()),
            None,
            Content::NonText("image".into()),
        );
        assert_eq!(
            p.accept(image.clone(), true).await.unwrap().action,
            Action::Notice(UNSUPPORTED_TEXT)
        );
        assert!(p.accept(image, false).await.is_none(), "notice off");
        assert!(p.accept(text("15550001111", "  "), true).await.is_none());
        let reaction = message(
            Recipient::Phone("15550001111".into()),
            None,
            Content::Silent("reaction".into()),
        );
        assert!(p.accept(reaction, true).await.is_none());
    }

    #[tokio::test]
    async fn only_listed_senders_are_let_in() {
        let p = policy(&["+1 650-555-1234"], &["US.alice"]);
        assert!(p.accept(text("16505551234", "hi"), true).await.is_some());
        assert!(p.accept(text("16505551235", "hi"), true).await.is_none());
        let alice = message(
            Recipient::UserId("US.alice".into()),
            None,
            Content::Text("hi".into()),
        );
        assert!(p.accept(alice, true).await.is_some());
        let bob = message(
            Recipient::UserId("US.bob".into()),
            None,
            Content::Text("hi".into()),
        );
        assert!(p.accept(bob, true).await.is_none());
    }

    #[tokio::test]
    async fn a_username_user_linked_to_an_allowed_number_is_that_number() {
        let p = policy(&["+1 650-555-1234"], &[]);
        // First seen with both the number and the user id: the link is written.
        let both = message(
            Recipient::Phone("16505551234".into()),
            Some("US.carol"),
            Content::Text("hi".into()),
        );
        assert_eq!(p.accept(both, true).await.unwrap().state_key, "16505551234");
        let later = message(
            Recipient::UserId("US.carol".into()),
            None,
            Content::Text("hi".into()),
        );
        let accepted = p
            .accept(later, true)
            .await
            .expect("linked to an allowed number");
        assert_eq!(accepted.state_key, "16505551234");
    }

    /// A policy over `store`, where `old` has a finished session "s-old" (clock 1000).
    async fn policy_with_session(
        numbers: &[&str],
        store: &Arc<MemoryStore>,
        old: &str,
    ) -> SenderPolicy {
        let numbers: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
        let attempt = crate::state::Attempt {
            message_id: "wamid.OLD",
            sender: old,
            token: "t1",
            timestamp: 990,
            starts_turn: false,
            merged: &[],
        };
        store.begin(&attempt, 990).await.expect("begin");
        let session = crate::domain::SessionRecord {
            id: "s-old".into(),
            mode: crate::domain::Mode::Normal,
            created_at: 990,
            updated_at: 990,
        };
        store.finish(&attempt, &session, 990).await.expect("finish");
        SenderPolicy::new(
            AllowList::parse(&numbers).expect("numbers"),
            Vec::new(),
            store.clone(),
            Arc::new(|| 1_000),
        )
    }

    fn number_change(from: &str, to: &str) -> InboundMessage {
        message(
            Recipient::Phone(from.into()),
            None,
            Content::NumberChanged(to.into()),
        )
    }

    fn memory_store() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::new(
            Duration::from_secs(40),
            Duration::from_secs(3600),
        ))
    }

    #[tokio::test]
    async fn a_number_change_moves_the_session_to_the_new_number() {
        let store = memory_store();
        let p = policy_with_session(&[], &store, "16505551234").await;
        let change = number_change("16505551234", "12195555358");
        assert!(p.accept(change, true).await.is_none(), "nothing to answer");
        let moved = store.session("12195555358").expect("moved");
        assert_eq!(moved.id, "s-old");
        assert!(
            store.session("16505551234").is_none(),
            "gone from the old number"
        );
    }

    #[tokio::test]
    async fn a_number_change_moves_nothing_unless_both_numbers_are_allowed() {
        // The new number is not allowed: the session stays.
        let store = memory_store();
        let p = policy_with_session(&["+16505551234"], &store, "16505551234").await;
        assert!(
            p.accept(number_change("16505551234", "12195555358"), true)
                .await
                .is_none()
        );
        assert!(store.session("12195555358").is_none());
        assert!(store.session("16505551234").is_some());
        // The old number is not allowed: dropped before anything is read.
        let store = memory_store();
        let p = policy_with_session(&["+12195555358"], &store, "16505551234").await;
        assert!(
            p.accept(number_change("16505551234", "12195555358"), true)
                .await
                .is_none()
        );
        assert!(store.session("12195555358").is_none());
        assert!(store.session("16505551234").is_some());
        // Both allowed: moved.
        let store = memory_store();
        let p = policy_with_session(&["+16505551234", "+12195555358"], &store, "16505551234").await;
        assert!(
            p.accept(number_change("16505551234", "12195555358"), true)
                .await
                .is_none()
        );
        assert!(store.session("12195555358").is_some());
    }

    #[tokio::test]
    async fn both_forms_of_a_brazilian_number_share_a_state_key() {
        let p = policy(&[], &[]);
        let with_nine = p.accept(text("5511987654321", "a"), true).await.unwrap();
        let without = p.accept(text("551187654321", "b"), true).await.unwrap();
        assert_eq!(with_nine.state_key, without.state_key);
    }
}
