//! Sessions, OTR and exactly-once replies through the webhook handler, with the
//! DynamoDB store against a real DynamoDB-protocol server (moto_server).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::helpers::*;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use whatsapp_webhook::commands::{LOST_TEXT, UNAVAILABLE_TEXT};
use whatsapp_webhook::state::{Attempt, Begin, DynamoStore, SessionStore};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, ResponseTemplate};

const LEASE: Duration = Duration::from_secs(40);
const IDLE: Duration = Duration::from_secs(720 * 3600);

struct Table {
    moto: Arc<crate::moto::MotoServer>,
    name: String,
}

impl Table {
    async fn fresh() -> Table {
        let moto = crate::moto::shared();
        let name = crate::moto::fresh_table(&crate::moto::client(&moto.endpoint)).await;
        Table { moto, name }
    }

    /// A store with its own client, as a new process would build it.
    fn store(&self) -> Arc<DynamoStore> {
        Arc::new(DynamoStore::new(
            crate::moto::client(&self.moto.endpoint),
            self.name.clone(),
            LEASE,
            IDLE,
        ))
    }

    async fn harness(&self) -> Harness {
        Harness::builder().store(self.store()).start().await
    }

    /// Every attribute value in the table, rendered as text.
    /// How many messages wait in the waiting list of `sender`.
    async fn waiting(&self, sender: &str) -> usize {
        crate::moto::client(&self.moto.endpoint)
            .get_item()
            .table_name(&self.name)
            .key("pk", AttributeValue::S(format!("sender#{sender}")))
            .consistent_read(true)
            .send()
            .await
            .ok()
            .and_then(|out| out.item)
            .and_then(|item| {
                item.get("waiting")
                    .and_then(|w| w.as_ss().ok())
                    .map(Vec::len)
            })
            .unwrap_or(0)
    }

    async fn dump(&self) -> String {
        let out = crate::moto::client(&self.moto.endpoint)
            .scan()
            .table_name(&self.name)
            .send()
            .await
            .expect("scan");
        format!("{:?}", out.items())
    }
}

#[tokio::test]
async fn session_and_otr_mode_survive_a_new_process() {
    let table = Table::fresh().await;
    let from = "15557654321";
    let first = table.harness().await;
    first
        .post_json(&text_message(from, "wamid.P1", "hello"))
        .await;
    let session = first.engine_calls().await[0]["session_id"].clone();

    // A new process: new client, new app, same table, same Graph/engine stub.
    let second = Harness::builder()
        .store(table.store())
        .server(first.server.clone())
        .build()
        .await;
    second
        .post_json(&text_message(from, "wamid.P2", "still me"))
        .await;
    let calls = second.engine_calls().await;
    assert_eq!(
        calls[1]["session_id"], session,
        "the session survived the restart"
    );

    second
        .post_json(&text_message(from, "wamid.P3", "/otr"))
        .await;
    let third = Harness::builder()
        .store(table.store())
        .server(second.server.clone())
        .build()
        .await;
    third
        .post_json(&text_message(from, "wamid.P4", "psst"))
        .await;
    third
        .post_json(&text_message(from, "wamid.P5", "/new"))
        .await;
    third
        .post_json(&text_message(from, "wamid.P6", "back"))
        .await;
    let calls = third.engine_calls().await;
    let modes: Vec<&str> = calls.iter().map(|c| c["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, vec!["normal", "normal", "otr", "normal"]);
    assert_ne!(calls[2]["session_id"], session);
    assert_ne!(calls[3]["session_id"], calls[2]["session_id"]);
}

#[tokio::test]
async fn duplicate_delivery_is_answered_once() {
    let table = Table::fresh().await;
    let h = table.harness().await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.engine_calls().await.len(), 1);
    assert_eq!(h.sent_texts().await.len(), 1);
}

#[tokio::test]
async fn concurrent_duplicate_deliveries_are_answered_once() {
    let table = Table::fresh().await;
    let h = Harness::builder().store(table.store()).build().await;
    h.graph_accepts().await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"reply":"once"}))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&h.server)
        .await;
    // Two instances (two stores, two apps) get the same delivery at once.
    let other = Harness::builder()
        .store(table.store())
        .server(h.server.clone())
        .build()
        .await;
    let body = fixture("text.json");
    let (a, b) = tokio::join!(h.post_json(&body), other.post_json(&body));
    let mut statuses = vec![status(&a), status(&b)];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 503],
        "the second holder is told to come back later"
    );
    assert_eq!(h.sent_bodies().await, vec!["once"]);
    // Meta's redelivery of the 503 finds the message answered.
    assert_eq!(status(&other.post_json(&body).await), 200);
    assert_eq!(h.sent_bodies().await, vec!["once"]);
    assert_eq!(h.engine_calls().await.len(), 1);
}

