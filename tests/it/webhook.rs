//! The webhook's behaviour through its HTTP handler, with memory state, a wiremock
//! Graph API and a wiremock HTTP engine.

use std::time::Duration;

use crate::helpers::*;
use serde_json::{Value, json};
use whatsapp_webhook::commands::{
    HELP_TEXT, NEW_SESSION_TEXT, OTR_SESSION_TEXT, UNAVAILABLE_TEXT, UNSUPPORTED_TEXT,
};
use whatsapp_webhook::domain::{AllowList, Recipient, Secret};
use whatsapp_webhook::graph::{GraphClient, Messenger, ReplyButton, RetryPolicy};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, ResponseTemplate};

// ------------------------------------------------------------------ verification

#[tokio::test]
async fn verify_get_answers_the_challenge_as_plain_text() {
    let h = Harness::start().await;
    let r = h
        .get(&format!(
            "/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .await;
    assert_eq!(status(&r), 200);
    assert_eq!(body_text(&r), "1158201444");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn verify_get_refuses_wrong_token_and_mode() {
    let h = Harness::start().await;
    let r = h
        .get("/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")
        .await;
    assert_eq!(status(&r), 403);
    assert_ne!(body_text(&r), "1");
    let r = h
        .get(&format!(
            "/webhook?hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
        ))
        .await;
    assert_eq!(status(&r), 403);
}

#[tokio::test]
async fn verify_get_without_parameters_is_a_bad_request() {
    let h = Harness::start().await;
    let r = h.get("/webhook").await;
    assert_eq!(status(&r), 400);
    assert!(body_text(&r).contains("hub.mode"));
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let h = Harness::start().await;
    assert_eq!(status(&h.get("/other").await), 404);
    let r = h
        .app
        .handle(
            http::Request::put("/webhook")
                .body(bytes::Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(status(&r), 405);
}

// ------------------------------------------------------------------ signature

#[tokio::test]
async fn post_without_signature_is_401_and_nothing_happens() {
    let h = Harness::start().await;
    let body = serde_json::to_vec(&fixture("text.json")).unwrap();
    let request = http::Request::post("/webhook")
        .body(bytes::Bytes::from(body))
        .unwrap();
    let r = h.app.handle(request).await;
    assert_eq!(status(&r), 401);
    assert!(
        h.calls().await.is_empty(),
        "nothing may be processed or sent"
    );
}

#[tokio::test]
async fn post_with_wrong_signature_is_403_and_nothing_happens() {
    let h = Harness::start().await;
    let body = serde_json::to_vec(&fixture("text.json")).unwrap();
    let bad = whatsapp_webhook::webhook::signature::sign("another-secret", &body);
    let request = http::Request::post("/webhook")
        .header("x-hub-signature-256", bad)
        .body(bytes::Bytes::from(body))
        .unwrap();
    assert_eq!(status(&h.app.handle(request).await), 403);
    assert!(h.calls().await.is_empty());
}

#[tokio::test]
async fn two_signature_headers_are_refused_whichever_comes_first() {
    let h = Harness::start().await;
    let body = serde_json::to_vec(&fixture("text.json")).unwrap();
    let good = whatsapp_webhook::webhook::signature::sign(APP_SECRET, &body);
    let bad = whatsapp_webhook::webhook::signature::sign("not-the-secret", &body);
    for (first, second) in [(&good, &bad), (&bad, &good)] {
        let request = http::Request::post("/webhook")
            .header("content-type", "application/json")
            .header("x-hub-signature-256", first.as_str())
            .header("x-hub-signature-256", second.as_str())
            .body(bytes::Bytes::from(body.clone()))
            .unwrap();
        let response = h.app.handle(request).await;
        assert_eq!(status(&response), 400);
        assert!(body_text(&response).contains("more than one"));
    }
    assert!(h.calls().await.is_empty(), "nothing answered");
}

#[tokio::test]
async fn rotated_app_secrets_both_verify() {
    let h = Harness::builder()
        .options(|o| {
            o.app_secrets = vec![
                whatsapp_webhook::domain::Secret::new("old-secret"),
                whatsapp_webhook::domain::Secret::new(APP_SECRET),
            ]
            .into()
        })
        .start()
        .await;
    assert_eq!(
        status(&h.post_json(&fixture("status-delivered.json")).await),
        200
    );
}

// ------------------------------------------------------------------ bad bodies

#[tokio::test]
async fn body_that_is_not_json_is_400() {
    let h = Harness::start().await;
    assert_eq!(status(&h.post(b"hello").await), 400);
    assert_eq!(status(&h.post(&[0xff, 0xfe, b'{']).await), 400);
    assert_eq!(status(&h.post(b"[1,2,3]").await), 400);
    assert!(h.calls().await.is_empty());
}

#[tokio::test]
async fn missing_optional_fields_never_cause_5xx() {
    let h = Harness::start().await;
    for body in [
        json!({}),
        json!({"object":"whatsapp_business_account"}),
        json!({"object":"whatsapp_business_account","entry":[{}]}),
        json!({"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages"}]}]}),
        json!({"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{}}]}]}),
        json!({"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{
            "metadata":{"phone_number_id":PHONE_NUMBER_ID},"messages":[{"id":"x"},{"from":"1"},{"id":"y","from":"15551234567","type":"text"}]}}]}]}),
        json!({"object":"whatsapp_business_account","entry":[5, {"changes": "no"}]}),
    ] {
        let r = h.post_json(&body).await;
        assert_eq!(status(&r), 200, "{body}");
    }
    assert!(h.sent_texts().await.is_empty());
}

