//! Contract tests of `DynamoStore` against moto_server (installed by
//! `scripts/ensure-moto.sh`). Each scenario runs against `MemoryStore` too, so the two
//! stores are held to the same semantics. Time is a parameter: no test sleeps.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType, TimeToLiveStatus};
use whatsapp_webhook::domain::{Mode, SessionRecord};
use whatsapp_webhook::state::dynamodb::create_table;
use whatsapp_webhook::state::{
    Attempt, Begin, Claim, DynamoStore, MemoryStore, Merged, Progress, SessionMove, SessionStore,
    StateError, waiting_entry,
};

const T0: u64 = 1_700_000_000;
const LEASE: u64 = 30;
const IDLE: u64 = 3600;

fn attempt<'a>(message_id: &'a str, sender: &'a str, token: &'a str) -> Attempt<'a> {
    Attempt {
        message_id,
        sender,
        token,
        timestamp: T0,
        starts_turn: false,
        merged: &[],
    }
}

/// An attempt at a message sent at `timestamp`.
fn attempt_at<'a>(
    message_id: &'a str,
    sender: &'a str,
    token: &'a str,
    timestamp: u64,
) -> Attempt<'a> {
    Attempt {
        timestamp,
        ..attempt(message_id, sender, token)
    }
}

fn session(id: &str, mode: Mode, updated_at: u64) -> SessionRecord {
    SessionRecord {
        id: id.to_string(),
        mode,
        created_at: T0,
        updated_at,
    }
}

fn ready(session: Option<SessionRecord>, progress: Progress) -> Begin {
    Begin::Ready {
        session,
        progress,
        waiting: Vec::new(),
    }
}

/// `begin`'s answer with these (message id, timestamp) waiting behind it.
fn waiting_behind(ready: Begin, behind: &[(&str, u64)]) -> Begin {
    match ready {
        Begin::Ready {
            session, progress, ..
        } => Begin::Ready {
            session,
            progress,
            waiting: behind
                .iter()
                .map(|(id, ts)| waiting_entry(id, *ts))
                .collect(),
        },
        other => other,
    }
}

fn memory() -> MemoryStore {
    MemoryStore::new(Duration::from_secs(LEASE), Duration::from_secs(IDLE))
}

struct Dynamo {
    // Keeps moto alive while the test runs.
    _moto: Arc<crate::moto::MotoServer>,
    client: Client,
    table: String,
    store: DynamoStore,
}

async fn dynamo() -> Dynamo {
    let moto = crate::moto::shared();
    let client = crate::moto::client(&moto.endpoint);
    dynamo_with(moto, client).await
}

async fn dynamo_with(moto: Arc<crate::moto::MotoServer>, client: Client) -> Dynamo {
    let table = crate::moto::fresh_table(&client).await;
    let store = DynamoStore::new(
        client.clone(),
        table.clone(),
        Duration::from_secs(LEASE),
        Duration::from_secs(IDLE),
    );
    Dynamo {
        _moto: moto,
        client,
        table,
        store,
    }
}

// ---------------------------------------------------------------- contract

async fn first_begin_is_ready_and_finished_message_is_done(store: &dyn SessionStore) {
    let a = attempt("wamid.A", "4915550001", "t1");
    assert_eq!(
        store.begin(&a, T0).await.unwrap(),
        ready(None, Progress::default())
    );
    store
        .finish(&a, &session("s1", Mode::Normal, T0), T0)
        .await
        .unwrap();
    let again = attempt("wamid.A", "4915550001", "t2");
    assert_eq!(store.begin(&again, T0 + 1).await.unwrap(), Begin::Done);
    // Long after every lease: still done.
    assert_eq!(
        store.begin(&again, T0 + 10 * IDLE).await.unwrap(),
        Begin::Done
    );
    assert!(matches!(
        store.save_progress(&a, &Progress::default()).await,
        Err(StateError::LostLease)
    ));
}

async fn redelivery_while_held_is_message_busy(store: &dyn SessionStore) {
    let first = attempt("wamid.B", "4915550002", "t1");
    let second = attempt("wamid.B", "4915550002", "t2");
    assert!(matches!(
        store.begin(&first, T0).await.unwrap(),
        Begin::Ready { .. }
    ));
    assert_eq!(
        store.begin(&second, T0 + 1).await.unwrap(),
        Begin::MessageBusy
    );
    assert_eq!(
        store.begin(&second, T0 + LEASE - 1).await.unwrap(),
        Begin::MessageBusy
    );
}

async fn expired_lease_resumes_with_saved_progress(store: &dyn SessionStore) {
    let first = attempt("wamid.C", "4915550003", "t1");
    let second = attempt("wamid.C", "4915550003", "t2");
    let progress = Progress {
        parts: vec!["part one".into(), "part two".into()],
        sent: 1,
        notice_sent: true,
        started: true,
    };
    store.begin(&first, T0).await.unwrap();
    store.save_progress(&first, &progress).await.unwrap();
    assert_eq!(
        store.begin(&second, T0 + LEASE).await.unwrap(),
        ready(None, progress.clone())
    );
    // The overtaken attempt can no longer write anything.
    let s = session("s1", Mode::Normal, T0);
    assert!(matches!(
        store.save_progress(&first, &Progress::default()).await,
        Err(StateError::LostLease)
    ));
    assert!(matches!(
        store.finish(&first, &s, T0 + LEASE).await,
        Err(StateError::LostLease)
    ));
    assert!(matches!(
        store.abandon(&first, &progress, &s, T0 + LEASE).await,
        Err(StateError::LostLease)
    ));
    // The new holder is untouched by those attempts.
    store.finish(&second, &s, T0 + LEASE).await.unwrap();
    let third = attempt("wamid.C", "4915550003", "t3");
    assert_eq!(store.begin(&third, T0 + LEASE).await.unwrap(), Begin::Done);
}

