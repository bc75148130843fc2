//! Per-message latency distribution (median, p99) and allocations of `App::handle`
//! with in-process fakes, one call at a time: criterion reports means and medians of
//! batches, not the tail, and its own allocations must not be counted.
//!
//! A counting `#[global_allocator]` wraps the system allocator; the counters are read
//! just before and just after each single `handle` call, on a current-thread runtime
//! (no other thread allocates meanwhile). Request bodies are made and signed before
//! the timed calls, in chunks, each with a fresh message id.
//!
//! `cargo bench --bench inbound_alloc` (`-- --quick` for a shorter run;
//! `BENCH_ITERS=N` sets the calls per case). Prints a markdown table, and one
//! `RESULT name key=value...` line per case for scripts/bench.sh.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};

use common::{Bodies, EngineKind, app, runtime, signed_post, status_body, verify_get};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; only counters
// are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(
            new_size.saturating_sub(layout.size()) as u64,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counters() -> (u64, u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

struct Case {
    name: &'static str,
    what: &'static str,
    engine: EngineKind,
    /// Messages per request: the figures are divided by this.
    messages: usize,
    /// Calls measured, relative to the base count.
    share: f64,
    make: fn(&Bodies) -> Request<Bytes>,
}

struct Stats {
    median_ns: f64,
    p90_ns: f64,
    p99_ns: f64,
    p999_ns: f64,
    mean_ns: f64,
    allocs: f64,
    allocs_max: f64,
    reallocs: f64,
    bytes: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 50.0)
}

fn measure(case: &Case, base_iters: usize) -> Stats {
    let rt = runtime();
    let app = app(case.engine);
    let bodies = Bodies::new();
    let iters = ((base_iters as f64 * case.share) as usize).max(50);
    let warmup = (iters / 10).max(10);
    let chunk = 1000.min(iters);
    let mut latency = Vec::with_capacity(iters);
    let mut allocs = Vec::with_capacity(iters);
    let mut reallocs = Vec::with_capacity(iters);
    let mut bytes = Vec::with_capacity(iters);
    let mut done = 0;
    let mut warm = 0;
    while done < iters {
        // Made (and signed) outside the timed calls.
        let requests: Vec<Request<Bytes>> = (0..chunk).map(|_| (case.make)(&bodies)).collect();
        for request in requests {
            let (a0, r0, b0) = counters();
            let started = Instant::now();
            let response = rt.block_on(app.handle(request));
            let elapsed = started.elapsed();
            let (a1, r1, b1) = counters();
            assert_eq!(response.status(), StatusCode::OK, "{}", case.name);
            drop(response);
            if warm < warmup {
                warm += 1;
                continue;
            }
            if done == iters {
                break;
            }
            let per = case.messages as f64;
            latency.push(elapsed.as_nanos() as f64 / per);
            allocs.push((a1 - a0) as f64 / per);
            reallocs.push((r1 - r0) as f64 / per);
            bytes.push((b1 - b0) as f64 / per);
            done += 1;
        }
    }
    latency.sort_by(f64::total_cmp);
    let mean_ns = latency.iter().sum::<f64>() / latency.len() as f64;
    let allocs_max = allocs.iter().copied().fold(0.0, f64::max);
    Stats {
        median_ns: percentile(&latency, 50.0),
        p90_ns: percentile(&latency, 90.0),
        p99_ns: percentile(&latency, 99.0),
        p999_ns: percentile(&latency, 99.9),
        mean_ns,
        allocs: median(&mut allocs),
        allocs_max,
        reallocs: median(&mut reallocs),
        bytes: median(&mut bytes),
    }
}

fn us(ns: f64) -> String {
    format!("{:.2}", ns / 1000.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let base_iters = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 100_000 });
    let cases = [
        Case {
            name: "handler/echo_text_1",
            what: "whole handler, 1 text (echo engine, memory store, no-op messenger)",
            engine: EngineKind::Echo,
            messages: 1,
            share: 1.0,
            make: |b| signed_post(b.text()),
        },
        Case {
            name: "inbound/text_1",
            what: "inbound path, 1 text (engine replies nothing)",
            engine: EngineKind::Empty,
            messages: 1,
            share: 1.0,
            make: |b| signed_post(b.text()),
        },
        Case {
            name: "inbound/batch_1000",
            what: "inbound path, batch of 1000 texts, per message",
            engine: EngineKind::Empty,
            messages: 1000,
            share: 0.002,
            make: |b| signed_post(b.batch(1000)),
        },
        Case {
            name: "no_message/status_post",
            what: "signed status POST (delivered)",
            engine: EngineKind::Empty,
            messages: 1,
            share: 1.0,
            make: |_| signed_post(status_body()),
        },
        Case {
            name: "no_message/verify_get",
            what: "verification GET",
            engine: EngineKind::Empty,
            messages: 1,
            share: 1.0,
            make: |_| verify_get(),
        },
    ];
    println!(
        "| case | what | calls | median µs | p90 µs | p99 µs | p99.9 µs | mean µs | allocs (median) | allocs (max) | reallocs | bytes allocated |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for case in &cases {
        let s = measure(case, base_iters);
        let calls = ((base_iters as f64 * case.share) as usize).max(50);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            case.name,
            case.what,
            calls,
            us(s.median_ns),
            us(s.p90_ns),
            us(s.p99_ns),
            us(s.p999_ns),
            us(s.mean_ns),
            s.allocs,
            s.allocs_max,
            s.reallocs,
            s.bytes
        );
        results.push(format!(
            "RESULT {} median_ns={:.0} p99_ns={:.0} mean_ns={:.0} allocs={:.1} reallocs={:.1} bytes={:.0}",
            case.name, s.median_ns, s.p99_ns, s.mean_ns, s.allocs, s.reallocs, s.bytes
        ));
    }
    println!();
    for line in results {
        println!("{line}");
    }
}