#[tokio::test]
async fn one_unreadable_message_does_not_hold_back_the_batch() {
    let h = Harness::start().await;
    let mut body = fixture("batch-two-entries.json");
    body["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = json!(42);
    let r = h.post_json(&body).await;
    assert_eq!(status(&r), 200);
    assert_eq!(h.sent_bodies().await, vec!["echo: two"]);
}

// ------------------------------------------------------------------ text messages

#[tokio::test]
async fn text_message_reaches_the_engine_and_the_reply_is_sent() {
    let h = Harness::start().await;
    let r = h.post_json(&fixture("text.json")).await;
    assert_eq!(status(&r), 200);

    let engine = h.engine_calls().await;
    assert_eq!(engine.len(), 1);
    let turn = &engine[0];
    assert_eq!(turn["text"], "What time do you open tomorrow?");
    assert_eq!(turn["mode"], "normal");
    assert_eq!(turn["from"], "15557654321");
    assert_eq!(turn["message_id"], "wamid.SAMPLE.text.0001");
    assert_eq!(turn["channel"], "whatsapp");
    assert!(turn["session_id"].as_str().is_some_and(|s| !s.is_empty()));

    let sent = h.sent_texts().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0],
        json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"15557654321",
               "type":"text","text":{"preview_url":false,"body":"echo: What time do you open tomorrow?"}})
    );
}

#[tokio::test]
async fn graph_and_engine_get_their_bearer_tokens() {
    let h = Harness::builder().build().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200))
        .expect(2) // read receipt + reply
        .mount(&h.server)
        .await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .and(header("authorization", "Bearer engine-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"reply":"hi"})))
        .expect(1)
        .mount(&h.server)
        .await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    h.server.verify().await;
}

/// The interactive reply-button message is posted in Meta's shape, through the same
/// retrying path as texts (a transient refusal is retried), with the access token.
#[tokio::test]
async fn graph_client_posts_reply_buttons_in_metas_shape() {
    let server = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .respond_with(fail_part("Approval needed", 1))
        .expect(2)
        .mount(&server)
        .await;
    let graph = GraphClient::new(
        reqwest::Client::new(),
        &server.uri(),
        "v21.0",
        PHONE_NUMBER_ID,
        Secret::new(ACCESS_TOKEN),
        RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            budget: Duration::from_secs(2),
        },
    );
    let buttons = [
        ReplyButton {
            id: "t3:a:1795795500:a1:0123456789abcdef0123456789abcdef".into(),
            title: "Approve".into(),
        },
        ReplyButton {
            id: "t3:d:1795795500:a1:fedcba9876543210fedcba9876543210".into(),
            title: "Deny".into(),
        },
    ];
    let to = Recipient::Phone("15557654321".into());
    graph
        .send_buttons(&to, "Approval needed: *shell*", &buttons)
        .await
        .expect("accepted on the second attempt");
    let want = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15557654321",
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "Approval needed: *shell*"},
            "action": {"buttons": [
                {"type": "reply", "reply": {
                    "id": "t3:a:1795795500:a1:0123456789abcdef0123456789abcdef",
                    "title": "Approve"
                }},
                {"type": "reply", "reply": {
                    "id": "t3:d:1795795500:a1:fedcba9876543210fedcba9876543210",
                    "title": "Deny"
                }},
            ]},
        },
    });
    let posted: Vec<Value> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
        .collect();
    assert_eq!(posted, [want.clone(), want], "refused once, retried as is");
    server.verify().await;
}

#[tokio::test]
async fn read_receipt_with_typing_goes_out_before_the_engine_is_asked() {
    let h = Harness::start().await;
    h.post_json(&fixture("text.json")).await;
    let calls = h.calls().await;
    let paths: Vec<&str> = calls
        .iter()
        .map(|(p, b)| match (p.as_str(), b["status"].as_str()) {
            (MESSAGES_PATH, Some("read")) => "read",
            (MESSAGES_PATH, _) => "send",
            _ => "engine",
        })
        .collect();
    assert_eq!(paths, vec!["read", "engine", "send"]);
    assert_eq!(
        calls[0].1,
        json!({"messaging_product":"whatsapp","status":"read","message_id":"wamid.SAMPLE.text.0001",
               "typing_indicator":{"type":"text"}})
    );
}