async fn busy_sender_hands_the_message_back(store: &dyn SessionStore) {
    let sender = "4915550004";
    let first = attempt("wamid.D1", sender, "t1");
    store.begin(&first, T0).await.unwrap();
    assert_eq!(
        store
            .begin(&attempt("wamid.D2", sender, "t2"), T0 + 1)
            .await
            .unwrap(),
        Begin::SenderBusy
    );
    // Redelivered within the lease: the message claim was released, only the sender waits.
    assert_eq!(
        store
            .begin(&attempt("wamid.D2", sender, "t3"), T0 + 2)
            .await
            .unwrap(),
        Begin::SenderBusy
    );
    let s = session("s1", Mode::Normal, T0 + 3);
    store.finish(&first, &s, T0 + 3).await.unwrap();
    assert_eq!(
        store
            .begin(&attempt("wamid.D2", sender, "t4"), T0 + 4)
            .await
            .unwrap(),
        ready(Some(s), Progress::default())
    );
}

async fn finished_session_comes_back(store: &dyn SessionStore) {
    let sender = "4915550005";
    let first = attempt("wamid.E1", sender, "t1");
    store.begin(&first, T0).await.unwrap();
    let s = SessionRecord {
        id: "session-otr".into(),
        mode: Mode::Otr,
        created_at: T0 - 100,
        updated_at: T0 + 2,
    };
    store.finish(&first, &s, T0 + 2).await.unwrap();
    assert_eq!(
        store
            .begin(&attempt("wamid.E2", sender, "t2"), T0 + 5)
            .await
            .unwrap(),
        ready(Some(s), Progress::default())
    );
}

async fn idle_session_expires(store: &dyn SessionStore) {
    let sender = "4915550006";
    let first = attempt("wamid.F1", sender, "t1");
    store.begin(&first, T0).await.unwrap();
    let s = session("s1", Mode::Normal, T0);
    store.finish(&first, &s, T0).await.unwrap();
    // One second before expiry it is there…
    let second = attempt("wamid.F2", sender, "t2");
    assert_eq!(
        store.begin(&second, T0 + IDLE - 1).await.unwrap(),
        ready(Some(s.clone()), Progress::default())
    );
    // (abandon keeps the session as it was: updated_at stays T0)
    store
        .abandon(&second, &Progress::default(), &s, T0 + IDLE - 1)
        .await
        .unwrap();
    // …and at `updated_at + idle` it is gone.
    assert_eq!(
        store
            .begin(&attempt("wamid.F3", sender, "t3"), T0 + IDLE)
            .await
            .unwrap(),
        ready(None, Progress::default())
    );
}

async fn abandon_keeps_progress_and_releases_both(store: &dyn SessionStore) {
    let sender = "4915550007";
    let first = attempt("wamid.G", sender, "t1");
    store.begin(&first, T0).await.unwrap();
    let progress = Progress {
        parts: vec!["only part".into()],
        sent: 0,
        notice_sent: false,
        started: true,
    };
    let s = session("s7", Mode::Normal, T0);
    store.abandon(&first, &progress, &s, T0).await.unwrap();
    // Well within the old lease: both leases are free again.
    assert_eq!(
        store
            .begin(&attempt("wamid.G", sender, "t2"), T0 + 1)
            .await
            .unwrap(),
        ready(Some(s), progress)
    );
}

async fn abandon_without_parts_clears_stored_parts(store: &dyn SessionStore) {
    let sender = "4915550008";
    let first = attempt("wamid.H", sender, "t1");
    store.begin(&first, T0).await.unwrap();
    let with_parts = Progress {
        parts: vec!["a".into(), "b".into()],
        sent: 1,
        notice_sent: false,
        started: true,
    };
    store.save_progress(&first, &with_parts).await.unwrap();
    let without = Progress {
        parts: vec![],
        sent: 0,
        notice_sent: true,
        started: false,
    };
    let s = session("s8", Mode::Otr, T0);
    store.abandon(&first, &without, &s, T0).await.unwrap();
    assert_eq!(
        store
            .begin(&attempt("wamid.H", sender, "t2"), T0 + 1)
            .await
            .unwrap(),
        ready(Some(s), without)
    );
}

async fn finish_after_sender_takeover_keeps_the_new_lease(store: &dyn SessionStore) {
    let sender = "4915550009";
    let slow = attempt("wamid.I1", sender, "t1");
    store.begin(&slow, T0).await.unwrap();
    // The sender lease expires; another message of the sender takes it.
    let fast = attempt("wamid.I2", sender, "t2");
    assert_eq!(
        store.begin(&fast, T0 + LEASE).await.unwrap(),
        ready(None, Progress::default())
    );
    // The slow attempt still holds its own message: it may finish and store its session…
    let slow_session = session("slow", Mode::Normal, T0 + LEASE + 1);
    store
        .finish(&slow, &slow_session, T0 + LEASE + 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(&attempt("wamid.I1", sender, "t3"), T0 + LEASE + 2)
            .await
            .unwrap(),
        Begin::Done
    );
    // …but must not release the sender lease it no longer holds.
    assert_eq!(
        store
            .begin(&attempt("wamid.I3", sender, "t4"), T0 + LEASE + 2)
            .await
            .unwrap(),
        Begin::SenderBusy
    );
    let fast_session = session("fast", Mode::Otr, T0 + LEASE + 3);
    store
        .finish(&fast, &fast_session, T0 + LEASE + 3)
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(&attempt("wamid.I3", sender, "t5"), T0 + LEASE + 4)
            .await
            .unwrap(),
        ready(Some(fast_session), Progress::default())
    );
}

