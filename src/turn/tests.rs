//! The turn runner alone: memory state, in-process engine and messenger, no HTTP.

use std::sync::Arc;
use std::time::Duration;

use super::{Accepted, Action, Outcome, TurnOptions, TurnRunner};
use crate::commands::{Command, HELP_TEXT, UNAVAILABLE_TEXT};
use crate::domain::{Mode, Recipient};
use crate::engine::{Engine, EngineError};
use crate::format::Format;
use crate::state::MemoryStore;
use crate::testing::{RecordingMessenger, ScriptedEngine, Sent, TestClock};

const FROM: &str = "15550001111";

struct Setup {
    runner: TurnRunner,
    store: Arc<MemoryStore>,
    messenger: Arc<RecordingMessenger>,
    clock: TestClock,
}

fn options() -> TurnOptions {
    TurnOptions {
        reply_threading: false,
        format: Format::WhatsApp,
        read_receipts: true,
        sender_wait: Duration::ZERO,
        max_part_units: 4096,
        approval_keys: Vec::new().into(),
    }
}

fn setup(engine: Arc<dyn Engine>, options: TurnOptions) -> Setup {
    let store = Arc::new(MemoryStore::new(
        Duration::from_secs(40),
        Duration::from_secs(3600),
    ));
    let messenger = Arc::new(RecordingMessenger::default());
    let clock = TestClock::new();
    let runner = TurnRunner::new(
        options,
        store.clone(),
        engine,
        messenger.clone(),
        clock.clock(),
        Default::default(),
    );
    Setup {
        runner,
        store,
        messenger,
        clock,
    }
}

fn accepted(id: &str, timestamp: u64, action: Action) -> Accepted {
    Accepted {
        id: id.to_string(),
        sender: Recipient::Phone(FROM.into()),
        timestamp,
        state_key: FROM.to_string(),
        msg_ref: id.to_string(),
        action,
    }
}

fn text(id: &str, timestamp: u64, body: &str) -> Accepted {
    accepted(id, timestamp, Action::Turn(body.to_string()))
}

async fn answer(s: &Setup, batch: &[Accepted]) -> Vec<Outcome> {
    let refs: Vec<&Accepted> = batch.iter().collect();
    s.runner
        .answer_in_order(&refs, crate::turn::Delivery::Webhook)
        .await
}

#[tokio::test]
async fn a_text_is_marked_read_answered_in_markup_and_settled_once() {
    let engine = Arc::new(ScriptedEngine::replying("**done**"));
    let s = setup(engine.clone(), options());
    let hi = text("wamid.1", 1, "hi");
    assert_eq!(
        answer(&s, std::slice::from_ref(&hi)).await,
        [Outcome::Settled]
    );
    assert_eq!(
        s.messenger.sent(),
        [
            Sent::Read {
                message_id: "wamid.1".into()
            },
            Sent::Text {
                to: FROM.into(),
                body: "*done*".into()
            }
        ]
    );
    // The same message again: answered before, nothing sent, engine not asked.
    assert_eq!(answer(&s, &[hi]).await, [Outcome::Settled]);
    assert_eq!(engine.texts(), ["hi"]);
    assert_eq!(s.messenger.bodies().len(), 1);
}

#[tokio::test]
async fn consecutive_texts_are_one_turn_and_commands_stay_apart() {
    let engine = Arc::new(ScriptedEngine::echo());
    let s = setup(engine.clone(), options());
    let batch = [
        text("wamid.1", 1, "one"),
        text("wamid.2", 2, "two"),
        accepted("wamid.3", 3, Action::Command(Command::Help)),
        text("wamid.4", 4, "four"),
    ];
    assert_eq!(answer(&s, &batch).await, [Outcome::Settled; 4]);
    assert_eq!(engine.texts(), ["one\ntwo", "four"]);
    assert_eq!(
        s.messenger.bodies(),
        ["re: one\ntwo", HELP_TEXT, "re: four"]
    );
    // The read receipt of a combined turn goes to its newest line.
    assert!(s.messenger.sent().contains(&Sent::Read {
        message_id: "wamid.2".into()
    }));
}

#[tokio::test]
async fn at_most_max_combined_lines_share_a_turn() {
    let engine = Arc::new(ScriptedEngine::echo());
    let s = setup(engine.clone(), options());
    let batch: Vec<Accepted> = (0..super::MAX_COMBINED + 1)
        .map(|i| text(&format!("wamid.{i}"), i as u64, &i.to_string()))
        .collect();
    answer(&s, &batch).await;
    let turns = engine.texts();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].lines().count(), super::MAX_COMBINED);
}