#[tokio::test]
async fn failing_read_receipt_does_not_block_the_reply() {
    let h = Harness::builder().build().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(body_partial_json(json!({"status":"read"})))
        .respond_with(ResponseTemplate::new(500))
        .mount(&h.server)
        .await;
    h.graph_accepts().await;
    h.engine_echoes().await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert_eq!(
        h.sent_bodies().await,
        vec!["echo: What time do you open tomorrow?"]
    );
}

#[tokio::test]
async fn read_receipts_can_be_turned_off() {
    let h = Harness::builder()
        .options(|o| o.read_receipts = false)
        .start()
        .await;
    h.post_json(&fixture("text.json")).await;
    assert!(h.read_receipts().await.is_empty());
    assert_eq!(h.sent_texts().await.len(), 1);
}

#[tokio::test]
async fn batch_of_entries_and_messages_is_answered_per_sender() {
    let h = Harness::start().await;
    let r = h.post_json(&fixture("batch-two-entries.json")).await;
    assert_eq!(status(&r), 200);
    // Different senders are answered at once: the order between them is open.
    let mut asked = h.engine_texts().await;
    asked.sort();
    assert_eq!(asked, ["one", "two"]);
    let mut sent: Vec<(String, String)> = h
        .sent_texts()
        .await
        .iter()
        .map(|s| {
            let to = s["to"].as_str().unwrap_or_default().to_string();
            (
                to,
                s["text"]["body"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            ("15557654321".to_string(), "echo: one".to_string()),
            ("447700900555".to_string(), "echo: two".to_string())
        ]
    );
}

#[tokio::test]
async fn each_sender_gets_an_own_session() {
    let h = Harness::start().await;
    h.post_json(&fixture("batch-two-entries.json")).await;
    h.post_json(&text_message("15557654321", "wamid.B1", "again"))
        .await;
    let calls = h.engine_calls().await;
    assert_eq!(calls.len(), 3);
    // The batch's two senders are answered at once, in either order.
    let session = |text: &str| {
        let call = calls.iter().find(|c| c["text"] == text).expect("asked");
        call["session_id"].clone()
    };
    assert_ne!(session("one"), session("two"));
    assert_eq!(
        session("one"),
        session("again"),
        "same sender keeps its session"
    );
}

#[tokio::test]
async fn statuses_are_answered_200_and_send_nothing() {
    let h = Harness::start().await;
    for name in ["status-delivered.json", "status-failed.json"] {
        assert_eq!(status(&h.post_json(&fixture(name)).await), 200);
    }
    assert!(h.calls().await.is_empty());
}

#[tokio::test]
async fn empty_reply_sends_nothing() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    h.engine_replies("").await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert!(h.sent_texts().await.is_empty());
}

#[tokio::test]
async fn long_reply_is_split_and_sent_in_order_within_the_limit() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    let paragraph = "Paragraph with emoji 😀 and words. ".repeat(40);
    let paragraphs: Vec<String> = (0..10)
        .map(|i| format!("{i}: {}", paragraph.trim()))
        .collect();
    let reply = paragraphs.join("\n\n");
    assert!(reply.encode_utf16().count() > 3 * 4096);
    h.engine_replies(&reply).await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    let parts = h.sent_bodies().await;
    assert!(parts.len() >= 4, "got {} parts", parts.len());
    for part in &parts {
        assert!(part.encode_utf16().count() <= 4096);
        // Cut at paragraph boundaries: every part is whole paragraphs.
        for p in part.split("\n\n") {
            assert!(
                paragraphs.iter().any(|q| q == p),
                "part cut inside a paragraph"
            );
        }
    }
    assert_eq!(parts.join("\n\n"), reply);
}

// ------------------------------------------------------------------ other types

#[tokio::test]
async fn non_text_message_gets_the_text_only_notice() {
    let h = Harness::start().await;
    assert_eq!(status(&h.post_json(&fixture("image.json")).await), 200);
    assert_eq!(h.sent_bodies().await, vec![UNSUPPORTED_TEXT]);
    assert!(h.engine_calls().await.is_empty());
}

#[tokio::test]
async fn non_text_notice_can_be_turned_off() {
    let h = Harness::builder()
        .options(|o| o.unsupported_reply = false)
        .build()
        .await;
    h.graph_accepts().await;
    assert_eq!(status(&h.post_json(&fixture("image.json")).await), 200);
    assert!(h.calls().await.is_empty());
}