// ---------------------------------------------------------------- order

async fn an_older_waiting_message_goes_first(store: &dyn SessionStore) {
    let sender = "4915550031";
    let holder = attempt_at("wamid.O1", sender, "t1", T0);
    assert!(matches!(
        store.begin(&holder, T0).await.unwrap(),
        Begin::Ready { .. }
    ));
    // Two messages wait for the sender; the newer one asks first.
    let newer = attempt_at("wamid.O3", sender, "t3", T0 + 2);
    let older = attempt_at("wamid.O2", sender, "t2", T0 + 1);
    assert_eq!(
        store.begin(&newer, T0 + 3).await.unwrap(),
        Begin::SenderBusy
    );
    assert_eq!(
        store.begin(&older, T0 + 3).await.unwrap(),
        Begin::SenderBusy
    );
    let s = session("s1", Mode::Normal, T0 + 4);
    store.finish(&holder, &s, T0 + 4).await.unwrap();
    // The sender is free, but the older message waits: the newer one must not pass.
    assert_eq!(
        store.begin(&newer, T0 + 5).await.unwrap(),
        Begin::SenderBusy
    );
    // …and learns that the newer one waits behind it.
    assert_eq!(
        store.begin(&older, T0 + 5).await.unwrap(),
        waiting_behind(
            ready(Some(s.clone()), Progress::default()),
            &[("wamid.O3", T0 + 2)]
        )
    );
    store.finish(&older, &s, T0 + 6).await.unwrap();
    assert_eq!(
        store.begin(&newer, T0 + 7).await.unwrap(),
        ready(Some(s), Progress::default())
    );
}

async fn an_abandoned_message_holds_back_newer_ones(store: &dyn SessionStore) {
    let sender = "4915550032";
    let failed = attempt_at("wamid.P1", sender, "t1", T0);
    store.begin(&failed, T0).await.unwrap();
    let progress = Progress {
        parts: vec!["one".into(), "two".into()],
        sent: 1,
        notice_sent: false,
        started: true,
    };
    let s = session("s1", Mode::Normal, T0);
    store.abandon(&failed, &progress, &s, T0 + 1).await.unwrap();
    let newer = attempt_at("wamid.P2", sender, "t2", T0 + 2);
    assert_eq!(
        store.begin(&newer, T0 + 2).await.unwrap(),
        Begin::SenderBusy
    );
    // Meta redelivers the failed message: it goes first and resumes.
    let again = attempt_at("wamid.P1", sender, "t3", T0);
    assert_eq!(
        store.begin(&again, T0 + 10).await.unwrap(),
        waiting_behind(ready(Some(s.clone()), progress), &[("wamid.P2", T0 + 2)])
    );
    store.finish(&again, &s, T0 + 11).await.unwrap();
    assert!(matches!(
        store.begin(&newer, T0 + 12).await.unwrap(),
        Begin::Ready { .. }
    ));
}

async fn a_waiting_message_stops_holding_back_after_the_order_hold(store: &dyn SessionStore) {
    let hold = whatsapp_webhook::state::DEFAULT_ORDER_HOLD.as_secs();
    let sender = "4915550033";
    let failed = attempt_at("wamid.Q1", sender, "t1", T0);
    store.begin(&failed, T0).await.unwrap();
    let s = session("s1", Mode::Normal, T0);
    store
        .abandon(&failed, &Progress::default(), &s, T0 + 1)
        .await
        .unwrap();
    // Meta never comes back with it: once it is `hold` old it no longer blocks.
    let newer = attempt_at("wamid.Q2", sender, "t2", T0 + hold - 2);
    assert_eq!(
        store.begin(&newer, T0 + hold - 1).await.unwrap(),
        Begin::SenderBusy
    );
    assert!(matches!(
        store.begin(&newer, T0 + hold).await.unwrap(),
        Begin::Ready { .. }
    ));
}

async fn merged_messages_are_done_with_their_turn(store: &dyn SessionStore) {
    let sender = "4915550034";
    let merged = [
        Merged {
            message_id: "wamid.R2",
            timestamp: T0 + 1,
        },
        Merged {
            message_id: "wamid.R3",
            timestamp: T0 + 2,
        },
    ];
    let first = attempt_at("wamid.R1", sender, "t1", T0);
    store.begin(&first, T0 + 3).await.unwrap();
    for m in &merged {
        let claim = attempt_at(m.message_id, sender, "t1", m.timestamp);
        assert_eq!(
            store.claim(&claim, T0 + 3).await.unwrap(),
            Claim::Claimed(Progress::default())
        );
        // Held: another delivery of it is busy.
        let other = attempt_at(m.message_id, sender, "x", m.timestamp);
        assert_eq!(store.claim(&other, T0 + 3).await.unwrap(), Claim::Busy);
    }
    let turn = Attempt {
        merged: &merged,
        ..first
    };
    store
        .finish(&turn, &session("s1", Mode::Normal, T0 + 4), T0 + 4)
        .await
        .unwrap();
    for m in &merged {
        let redelivery = attempt_at(m.message_id, sender, "t9", m.timestamp);
        assert_eq!(store.begin(&redelivery, T0 + 5).await.unwrap(), Begin::Done);
    }
}