#[tokio::test]
async fn otr_starts_a_fresh_session_that_is_not_stored_with_its_text() {
    let engine = Arc::new(ScriptedEngine::echo());
    let s = setup(engine, options());
    answer(&s, &[text("wamid.1", 1, "hi")]).await;
    let first = s.store.session(FROM).expect("a session");
    answer(&s, &[accepted("wamid.2", 2, Action::Command(Command::Otr))]).await;
    let otr = s.store.session(FROM).expect("a session");
    assert_eq!(otr.mode, Mode::Otr);
    assert_ne!(otr.id, first.id);
}

#[tokio::test]
async fn a_transient_engine_failure_tells_the_user_once_and_keeps_the_message() {
    let engine = Arc::new(ScriptedEngine::new(|_| {
        Err(EngineError::Unreachable("down".into()))
    }));
    let s = setup(engine.clone(), options());
    let hi = text("wamid.1", 1, "hi");
    assert_eq!(
        answer(&s, std::slice::from_ref(&hi)).await,
        [Outcome::Failed]
    );
    s.clock.advance(1);
    assert_eq!(answer(&s, &[hi]).await, [Outcome::Failed]);
    assert_eq!(engine.texts(), ["hi", "hi"], "the redelivery asks again");
    assert_eq!(s.messenger.bodies(), [UNAVAILABLE_TEXT], "one notice");
}

#[tokio::test]
async fn a_permanent_engine_failure_settles_the_message() {
    let engine = Arc::new(ScriptedEngine::new(|_| Err(EngineError::Status(400))));
    let s = setup(engine.clone(), options());
    let hi = text("wamid.1", 1, "hi");
    assert_eq!(
        answer(&s, std::slice::from_ref(&hi)).await,
        [Outcome::Settled]
    );
    assert_eq!(answer(&s, &[hi]).await, [Outcome::Settled]);
    assert_eq!(engine.texts().len(), 1);
}

#[tokio::test]
async fn a_reply_cut_short_resumes_at_the_missing_part_without_the_engine() {
    let long = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
    let engine = Arc::new(ScriptedEngine::replying(&long));
    let s = setup(
        engine.clone(),
        TurnOptions {
            max_part_units: 40,
            ..options()
        },
    );
    s.messenger.refuse("bbb", 1);
    let hi = text("wamid.1", 1, "hi");
    assert_eq!(
        answer(&s, std::slice::from_ref(&hi)).await,
        [Outcome::Failed]
    );
    s.clock.advance(1);
    assert_eq!(answer(&s, &[hi]).await, [Outcome::Settled]);
    assert_eq!(engine.texts().len(), 1, "the engine is asked once");
    assert_eq!(s.messenger.bodies(), ["a".repeat(30), "b".repeat(30)]);
}

#[tokio::test]
async fn a_newer_message_waits_for_an_older_one_that_failed() {
    let engine = Arc::new(ScriptedEngine::echo());
    let s = setup(engine, options());
    s.messenger.refuse("re: older", 1);
    // Meta's timestamps, within the order hold of the clock's now.
    let now = s.clock.now();
    let older = text("wamid.1", now, "older");
    let newer = text("wamid.2", now + 1, "newer");
    assert_eq!(
        answer(&s, std::slice::from_ref(&older)).await,
        [Outcome::Failed]
    );
    assert_eq!(
        answer(&s, std::slice::from_ref(&newer)).await,
        [Outcome::Busy]
    );
    s.clock.advance(1);
    assert_eq!(answer(&s, &[older]).await, [Outcome::Settled]);
    assert_eq!(answer(&s, &[newer]).await, [Outcome::Settled]);
    assert_eq!(s.messenger.bodies(), ["re: older", "re: newer"]);
}

#[tokio::test]
async fn threading_quotes_the_message_in_the_first_part_only() {
    let engine = Arc::new(ScriptedEngine::replying("one\n\ntwo"));
    let s = setup(
        engine,
        TurnOptions {
            reply_threading: true,
            read_receipts: false,
            max_part_units: 4,
            ..options()
        },
    );
    answer(&s, &[text("wamid.1", 1, "hi")]).await;
    assert_eq!(
        s.messenger.sent(),
        [
            Sent::Reply {
                to: FROM.into(),
                body: "one".into(),
                reply_to: "wamid.1".into()
            },
            Sent::Text {
                to: FROM.into(),
                body: "two".into()
            }
        ]
    );
}
