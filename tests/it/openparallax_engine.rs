//! `OpenParallaxEngine` against the fake engine of `openparallax_fake`, which behaves
//! as the real one does (runs outliving sockets, broadcasts per session, one run at
//! a time, log entries, the rate limit, the login only with a password, Tier 3).

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::eventually;
use crate::openparallax_fake::*;
use serde_json::json;
use whatsapp_webhook::domain::Mode;
use whatsapp_webhook::domain::{ApprovalRequest, Decision};
use whatsapp_webhook::engine::{
    APPROVAL_NOTICE, Engine, EngineError, Notice, OpenParallaxEngine, Turn,
};

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
async fn events_of_other_sessions_and_runs_are_ignored() {
    let fake = Fake::by_run(|run, session| match run {
        // A turn on "other" first: the shared socket then hears that session too.
        0 => vec![complete(session, "other's answer")],
        _ => vec![
            token("other", "NOT "),
            token(session, "mine"),
            Step::Json(json!({"type": "log_entry", "entry": {"level": "info", "event": "x"}})),
            Step::Json(json!({"type": "tier3_approval_required", "session_id": "other", "message_id": "msg-x",
                "tier3_approval": {"action_id": "a", "tool_name": "t", "reasoning": "r", "timeout_secs": 300}})),
            token("other", "YOURS"),
            Step::Json(json!({"type": "error", "session_id": "other", "message_id": "msg-x",
                "error": {"code": "AGENT_UNAVAILABLE", "message": "no"}})),
            // A late reply of an earlier run on our own session.
            Step::Json(json!({"type": "response_complete", "session_id": session, "message_id": "msg-earlier",
                "response_complete": {"content": "an earlier run's answer"}})),
            Step::Json(json!({"type": "sub_agent_started", "session_id": session, "sub_agent": {"name": "x"}})),
            token(session, " only"),
            complete(session, ""),
        ],
    })
    .start()
    .await;
    let engine = fake.engine(None, LONG);
    let other = engine.reply(&turn("other", "hi", Mode::Normal)).await;
    assert_eq!(other.expect("other"), "other's answer");

    let reply = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect("reply");

    assert_eq!(reply, "mine only");
}

/// The engine went on with a run the adapter stopped waiting for; its late reply
/// reaches the shared socket while the next turn on the session waits, and must not
/// answer it. `named`: the run sent an event before the turn gave up on it.
/// `logs`: the engine broadcasts its log entries (which name each run).
async fn a_late_reply_is_not_the_next_answer(logs: bool, named: bool) {
    let builder = Fake::by_run(move |run, session| match run {
        0 => {
            let mut steps = Vec::new();
            if named {
                steps.push(token(session, "thinking about one"));
            }
            steps.push(Step::Work(Duration::from_millis(2500)));
            steps.push(complete(session, "the answer to one"));
            steps
        }
        _ => vec![complete(session, "the answer to two")],
    });
    let mut fake = if logs {
        builder
    } else {
        builder.without_logs()
    }
    .start()
    .await;
    let engine = fake.engine(None, Duration::from_secs(2));
    let error = engine
        .reply(&turn(SESSION, "one", Mode::Normal))
        .await
        .expect_err("the first turn times out");
    assert!(matches!(error, EngineError::Timeout(_)), "{error:?}");
    eventually("the engine is told the turn stopped waiting", async || {
        fake.cancels() == [SESSION]
    })
    .await;

    // The engine runs one message at a time: the second run starts once the first
    // has sent its late reply.
    let reply = engine.reply(&turn(SESSION, "two", Mode::Normal)).await;

    assert_eq!(reply.expect("the second turn"), "the answer to two");
    assert_eq!(fake.finished_runs(), 2);
    assert_eq!(fake.upgrades(), 1, "one socket for both turns");
    assert_eq!(fake.next_frame().await["content"], "one");
    assert_eq!(fake.next_frame().await["content"], "two");
}