/// Begin `first` and claim the `merged` messages under its token: a combined turn.
async fn begin_combined<'a>(
    store: &dyn SessionStore,
    first: Attempt<'a>,
    merged: &'a [Merged<'a>],
    now: u64,
) -> Attempt<'a> {
    assert!(matches!(
        store.begin(&first, now).await.unwrap(),
        Begin::Ready { .. }
    ));
    for m in merged {
        let claim = attempt_at(m.message_id, first.sender, first.token, m.timestamp);
        assert_eq!(
            store.claim(&claim, now).await.unwrap(),
            Claim::Claimed(Progress::default())
        );
    }
    Attempt { merged, ..first }
}

async fn a_combined_turn_that_sent_nothing_releases_its_messages(store: &dyn SessionStore) {
    let sender = "4915550035";
    let merged = [Merged {
        message_id: "wamid.S2",
        timestamp: T0 + 1,
    }];
    let first = attempt_at("wamid.S1", sender, "t1", T0);
    let turn = begin_combined(store, first, &merged, T0 + 2).await;
    // The engine never took the turn, and the user was not told (a queue retries).
    let notice = Progress::default();
    let s = session("s1", Mode::Normal, T0 + 2);
    store.abandon(&turn, &notice, &s, T0 + 3).await.unwrap();
    // Both come back; the second waits for the first.
    let second = attempt_at("wamid.S2", sender, "t2", T0 + 1);
    assert_eq!(
        store.begin(&second, T0 + 4).await.unwrap(),
        Begin::SenderBusy
    );
    let again = attempt_at("wamid.S1", sender, "t3", T0);
    assert_eq!(
        store.begin(&again, T0 + 5).await.unwrap(),
        waiting_behind(
            ready(Some(s.clone()), notice.clone()),
            &[("wamid.S2", T0 + 1)]
        )
    );
    store.finish(&again, &s, T0 + 6).await.unwrap();
    assert_eq!(
        store.begin(&second, T0 + 7).await.unwrap(),
        ready(Some(s), notice)
    );
}

async fn a_combined_turn_cut_short_keeps_the_reply_on_its_first_message(store: &dyn SessionStore) {
    let sender = "4915550036";
    let merged = [Merged {
        message_id: "wamid.U2",
        timestamp: T0 + 1,
    }];
    let first = attempt_at("wamid.U1", sender, "t1", T0);
    let turn = begin_combined(store, first, &merged, T0 + 2).await;
    let progress = Progress {
        parts: vec!["a".into(), "b".into()],
        sent: 1,
        notice_sent: false,
        started: true,
    };
    let s = session("s1", Mode::Normal, T0 + 2);
    store.abandon(&turn, &progress, &s, T0 + 3).await.unwrap();
    // Part of the combined reply went out: the second message is answered by it.
    assert_eq!(
        store
            .begin(&attempt_at("wamid.U2", sender, "t2", T0 + 1), T0 + 4)
            .await
            .unwrap(),
        Begin::Done
    );
    assert_eq!(
        store
            .begin(&attempt_at("wamid.U1", sender, "t3", T0), T0 + 5)
            .await
            .unwrap(),
        ready(Some(s), progress)
    );
}

/// M2 waits; M1 (older) takes the sender and answers M2 in the same turn, which ends
/// with `settle`; afterwards no stale entry of M2 may hold back the newer M3.
async fn merged_waiting_message_leaves_the_line(
    store: &dyn SessionStore,
    sender: &str,
    settle: Option<Progress>,
) {
    let holder = attempt_at("wamid.V0", sender, "t0", T0);
    store.begin(&holder, T0).await.unwrap();
    let m2 = attempt_at("wamid.V2", sender, "t2", T0 + 2);
    assert_eq!(store.begin(&m2, T0 + 2).await.unwrap(), Begin::SenderBusy);
    let s = session("s1", Mode::Normal, T0 + 3);
    store.finish(&holder, &s, T0 + 3).await.unwrap();
    let m1 = attempt_at("wamid.V1", sender, "t1", T0 + 1);
    assert_eq!(
        store.begin(&m1, T0 + 4).await.unwrap(),
        waiting_behind(
            ready(Some(s.clone()), Progress::default()),
            &[("wamid.V2", T0 + 2)]
        )
    );
    let claim = attempt_at("wamid.V2", sender, "t1", T0 + 2);
    assert!(matches!(
        store.claim(&claim, T0 + 4).await.unwrap(),
        Claim::Claimed(_)
    ));
    let merged = [Merged {
        message_id: "wamid.V2",
        timestamp: T0 + 2,
    }];
    let turn = Attempt {
        merged: &merged,
        ..m1
    };
    match settle {
        None => store.finish(&turn, &s, T0 + 5).await.unwrap(),
        Some(progress) => {
            store.abandon(&turn, &progress, &s, T0 + 5).await.unwrap();
            // M1 comes back and finishes its reply.
            let again = attempt_at("wamid.V1", sender, "t4", T0 + 1);
            assert!(matches!(
                store.begin(&again, T0 + 6).await.unwrap(),
                Begin::Ready { .. }
            ));
            store.finish(&again, &s, T0 + 7).await.unwrap();
        }
    }
    let m3 = attempt_at("wamid.V3", sender, "t3", T0 + 8);
    assert_eq!(
        store.begin(&m3, T0 + 8).await.unwrap(),
        ready(Some(s), Progress::default()),
        "nothing waits any more"
    );
}

