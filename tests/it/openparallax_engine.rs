//! `OpenParallaxEngine` against a fake engine: a real WebSocket server (and a
//! hand-written `POST /api/login` route on the same port) on 127.0.0.1.
//!
//! Everything the fake observes (client frames, login attempts, refused
//! upgrades) is reported back to the test body, where the assertions are made.

use std::time::Duration;

use crate::openparallax_fake::*;
use serde_json::json;
use whatsapp_webhook::domain::Mode;
use whatsapp_webhook::engine::{APPROVAL_NOTICE, Engine, EngineError, OpenParallaxEngine, Turn};

fn turn<'a>(session_id: &'a str, text: &'a str, mode: Mode) -> Turn<'a> {
    Turn {
        session_id,
        mode,
        text,
        from: "15550001111",
        message_id: "wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQTdDMEM2RDI4QjJGQjY2RjdFQQA=",
    }
}

const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn sends_the_message_frame_and_returns_the_final_content() {
    let mut fake = Fake::start(|session| {
        vec![
            token(session, "Hel"),
            Step::Ping,
            action_started(session),
            token(session, "lo"),
            complete(session, "Hello, Ana."),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let reply = engine
        .reply(&turn(SESSION, "hi there", Mode::Normal))
        .await
        .expect("reply");

    assert_eq!(reply, "Hello, Ana.");
    let frame = fake.next_frame().await;
    assert_eq!(
        frame,
        json!({"type": "message", "session_id": SESSION, "content": "hi there", "mode": "normal"})
    );
}

#[tokio::test]
async fn empty_content_falls_back_to_the_streamed_tokens() {
    let fake = Fake::start(|session| {
        vec![
            token(session, "Hello"),
            action_started(session),
            token(session, ", "),
            token(session, "world"),
            complete(session, ""),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let reply = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect("reply");

    assert_eq!(reply, "Hello, world");
}

#[tokio::test]
async fn otr_mode_is_sent_as_otr() {
    let mut fake = Fake::start(|session| vec![complete(session, "off the record")]).await;
    let engine = fake.engine(None, LONG);

    let reply = engine
        .reply(&turn("otr-session", "secret", Mode::Otr))
        .await
        .expect("reply");

    assert_eq!(reply, "off the record");
    let frame = fake.next_frame().await;
    assert_eq!(frame["mode"], "otr");
    assert_eq!(frame["session_id"], "otr-session");
}

#[tokio::test]
async fn events_of_other_sessions_are_ignored() {
    let fake = Fake::start(|session| {
        vec![
            token("other", "NOT "),
            token(session, "mine"),
            Step::Json(json!({"type": "log_entry", "entry": {"level": "info", "msg": "x"}})),
            tier3("other"),
            token("other", "YOURS"),
            Step::Json(json!({"type": "error", "session_id": "other", "error": {"code": "AGENT_UNAVAILABLE", "message": "no"}})),
            complete("other", "wrong answer"),
            Step::Json(json!({"type": "sub_agent_started", "session_id": session, "sub_agent": {"name": "x"}})),
            token(session, " only"),
            complete(session, ""),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let reply = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect("reply");

    assert_eq!(reply, "mine only");
}

#[tokio::test]
async fn an_error_event_is_reported_with_its_code() {
    let fake = Fake::start(|session| {
        vec![
            token(session, "partial"),
            Step::Json(json!({
                "type": "error",
                "session_id": session,
                "message_id": "msg-1",
                "error": {"code": "AGENT_UNAVAILABLE", "message": "the agent is not running", "recoverable": true}
            })),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("error");

    match &error {
        EngineError::Reported { code, message } => {
            assert_eq!(code, "AGENT_UNAVAILABLE");
            assert_eq!(message, "the agent is not running");
        }
        other => panic!("expected Reported, got {other:?}"),
    }
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_flat_error_event_is_reported_too() {
    let fake = Fake::start(|session| {
        vec![Step::Json(json!({
            "type": "error",
            "session_id": session,
            "code": "PIPELINE_FAILED",
            "message": "provider down"
        }))]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("error");

    assert!(
        matches!(&error, EngineError::Reported { code, message } if code == "PIPELINE_FAILED" && message == "provider down"),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_error_without_session_is_about_our_request() {
    let fake = Fake::start(|_| {
        vec![Step::Json(json!({
            "type": "error",
            "session_id": "",
            "message_id": "",
            "error": {"code": "INVALID_JSON", "message": "failed to parse message"}
        }))]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("error");

    assert!(
        matches!(&error, EngineError::Reported { code, .. } if code == "INVALID_JSON"),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_engine_that_never_answers_times_out() {
    let mut fake = Fake::start(|session| vec![token(session, "thinking"), Step::Hold]).await;
    let timeout = Duration::from_millis(300);
    let engine = fake.engine(None, timeout);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("timeout");

    assert!(
        matches!(error, EngineError::Timeout(d) if d == timeout),
        "{error:?}"
    );
    // The message did reach the engine: the wait was for the answer.
    assert_eq!(fake.next_frame().await["content"], "hi");
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let engine = OpenParallaxEngine::new(
        reqwest::Client::new(),
        format!("ws://{addr}/api/ws"),
        None,
        LONG,
    );

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("unreachable");

    assert!(matches!(error, EngineError::Unreachable(_)), "{error:?}");
}

#[tokio::test]
async fn a_frame_that_is_not_json_is_a_bad_reply() {
    let fake =
        Fake::start(|session| vec![token(session, "a"), Step::Raw("<html>oops</html>")]).await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("bad reply");

    assert!(matches!(error, EngineError::BadReply(_)), "{error:?}");
}

#[tokio::test]
async fn a_close_before_the_final_event_is_a_bad_reply() {
    let fake = Fake::start(|session| vec![token(session, "half an ans"), Step::Close]).await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("bad reply");

    assert!(matches!(error, EngineError::BadReply(_)), "{error:?}");
}

#[tokio::test]
async fn logs_in_once_reuses_the_cookie_and_logs_in_again_after_a_restart() {
    let mut fake = Fake::start_with_auth(
        |session| vec![complete(session, "authenticated")],
        Some("token-before-restart"),
    )
    .await;
    let engine = fake.engine(Some(PASSWORD), LONG);

    let first = engine.reply(&turn(SESSION, "one", Mode::Normal)).await;
    assert_eq!(first.expect("first turn"), "authenticated");
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.refused_upgrades(), 0);

    let second = engine.reply(&turn(SESSION, "two", Mode::Normal)).await;
    assert_eq!(second.expect("second turn"), "authenticated");
    assert_eq!(fake.logins(), 1, "the cookie is reused");
    assert_eq!(fake.refused_upgrades(), 0);

    fake.rotate_token("token-after-restart");
    let third = engine.reply(&turn(SESSION, "three", Mode::Normal)).await;
    assert_eq!(third.expect("third turn"), "authenticated");
    assert_eq!(
        fake.refused_upgrades(),
        1,
        "the stale cookie was refused once"
    );
    assert_eq!(fake.logins(), 2, "one fresh login");

    for expected in ["one", "two", "three"] {
        assert_eq!(fake.next_frame().await["content"], expected);
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_password() {
    let mut fake =
        Fake::start_with_auth(|session| vec![complete(session, "never")], Some("token")).await;
    let wrong = "hunter2-wrong-password";
    let engine = fake.engine(Some(wrong), LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("login refused");

    assert!(matches!(error, EngineError::Unreachable(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("password"), "says what to check: {text}");
    assert!(!text.contains(wrong), "leaks the password: {text}");
    assert!(!format!("{error:?}").contains(wrong));
    assert_eq!(fake.logins(), 1, "no login storm");
    assert!(fake.frames.try_recv().is_err(), "no message was sent");
}

#[tokio::test]
async fn an_engine_requiring_a_login_without_a_password_is_unreachable() {
    let fake =
        Fake::start_with_auth(|session| vec![complete(session, "never")], Some("token")).await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("refused");

    assert!(matches!(error, EngineError::Unreachable(_)), "{error:?}");
    assert_eq!(fake.logins(), 0);
    assert_eq!(fake.refused_upgrades(), 1);
}

#[tokio::test]
async fn a_tier3_approval_request_puts_the_notice_before_the_reply() {
    let fake = Fake::start(|session| {
        vec![
            action_started(session),
            tier3(session),
            token(session, "ignored"),
            tier3(session),
            complete(session, "Done: the package is installed."),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let reply = engine
        .reply(&turn(SESSION, "install it", Mode::Normal))
        .await
        .expect("reply");

    assert_eq!(
        reply,
        format!("{APPROVAL_NOTICE}\n\nDone: the package is installed.")
    );
    assert_eq!(reply.matches(APPROVAL_NOTICE).count(), 1);
}