#[tokio::test]
async fn graph_failing_on_part_two_of_three_then_recovering_sends_each_part_once() {
    let table = Table::fresh().await;
    let h = Harness::builder()
        .store(table.store())
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
    assert_eq!(
        status(&h.post_json(&body).await),
        500,
        "Meta must redeliver"
    );
    // The pending reply is stored (normal mode) while the message is unanswered.
    assert!(table.dump().await.contains("Part two is here."));
    // A new process takes the redelivery.
    let again = Harness::builder()
        .store(table.store())
        .server(h.server.clone())
        .options(|o| o.max_part_units = 20)
        .build()
        .await;
    assert_eq!(status(&again.post_json(&body).await), 200);
    // Every text send the Graph API got, refused ones included.
    let accepted = h.sent_bodies().await;
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
    assert!(
        !table.dump().await.contains("Part"),
        "no reply text is kept once answered"
    );
    assert_eq!(status(&again.post_json(&body).await), 200);
    assert_eq!(again.sent_texts().await.len(), 4);
}

#[tokio::test]
async fn engine_failure_then_recovery_answers_once_with_one_notice() {
    let table = Table::fresh().await;
    let h = Harness::builder().store(table.store()).build().await;
    h.graph_accepts().await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&h.server)
        .await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 500);
    h.engine_replies("back again").await;
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.sent_bodies().await, vec![UNAVAILABLE_TEXT, "back again"]);
}

#[tokio::test]
async fn permanent_graph_error_settles_without_a_retry_loop() {
    let table = Table::fresh().await;
    let h = Harness::builder().store(table.store()).build().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(body_partial_json(json!({"type":"text"})))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error":{"code":131047,"fbtrace_id":"AbC"}})),
        )
        .mount(&h.server)
        .await;
    h.graph_accepts().await;
    h.engine_echoes().await;
    let body = fixture("text.json");
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.sent_texts().await.len(), 1);
    assert_eq!(h.engine_calls().await.len(), 1);
}

#[tokio::test]
async fn two_concurrent_messages_of_one_number_never_overlap_at_the_engine() {
    let table = Table::fresh().await;
    let h = Harness::builder().store(table.store()).build().await;
    h.graph_accepts().await;
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"reply":"ok"}))
                .set_delay(Duration::from_millis(200)),
        )
        .mount(&h.server)
        .await;
    // Two instances, one message each, same sender, at the same time.
    let other = Harness::builder()
        .store(table.store())
        .server(h.server.clone())
        .build()
        .await;
    let a = text_message("15557654321", "wamid.A", "first");
    let b = text_message("15557654321", "wamid.B", "second");
    let (ra, rb) = tokio::join!(h.post_json(&a), other.post_json(&b));
    assert_eq!((status(&ra), status(&rb)), (200, 200));
    let kinds: Vec<&str> = h
        .calls()
        .await
        .iter()
        .filter(|(_, b)| b["status"] != "read")
        .map(|(p, _)| if p == ENGINE_PATH { "engine" } else { "send" })
        .collect::<Vec<_>>();
    assert_eq!(
        kinds,
        vec!["engine", "send", "engine", "send"],
        "turns never overlap"
    );
}