async fn a_merged_message_that_waited_leaves_the_line_when_answered(store: &dyn SessionStore) {
    merged_waiting_message_leaves_the_line(store, "4915550037", None).await;
}

async fn a_merged_message_that_waited_leaves_the_line_when_its_reply_is_under_way(
    store: &dyn SessionStore,
) {
    let cut_short = Progress {
        parts: vec!["a".into(), "b".into()],
        sent: 1,
        notice_sent: false,
        started: true,
    };
    merged_waiting_message_leaves_the_line(store, "4915550038", Some(cut_short)).await;
}

/// Once the user was told a message failed, it no longer holds back newer ones
/// (merged ones included), though it stays open for a retry.
async fn a_failure_the_user_was_told_of_holds_nobody_back(store: &dyn SessionStore) {
    let sender = "4915550039";
    let merged = [Merged {
        message_id: "wamid.T2",
        timestamp: T0 + 1,
    }];
    let first = attempt_at("wamid.T1", sender, "t1", T0);
    let turn = begin_combined(store, first, &merged, T0 + 2).await;
    let told = Progress {
        notice_sent: true,
        ..Progress::default()
    };
    let s = session("s1", Mode::Normal, T0 + 2);
    store.abandon(&turn, &told, &s, T0 + 3).await.unwrap();
    let newer = attempt_at("wamid.T3", sender, "t2", T0 + 3);
    assert_eq!(
        store.begin(&newer, T0 + 4).await.unwrap(),
        ready(Some(s.clone()), Progress::default()),
        "not held back by the failures the user was told of"
    );
    store.finish(&newer, &s, T0 + 5).await.unwrap();
    let retry = attempt_at("wamid.T1", sender, "t3", T0);
    assert_eq!(
        store.begin(&retry, T0 + 6).await.unwrap(),
        ready(Some(s), told),
        "still open for a retry, with the notice remembered"
    );
}

/// A claim for a turn records that it began, for every later attempt but not for
/// the attempt itself; a claim handed back because the sender is busy un-begins it.
async fn a_turn_begins_with_its_claim(store: &dyn SessionStore) {
    let sender = "4915550040";
    let turn = |id, token| Attempt {
        starts_turn: true,
        ..attempt_at(id, sender, token, T0)
    };
    let holder = turn("wamid.V1", "t1");
    let Begin::Ready { progress, .. } = store.begin(&holder, T0).await.unwrap() else {
        panic!("first claim");
    };
    assert!(!progress.started, "not begun before this attempt");
    // The same attempt claiming again (an SDK retry of its claim) sees no earlier turn.
    assert_eq!(
        store.claim(&holder, T0).await.unwrap(),
        Claim::Claimed(Progress::default())
    );
    // A newer message meets the busy sender: its claim is handed back un-begun.
    let newer = Attempt {
        timestamp: T0 + 1,
        ..turn("wamid.V2", "t2")
    };
    assert_eq!(
        store.begin(&newer, T0 + 1).await.unwrap(),
        Begin::SenderBusy
    );
    // The holder dies; after its lease, the next attempt finds its turn begun.
    let later = turn("wamid.V1", "t3");
    let Begin::Ready { progress, .. } = store.begin(&later, T0 + LEASE + 1).await.unwrap() else {
        panic!("after the lease");
    };
    assert!(progress.started && progress.is_lost(), "{progress:?}");
    store
        .finish(&later, &session("s1", Mode::Normal, T0), T0 + LEASE + 2)
        .await
        .unwrap();
    let newer_again = Attempt {
        timestamp: T0 + 1,
        ..turn("wamid.V2", "t4")
    };
    let Begin::Ready { progress, .. } = store.begin(&newer_again, T0 + LEASE + 3).await.unwrap()
    else {
        panic!("the newer message is next");
    };
    assert!(progress.is_fresh(), "handed back un-begun: {progress:?}");
}

/// `sender` answered one message at `at` and keeps `session`.
async fn with_session(
    store: &dyn SessionStore,
    sender: &str,
    id: &str,
    s: &SessionRecord,
    at: u64,
) {
    let a = attempt(id, sender, id);
    assert!(matches!(
        store.begin(&a, at).await.unwrap(),
        Begin::Ready { .. }
    ));
    store.finish(&a, s, at).await.unwrap();
}

async fn a_session_moves_to_the_new_number(store: &dyn SessionStore) {
    let (old, new) = ("4915550030", "4915550031");
    assert_eq!(
        store.move_session(old, new, T0).await.unwrap(),
        SessionMove::NothingToMove,
        "no session yet"
    );
    let s = session("s-move", Mode::Otr, T0);
    with_session(store, old, "wamid.MV1", &s, T0).await;
    assert_eq!(
        store.move_session(old, old, T0 + 1).await.unwrap(),
        SessionMove::NothingToMove,
        "same key"
    );
    assert_eq!(
        store.move_session(old, new, T0 + 5).await.unwrap(),
        SessionMove::Moved
    );
    // A redelivery of the number change finds nothing left to move.
    assert_eq!(
        store.move_session(old, new, T0 + 6).await.unwrap(),
        SessionMove::NothingToMove
    );
    // The new number continues the session (id, mode, timestamps); the old one has none.
    assert_eq!(
        store
            .begin(&attempt("wamid.MV2", new, "t2"), T0 + 7)
            .await
            .unwrap(),
        ready(Some(s), Progress::default())
    );
    assert_eq!(
        store
            .begin(&attempt("wamid.MV3", old, "t3"), T0 + 7)
            .await
            .unwrap(),
        ready(None, Progress::default())
    );
}