#[tokio::test]
async fn unsupported_and_reaction_messages_get_no_reply() {
    let h = Harness::start().await;
    for name in ["unsupported.json", "reaction.json"] {
        assert_eq!(status(&h.post_json(&fixture(name)).await), 200);
    }
    assert!(h.calls().await.is_empty());
}

#[tokio::test]
async fn deletions_edits_flow_and_call_permission_replies_get_no_reply() {
    let h = Harness::start().await;
    for name in [
        "revoke.json",
        "edit.json",
        "flow-reply.json",
        "call-permission-reply.json",
        "request-welcome.json",
    ] {
        assert_eq!(status(&h.post_json(&fixture(name)).await), 200, "{name}");
    }
    assert!(
        h.calls().await.is_empty(),
        "no notice, no read receipt, no engine turn"
    );
}

#[tokio::test]
async fn a_number_change_keeps_the_session_on_the_new_number() {
    let h = Harness::start().await;
    let change = fixture("system-number-changed.json");
    let message = &change["entry"][0]["changes"][0]["value"]["messages"][0];
    let old = message["from"].as_str().unwrap().to_string();
    let new = message["system"]["wa_id"].as_str().unwrap().to_string();
    assert_eq!(
        status(&h.post_json(&text_message(&old, "wamid.NC1", "hi")).await),
        200
    );
    assert_eq!(status(&h.post_json(&change).await), 200);
    assert_eq!(
        status(&h.post_json(&change).await),
        200,
        "a redelivery changes nothing"
    );
    assert_eq!(
        status(
            &h.post_json(&text_message(&new, "wamid.NC2", "still me"))
                .await
        ),
        200
    );
    let calls = h.engine_calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0]["session_id"], calls[1]["session_id"],
        "the session followed the user to the new number"
    );
    assert_eq!(h.sent_bodies().await, ["echo: hi", "echo: still me"]);
    // The old number, should it come back, starts afresh.
    assert_eq!(
        status(&h.post_json(&text_message(&old, "wamid.NC3", "who?")).await),
        200
    );
    let calls = h.engine_calls().await;
    assert_ne!(calls[2]["session_id"], calls[1]["session_id"]);
}

#[tokio::test]
async fn a_number_change_to_a_number_not_allowed_moves_nothing() {
    let h = Harness::builder()
        .options(|o| {
            o.allowed_numbers =
                AllowList::parse(&["+16505551234".into(), "+14155550100".into()]).unwrap()
        })
        .start()
        .await;
    let old = "16505551234";
    h.post_json(&text_message(old, "wamid.NA1", "hi")).await;
    // To a number off the list: the session stays with the old number.
    let mut change = fixture("system-number-changed.json");
    change["entry"][0]["changes"][0]["value"]["messages"][0]["system"]["wa_id"] =
        json!("12195555358");
    assert_eq!(status(&h.post_json(&change).await), 200);
    h.post_json(&text_message(old, "wamid.NA2", "again")).await;
    let calls = h.engine_calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["session_id"], calls[1]["session_id"]);
    assert!(
        h.sent_bodies()
            .await
            .iter()
            .all(|b| b.starts_with("echo: "))
    );
}

#[tokio::test]
async fn button_reply_is_taken_as_text() {
    let h = Harness::start().await;
    let payload = fixture("interactive-button.json");
    let title = payload["entry"][0]["changes"][0]["value"]["messages"][0]["interactive"]["button_reply"]["title"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(status(&h.post_json(&payload).await), 200);
    let calls = h.engine_calls().await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["text"], json!(title));
}

#[tokio::test]
async fn username_user_without_phone_is_answered_by_user_id() {
    let h = Harness::start().await;
    assert_eq!(
        status(&h.post_json(&fixture("bsuid-username-text.json")).await),
        200
    );
    let sent = h.sent_texts().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["recipient"], "US.11112222333344445555");
    assert!(sent[0].get("to").is_none());
    assert_eq!(h.engine_calls().await[0]["from"], "US.11112222333344445555");
}

