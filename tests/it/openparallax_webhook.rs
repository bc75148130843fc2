//! End to end: a webhook POST through the handler, the OpenParallax engine over a
//! real WebSocket (the fake in tests/common), and a wiremock Graph API.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use crate::openparallax_fake::*;
use serde_json::json;
use whatsapp_webhook::commands::UNAVAILABLE_TEXT;

async fn harness_with(fake: &Fake, max_part_units: usize) -> Harness {
    let engine = Arc::new(fake.engine(None, Duration::from_secs(5)));
    let h = Harness::builder()
        .engine(engine)
        .options(|o| o.max_part_units = max_part_units)
        .build()
        .await;
    h.graph_accepts().await;
    h
}

#[tokio::test]
async fn text_reaches_the_engine_with_session_and_mode_and_the_streamed_reply_is_sent_split() {
    let mut fake = Fake::start(|session| {
        vec![
            token(session, "First paragraph."),
            action_started(session),
            token(session, "\n\nSecond paragraph."),
            // Another session's events on the same socket are not ours.
            complete("someone-else", "not for you"),
            complete(session, ""),
        ]
    })
    .await;
    let h = harness_with(&fake, 20).await;
    let from = "15557654321";
    assert_eq!(
        status(&h.post_json(&text_message(from, "wamid.1", "hello")).await),
        200
    );
    let frame = fake.next_frame().await;
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["content"], "hello");
    assert_eq!(frame["mode"], "normal");
    let first_session = frame["session_id"].as_str().unwrap().to_string();
    assert!(!first_session.is_empty());
    assert_eq!(
        h.sent_bodies().await,
        vec!["First paragraph.", "Second paragraph."]
    );

    // After /otr the engine gets mode otr and a new session id.
    assert_eq!(
        status(&h.post_json(&text_message(from, "wamid.2", "/otr")).await),
        200
    );
    assert_eq!(
        status(&h.post_json(&text_message(from, "wamid.3", "psst")).await),
        200
    );
    let frame = fake.next_frame().await;
    assert_eq!(frame["mode"], "otr");
    assert_eq!(frame["content"], "psst");
    assert_ne!(frame["session_id"].as_str().unwrap(), first_session);

    // The same sender keeps the OTR session.
    assert_eq!(
        status(&h.post_json(&text_message(from, "wamid.4", "again")).await),
        200
    );
    let next = fake.next_frame().await;
    assert_eq!(next["session_id"], frame["session_id"]);
    assert_eq!(next["mode"], "otr");
}

#[tokio::test]
async fn engine_error_event_gives_one_notice_and_a_redelivery() {
    let fake = Fake::start(|session| {
        vec![Step::Json(json!({
            "type": "error", "session_id": session,
            "error": {"code": "AGENT_UNAVAILABLE", "message": "agent is restarting"}
        }))]
    })
    .await;
    let h = harness_with(&fake, 4096).await;
    let body = fixture("text.json");
    assert_eq!(
        status(&h.post_json(&body).await),
        500,
        "transient: Meta redelivers"
    );
    assert_eq!(status(&h.post_json(&body).await), 500);
    assert_eq!(
        h.sent_bodies().await,
        vec![UNAVAILABLE_TEXT],
        "notice once, not per redelivery"
    );
}

#[tokio::test]
async fn engine_that_refuses_connections_gives_the_notice() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let engine = Arc::new(whatsapp_webhook::engine::OpenParallaxEngine::new(
        reqwest::Client::new(),
        format!("ws://127.0.0.1:{port}/api/ws"),
        None,
        Duration::from_secs(2),
    ));
    let h = Harness::builder().engine(engine).build().await;
    h.graph_accepts().await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 500);
    assert_eq!(h.sent_bodies().await, vec![UNAVAILABLE_TEXT]);
}

#[tokio::test]
async fn tier3_approval_is_announced_at_once_and_the_final_reply_follows() {
    let fake = Fake::start(|session| {
        vec![
            token(session, "working"),
            // Nobody can decide in sync mode: the engine denies after the timeout.
            tier3(
                1,
                vec![complete(session, "Done: the config was changed.")],
                vec![complete(session, "I left the config as it was.")],
            ),
        ]
    })
    .await;
    let h = harness_with(&fake, 4096).await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert_eq!(
        h.sent_bodies().await,
        vec![
            whatsapp_webhook::engine::APPROVAL_NOTICE.to_string(),
            "I left the config as it was.".to_string()
        ],
        "one notice, sent before the reply, and not repeated in it"
    );
}

#[tokio::test]
async fn a_lambda_invocation_lets_go_of_the_engine_socket_when_it_ends() {
    // A frozen Lambda must not hold a socket the engine writes its logs to.
    let fake = Fake::start(|session| vec![complete(session, "hello from the engine")]).await;
    let h = Harness::builder()
        .engine(Arc::new(fake.engine(None, Duration::from_secs(5))))
        .options(|o| {
            o.app_secrets = whatsapp_webhook::domain::Rotating::new(vec![
                whatsapp_webhook::domain::Secret::new("whatsapp-webhook-test-secret"),
            ])
        })
        .build()
        .await;
    h.graph_accepts().await;
    let event = std::fs::read_to_string(crate::lambda_events::events_dir().join("text.json"))
        .expect("events/text.json");
    let event = serde_json::from_str(&event).expect("JSON");

    let response = whatsapp_webhook::server::lambda_event(&h.app, event, None).await;

    assert_eq!(response["statusCode"], 200);
    assert_eq!(h.sent_bodies().await, ["hello from the engine"]);
    assert_eq!(fake.upgrades(), 1);
    eventually("the socket is closed", async || fake.open_sockets() == 0).await;
}