#[tokio::test]
async fn a_late_reply_of_a_named_run_is_not_the_next_answer() {
    a_late_reply_is_not_the_next_answer(true, true).await;
}

#[tokio::test]
async fn a_late_reply_of_an_unnamed_run_is_not_the_next_answer() {
    a_late_reply_is_not_the_next_answer(true, false).await;
}

#[tokio::test]
async fn without_log_entries_a_late_reply_is_not_the_next_answer() {
    a_late_reply_is_not_the_next_answer(false, true).await;
}

#[tokio::test]
async fn without_log_entries_a_late_reply_of_an_unnamed_run_is_not_the_next_answer() {
    a_late_reply_is_not_the_next_answer(false, false).await;
}

#[tokio::test]
async fn an_error_event_is_reported_with_its_code() {
    let fake = Fake::start(|session| {
        vec![
            token(session, "partial"),
            Step::Json(json!({
                "type": "error",
                "session_id": session,
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
    assert!(!error.may_have_started());
}

#[tokio::test]
async fn errors_the_agent_recovers_from_are_followed_by_the_reply() {
    // `recoverable: false`, as the agent loop sends them, and yet a reply follows.
    for code in ["STREAM_ERROR", "COMPACTION_FAILED"] {
        let fake = Fake::start(move |session| {
            vec![
                error(session, code),
                token(session, "recovered"),
                complete(session, "recovered after all"),
            ]
        })
        .await;
        let engine = fake.engine(None, LONG);
        let reply = engine.reply(&turn(SESSION, "hi", Mode::Normal)).await;
        assert_eq!(reply.expect(code), "recovered after all");
    }
}

#[tokio::test]
async fn errors_that_end_a_run_end_the_turn() {
    for (code, began) in [
        ("LLM_CALL_FAILED", true),
        ("CONTEXT_FAILED", true),
        ("PIPELINE_FAILED", true),
        ("AGENT_UNAVAILABLE", false),
    ] {
        let fake = Fake::start(move |session| {
            vec![
                error(session, code),
                complete(session, "never sent by the engine"),
            ]
        })
        .await;
        let engine = fake.engine(None, LONG);
        let error = engine
            .reply(&turn(SESSION, "hi", Mode::Normal))
            .await
            .expect_err(code);
        assert!(
            matches!(&error, EngineError::Reported { code: c, .. } if c == code),
            "{error:?}"
        );
        assert_eq!(error.may_have_started(), began, "{code}");
    }
}

#[tokio::test]
async fn an_error_without_a_session_is_not_about_the_turn() {
    // The engine sends these for frames it cannot read (INVALID_JSON, UNKNOWN_TYPE),
    // which the adapter never sends; on a shared socket they are nobody's turn.
    let fake = Fake::start(|session| {
        vec![
            Step::Json(json!({
                "type": "error",
                "session_id": "",
                "message_id": "",
                "error": {"code": "INVALID_JSON", "message": "failed to parse message"}
            })),
            complete(session, "still answered"),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let reply = engine.reply(&turn(SESSION, "hi", Mode::Normal)).await;

    assert_eq!(reply.expect("reply"), "still answered");
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
async fn a_frame_that_is_not_json_is_skipped() {
    let fake = Fake::start(|session| {
        vec![
            token(session, "a"),
            Step::Raw("<html>oops</html>"),
            complete(session, "fine"),
        ]
    })
    .await;
    let engine = fake.engine(None, LONG);

    let reply = engine.reply(&turn(SESSION, "hi", Mode::Normal)).await;

    assert_eq!(reply.expect("reply"), "fine");
}

#[tokio::test]
async fn a_lost_socket_fails_the_turn_as_begun_and_the_next_turn_reconnects() {
    let fake = Fake::by_run(|run, session| match run {
        0 => vec![token(session, "half an ans"), Step::Close],
        _ => vec![complete(session, "whole answer")],
    })
    .start()
    .await;
    let engine = fake.engine(None, LONG);

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("bad reply");
    assert!(matches!(error, EngineError::BadReply(_)), "{error:?}");
    assert!(error.may_have_started());

    let reply = engine.reply(&turn(SESSION, "again", Mode::Normal)).await;
    assert_eq!(reply.expect("reply"), "whole answer");
    assert_eq!(fake.upgrades(), 2);
}

#[tokio::test]
async fn a_socket_dropped_between_turns_is_replaced() {
    let fake = Fake::start(|session| vec![complete(session, "ok")]).await;
    let engine = fake.engine(None, LONG);
    assert_eq!(
        engine
            .reply(&turn(SESSION, "1", Mode::Normal))
            .await
            .expect("1"),
        "ok"
    );

    fake.drop_sockets();
    eventually("the engine closed the socket", async || {
        fake.open_sockets() == 0
    })
    .await;

    assert_eq!(
        engine
            .reply(&turn(SESSION, "2", Mode::Normal))
            .await
            .expect("2"),
        "ok"
    );
    assert_eq!(fake.upgrades(), 2);
}

#[tokio::test]
async fn ten_senders_in_a_row_share_one_socket_within_the_rate_limit() {
    // Two requests a minute: a socket (and so an upgrade) per turn would be refused
    // from the third turn on.
    let mut fake = Fake::builder(|session| vec![complete(session, &format!("hi {session}"))])
        .rate_limit(2.0)
        .start()
        .await;
    let engine = fake.engine(None, LONG);
    for n in 0..10 {
        let session = format!("wa-1555000{n:04}");
        let reply = engine.reply(&turn(&session, "hello", Mode::Normal)).await;
        assert_eq!(reply.expect("reply"), format!("hi {session}"));
        assert_eq!(fake.next_frame().await["session_id"], session.as_str());
    }
    assert!(fake.upgrades() <= 2, "{} upgrades", fake.upgrades());
    assert_eq!(fake.rate_limited(), 0);
}

#[tokio::test]
async fn a_429_on_the_upgrade_is_waited_out() {
    // 60 a minute, all used up: the next token comes in a second. The engine's 429
    // carries no Retry-After.
    let fake = Fake::builder(|session| vec![complete(session, "patience")])
        .rate_limit(60.0)
        .start()
        .await;
    fake.use_up_rate_limit();
    let engine = fake.engine(None, LONG);

    let reply = engine.reply(&turn(SESSION, "hi", Mode::Normal)).await;

    assert_eq!(reply.expect("reply"), "patience");
    assert!(fake.rate_limited() >= 1);
    assert_eq!(fake.upgrades(), 1);
}

#[tokio::test]
async fn a_429_that_outlasts_the_turn_means_the_turn_was_never_taken() {
    let mut fake = Fake::builder(|session| vec![complete(session, "never")])
        .rate_limit(1.0)
        .start()
        .await;
    fake.use_up_rate_limit();
    let engine = fake.engine(None, Duration::from_millis(1500));

    let error = engine
        .reply(&turn(SESSION, "hi", Mode::Normal))
        .await
        .expect_err("rate limited");

    assert!(matches!(error, EngineError::Unreachable(_)), "{error:?}");
    assert!(!error.may_have_started(), "safe to ask again");
    assert!(fake.rate_limited() >= 2, "retried: {}", fake.rate_limited());
    assert!(fake.rate_limited() <= 4, "bounded: {}", fake.rate_limited());
    assert!(!fake.has_frame());
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

    // The engine restarted: a new token, and the sockets it had are gone.
    fake.rotate_token("token-after-restart");
    fake.drop_sockets();
    eventually("the socket is gone", async || fake.open_sockets() == 0).await;
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
async fn a_password_for_an_engine_without_a_login_route_is_not_needed() {
    // The engine listens on localhost (or has no password): /api/login falls through
    // to the web UI's page, with no cookie.
    let fake = Fake::start(|session| vec![complete(session, "no login needed")]).await;
    let engine = fake.engine(Some(PASSWORD), LONG);

    for text in ["one", "two"] {
        let reply = engine.reply(&turn(SESSION, text, Mode::Normal)).await;
        assert_eq!(reply.expect(text), "no login needed");
    }
    assert_eq!(fake.logins(), 1, "tried once per process");
    assert_eq!(fake.upgrades(), 1);
}

/// Start a turn with notices; returns it and the approval request it announced.
async fn approval_turn(
    engine: Arc<OpenParallaxEngine>,
) -> (
    tokio::task::JoinHandle<Result<String, EngineError>>,
    ApprovalRequest,
) {
    let (notices, mut pending) = tokio::sync::mpsc::unbounded_channel();
    let turn = tokio::spawn(async move {
        engine
            .reply_with_notices(&turn(SESSION, "install it", Mode::Normal), &notices)
            .await
    });
    let request = match tokio::time::timeout(LONG, pending.recv()).await {
        Ok(Some(Notice::Approval(request))) => request,
        other => panic!("expected an approval request, got {other:?}"),
    };
    (turn, request)
}

#[tokio::test]
async fn an_approval_decided_by_the_user_lets_the_run_finish() {
    for (decision, reply) in [
        (Decision::Approve, "Done: the package is installed."),
        (Decision::Deny, "I did not install it."),
    ] {
        let fake = Fake::start(install_with_approval(300)).await;
        let engine = Arc::new(fake.engine(None, LONG));
        let (turn, request) = approval_turn(engine.clone()).await;
        assert_eq!(request.tool_name, "execute_command");
        assert_eq!(request.reasoning, "modifies system configuration");
        assert_eq!(request.timeout_secs, 300);
        assert!(!request.action_id.is_empty());

        // Any socket may decide: here another process's engine (the webhook's).
        let other = fake.engine(None, LONG);
        other
            .decide(&request.action_id, decision)
            .await
            .expect("decision sent");

        let answer = turn.await.expect("joined").expect("reply");
        assert_eq!(
            answer, reply,
            "no notice in the text: it went out as a notice"
        );
        assert_eq!(
            fake.decisions(),
            [(request.action_id.clone(), decision.as_str().to_string())]
        );
        assert_eq!(fake.pending_approvals(), 0);
    }
}

#[tokio::test]
async fn an_approval_nobody_answers_is_denied_by_the_engine() {
    let fake = Fake::start(install_with_approval(1)).await;
    let engine = Arc::new(fake.engine(None, LONG));
    let (turn, request) = approval_turn(engine.clone()).await;

    let answer = turn.await.expect("joined").expect("reply");

    assert_eq!(answer, "I did not install it.");
    // A late decision reaches the engine, which has nothing waiting for it.
    engine
        .decide(&request.action_id, Decision::Approve)
        .await
        .expect("sent");
    eventually("the late decision arrived", async || {
        fake.decisions().len() == 1
    })
    .await;
    assert_eq!(fake.finished_runs(), 1);
}

#[tokio::test]
async fn without_a_notice_channel_the_approval_notice_goes_before_the_reply() {
    let fake = Fake::start(install_with_approval(1)).await;
    let engine = fake.engine(None, LONG);

    let reply = engine
        .reply(&turn(SESSION, "install it", Mode::Normal))
        .await
        .expect("reply");

    assert_eq!(reply, format!("{APPROVAL_NOTICE}\n\nI did not install it."));
}

#[tokio::test]
async fn a_parked_engine_lets_go_of_its_socket_and_opens_a_new_one_when_needed() {
    let fake = Fake::start(|session| vec![complete(session, "ok")]).await;
    let engine = fake.engine(None, LONG);
    assert_eq!(
        engine
            .reply(&turn(SESSION, "1", Mode::Normal))
            .await
            .expect("1"),
        "ok"
    );
    assert_eq!(fake.open_sockets(), 1);

    engine.park().await;

    eventually("the socket is closed", async || fake.open_sockets() == 0).await;
    assert_eq!(
        engine
            .reply(&turn(SESSION, "2", Mode::Normal))
            .await
            .expect("2"),
        "ok"
    );
    assert_eq!(fake.upgrades(), 2);
}