#[tokio::test]
async fn otr_conversation_leaves_no_text_in_the_table() {
    let table = Table::fresh().await;
    let h = Harness::builder()
        .store(table.store())
        .options(|o| o.max_part_units = 24)
        .build()
        .await;
    // Part two fails once, so an OTR reply is pending at one point: it must not be stored.
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .respond_with(fail_part("zebra", 1))
        .mount(&h.server)
        .await;
    h.engine_replies("ostrich ostrich ostrich.\n\nzebra zebra zebra zebra.")
        .await;
    let from = "15557654321";
    h.post_json(&text_message(from, "wamid.O1", "/otr")).await;
    assert_eq!(
        status(
            &h.post_json(&text_message(from, "wamid.O2", "my secret diary"))
                .await
        ),
        500
    );
    let during = table.dump().await;
    assert_eq!(
        status(
            &h.post_json(&text_message(from, "wamid.O2", "my secret diary"))
                .await
        ),
        200
    );
    let after = table.dump().await;
    for dump in [during, after] {
        for word in ["secret diary", "ostrich", "zebra", "wamid.O"] {
            assert!(!dump.contains(word), "table holds {word:?}: {dump}");
        }
        assert!(dump.contains("otr"), "the mode itself is stored");
    }
    // OTR replies are not stored, and a begun turn is never asked again: the
    // redelivery tells the user the rest of the answer was lost.
    assert_eq!(h.engine_calls().await.len(), 1);
    assert_eq!(
        h.sent_bodies().await.last().map(String::as_str),
        Some(LOST_TEXT)
    );
}

#[tokio::test]
async fn a_dead_holder_is_overtaken_after_its_lease_and_its_turn_is_not_asked_again() {
    let table = Table::fresh().await;
    let h = table.harness().await;
    let body = fixture("text.json");
    // An earlier delivery claimed the message for its turn and died (no finish, no
    // abandon): the engine may be running that turn still.
    let store = table.store();
    let dead = Attempt {
        message_id: "wamid.SAMPLE.text.0001",
        sender: "15557654321",
        token: "dead",
        timestamp: 0,
        starts_turn: true,
        merged: &[],
    };
    assert!(matches!(
        store.begin(&dead, h.clock.now()).await.unwrap(),
        Begin::Ready { .. }
    ));
    assert_eq!(
        status(&h.post_json(&body).await),
        503,
        "held: Meta must come back later"
    );
    assert!(h.sent_texts().await.is_empty());
    h.clock.advance(LEASE.as_secs() + 1);
    assert_eq!(
        status(&h.post_json(&body).await),
        200,
        "lease expired: the redelivery settles the message"
    );
    assert_eq!(h.sent_bodies().await, vec![LOST_TEXT.to_string()]);
    assert!(
        h.engine_calls().await.is_empty(),
        "a begun turn is never asked again"
    );
    assert_eq!(status(&h.post_json(&body).await), 200);
    assert_eq!(h.sent_texts().await.len(), 1, "told once");
}

#[tokio::test]
async fn unavailable_dynamodb_gives_500_and_sends_nothing() {
    let closed = crate::moto::free_port();
    let store = Arc::new(DynamoStore::new(
        crate::moto::client(&format!("http://127.0.0.1:{closed}")),
        "t".into(),
        LEASE,
        IDLE,
    ));
    let h = Harness::builder().store(store).start().await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 500);
    assert!(
        h.engine_calls().await.is_empty(),
        "no engine call without a claim"
    );
    assert!(h.sent_texts().await.is_empty(), "no reply without a claim");
}

#[tokio::test]
async fn an_ordinary_text_message_costs_three_dynamodb_requests() {
    let table = Table::fresh().await;
    let counter = crate::moto::CountRequests::default();
    let client = Client::from_conf(
        crate::moto::config_builder(&table.moto.endpoint)
            .interceptor(counter.clone())
            .build(),
    );
    let store = Arc::new(DynamoStore::new(client, table.name.clone(), LEASE, IDLE));
    let h = Harness::builder().store(store).start().await;
    assert_eq!(status(&h.post_json(&fixture("text.json")).await), 200);
    assert_eq!(counter.0.load(Ordering::SeqCst), 3);
    assert_eq!(
        status(
            &h.post_json(&text_message("15557654321", "wamid.N2", "next"))
                .await
        ),
        200
    );
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        6,
        "an existing session costs the same"
    );
}