#[tokio::test]
async fn other_phone_number_id_is_ignored() {
    let h = Harness::start().await;
    let mut body = fixture("text.json");
    body["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] =
        json!("999999999999999");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert!(h.calls().await.is_empty());
}

// ------------------------------------------------------------------ allow-list

#[tokio::test]
async fn senders_outside_allowed_numbers_are_dropped_silently() {
    let h = Harness::builder()
        .options(|o| o.allowed_numbers = AllowList::parse(&["+1 555-765-4321".into()]).unwrap())
        .start()
        .await;
    let r = h.post_json(&fixture("batch-two-entries.json")).await;
    assert_eq!(status(&r), 200);
    // 15557654321 matches "+1 555-765-4321" by digits; 447700900555 is not allowed.
    assert_eq!(h.sent_bodies().await, vec!["echo: one"]);
    let sent = h.sent_texts().await;
    assert_eq!(sent[0]["to"], "15557654321");
    assert_eq!(h.engine_calls().await.len(), 1);
}

#[tokio::test]
async fn closed_allow_list_drops_username_users() {
    let h = Harness::builder()
        .options(|o| o.allowed_numbers = AllowList::parse(&["+15557654321".into()]).unwrap())
        .start()
        .await;
    assert_eq!(
        status(&h.post_json(&fixture("bsuid-username-text.json")).await),
        200
    );
    assert!(h.calls().await.is_empty());
}

// ------------------------------------------------------------------ commands

#[tokio::test]
async fn commands_confirm_and_never_reach_the_engine() {
    let h = Harness::start().await;
    for (i, (text, reply)) in [
        ("/new", NEW_SESSION_TEXT),
        ("  /OTR ", OTR_SESSION_TEXT),
        ("/Help", HELP_TEXT),
    ]
    .iter()
    .enumerate()
    {
        let r = h
            .post_json(&text_message("15557654321", &format!("wamid.C{i}"), text))
            .await;
        assert_eq!(status(&r), 200);
        assert_eq!(
            h.sent_bodies().await.last().map(String::as_str),
            Some(*reply)
        );
    }
    assert!(h.engine_calls().await.is_empty());
}

#[tokio::test]
async fn otr_then_new_switch_mode_and_session() {
    let h = Harness::start().await;
    let from = "15557654321";
    h.post_json(&text_message(from, "wamid.1", "hello")).await;
    h.post_json(&text_message(from, "wamid.2", "/otr")).await;
    h.post_json(&text_message(from, "wamid.3", "secret")).await;
    h.post_json(&text_message(from, "wamid.4", "more secret"))
        .await;
    h.post_json(&text_message(from, "wamid.5", "/new")).await;
    h.post_json(&text_message(from, "wamid.6", "public")).await;
    let calls = h.engine_calls().await;
    let modes: Vec<&str> = calls.iter().map(|c| c["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, vec!["normal", "otr", "otr", "normal"]);
    let ids: Vec<&str> = calls
        .iter()
        .map(|c| c["session_id"].as_str().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1], "/otr starts a new session");
    assert_eq!(ids[1], ids[2], "OTR session lasts until /new");
    assert_ne!(ids[2], ids[3], "/new starts a new session");
    assert_ne!(ids[0], ids[3]);
}

#[tokio::test]
async fn idle_session_expires() {
    let h = Harness::start().await;
    let from = "15557654321";
    h.post_json(&text_message(from, "wamid.1", "a")).await;
    h.clock.advance(3600);
    h.post_json(&text_message(from, "wamid.2", "b")).await;
    h.clock.advance(721 * 3600);
    h.post_json(&text_message(from, "wamid.3", "c")).await;
    let calls = h.engine_calls().await;
    assert_eq!(calls[0]["session_id"], calls[1]["session_id"]);
    assert_ne!(
        calls[1]["session_id"], calls[2]["session_id"],
        "idle for longer than the TTL"
    );
}

// ------------------------------------------------------------------ exactly once (memory state)

#[tokio::test]
async fn duplicate_delivery_is_answered_once() {
    let h = Harness::start().await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.engine_calls().await.len(), 1);
    assert_eq!(h.sent_texts().await.len(), 1);
}

#[tokio::test]
async fn engine_failure_sends_the_notice_once_and_keeps_the_message() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&h.server)
        .await;
    let body = fixture("text.json");
    assert_eq!(
        status(&h.post_json(&body).await),
        500,
        "Meta must redeliver"
    );
    assert_eq!(status(&h.post_json(&body).await), 500);
    assert_eq!(
        h.sent_bodies().await,
        vec![UNAVAILABLE_TEXT],
        "the notice goes out once"
    );
    h.engine_replies("recovered").await;
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.sent_bodies().await, vec![UNAVAILABLE_TEXT, "recovered"]);
}

#[tokio::test]
async fn engine_garbage_settles_with_a_notice_and_is_never_asked_again() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>oops"))
        .mount(&h.server)
        .await;
    // The engine took the turn (it answered), so its actions may have run: asking
    // again could run them twice.
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.engine_calls().await.len(), 1);
    assert_eq!(h.sent_bodies().await, vec![UNAVAILABLE_TEXT]);
}

#[tokio::test]
async fn engine_client_error_is_permanent_and_settles() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(ResponseTemplate::new(400))
        .mount(&h.server)
        .await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.engine_calls().await.len(), 1, "settled: not asked again");
    assert_eq!(h.sent_bodies().await, vec![UNAVAILABLE_TEXT]);
}

