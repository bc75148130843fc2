//! The memory store's bounds: by count, by age, and never at the cost of a held or
//! unsettled message or of its sender's order. (Its semantics otherwise are the
//! contract tests in `tests/it/dynamodb_store.rs`, run against both stores.)

use super::*;
use crate::domain::Mode;

const T0: u64 = 1_700_000_000;
const LEASE: u64 = 30;
const IDLE: u64 = 3600;
const DAY: u64 = 24 * 3600;

fn store() -> MemoryStore {
    MemoryStore::new(Duration::from_secs(LEASE), Duration::from_secs(IDLE))
}

fn small(messages: usize, senders: usize) -> MemoryStore {
    store().with_limits(MemoryLimits {
        messages,
        senders,
        ..MemoryLimits::default()
    })
}

fn attempt<'a>(message_id: &'a str, sender: &'a str, token: &'a str, ts: u64) -> Attempt<'a> {
    Attempt {
        message_id,
        sender,
        token,
        timestamp: ts,
        starts_turn: false,
        merged: &[],
    }
}

fn session(updated_at: u64) -> SessionRecord {
    SessionRecord {
        id: "s".into(),
        mode: Mode::Normal,
        created_at: T0,
        updated_at,
    }
}

/// Answer message `id` of `sender` at `now`.
async fn settle(store: &MemoryStore, id: &str, sender: &str, now: u64) {
    let a = attempt(id, sender, "t", now);
    assert!(matches!(
        store.begin(&a, now).await.unwrap(),
        Begin::Ready { .. }
    ));
    store.finish(&a, &session(now), now).await.unwrap();
}

/// Whether a redelivery of `id` at `now` is still known as answered.
async fn remembered(store: &MemoryStore, id: &str, sender: &str, now: u64) -> bool {
    let again = attempt(id, sender, "redelivery", now);
    store.begin(&again, now).await.unwrap() == Begin::Done
}

#[tokio::test]
async fn settled_messages_beyond_the_cap_stay_at_or_under_it() {
    let cap = 1_000;
    let store = small(cap, 100);
    for i in 0..5_000u64 {
        settle(&store, &format!("wamid.{i}"), "4915550001", T0 + i).await;
        assert!(
            store.entries().messages <= cap,
            "after {i}: {:?}",
            store.entries()
        );
    }
    // The oldest went first; the newest are still deduplicated.
    assert!(remembered(&store, "wamid.4999", "4915550001", T0 + 5_000).await);
    assert!(!remembered(&store, "wamid.0", "4915550001", T0 + 5_001).await);
}

#[tokio::test]
async fn settled_messages_are_forgotten_after_the_retention() {
    let store = store();
    settle(&store, "wamid.old", "4915550002", T0).await;
    let retention = SETTLED_RETENTION.as_secs();
    // Any later write sweeps (at most once a minute of the callers' clock).
    settle(&store, "wamid.a", "4915550003", T0 + retention - 1).await;
    assert!(remembered(&store, "wamid.old", "4915550002", T0 + retention - 1).await);
    settle(&store, "wamid.b", "4915550003", T0 + retention + 60).await;
    assert_eq!(store.entries().messages, 2, "wamid.a and wamid.b");
    // What is lost: a redelivery this late is taken for a new message.
    let late = attempt("wamid.old", "4915550002", "late", T0);
    assert!(matches!(
        store.begin(&late, T0 + retention + 61).await.unwrap(),
        Begin::Ready { .. }
    ));
}

#[tokio::test]
async fn settled_messages_are_kept_at_least_the_order_hold() {
    let store = store().with_order_hold(Duration::from_secs(3 * DAY));
    settle(&store, "wamid.old", "4915550004", T0).await;
    settle(&store, "wamid.a", "4915550005", T0 + 2 * DAY).await;
    assert!(remembered(&store, "wamid.old", "4915550004", T0 + 2 * DAY).await);
    settle(&store, "wamid.b", "4915550005", T0 + 3 * DAY).await;
    assert!(!remembered(&store, "wamid.old", "4915550004", T0 + 3 * DAY).await);
}

#[tokio::test]
async fn held_and_unsettled_messages_are_never_evicted_and_keep_their_order() {
    let cap = 8;
    let store = small(cap, 100);
    let sender = "4915550006";
    // An older message failed with part of its reply out; a newer one waits behind it.
    let failed = attempt("wamid.failed", sender, "t1", T0);
    store.begin(&failed, T0).await.unwrap();
    let progress = Progress {
        parts: vec!["one".into(), "two".into()],
        sent: 1,
        notice_sent: false,
        started: true,
    };
    store
        .abandon(&failed, &progress, &session(T0), T0)
        .await
        .unwrap();
    let newer = attempt("wamid.newer", sender, "t2", T0 + 1);
    assert_eq!(
        store.begin(&newer, T0 + 2).await.unwrap(),
        Begin::SenderBusy
    );
    // A message held by a running attempt.
    let held = attempt("wamid.held", "4915550007", "t3", T0 + 3);
    assert!(matches!(
        store.begin(&held, T0 + 3).await.unwrap(),
        Begin::Ready { .. }
    ));
    // Far more settled messages than the cap, within the lease and the order hold.
    for i in 0..100u64 {
        settle(&store, &format!("wamid.{i}"), "4915550008", T0 + 4).await;
        assert!(store.entries().messages <= cap, "{:?}", store.entries());
    }
    let retry = attempt("wamid.held", "4915550007", "t4", T0 + 3);
    assert_eq!(
        store.begin(&retry, T0 + 5).await.unwrap(),
        Begin::MessageBusy
    );
    store.finish(&held, &session(T0 + 5), T0 + 5).await.unwrap();
    // The newer message still waits; the failed one resumes where it stopped.
    let newer_again = attempt("wamid.newer", sender, "t5", T0 + 1);
    assert_eq!(
        store.begin(&newer_again, T0 + 6).await.unwrap(),
        Begin::SenderBusy
    );
    let resumed = attempt("wamid.failed", sender, "t6", T0);
    assert_eq!(
        store.begin(&resumed, T0 + 7).await.unwrap(),
        Begin::Ready {
            session: Some(session(T0)),
            progress,
            waiting: vec![waiting_entry("wamid.newer", T0 + 1)],
        }
    );
}