#[tokio::test]
async fn username_link_survives_a_new_process() {
    let table = Table::fresh().await;
    let first = table.harness().await;
    let mut both = text_message("15557654321", "wamid.L1", "hi");
    both["entry"][0]["changes"][0]["value"]["messages"][0]["from_user_id"] =
        json!("US.11112222333344445555");
    assert_eq!(status(&first.post_json(&both).await), 200);
    let second = Harness::builder()
        .store(table.store())
        .server(first.server.clone())
        .build()
        .await;
    assert_eq!(
        status(&second.post_json(&fixture("bsuid-username-text.json")).await),
        200
    );
    let calls = second.engine_calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["session_id"], calls[1]["session_id"]);
}

#[tokio::test]
async fn throttled_dynamodb_gives_500_and_sends_nothing() {
    // A DynamoDB endpoint that throttles every request, as an overloaded table does.
    let dynamo = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("content-type", "application/x-amz-json-1.0")
                .set_body_json(json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                    "message": "The level of configured provisioned throughput for the table was exceeded."
                })),
        )
        .mount(&dynamo)
        .await;
    let client = Client::from_conf(crate::moto::production_config_builder(&dynamo.uri()).build());
    let store = Arc::new(DynamoStore::new(client, "t".into(), LEASE, IDLE));
    let h = Harness::builder().store(store).start().await;
    assert_eq!(
        status(&h.post_json(&fixture("text.json")).await),
        500,
        "Meta redelivers"
    );
    assert!(h.engine_calls().await.is_empty());
    assert!(h.sent_texts().await.is_empty());
    let attempts = dynamo.received_requests().await.unwrap_or_default().len();
    assert_eq!(attempts, 3, "the SDK's bounded retry, then give up");
}

#[tokio::test]
async fn a_failed_message_is_answered_before_a_newer_one_across_deliveries() {
    let table = Table::fresh().await;
    let h = Harness::builder()
        .store(table.store())
        .options(|o| o.sender_wait = Duration::from_millis(100))
        .build()
        .await;
    order_survives_a_failed_delivery(&h).await;
}

#[tokio::test]
async fn a_message_that_gave_up_waiting_on_another_instance_still_goes_first() {
    let table = Table::fresh().await;
    let engine = Arc::new(GatedEngine::default());
    let server = Arc::new(wiremock::MockServer::start().await);
    // Three Lambda instances sharing the table and the Graph API.
    let mut instances = Vec::new();
    for _ in 0..3 {
        let h = Harness::builder()
            .store(table.store())
            .engine(engine.clone())
            .server(server.clone())
            .options(|o| o.sender_wait = Duration::from_millis(200))
            .build()
            .await;
        instances.push(Arc::new(h));
    }
    instances[0].graph_accepts().await;
    let from = "15557654321";
    let now = instances[0].clock.now();
    let first = text_message_at(from, "wamid.X1", "first", now);
    let older = text_message_at(from, "wamid.X2", "older", now + 1);
    let newer = text_message_at(from, "wamid.X3", "newer", now + 2);
    let running = {
        let h = instances[0].clone();
        tokio::spawn(async move { status(&h.post_json(&first).await) })
    };
    engine.first_turn_started().await;
    // The older message finds the sender busy past its wait: 503, Meta will come back.
    assert_eq!(status(&instances[1].post_json(&older).await), 503);
    assert_eq!(table.waiting(from).await, 1);
    engine.open();
    assert_eq!(running.await.unwrap(), 200);
    // The sender is free now, but the newer message must not overtake the older one.
    assert_eq!(status(&instances[2].post_json(&newer).await), 503);
    assert_eq!(status(&instances[1].post_json(&older).await), 200);
    assert_eq!(status(&instances[2].post_json(&newer).await), 200);
    assert_eq!(engine.texts(), ["first", "older", "newer"]);
    assert_eq!(
        instances[0].sent_bodies().await,
        ["re: first", "re: older", "re: newer"]
    );
    assert_eq!(table.waiting(from).await, 0, "nobody waits any more");
}
