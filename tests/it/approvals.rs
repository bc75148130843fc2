//! Tier 3 approval from WhatsApp, end to end in queued mode: the engine (the fake,
//! which blocks the run as the real one does) asks, the user gets Approve / Deny
//! buttons, a tap (a new webhook delivery) reaches the engine at once and the waiting
//! turn finishes with the engine's reply.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use crate::openparallax_fake::*;
use serde_json::{Value, json};
use whatsapp_webhook::commands::APPROVAL_EXPIRED_TEXT;
use whatsapp_webhook::engine::OpenParallaxEngine;

const OWNER: &str = "15557654321";

async fn approval_harness(fake: &Fake) -> Harness {
    approval_harness_with(Arc::new(fake.engine(None, Duration::from_secs(30)))).await
}

async fn approval_harness_with(engine: Arc<OpenParallaxEngine>) -> Harness {
    let h = Harness::builder()
        .engine(engine)
        .options(|o| o.tier3_from_whatsapp = true)
        .queued_local()
        .build()
        .await;
    h.graph_accepts().await;
    h
}

/// The interactive messages sent through the Graph API.
async fn sent_buttons(h: &Harness) -> Vec<Value> {
    h.calls()
        .await
        .into_iter()
        .filter(|(p, b)| p == MESSAGES_PATH && b["type"] == "interactive")
        .map(|(_, b)| b)
        .collect()
}

