//! Memory of the in-memory state store (`state.kind: memory`, what `serve` uses) after
//! many answered messages: its entry counts and live heap bytes, with the default
//! bounds and without any (what the store did before it was bounded).
//!
//! A counting `#[global_allocator]` keeps the live heap bytes (allocated minus freed);
//! each case measures them before the store is made and after its last message, on a
//! current-thread runtime (no other thread allocates meanwhile). Each message is
//! begun and finished through the `SessionStore` trait, 1,000 senders in turn, a
//! fresh message id each, the callers' clock advancing `step` seconds per message.
//!
//! `cargo bench --bench memory_store` (the figures are allocations, not time: any
//! profile gives the same, e.g. `--profile dev` builds faster). Prints one
//! `RESULT name key=value...` line per case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use whatsapp_webhook::domain::{Mode, SessionRecord};
use whatsapp_webhook::state::memory::MemoryLimits;
use whatsapp_webhook::state::{Attempt, Begin, MemoryStore, SessionStore};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; only a counter
// is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: u64 = 1_700_000_000;
const SENDERS: u64 = 1_000;

struct Case {
    name: &'static str,
    messages: u64,
    /// Seconds of the callers' clock per message.
    step: u64,
    limits: MemoryLimits,
}

fn unbounded() -> MemoryLimits {
    MemoryLimits {
        messages: usize::MAX,
        senders: usize::MAX,
        users: usize::MAX,
        settled_retention: Duration::from_secs(365 * 24 * 3600),
    }
}

async fn run(case: &Case) {
    let before = LIVE.load(Ordering::Relaxed);
    let store = MemoryStore::new(Duration::from_secs(40), Duration::from_secs(720 * 3600))
        .with_limits(case.limits);
    let started = Instant::now();
    for i in 0..case.messages {
        let id = format!("wamid.HBgLMTU1NTAwMDExMTEVAgASGBQzQTg{i:012}");
        let sender = format!("1555{:07}", i % SENDERS);
        let now = T0 + i * case.step;
        let attempt = Attempt {
            message_id: &id,
            sender: &sender,
            token: "8c1f6a2e-5d0b-4c39-9a1e-3f7d2b6c4e10",
            timestamp: now,
            starts_turn: true,
            merged: &[],
        };
        let begun = store.begin(&attempt, now).await.expect("begin");
        assert!(matches!(begun, Begin::Ready { .. }), "message {i}");
        let session = SessionRecord {
            id: "0b7e7c9e-2f9d-4a53-8f51-6d8f3c1b2a77".into(),
            mode: Mode::Normal,
            created_at: T0,
            updated_at: now,
        };
        store.finish(&attempt, &session, now).await.expect("finish");
    }
    let elapsed = started.elapsed();
    let live = LIVE.load(Ordering::Relaxed) - before;
    let entries = store.entries();
    let per_message = live as f64 / entries.messages.max(1) as f64;
    println!(
        "| {} | {} | {} | {} | {:.1} MB | {:.0} B | {:.2} µs |",
        case.name,
        case.messages,
        entries.messages,
        entries.senders,
        live as f64 / 1e6,
        per_message,
        elapsed.as_secs_f64() * 1e6 / case.messages as f64,
    );
    println!(
        "RESULT {} messages={} message_entries={} sender_entries={} user_entries={} live_bytes={} bytes_per_entry={:.0}",
        case.name,
        case.messages,
        entries.messages,
        entries.senders,
        entries.users,
        live,
        per_message,
    );
    drop(store);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cases = [
        Case {
            name: "bounded_100k",
            messages: 100_000,
            step: 0,
            limits: MemoryLimits::default(),
        },
        Case {
            name: "bounded_250k",
            messages: 250_000,
            step: 0,
            limits: MemoryLimits::default(),
        },
        Case {
            name: "bounded_250k_1_per_s",
            messages: 250_000,
            step: 1,
            limits: MemoryLimits::default(),
        },
        Case {
            name: "unbounded_100k",
            messages: 100_000,
            step: 0,
            limits: unbounded(),
        },
        Case {
            name: "unbounded_250k",
            messages: 250_000,
            step: 0,
            limits: unbounded(),
        },
    ];
    println!(
        "| case | messages | message entries | sender entries | live heap | per message entry | time per message |"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in &cases {
        runtime.block_on(run(case));
    }
}
