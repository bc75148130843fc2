//! Arbitrary bytes as a webhook POST body through the real `App` (memory state, echo
//! engine, dry-run messenger: no network). The body is signed with the app secret,
//! unless its first byte asks for a missing (0x00) or wrong (0x01, 0x02) signature;
//! those bytes never start a JSON document, so every signed input is a real test of
//! the parser and the pipeline.
//!
//! A signed body must answer 200 or 400; a badly signed one 401 or 403; never 5xx.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use libfuzzer_sys::fuzz_target;
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::graph::DryRunMessenger;
use whatsapp_webhook::webhook::signature::sign;
use whatsapp_webhook::app::{App, AppOptions};
use whatsapp_webhook::wiring::in_memory_app;

const APP_SECRET: &str = "fuzz-app-secret";
/// The fixtures' phone_number_id (the seeds are tests/fixtures), so their messages are answered.
const PHONE_NUMBER_ID: &str = "123456123456123";
/// A fresh app (and memory store) every so many runs, so a long run does not grow
/// the store without bound.
const RUNS_PER_APP: u64 = 100_000;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

fn new_app() -> Arc<App> {
    Arc::new(in_memory_app(
        AppOptions {
            reply_threading: true,
            sender_wait: Duration::from_millis(10),
            ..AppOptions::new(
                PHONE_NUMBER_ID,
                Secret::new("fuzz-verify-token"),
                vec![Secret::new(APP_SECRET)],
            )
        },
        Arc::new(DryRunMessenger),
    ))
}

fn app() -> Arc<App> {
    static APP: OnceLock<Mutex<(u64, Arc<App>)>> = OnceLock::new();
    let slot = APP.get_or_init(|| Mutex::new((0, new_app())));
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.0 += 1;
    if slot.0.is_multiple_of(RUNS_PER_APP) {
        slot.1 = new_app();
    }
    slot.1.clone()
}

fuzz_target!(|data: &[u8]| {
    let (signature, allowed): (Option<String>, &[u16]) = match data.first() {
        Some(0x00) => (None, &[401]),
        Some(0x01) => (Some(sign("another-secret", data)), &[403]),
        Some(0x02) => (Some(format!("sha256={}", "0".repeat(64))), &[403]),
        _ => (Some(sign(APP_SECRET, data)), &[200, 400]),
    };
    let mut request = Request::post("/webhook").header("content-type", "application/json");
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let request = request
        .body(Bytes::copy_from_slice(data))
        .expect("a valid request");
    let app = app();
    let response = runtime().block_on(app.handle(request));
    let status = response.status().as_u16();
    assert!(
        status < 500,
        "status {status} ({}) for a {}-byte body",
        String::from_utf8_lossy(response.body()),
        data.len()
    );
    assert!(
        allowed.contains(&status),
        "status {status} ({}), expected one of {allowed:?}",
        String::from_utf8_lossy(response.body())
    );
});