#[tokio::test]
async fn an_unsettled_message_outlives_the_settled_retention_until_meta_gives_up() {
    let store = store();
    let failed = attempt("wamid.failed", "4915550009", "t1", T0);
    store.begin(&failed, T0).await.unwrap();
    let progress = Progress {
        parts: vec!["one".into(), "two".into()],
        sent: 1,
        ..Progress::default()
    };
    store
        .abandon(&failed, &progress, &session(T0), T0)
        .await
        .unwrap();
    settle(&store, "wamid.a", "4915550010", T0 + 2 * DAY).await;
    assert_eq!(store.entries().messages, 2, "the failed one is kept");
    // Past Meta's redelivery window (DEDUP_RETENTION) it is forgotten.
    let after = T0 + DEDUP_RETENTION.as_secs();
    settle(&store, "wamid.b", "4915550010", after).await;
    assert_eq!(store.entries().messages, 1, "{:?}", store.entries());
}

#[tokio::test]
async fn a_held_message_is_kept_past_every_age() {
    // A lease longer than the retention (never so in practice): still held, still kept.
    let store = MemoryStore::new(Duration::from_secs(5 * DAY), Duration::from_secs(IDLE));
    let held = attempt("wamid.held", "4915550011", "t1", T0);
    store.begin(&held, T0).await.unwrap();
    settle(&store, "wamid.a", "4915550012", T0 + 4 * DAY).await;
    let retry = attempt("wamid.held", "4915550011", "t2", T0);
    assert_eq!(
        store.begin(&retry, T0 + 4 * DAY).await.unwrap(),
        Begin::MessageBusy
    );
}

#[tokio::test]
async fn expired_sessions_and_user_links_are_forgotten() {
    let store = store();
    settle(&store, "wamid.a", "4915550013", T0).await;
    store.link_user("US.1", "4915550013", T0).await.unwrap();
    assert_eq!(
        store.entries(),
        Entries {
            messages: 1,
            senders: 1,
            users: 1
        }
    );
    settle(&store, "wamid.b", "4915550014", T0 + IDLE - 1).await;
    assert_eq!(store.entries().senders, 2, "the session is still live");
    assert_eq!(store.entries().users, 1);
    // The next sweep comes a minute (SWEEP_INTERVAL_SECS) after the last.
    settle(&store, "wamid.c", "4915550014", T0 + IDLE + LEASE + 60).await;
    assert_eq!(store.entries().senders, 1, "{:?}", store.entries());
    assert_eq!(store.entries().users, 0);
    assert_eq!(store.session("4915550013"), None);
    assert_eq!(store.linked_sender("US.1").await.unwrap(), None);
}

#[tokio::test]
async fn idle_senders_beyond_the_cap_go_oldest_session_first() {
    let cap = 8;
    let store = small(1_000, cap);
    for i in 0..50u64 {
        settle(
            &store,
            &format!("wamid.{i}"),
            &format!("49155500{i:02}"),
            T0 + i,
        )
        .await;
        assert!(store.entries().senders <= cap, "{:?}", store.entries());
    }
    assert!(store.session("4915550049").is_some());
    assert!(store.session("4915550000").is_none());
}

#[test]
fn evict_oldest_keeps_the_unevictable_and_frees_an_eighth() {
    let mut map: HashMap<String, (bool, u64)> = (0..20u64)
        .map(|i| (format!("k{i}"), (i % 2 == 0, i)))
        .collect();
    // 10 evictable (even), 10 not; cap 16 → down to 14 by evicting the 6 oldest even.
    evict_oldest(&mut map, 16, |&(evictable, at)| evictable.then_some(at));
    assert_eq!(map.len(), 14);
    for i in [0, 2, 4, 6, 8, 10] {
        assert!(!map.contains_key(&format!("k{i}")), "k{i}");
    }
    // Nothing evictable left beyond the unevictable: the table stays over the cap.
    evict_oldest(&mut map, 4, |&(evictable, at)| evictable.then_some(at));
    assert_eq!(map.len(), 10);
    assert!(map.values().all(|&(evictable, _)| !evictable));
    assert_eq!(
        next_sweep(4, 10),
        10 + 1,
        "the next sweep waits for more entries"
    );
    assert_eq!(next_sweep(100_000, 90_000), 100_000);
}