#[tokio::test]
async fn graph_failure_mid_reply_resumes_without_duplicates_or_engine_call() {
    let h = Harness::builder()
        .options(|o| o.max_part_units = 20)
        .build()
        .await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(fail_part("Part two", 1))
        .mount(&h.server)
        .await;
    h.engine_replies("Part one is here.\n\nPart two is here.\n\nPart three is here.")
        .await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 500);
    assert_eq!(status(&h.post_json(&body).await), 200);
    // Every text send the Graph API got, refused ones included.
    let accepted = h.sent_bodies().await;
    // Part two was attempted twice (refused once), every part accepted exactly once.
    assert_eq!(
        accepted,
        vec![
            "Part one is here.",
            "Part two is here.",
            "Part two is here.",
            "Part three is here."
        ]
    );
    assert_eq!(
        h.engine_calls().await.len(),
        1,
        "the stored reply is resumed, not re-asked"
    );
    // Settled now: a third delivery sends nothing.
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.sent_texts().await.len(), 4);
}

#[tokio::test]
async fn permanent_graph_error_settles_with_200() {
    let h = Harness::builder().build().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(body_partial_json(json!({"type":"text"})))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error":{"message":"Re-engagement message","code":131047,"fbtrace_id":"AbC"}}),
        ))
        .mount(&h.server)
        .await;
    h.graph_accepts().await;
    h.engine_echoes().await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.sent_texts().await.len(), 1, "no retry loop");
    assert_eq!(h.engine_calls().await.len(), 1);
}

#[tokio::test]
async fn transient_graph_error_is_retried_within_the_budget() {
    let h = Harness::builder()
        .retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(5),
            budget: Duration::from_secs(2),
        })
        .build()
        .await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(fail_part("echo:", 1))
        .mount(&h.server)
        .await;
    h.engine_echoes().await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert_eq!(h.sent_texts().await.len(), 2, "one refused, one accepted");
}

#[tokio::test]
async fn concurrent_messages_of_one_sender_never_overlap_at_the_engine() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    // A slow engine: overlapping turns would both be in flight at once.
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"reply":"ok"}))
                .set_delay(Duration::from_millis(150)),
        )
        .mount(&h.server)
        .await;
    let a = text_message("15557654321", "wamid.A", "first");
    let b = text_message("15557654321", "wamid.B", "second");
    let (ra, rb) = tokio::join!(h.post_json(&a), h.post_json(&b));
    assert_eq!((status(&ra), status(&rb)), (200, 200));
    let engine: Vec<wiremock::Request> = h
        .server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == ENGINE_PATH)
        .collect();
    assert_eq!(engine.len(), 2);
    // The second turn may only start after the first reply was sent.
    let calls = h.calls().await;
    let kinds: Vec<&str> = calls
        .iter()
        .filter(|(_, b)| b["status"] != "read")
        .map(|(p, _)| if p == ENGINE_PATH { "engine" } else { "send" })
        .collect();
    assert_eq!(kinds, vec!["engine", "send", "engine", "send"]);
}

#[tokio::test]
async fn brazil_number_in_both_forms_is_one_sender() {
    let h = Harness::builder()
        .options(|o| o.allowed_numbers = AllowList::parse(&["+55 11 98765-4321".into()]).unwrap())
        .start()
        .await;
    h.post_json(&text_message("5511987654321", "wamid.BR1", "with nine"))
        .await;
    h.post_json(&text_message("551187654321", "wamid.BR2", "without nine"))
        .await;
    let calls = h.engine_calls().await;
    assert_eq!(calls.len(), 2, "both forms pass the allow-list");
    assert_eq!(
        calls[0]["session_id"], calls[1]["session_id"],
        "one session for both forms"
    );
    let to: Vec<Value> = h
        .sent_texts()
        .await
        .iter()
        .map(|s| s["to"].clone())
        .collect();
    assert_eq!(
        to,
        vec![json!("5511987654321"), json!("551187654321")],
        "replies go to the number as Meta gave it"
    );
}

#[tokio::test]
async fn batched_messages_are_answered_in_timestamp_order() {
    let h = Harness::start().await;
    let mut body = fixture("batch-two-entries.json");
    let messages = &mut body["entry"][0]["changes"][0]["value"]["messages"];
    // One sender's two texts, written in the opposite order to the batch's.
    messages[1]["from"] = json!("15557654321");
    messages[0]["timestamp"] = json!("1764240500");
    messages[1]["timestamp"] = json!("1764240499");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(
        h.engine_texts().await,
        ["two\none"],
        "one turn, in the order written"
    );
}

#[tokio::test]
async fn allowed_user_ids_let_username_users_in() {
    let h = Harness::builder()
        .options(|o| o.allowed_user_ids = vec!["US.11112222333344445555".into()])
        .start()
        .await;
    assert_eq!(
        status(&h.post_json(&fixture("bsuid-username-text.json")).await),
        200
    );
    assert_eq!(h.engine_calls().await.len(), 1);
    // The list is closed now: a phone user not on allowed_numbers is dropped.
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert_eq!(h.engine_calls().await.len(), 1);
}