async fn a_moved_session_never_replaces_a_live_one(store: &dyn SessionStore) {
    let (old, new) = ("4915550032", "4915550033");
    let s_old = session("s-old", Mode::Normal, T0);
    let s_new = session("s-new", Mode::Normal, T0 + 1);
    with_session(store, old, "wamid.MV4", &s_old, T0).await;
    with_session(store, new, "wamid.MV5", &s_new, T0 + 1).await;
    assert_eq!(
        store.move_session(old, new, T0 + 2).await.unwrap(),
        SessionMove::Kept
    );
    assert_eq!(
        store
            .begin(&attempt("wamid.MV6", new, "t6"), T0 + 3)
            .await
            .unwrap(),
        ready(Some(s_new), Progress::default())
    );
    assert_eq!(
        store
            .begin(&attempt("wamid.MV7", old, "t7"), T0 + 3)
            .await
            .unwrap(),
        ready(Some(s_old), Progress::default()),
        "both stay as they were"
    );
}

async fn expired_sessions_neither_move_nor_stay_in_the_way(store: &dyn SessionStore) {
    let (old, new) = ("4915550034", "4915550035");
    with_session(
        store,
        old,
        "wamid.MV8",
        &session("s1", Mode::Normal, T0),
        T0,
    )
    .await;
    assert_eq!(
        store.move_session(old, new, T0 + IDLE).await.unwrap(),
        SessionMove::NothingToMove,
        "the old session expired"
    );
    // The new number's session expired; the old number's next one is live.
    let (old, new) = ("4915550036", "4915550037");
    with_session(
        store,
        new,
        "wamid.MV9",
        &session("s2", Mode::Normal, T0),
        T0,
    )
    .await;
    let live = session("s3", Mode::Normal, T0 + IDLE);
    with_session(store, old, "wamid.MV10", &live, T0 + IDLE).await;
    assert_eq!(
        store.move_session(old, new, T0 + IDLE + 1).await.unwrap(),
        SessionMove::Moved
    );
    assert_eq!(
        store
            .begin(&attempt("wamid.MV11", new, "t11"), T0 + IDLE + 2)
            .await
            .unwrap(),
        ready(Some(live), Progress::default())
    );
}

async fn a_move_leaves_the_new_numbers_lease_alone(store: &dyn SessionStore) {
    let (old, new) = ("4915550038", "4915550039");
    let s = session("s-lease", Mode::Normal, T0);
    with_session(store, old, "wamid.MV12", &s, T0).await;
    // The new number's first message is being answered when the change arrives.
    let first = attempt("wamid.MV13", new, "t13");
    assert_eq!(
        store.begin(&first, T0 + 1).await.unwrap(),
        ready(None, Progress::default())
    );
    assert_eq!(
        store.move_session(old, new, T0 + 2).await.unwrap(),
        SessionMove::Moved
    );
    assert_eq!(
        store
            .begin(&attempt("wamid.MV14", new, "t14"), T0 + 3)
            .await
            .unwrap(),
        Begin::SenderBusy,
        "the lease is still held"
    );
    store.finish(&first, &s, T0 + 4).await.unwrap();
}

macro_rules! contract {
    ($($scenario:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(&super::memory()).await;
                }
            )*
        }
        mod dynamo_store {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let env = super::dynamo().await;
                    super::$scenario(&env.store).await;
                }
            )*
        }
    };
}

contract!(
    first_begin_is_ready_and_finished_message_is_done,
    redelivery_while_held_is_message_busy,
    expired_lease_resumes_with_saved_progress,
    busy_sender_hands_the_message_back,
    finished_session_comes_back,
    idle_session_expires,
    abandon_keeps_progress_and_releases_both,
    abandon_without_parts_clears_stored_parts,
    finish_after_sender_takeover_keeps_the_new_lease,
    an_older_waiting_message_goes_first,
    an_abandoned_message_holds_back_newer_ones,
    a_waiting_message_stops_holding_back_after_the_order_hold,
    merged_messages_are_done_with_their_turn,
    a_combined_turn_that_sent_nothing_releases_its_messages,
    a_failure_the_user_was_told_of_holds_nobody_back,
    a_turn_begins_with_its_claim,
    a_combined_turn_cut_short_keeps_the_reply_on_its_first_message,
    a_merged_message_that_waited_leaves_the_line_when_answered,
    a_merged_message_that_waited_leaves_the_line_when_its_reply_is_under_way,
    a_session_moves_to_the_new_number,
    a_moved_session_never_replaces_a_live_one,
    expired_sessions_neither_move_nor_stay_in_the_way,
    a_move_leaves_the_new_numbers_lease_alone,
);

// ---------------------------------------------------------------- DynamoDB only

