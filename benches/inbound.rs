//! The inbound path without I/O: signature check, parse and routing of webhook POSTs,
//! through `App::handle` with in-process fakes (memory store, no-op messenger).
//!
//! Every iteration gets a body with a fresh message id (a repeated id is deduplicated
//! and skips the work); the bodies are made and signed outside the timed part, since
//! signing is the sender's cost.
//!
//! `cargo bench --bench inbound -- --warm-up-time 1 --measurement-time 3`
//! Median, p99 and allocations per message: `cargo bench --bench inbound_alloc`.

mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::StatusCode;

use common::{Bodies, EngineKind, SECRET, app, runtime, signed_post, status_body, verify_get};
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::webhook::signature::{SIGNATURE_HEADER, SignatureCheck, check_signature};

const BATCH: usize = 1000;

fn signature(c: &mut Criterion) {
    let bodies = Bodies::new();
    let secrets = vec![Secret::new(SECRET)];
    let mut group = c.benchmark_group("signature_check");
    for (name, body) in [
        ("text_1", bodies.text()),
        ("batch_1000", bodies.batch(BATCH)),
    ] {
        let request = signed_post(body);
        let header = request
            .headers()
            .get(SIGNATURE_HEADER)
            .expect("signed")
            .as_bytes()
            .to_vec();
        group.throughput(Throughput::Bytes(request.body().len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let check = check_signature(
                    Some(black_box(&header)),
                    black_box(request.body()),
                    &secrets,
                );
                assert_eq!(check, SignatureCheck::Valid);
            })
        });
    }
    group.finish();
}

/// Signature check + parse + routing + state, engine replying nothing.
fn inbound(c: &mut Criterion) {
    let rt = runtime();
    let app = app(EngineKind::Empty);
    let bodies = Bodies::new();
    let ok = |request| rt.block_on(app.handle(request)).status() == StatusCode::OK;
    assert!(
        ok(signed_post(bodies.text())),
        "a signed text POST answers 200"
    );
    assert!(
        ok(signed_post(bodies.batch(3))),
        "a signed batch answers 200"
    );
    let mut group = c.benchmark_group("inbound");

    group.throughput(Throughput::Elements(1));
    group.bench_function("text_1", |b| {
        b.iter_batched(
            || signed_post(bodies.text()),
            |request| {
                let response = rt.block_on(app.handle(request));
                debug_assert_eq!(response.status(), StatusCode::OK);
                response
            },
            BatchSize::SmallInput,
        )
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("batch_1000", |b| {
        b.iter_batched(
            || signed_post(bodies.batch(BATCH)),
            |request| {
                let response = rt.block_on(app.handle(request));
                debug_assert_eq!(response.status(), StatusCode::OK);
                response
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // Requests that carry no message: a delivery status, and Meta's verification GET.
    let mut group = c.benchmark_group("no_message");
    group.throughput(Throughput::Elements(1));
    let status = signed_post(status_body());
    group.bench_function("status_post", |b| {
        b.iter_batched(
            || status.clone(),
            |request| rt.block_on(app.handle(request)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("verify_get", |b| {
        b.iter_batched(
            verify_get,
            |request| rt.block_on(app.handle(request)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The whole handler for one text message: echo engine, memory store, no-op messenger
/// (read receipt + one reply part through the messenger port).
fn handler(c: &mut Criterion) {
    let rt = runtime();
    let app = app(EngineKind::Echo);
    let bodies = Bodies::new();
    let first = rt.block_on(app.handle(signed_post(bodies.text())));
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "a signed text POST answers 200"
    );
    let mut group = c.benchmark_group("handler");
    group.throughput(Throughput::Elements(1));
    group.bench_function("echo_text_1", |b| {
        b.iter_batched(
            || signed_post(bodies.text()),
            |request| {
                let response = rt.block_on(app.handle(request));
                debug_assert_eq!(response.status(), StatusCode::OK);
                response
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, signature, inbound, handler);
criterion_main!(benches);