#[tokio::test]
async fn reply_threading_quotes_the_user_message_in_the_first_part_only() {
    let h = Harness::builder()
        .options(|o| {
            o.reply_threading = true;
            o.max_part_units = 20;
        })
        .build()
        .await;
    h.graph_accepts().await;
    h.engine_replies("Part one is here.\n\nPart two is here.")
        .await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    let sent = h.sent_texts().await;
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0]["context"],
        json!({"message_id": "wamid.SAMPLE.text.0001"})
    );
    assert!(sent[1].get("context").is_none());
}

#[tokio::test]
async fn username_user_keeps_the_session_of_their_number() {
    let h = Harness::start().await;
    // While Meta still sends both the number and the user id…
    let mut both = text_message("15557654321", "wamid.U1", "hi");
    both["entry"][0]["changes"][0]["value"]["messages"][0]["from_user_id"] =
        json!("US.11112222333344445555");
    assert_eq!(status(&h.post_json(&both).await), 200);
    // …then only the user id, after the user turned on a username.
    assert_eq!(
        status(&h.post_json(&fixture("bsuid-username-text.json")).await),
        200
    );
    let calls = h.engine_calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0]["session_id"], calls[1]["session_id"],
        "one session for one person"
    );
    let sent = h.sent_texts().await;
    assert_eq!(sent[0]["to"], "15557654321");
    assert_eq!(sent[1]["recipient"], "US.11112222333344445555");
}

#[tokio::test]
async fn username_user_linked_to_an_allowed_number_is_allowed() {
    let h = Harness::builder()
        .options(|o| o.allowed_numbers = AllowList::parse(&["+15557654321".into()]).unwrap())
        .start()
        .await;
    // Unknown username user: dropped.
    assert_eq!(
        status(&h.post_json(&fixture("bsuid-username-text.json")).await),
        200
    );
    assert!(h.engine_calls().await.is_empty());
    let mut both = text_message("15557654321", "wamid.U1", "hi");
    both["entry"][0]["changes"][0]["value"]["messages"][0]["from_user_id"] =
        json!("US.11112222333344445555");
    h.post_json(&both).await;
    let mut later = fixture("bsuid-username-text.json");
    later["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = json!("wamid.U3");
    assert_eq!(status(&h.post_json(&later).await), 200);
    assert_eq!(
        h.engine_calls().await.len(),
        2,
        "linked to an allowed number: let in"
    );
}

#[tokio::test]
async fn markdown_reply_is_sent_in_whatsapp_markup() {
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    h.engine_replies("# Plan\n\n**Bold** and *italic* and ~~gone~~, see [docs](https://example.com/a_b).\n\n* one\n* two")
        .await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert_eq!(
        h.sent_bodies().await,
        vec![
            "*Plan*\n\n*Bold* and _italic_ and ~gone~, see docs (https://example.com/a_b).\n\n- one\n- two"
        ]
    );
}

#[tokio::test]
async fn plain_and_none_formats() {
    for (format, want) in [
        (whatsapp_webhook::format::Format::Plain, "Bold and italic"),
        (
            whatsapp_webhook::format::Format::None,
            "**Bold** and *italic*",
        ),
    ] {
        let h = Harness::builder()
            .options(|o| o.format = format)
            .build()
            .await;
        h.graph_accepts().await;
        h.engine_replies("**Bold** and *italic*").await;
        h.post_json(&fixture("text.json")).await;
        assert_eq!(h.sent_bodies().await, vec![want], "{format:?}");
    }
}

#[tokio::test]
async fn a_code_block_cut_in_two_is_closed_and_reopened() {
    let h = Harness::builder()
        .options(|o| o.max_part_units = 60)
        .build()
        .await;
    h.graph_accepts().await;
    let code: Vec<String> = (0..8).map(|i| format!("let x{i} = {i};")).collect();
    h.engine_replies(&format!("Code:\n\n```rust\n{}\n```", code.join("\n")))
        .await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    let parts = h.sent_bodies().await;
    assert!(parts.len() >= 2, "{parts:?}");
    for part in &parts {
        assert!(part.encode_utf16().count() <= 60, "{part:?}");
        let fences = part
            .lines()
            .filter(|l| l.trim_start().starts_with("```"))
            .count();
        assert_eq!(fences % 2, 0, "every part balances its fences: {part:?}");
    }
    let all = parts.join("\n");
    for line in &code {
        assert!(all.contains(line.as_str()), "{line} kept");
    }
}

// ---------------------------------------------------------------- rapid-fire turns

/// Posts `bodies` from separate tasks, as separate webhook requests would arrive.
fn post_in_background(h: &std::sync::Arc<Harness>, body: Value) -> tokio::task::JoinHandle<u16> {
    let h = h.clone();
    tokio::spawn(async move { status(&h.post_json(&body).await) })
}

#[tokio::test]
async fn lines_sent_while_a_turn_runs_are_answered_as_one_turn() {
    let (engine, h) = Harness::gated().await;
    let from = "15557654321";
    let now = h.clock.now();
    let first = post_in_background(&h, text_message_at(from, "wamid.RF1", "hi", now));
    engine.first_turn_started().await;
    // Two quick lines while the engine works on the first; the later one arrives first.
    let third = post_in_background(
        &h,
        text_message_at(from, "wamid.RF3", "with my order", now + 2),
    );
    let second = post_in_background(
        &h,
        text_message_at(from, "wamid.RF2", "I need help", now + 1),
    );
    eventually("both lines queued", async || h.app.waiting_requests() == 2).await;
    engine.open();
    for request in [first, second, third] {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(engine.texts(), ["hi", "I need help\nwith my order"]);
    assert_eq!(
        h.sent_bodies().await,
        ["re: hi", "re: I need help\nwith my order"],
        "one answer for the two quick lines"
    );
    // Each combined message is done: a redelivery sends nothing.
    assert_eq!(
        status(
            &h.post_json(&text_message_at(
                from,
                "wamid.RF3",
                "with my order",
                now + 2
            ))
            .await
        ),
        200
    );
    assert_eq!(h.sent_bodies().await.len(), 2);
    assert_eq!(h.app.waiting_requests(), 0);
}

#[tokio::test]
async fn lines_batched_in_one_post_are_one_turn_and_commands_stay_apart() {
    let h = Harness::start().await;
    let from = "15557654321";
    let now = h.clock.now();
    let mut body = text_message_at(from, "wamid.RB1", "first line", now);
    let lines = [
        ("wamid.RB2", "second line", now + 1),
        ("wamid.RB3", "/new", now + 2),
        ("wamid.RB4", "after the command", now + 3),
    ];
    let template = body["entry"][0]["changes"][0]["value"]["messages"][0].clone();
    for (id, text, ts) in lines {
        let mut message = template.clone();
        message["id"] = json!(id);
        message["text"]["body"] = json!(text);
        message["timestamp"] = json!(ts.to_string());
        body["entry"][0]["changes"][0]["value"]["messages"]
            .as_array_mut()
            .unwrap()
            .push(message);
    }
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(
        h.engine_texts().await,
        ["first line\nsecond line", "after the command"]
    );
    let sent = h.sent_bodies().await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0], "echo: first line\nsecond line");
    assert_eq!(
        sent[1],
        whatsapp_webhook::commands::Command::New.confirmation()
    );
    assert_eq!(sent[2], "echo: after the command");
    // The read receipt goes to the latest line of the combined turn.
    assert_eq!(h.read_receipts().await[0]["message_id"], "wamid.RB2");
}