/// Wait for the approval message; returns the ids of its Approve and Deny buttons.
async fn approval_buttons(h: &Harness) -> (String, String) {
    eventually("the approval message", async || {
        sent_buttons(h).await.len() == 1
    })
    .await;
    let message = sent_buttons(h).await.remove(0);
    assert_eq!(message["to"], OWNER);
    assert_eq!(message["interactive"]["type"], "button");
    let body = message["interactive"]["body"]["text"].as_str().unwrap();
    assert!(body.contains("execute_command"), "{body}");
    assert!(body.contains("modifies system configuration"), "{body}");
    let buttons = message["interactive"]["action"]["buttons"]
        .as_array()
        .unwrap();
    let titles: Vec<&str> = buttons
        .iter()
        .map(|b| b["reply"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Approve", "Deny"]);
    let id = |n: usize| buttons[n]["reply"]["id"].as_str().unwrap().to_string();
    (id(0), id(1))
}

/// A tap on a reply button, as Meta delivers it.
fn tap(from: &str, message_id: &str, button_id: &str, title: &str) -> Value {
    let mut payload = fixture("interactive-button.json");
    let message = &mut payload["entry"][0]["changes"][0]["value"]["messages"][0];
    message["from"] = json!(from);
    message["id"] = json!(message_id);
    message["interactive"]["button_reply"] = json!({"id": button_id, "title": title});
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"] = json!(from);
    payload
}

#[tokio::test]
async fn an_approval_tapped_in_whatsapp_finishes_the_turn_with_the_engines_reply() {
    for (approve, reply, decision) in [
        (true, "Done: the package is installed.", "approve"),
        (false, "I did not install it.", "deny"),
    ] {
        let fake = Fake::start(install_with_approval(300)).await;
        let h = approval_harness(&fake).await;
        let said = h
            .post_json(&text_message(OWNER, "wamid.ASK", "install it"))
            .await;
        assert_eq!(status(&said), 200);
        let (yes, no) = approval_buttons(&h).await;
        assert!(
            h.sent_bodies().await.is_empty(),
            "no text notice besides the buttons"
        );

        let (id, title) = if approve {
            (&yes, "Approve")
        } else {
            (&no, "Deny")
        };
        let tapped = h.post_json(&tap(OWNER, "wamid.TAP", id, title)).await;

        assert_eq!(status(&tapped), 200);
        eventually("the final reply", async || h.sent_bodies().await == [reply]).await;
        assert_eq!(fake.decisions().len(), 1);
        assert_eq!(fake.decisions()[0].1, decision);
        assert_eq!(fake.pending_approvals(), 0);
    }
}

#[tokio::test]
async fn only_the_sender_whose_turn_it_is_can_decide() {
    let fake = Fake::start(install_with_approval(300)).await;
    let h = approval_harness(&fake).await;
    h.post_json(&text_message(OWNER, "wamid.ASK", "install it"))
        .await;
    let (yes, no) = approval_buttons(&h).await;

    // Another (allowed) number sends the owner's button id.
    let stranger = h
        .post_json(&tap("15550009999", "wamid.STRANGE", &yes, "Approve"))
        .await;
    assert_eq!(status(&stranger), 200);
    // An altered id is refused too.
    let forged = yes.replace(":a:", ":d:");
    h.post_json(&tap(OWNER, "wamid.FORGED", &forged, "Deny"))
        .await;
    assert!(fake.decisions().is_empty(), "{:?}", fake.decisions());
    assert_eq!(fake.pending_approvals(), 1, "the run still waits");

    h.post_json(&tap(OWNER, "wamid.TAP", &no, "Deny")).await;
    eventually("the final reply", async || {
        h.sent_bodies().await == ["I did not install it."]
    })
    .await;
    assert_eq!(fake.decisions().len(), 1);
}

#[tokio::test]
async fn a_tap_after_the_engine_stopped_waiting_is_told_it_expired() {
    // The engine waits 2 s, then denies (with no event).
    let fake = Fake::start(install_with_approval(2)).await;
    let h = approval_harness(&fake).await;
    h.post_json(&text_message(OWNER, "wamid.ASK", "install it"))
        .await;
    let (yes, _) = approval_buttons(&h).await;
    eventually("the engine denied on its own", async || {
        h.sent_bodies().await == ["I did not install it."]
    })
    .await;
    h.clock.advance(10);

    let late = h
        .post_json(&tap(OWNER, "wamid.LATE", &yes, "Approve"))
        .await;

    assert_eq!(status(&late), 200);
    assert_eq!(
        h.sent_bodies().await,
        ["I did not install it.", APPROVAL_EXPIRED_TEXT]
    );
    assert!(fake.decisions().is_empty());
}

#[tokio::test]
async fn a_typed_yes_is_a_message_for_the_agent_not_a_decision() {
    let mut fake = Fake::by_run(|run, session| match run {
        0 => install_with_approval(300)(session),
        _ => vec![complete(session, "You said yes.")],
    })
    .start()
    .await;
    let h = approval_harness(&fake).await;
    h.post_json(&text_message_at(
        OWNER,
        "wamid.ASK",
        "install it",
        1_700_000_000,
    ))
    .await;
    let (yes, _) = approval_buttons(&h).await;
    assert_eq!(fake.next_frame().await["content"], "install it");

    h.post_json(&text_message_at(OWNER, "wamid.YES", "yes", 1_700_000_001))
        .await;
    assert!(fake.decisions().is_empty());
    assert_eq!(fake.pending_approvals(), 1);

    h.post_json(&tap(OWNER, "wamid.TAP", &yes, "Approve")).await;
    eventually("both replies, in order", async || {
        h.sent_bodies().await.len() == 2
    })
    .await;
    assert_eq!(
        h.sent_bodies().await,
        ["Done: the package is installed.", "You said yes."]
    );
    assert_eq!(fake.next_frame().await["content"], "yes");
}

#[tokio::test]
async fn other_senders_wait_their_turn_without_wedging_the_engine() {
    // The engine's agent holds one message behind the running one; two more while a
    // run waits for an approval would wedge it. The adapter sends one turn at a time.
    let fake = Fake::by_run(|run, session| match run {
        0 => install_with_approval(300)(session),
        _ => vec![complete(session, &format!("answer for {session}"))],
    })
    .start()
    .await;
    let engine = Arc::new(fake.engine(None, Duration::from_secs(30)));
    let h = approval_harness_with(engine.clone()).await;
    h.post_json(&text_message(OWNER, "wamid.ASK", "install it"))
        .await;
    let (yes, _) = approval_buttons(&h).await;
    for (n, from) in ["15550000001", "15550000002"].iter().enumerate() {
        let said = h
            .post_json(&text_message(from, &format!("wamid.O{n}"), "hello"))
            .await;
        assert_eq!(status(&said), 200);
    }
    eventually("both turns wait for the engine", async || {
        engine.turns_waiting() == 2
    })
    .await;

    h.post_json(&tap(OWNER, "wamid.TAP", &yes, "Approve")).await;

    eventually("every sender answered", async || {
        h.sent_bodies().await.len() == 3
    })
    .await;
    let bodies = h.sent_bodies().await;
    assert_eq!(bodies[0], "Done: the package is installed.");
    assert_eq!(fake.finished_runs(), 3);
}