/// Every string anywhere in the table, keys included.
async fn all_strings(env: &Dynamo) -> Vec<String> {
    fn collect(value: &AttributeValue, out: &mut Vec<String>) {
        match value {
            AttributeValue::S(s) | AttributeValue::N(s) => out.push(s.clone()),
            AttributeValue::Ss(v) | AttributeValue::Ns(v) => out.extend(v.iter().cloned()),
            AttributeValue::L(list) => list.iter().for_each(|v| collect(v, out)),
            AttributeValue::M(map) => map.iter().for_each(|(k, v)| {
                out.push(k.clone());
                collect(v, out);
            }),
            _ => {}
        }
    }
    let scan = env
        .client
        .scan()
        .table_name(&env.table)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(
        scan.last_evaluated_key().is_none(),
        "scan must see everything"
    );
    let mut out = Vec::new();
    for item in scan.items() {
        for (name, value) in item {
            out.push(name.clone());
            collect(value, &mut out);
        }
    }
    out
}

#[tokio::test]
async fn stored_items_hold_no_reply_text_and_no_wamid() {
    let env = dynamo().await;
    let store = &env.store;
    let wamid = "wamid.HBgLNDkxNTU1MDAwMTAVAgASGBQzQUE5";
    let sender = "4915550010";
    let secret = "secret otr text";

    // Normal mode: the pending reply is stored, then dropped when the message is done.
    let normal = attempt(wamid, sender, "t1");
    store.begin(&normal, T0).await.unwrap();
    let pending = Progress {
        parts: vec![format!("{secret} 1"), format!("{secret} 2")],
        sent: 1,
        notice_sent: false,
        started: true,
    };
    store.save_progress(&normal, &pending).await.unwrap();
    let strings = all_strings(&env).await;
    assert!(
        strings.iter().any(|s| s.contains(secret)),
        "the pending normal reply must be stored (guards this test's own scan)"
    );
    store
        .finish(&normal, &session("s1", Mode::Normal, T0), T0)
        .await
        .unwrap();

    // OTR: progress without parts, as the handler saves it.
    let otr_wamid = "wamid.HBgLNDkxNTU1MDAwMTAVAgASGBQzQUE6";
    let otr = attempt(otr_wamid, sender, "t2");
    store.begin(&otr, T0 + 1).await.unwrap();
    let otr_progress = Progress {
        parts: vec![],
        sent: 2,
        notice_sent: false,
        started: true,
    };
    store.save_progress(&otr, &otr_progress).await.unwrap();
    store
        .finish(&otr, &session("s1", Mode::Otr, T0 + 1), T0 + 1)
        .await
        .unwrap();

    let strings = all_strings(&env).await;
    assert!(
        strings.iter().any(|s| s.starts_with("msg#")),
        "scan found the message items"
    );
    for s in &strings {
        assert!(!s.contains(secret), "reply text left in the table: {s}");
        assert!(!s.contains("wamid"), "message id stored in the table: {s}");
        assert!(
            !s.contains("HBgLNDkx"),
            "message id stored in the table: {s}"
        );
    }
}

#[tokio::test]
async fn create_table_is_idempotent_and_enables_ttl() {
    let env = dynamo().await;
    assert!(!create_table(&env.client, &env.table).await.unwrap());
    let ttl = env
        .client
        .describe_time_to_live()
        .table_name(&env.table)
        .send()
        .await
        .unwrap();
    let desc = ttl.time_to_live_description().expect("TTL description");
    assert!(matches!(
        desc.time_to_live_status(),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ));
    assert_eq!(desc.attribute_name(), Some("ttl"));
    let table = env
        .client
        .describe_table()
        .table_name(&env.table)
        .send()
        .await
        .unwrap();
    let keys = table.table().expect("table").key_schema();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].attribute_name(), "pk");
    assert_eq!(keys[0].key_type(), &KeyType::Hash);
}

#[tokio::test]
async fn items_carry_ttl_for_cleanup() {
    let env = dynamo().await;
    let a = attempt("wamid.TTL", "4915550011", "t1");
    env.store.begin(&a, T0).await.unwrap();
    env.store
        .finish(&a, &session("s", Mode::Normal, T0 + 5), T0 + 5)
        .await
        .unwrap();
    let scan = env
        .client
        .scan()
        .table_name(&env.table)
        .send()
        .await
        .unwrap();
    let mut ttls = Vec::new();
    for item in scan.items() {
        let pk = match item.get("pk") {
            Some(AttributeValue::S(pk)) => pk.clone(),
            other => panic!("pk: {other:?}"),
        };
        let ttl = match item.get("ttl") {
            Some(AttributeValue::N(n)) => n.parse::<u64>().unwrap(),
            other => panic!("ttl of {pk}: {other:?}"),
        };
        ttls.push((pk.split('#').next().unwrap_or_default().to_string(), ttl));
        // A released sender keeps no lease attributes.
        if pk.starts_with("sender#") {
            assert!(!item.contains_key("holder") && !item.contains_key("lease_until"));
        }
    }
    ttls.sort();
    assert_eq!(
        ttls,
        vec![
            ("msg".to_string(), T0 + 10 * 24 * 3600),
            ("sender".to_string(), T0 + 5 + IDLE + LEASE),
        ]
    );
}