#[tokio::test]
async fn the_combine_window_waits_for_quick_follow_up_lines() {
    let h = std::sync::Arc::new(
        Harness::builder()
            .options(|o| o.combine_window = Duration::from_millis(1500))
            .build()
            .await,
    );
    h.graph_accepts().await;
    h.engine_echoes().await;
    let from = "15557654321";
    let now = h.clock.now();
    let first = post_in_background(&h, text_message_at(from, "wamid.W1", "hello", now));
    let second = post_in_background(
        &h,
        text_message_at(from, "wamid.W2", "are you there", now + 1),
    );
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (200, 200));
    assert_eq!(h.sent_bodies().await, ["echo: hello\nare you there"]);
}

#[tokio::test]
async fn a_message_that_failed_is_answered_before_a_newer_one() {
    let h = Harness::builder()
        .options(|o| o.sender_wait = Duration::from_millis(100))
        .build()
        .await;
    order_survives_a_failed_delivery(&h).await;
}

#[tokio::test]
async fn a_redelivery_queued_beside_its_first_delivery_is_answered_once() {
    let (engine, h) = Harness::gated().await;
    let from = "15557654321";
    let now = h.clock.now();
    let first = post_in_background(&h, text_message_at(from, "wamid.D1", "one", now));
    engine.first_turn_started().await;
    let body = text_message_at(from, "wamid.D2", "two", now + 1);
    let delivery = post_in_background(&h, body.clone());
    let redelivery = post_in_background(&h, body);
    eventually("both deliveries queued", async || {
        h.app.waiting_requests() == 2
    })
    .await;
    engine.open();
    for request in [first, delivery, redelivery] {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(
        engine.texts(),
        ["one", "two"],
        "the same message is one line"
    );
    assert_eq!(h.sent_bodies().await, ["re: one", "re: two"]);
}