#[tokio::test]
async fn unreadable_item_is_corrupt() {
    let env = dynamo().await;
    env.client
        .put_item()
        .table_name(&env.table)
        .item("pk", AttributeValue::S("sender#4915550012".into()))
        .item("session_id", AttributeValue::S("s".into()))
        .item("mode", AttributeValue::S("normal".into()))
        .item("created_at", AttributeValue::S("yesterday".into()))
        .item("updated_at", AttributeValue::N(T0.to_string()))
        .send()
        .await
        .unwrap();
    let result = env
        .store
        .begin(&attempt("wamid.J", "4915550012", "t1"), T0)
        .await;
    assert!(
        matches!(&result, Err(StateError::Corrupt(m)) if m.contains("created_at")),
        "{result:?}"
    );
}

#[tokio::test]
async fn request_counts_per_operation() {
    let moto = crate::moto::shared();
    let counter = crate::moto::CountRequests::default();
    let client = Client::from_conf(
        crate::moto::config_builder(&moto.endpoint)
            .interceptor(counter.clone())
            .build(),
    );
    let env = dynamo_with(moto, client).await;
    let count = || counter.0.swap(0, Ordering::SeqCst);
    count();

    let sender = "4915550013";
    let a = attempt("wamid.K1", sender, "t1");
    env.store.begin(&a, T0).await.unwrap();
    assert_eq!(count(), 2, "begin");
    env.store
        .save_progress(&a, &Progress::default())
        .await
        .unwrap();
    assert_eq!(count(), 1, "save_progress");

    let b = attempt("wamid.K2", sender, "t2");
    assert_eq!(
        env.store.begin(&b, T0 + 1).await.unwrap(),
        Begin::SenderBusy
    );
    assert_eq!(
        count(),
        4,
        "begin with a busy sender: claim, lease, join the waiting list, release"
    );

    env.store
        .finish(&a, &session("s", Mode::Normal, T0), T0)
        .await
        .unwrap();
    assert_eq!(count(), 1, "finish");

    assert_eq!(env.store.begin(&a, T0 + 2).await.unwrap(), Begin::Done);
    assert_eq!(count(), 1, "begin of a done message");

    let b = attempt("wamid.K2", sender, "t5");
    assert!(matches!(
        env.store.begin(&b, T0 + 2).await.unwrap(),
        Begin::Ready { .. }
    ));
    assert_eq!(
        count(),
        3,
        "begin of a waiting message: claim, lease refused, lease with the list rewritten"
    );
    env.store
        .finish(&b, &session("s", Mode::Normal, T0 + 2), T0 + 2)
        .await
        .unwrap();
    count();

    let c = attempt("wamid.K3", sender, "t3");
    env.store.begin(&c, T0 + 3).await.unwrap();
    env.store
        .finish(&c, &session("s", Mode::Normal, T0 + 3), T0 + 3)
        .await
        .unwrap();
    assert_eq!(count(), 3, "an ordinary message: begin + finish");

    let d = attempt("wamid.K4", sender, "t4");
    env.store.begin(&d, T0 + 4).await.unwrap();
    env.store
        .abandon(
            &d,
            &Progress::default(),
            &session("s", Mode::Normal, T0 + 4),
            T0 + 4,
        )
        .await
        .unwrap();
    assert_eq!(count(), 3, "begin + abandon");

    let new = "4915550014";
    assert_eq!(
        env.store.move_session(sender, new, T0 + 5).await.unwrap(),
        SessionMove::Moved
    );
    assert_eq!(
        count(),
        2,
        "move_session: read the old session, one transaction"
    );
    assert_eq!(
        env.store.move_session(sender, new, T0 + 6).await.unwrap(),
        SessionMove::NothingToMove
    );
    assert_eq!(count(), 1, "move_session with nothing to move: the read");
}

fn production_store(endpoint: &str) -> DynamoStore {
    DynamoStore::new(
        Client::from_conf(crate::moto::production_config_builder(endpoint).build()),
        "unreachable".into(),
        Duration::from_secs(LEASE),
        Duration::from_secs(IDLE),
    )
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let endpoint = format!("http://127.0.0.1:{}", crate::moto::free_port());
    let started = Instant::now();
    let result = production_store(&endpoint)
        .begin(&attempt("wamid.L", "4915550014", "t1"), T0)
        .await;
    assert!(
        matches!(result, Err(StateError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let client = Client::from_conf(crate::moto::production_config_builder(&endpoint).build());
    let result = create_table(&client, "unreachable").await;
    assert!(
        matches!(result, Err(StateError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn silent_endpoint_times_out_as_unavailable() {
    // Connections complete in the kernel backlog, but nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let result = production_store(&endpoint)
        .begin(&attempt("wamid.L", "4915550014", "t1"), T0)
        .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&result, Err(StateError::Unavailable(m)) if m.contains("timed out")),
        "{result:?}"
    );
    // The 8 s operation timeout bounds the whole call, retries included.
    assert!(elapsed < Duration::from_secs(12), "{elapsed:?}");
    drop(silent);
}

#[tokio::test]
async fn missing_table_is_unavailable_not_corrupt() {
    let moto = crate::moto::shared();
    let store = DynamoStore::new(
        crate::moto::client(&moto.endpoint),
        "no-such-table".into(),
        Duration::from_secs(LEASE),
        Duration::from_secs(IDLE),
    );
    let result = store
        .begin(&attempt("wamid.M", "4915550015", "t1"), T0)
        .await;
    assert!(
        matches!(&result, Err(StateError::Unavailable(m)) if m.contains("ResourceNotFound")),
        "{result:?}"
    );
}
