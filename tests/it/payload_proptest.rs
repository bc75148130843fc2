//! Robustness of the webhook against malformed and hostile payloads.
//!
//! Every fixture in `tests/fixtures/` is mutated structurally (a node replaced by a
//! value of the wrong type, a key deleted or duplicated, an array element repeated up
//! to 2000 times, a value wrapped in up to 300 levels of nesting, raw string tokens
//! with lone surrogates or broken escapes, invalid UTF-8, long strings, random
//! unicode in text bodies, a truncated body), signed with the harness's app secret
//! and posted through the real handler (wiremock Graph API and engine that always
//! succeed). Each case must answer 200 or 400 without panicking, and the handler must
//! then still answer a valid text message and send its reply.
//!
//! A failing case prints the fixture, the mutations and the start of the body; the
//! properties keep no regression files (see `config`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::helpers::*;
use bytes::Bytes;
use http::{Request, Response};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use whatsapp_webhook::app::App;
use whatsapp_webhook::domain::Secret;
use whatsapp_webhook::webhook::payload::{Envelope, RawMessage};
use whatsapp_webhook::webhook::signature::{SignatureCheck, check_signature, sign};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const FIXTURES: &[&str] = &[
    "batch-two-entries.json",
    "bsuid-username-text.json",
    "call-permission-reply.json",
    "edit.json",
    "flow-reply.json",
    "image.json",
    "interactive-button.json",
    "reaction.json",
    "request-welcome.json",
    "revoke.json",
    "status-delivered.json",
    "status-failed.json",
    "system-number-changed.json",
    "text-reply-context.json",
    "text.json",
    "unsupported.json",
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No proptest-regressions/ files: a failure prints its input instead.
        failure_persistence: None,
        // Shrinking re-runs the handler; keep a failing run short.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Run `proptest`'s runner; a failure panics with the minimal input found.
fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

// ------------------------------------------------------------------ the handler

/// A signed POST of `body`, handled inside `tokio::spawn` so a panic is reported as such.
async fn post_spawned(
    app: &Arc<App>,
    body: Vec<u8>,
    header: Option<Vec<u8>>,
) -> Result<Response<Bytes>, String> {
    let header = header.unwrap_or_else(|| sign(APP_SECRET, &body).into_bytes());
    let request = Request::post("/webhook")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", header)
        .body(Bytes::from(body))
        .map_err(|e| format!("request: {e}"))?;
    let app = app.clone();
    match tokio::spawn(async move { app.handle(request).await }).await {
        Ok(response) => Ok(response),
        Err(e) if e.is_panic() => Err(format!("the handler panicked: {e}")),
        Err(e) => Err(format!("the handler task failed: {e}")),
    }
}

static PINGS: AtomicUsize = AtomicUsize::new(0);

/// The process keeps serving: a valid text message is answered 200 and its reply sent.
async fn still_serving(h: &Harness) -> Result<(), String> {
    let n = PINGS.fetch_add(1, Ordering::SeqCst);
    let text = format!("ping {n}");
    let body = serde_json::to_vec(&text_message(
        "15550009999",
        &format!("wamid.PING.{n}"),
        &text,
    ))
    .expect("serialisable");
    let response = post_spawned(&h.app, body, None).await?;
    if status(&response) != 200 {
        return Err(format!(
            "a valid text message then got {} {}",
            status(&response),
            body_text(&response)
        ));
    }
    let want = format!("echo: {text}");
    if !h.sent_bodies().await.contains(&want) {
        return Err(format!("no reply {want:?} was sent"));
    }
    Ok(())
}

/// Post `body` (signed), require 200 or 400, then require the handler to keep serving.
async fn check_body(h: &Harness, body: Vec<u8>, what: &str) -> Result<u16, String> {
    let preview = preview(&body);
    let response = post_spawned(&h.app, body, None)
        .await
        .map_err(|e| format!("{e}\n{what}\nbody: {preview}"))?;
    let code = status(&response);
    if code != 200 && code != 400 {
        return Err(format!(
            "status {code} ({}) for a malformed payload\n{what}\nbody: {preview}",
            body_text(&response)
        ));
    }
    still_serving(h)
        .await
        .map_err(|e| format!("after {code}: {e}\n{what}\nbody: {preview}"))?;
    Ok(code)
}

fn preview(body: &[u8]) -> String {
    const MAX: usize = 600;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX {
        format!("{text}… ({} bytes)", body.len())
    } else {
        text
    }
}

// ------------------------------------------------------------------ mutations

/// A value of a type the field does not expect.
#[derive(Debug, Clone)]
enum Wrong {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Wrong {
    fn value(&self) -> Value {
        match self {
            Wrong::Int(n) => json!(n),
            Wrong::Float(f) => json!(f),
            Wrong::Str(s) => json!(s),
            Wrong::Bool(b) => json!(b),
            Wrong::Null => Value::Null,
            Wrong::Array => json!([1, "two", null]),
            Wrong::Object => json!({"unexpected": {"nested": true}}),
        }
    }
}

/// Raw JSON text put where a value goes: broken escapes, invalid UTF-8, odd numbers.
const RAW_VALUES: &[&[u8]] = &[
    br#""\ud800""#,          // lone leading surrogate
    br#""\udfff""#,          // lone trailing surrogate
    br#""abc\ud800""#,       // lone surrogate at the end of a string
    br#""\ud800\u0041""#,    // leading surrogate + a non-surrogate
    br#""\ud800\ud800""#,    // two leading surrogates
    br#""\udc00\ud800""#,    // reversed pair
    br#""\ud800x""#,         // leading surrogate + a plain char
    br#""\ud83d\ude00""#,    // a valid pair (control)
    br#""\u12""#,            // truncated escape
    br#""\uZZZZ""#,          // bad hex
    br#""\x41""#,            // unknown escape
    br#""a\u0000b""#,        // NUL, valid JSON
    b"\"\xff\xfe\"",         // invalid UTF-8
    b"\"\xc0\x80\"",         // overlong NUL
    b"\"\xed\xa0\x80\"",     // a UTF-8-encoded surrogate (CESU-8)
    b"\"\xf4\x90\x80\x80\"", // past U+10FFFF
    b"\"a\x01b\"",           // raw control char
    b"\"unterminated",       // no closing quote
    b"1e999999",             // out of range
    b"-0",                   // negative zero
    b"18446744073709551616", // u64::MAX + 1
    b"123456789012345678901234567890.5e-400",
    b"NaN",                        // not JSON
    b"Infinity",                   // not JSON
    b"tru",                        // truncated literal
    b"[1,2,",                      // unbalanced
    b"{\"a\":}",                   // missing value
    b"{\"a\" 1}",                  // missing colon
    b"[1,]",                       // trailing comma
    b"\"\\/\\b\\f\\n\\r\\t\\\\\"", // every short escape, valid
];

/// Raw JSON text put where an object key goes.
const RAW_KEYS: &[&[u8]] = &[
    br#""\ud800""#,
    br#""\udc00\ud800""#,
    b"\"\xff\"",
    b"\"\"",
    b"1",
    b"null",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a node with a value of another type.
    WrongType { node: usize, value: Wrong },
    /// Remove a member of an object.
    DeleteKey { node: usize },
    /// Repeat an array element `copies` more times ("huge arrays").
    Repeat { node: usize, copies: usize },
    /// Wrap a node in `depth` arrays or objects.
    Nest {
        node: usize,
        depth: usize,
        arrays: bool,
    },
    /// Put raw (often invalid) JSON text where a value is.
    RawValue { node: usize, raw: usize },
    /// Add a member whose key is raw (often invalid) JSON text.
    RawKey { node: usize, raw: usize },
    /// Repeat a key of an object (JSON allows it; serde's structs refuse it).
    DuplicateKey { node: usize, member: usize },
    /// Replace a string with random unicode.
    SetString { node: usize, text: String },
    /// Replace every text body (and button or list title) with random unicode.
    SetTextBodies { text: String },
    /// Replace a string with a long one.
    LongString { node: usize, len: usize, ch: char },
}

/// What happens to the serialised bytes at the end.
#[derive(Debug, Clone)]
enum Tail {
    Keep,
    Truncate(usize),
    Append(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    fixture: &'static str,
    mutations: Vec<Mutation>,
    tail: Tail,
}

fn wrong() -> impl Strategy<Value = Wrong> {
    prop_oneof![
        any::<i64>().prop_map(Wrong::Int),
        prop_oneof![
            Just(0.5),
            Just(-1e308),
            Just(f64::MIN_POSITIVE),
            any::<f64>()
        ]
        .prop_map(Wrong::Float),
        unicode(16).prop_map(Wrong::Str),
        any::<bool>().prop_map(Wrong::Bool),
        Just(Wrong::Null),
        Just(Wrong::Array),
        Just(Wrong::Object),
    ]
}

/// Random unicode, with the characters most likely to trip text handling.
fn unicode(max: usize) -> impl Strategy<Value = String> {
    const NASTY: &[&str] = &[
        "",
        " ",
        " \n\t\r\u{a0}\u{3000}",
        "/new",
        "/otr",
        "/help",
        "\u{202e}reversed\u{202c}",
        "\u{feff}",
        "\u{200d}\u{200d}",
        "e\u{301}\u{302}\u{303}",
        "👨\u{200d}👩\u{200d}👧\u{200d}👦",
        "🇫🇷🇯",
        "\u{ffff}\u{fffe}\u{10ffff}",
        "\0\u{1}\u{7f}",
        "\\ud800",
        "\u{1F600}",
        "今日は晴れです。",
    ];
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter),
        prop::collection::vec(prop::sample::select(NASTY), 0..8).prop_map(|v| v.concat()),
        "\\PC{0,32}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let node = any::<usize>();
    prop_oneof![
        3 => (node, wrong()).prop_map(|(node, value)| Mutation::WrongType { node, value }),
        3 => node.prop_map(|node| Mutation::DeleteKey { node }),
        2 => (node, prop_oneof![1usize..10, 100usize..=2000])
            .prop_map(|(node, copies)| Mutation::Repeat { node, copies }),
        2 => (node, prop_oneof![1usize..=20, 100usize..=300], any::<bool>())
            .prop_map(|(node, depth, arrays)| Mutation::Nest { node, depth, arrays }),
        3 => (node, 0..RAW_VALUES.len()).prop_map(|(node, raw)| Mutation::RawValue { node, raw }),
        1 => (node, 0..RAW_KEYS.len()).prop_map(|(node, raw)| Mutation::RawKey { node, raw }),
        1 => (node, any::<usize>())
            .prop_map(|(node, member)| Mutation::DuplicateKey { node, member }),
        2 => (node, unicode(64)).prop_map(|(node, text)| Mutation::SetString { node, text }),
        3 => unicode(200).prop_map(|text| Mutation::SetTextBodies { text }),
        1 => (node, 1000usize..=100_000, prop::sample::select(vec!['x', ' ', '😀', 'é', '\n']))
            .prop_map(|(node, len, ch)| Mutation::LongString { node, len, ch }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(FIXTURES),
        prop::collection::vec(mutation(), 1..4),
        prop_oneof![
            8 => Just(Tail::Keep),
            1 => any::<usize>().prop_map(Tail::Truncate),
            1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Tail::Append),
        ],
    )
        .prop_map(|(fixture, mutations, tail)| Case {
            fixture,
            mutations,
            tail,
        })
}

/// JSON pointers of every node (the root is "").
fn nodes(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = k.replace('~', "~0").replace('/', "~1");
                    walk(v, format!("{at}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn pick(list: &[String], index: usize) -> Option<&str> {
    (!list.is_empty()).then(|| list[index % list.len()].as_str())
}

/// The parent pointer and the last segment (unescaped) of a non-root pointer.
fn split_pointer(pointer: &str) -> (&str, String) {
    let (parent, last) = pointer.rsplit_once('/').expect("not the root");
    (parent, last.replace("~1", "/").replace("~0", "~"))
}

/// Give each message a fresh id, so cases are answered rather than seen as duplicates.
fn fresh_message_ids(value: &mut Value, suffix: usize) {
    let Some(entries) = value["entry"].as_array_mut() else {
        return;
    };
    for entry in entries {
        let Some(changes) = entry["changes"].as_array_mut() else {
            continue;
        };
        for change in changes {
            let Some(messages) = change["value"]["messages"].as_array_mut() else {
                continue;
            };
            for message in messages {
                if let Some(id) = message["id"].as_str() {
                    message["id"] = json!(format!("{id}.{suffix}"));
                }
            }
        }
    }
}

/// Every `text.body`, `button_reply.title`, `list_reply.title` and `button.text`.
fn set_text_bodies(value: &mut Value, text: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match (k.as_str(), &mut *v) {
                    ("body" | "title", Value::String(s)) => *s = text.to_owned(),
                    ("text", Value::String(s)) => *s = text.to_owned(),
                    _ => set_text_bodies(v, text),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| set_text_bodies(v, text)),
        _ => {}
    }
}

fn nest(value: Value, depth: usize, arrays: bool) -> Value {
    (0..depth).fold(value, |inner, _| {
        if arrays {
            Value::Array(vec![inner])
        } else {
            let mut map = Map::new();
            map.insert("a".into(), inner);
            Value::Object(map)
        }
    })
}

static CASES: AtomicUsize = AtomicUsize::new(0);

/// The body for a case: the fixture, mutated, serialised, raw text spliced in.
fn build_body(case: &Case) -> Vec<u8> {
    let mut value = fixture(case.fixture);
    fresh_message_ids(&mut value, CASES.fetch_add(1, Ordering::SeqCst));
    // Placeholders (plain strings) stand for raw text spliced in after serialising.
    let mut splices: Vec<(String, Vec<u8>)> = Vec::new();
    for m in &case.mutations {
        let all = nodes(&value);
        match m {
            Mutation::WrongType { node, value: wrong } => {
                let at = pick(&all, *node).expect("the root at least");
                *value.pointer_mut(at).expect("node") = wrong.value();
            }
            Mutation::DeleteKey { node } => {
                let members: Vec<String> = all
                    .iter()
                    .filter(|p| {
                        p.rsplit_once('/').is_some_and(|(parent, _)| {
                            value.pointer(parent).is_some_and(Value::is_object)
                        })
                    })
                    .cloned()
                    .collect();
                if let Some(at) = pick(&members, *node) {
                    let (parent, key) = split_pointer(at);
                    if let Some(map) = value.pointer_mut(parent).and_then(Value::as_object_mut) {
                        map.remove(&key);
                    }
                }
            }
            Mutation::Repeat { node, copies } => {
                let elements: Vec<String> = all
                    .iter()
                    .filter(|p| {
                        p.rsplit_once('/').is_some_and(|(parent, _)| {
                            value.pointer(parent).is_some_and(Value::is_array)
                        })
                    })
                    .cloned()
                    .collect();
                if let Some(at) = pick(&elements, *node) {
                    let (parent, index) = split_pointer(at);
                    let index: usize = index.parse().expect("array index");
                    if let Some(items) = value.pointer_mut(parent).and_then(Value::as_array_mut) {
                        let element = items[index].clone();
                        let tail = items.split_off(index);
                        items.extend(std::iter::repeat_n(element, *copies));
                        items.extend(tail);
                    }
                }
            }
            Mutation::Nest {
                node,
                depth,
                arrays,
            } => {
                let at = pick(&all, *node).expect("the root at least");
                let slot = value.pointer_mut(at).expect("node");
                *slot = nest(slot.take(), *depth, *arrays);
            }
            Mutation::RawValue { node, raw } => {
                let at = pick(&all, *node).expect("the root at least");
                let marker = format!("@@raw{}@@", splices.len());
                *value.pointer_mut(at).expect("node") = json!(marker);
                splices.push((format!("\"{marker}\""), RAW_VALUES[*raw].to_vec()));
            }
            Mutation::RawKey { node, raw } => {
                let objects: Vec<String> = all
                    .iter()
                    .filter(|p| value.pointer(p).is_some_and(Value::is_object))
                    .cloned()
                    .collect();
                if let Some(at) = pick(&objects, *node) {
                    let marker = format!("@@key{}@@", splices.len());
                    if let Some(map) = value.pointer_mut(at).and_then(Value::as_object_mut) {
                        map.insert(marker.clone(), json!("value"));
                    }
                    splices.push((format!("\"{marker}\""), RAW_KEYS[*raw].to_vec()));
                }
            }
            Mutation::DuplicateKey { node, member } => {
                let objects: Vec<String> = all
                    .iter()
                    .filter(|p| {
                        value
                            .pointer(p)
                            .and_then(Value::as_object)
                            .is_some_and(|m| !m.is_empty())
                    })
                    .cloned()
                    .collect();
                if let Some(at) = pick(&objects, *node)
                    && let Some(map) = value.pointer_mut(at).and_then(Value::as_object_mut)
                {
                    let (key, copy) = map
                        .iter()
                        .nth(member % map.len())
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .expect("non-empty");
                    let marker = format!("@@dup{}@@", splices.len());
                    map.insert(marker.clone(), copy);
                    splices.push((format!("\"{marker}\""), json!(key).to_string().into_bytes()));
                }
            }
            Mutation::SetString { node, text } => {
                let strings: Vec<String> = all
                    .iter()
                    .filter(|p| value.pointer(p).is_some_and(Value::is_string))
                    .cloned()
                    .collect();
                if let Some(at) = pick(&strings, *node) {
                    *value.pointer_mut(at).expect("node") = json!(text);
                }
            }
            Mutation::SetTextBodies { text } => set_text_bodies(&mut value, text),
            Mutation::LongString { node, len, ch } => {
                let strings: Vec<String> = all
                    .iter()
                    .filter(|p| value.pointer(p).is_some_and(Value::is_string))
                    .cloned()
                    .collect();
                if let Some(at) = pick(&strings, *node) {
                    *value.pointer_mut(at).expect("node") = json!(ch.to_string().repeat(*len));
                }
            }
        }
    }
    let mut body = serde_json::to_vec(&value).expect("serialisable");
    for (marker, raw) in &splices {
        body = replace_all(&body, marker.as_bytes(), raw);
    }
    match &case.tail {
        Tail::Keep => {}
        Tail::Truncate(at) => body.truncate(at % (body.len() + 1)),
        Tail::Append(bytes) => body.extend_from_slice(bytes),
    }
    body
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(i) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(with);
        rest = &rest[i + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

// ------------------------------------------------------------------ properties

#[test]
fn mutated_fixtures_answer_200_or_400_and_the_handler_keeps_serving() {
    let rt = runtime();
    let h = rt.block_on(Harness::start());
    let answered = std::sync::Mutex::new([0usize; 2]);
    run(64, case(), |case| {
        let body = build_body(&case);
        let code = rt
            .block_on(check_body(&h, body, &format!("{case:#?}")))
            .map_err(TestCaseError::fail)?;
        answered.lock().unwrap()[usize::from(code == 400)] += 1;
        Ok(())
    });
    // The mutations reach both the parser's refusals and the pipeline, and the
    // pipeline answered mutated messages (engine calls beyond the pings).
    let [ok, refused] = *answered.lock().unwrap();
    let engine_calls = rt.block_on(h.engine_calls());
    let mutated_turns = engine_calls
        .iter()
        .filter(|c| !c["text"].as_str().unwrap_or_default().starts_with("ping "))
        .count();
    eprintln!(
        "mutated fixtures: {ok} answered 200, {refused} refused 400, {mutated_turns} engine turns"
    );
    assert!(
        ok > 0 && refused > 0,
        "{ok} answered 200, {refused} refused 400"
    );
    assert!(mutated_turns > 0, "no mutated message reached the engine");
}

#[test]
fn arbitrary_signed_bytes_answer_200_or_400() {
    let rt = runtime();
    let h = rt.block_on(Harness::start());
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        "\\PC{0,256}".prop_map(String::into_bytes),
        // JSON-ish noise: the tokens of a payload in random order.
        prop::collection::vec(
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "\"object\"",
                "\"entry\"",
                "\"changes\"",
                "\"value\"",
                "\"messages\"",
                "\"whatsapp_business_account\"",
                "null",
                "1",
                "\"\\ud800\"",
                "\"x\"",
            ]),
            0..64,
        )
        .prop_map(|t| t.concat().into_bytes()),
    ];
    run(64, bytes, |body| {
        rt.block_on(check_body(&h, body, "arbitrary bytes"))
            .map(drop)
            .map_err(TestCaseError::fail)
    });
}

#[test]
fn wrong_or_missing_signatures_are_refused_before_parsing() {
    let rt = runtime();
    let h = rt.block_on(Harness::start());
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..256),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            "[0-9a-fA-F]{64}".prop_map(|hex| format!("sha256={hex}").into_bytes()),
            "[0-9a-f]{0,70}".prop_map(|hex| format!("sha256={hex}").into_bytes()),
        ],
    );
    run(64, strategy, |(body, header)| {
        rt.block_on(async {
            // Header bytes http refuses (control chars) are sent as no header at all.
            let valid_header = http::HeaderValue::from_bytes(&header).is_ok();
            let request = Request::post("/webhook");
            let request = if valid_header {
                request.header("x-hub-signature-256", header.clone())
            } else {
                request
            };
            let request = request
                .body(Bytes::from(body.clone()))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let app = h.app.clone();
            let response = tokio::spawn(async move { app.handle(request).await })
                .await
                .map_err(|e| TestCaseError::fail(format!("handler: {e}")))?;
            let want = if valid_header { 403 } else { 401 };
            prop_assert_eq!(status(&response), want, "header {:?}", header);
            still_serving(&h).await.map_err(TestCaseError::fail)
        })
    });
}

/// Whether HMAC-SHA256 treats two keys as one: a key of at most one block (64 bytes)
/// is padded with zero bytes, so `""` and `"\0"` sign alike (proptest found it).
fn hmac_same_key(a: &str, b: &str) -> bool {
    if a.len() <= 64 && b.len() <= 64 {
        a.trim_end_matches('\0') == b.trim_end_matches('\0')
    } else {
        a == b
    }
}

#[test]
fn hmac_keys_differing_only_in_trailing_zero_bytes_sign_alike() {
    assert_eq!(sign("", b"body"), sign("\0", b"body"));
    assert!(hmac_same_key("", "\0\0"));
    assert!(!hmac_same_key("a", "\0a"));
}

#[test]
fn check_signature_never_panics_and_accepts_exactly_the_right_secret() {
    let strategy = (
        prop::option::of(prop::collection::vec(any::<u8>(), 0..100)),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(".{0,40}", 0..4),
        ".{0,40}",
    );
    run(256, strategy, |(header, body, others, secret)| {
        let mut secrets: Vec<Secret> = others.iter().map(Secret::new).collect();
        // Arbitrary header bytes: never a panic; no header is Missing.
        let check = check_signature(header.as_deref(), &body, &secrets);
        if header.is_none() {
            prop_assert_eq!(check, SignatureCheck::Missing);
        }
        // The right signature is valid once its secret is among the secrets…
        let signed = sign(&secret, &body);
        let known = others.iter().any(|o| hmac_same_key(o, &secret));
        let before = check_signature(Some(signed.as_bytes()), &body, &secrets);
        prop_assert_eq!(before == SignatureCheck::Valid, known);
        secrets.push(Secret::new(secret.clone()));
        prop_assert_eq!(
            check_signature(Some(signed.as_bytes()), &body, &secrets),
            SignatureCheck::Valid
        );
        // …and a different body or one changed hex digit makes it invalid.
        let mut other_body = body.clone();
        other_body.push(b' ');
        prop_assert_eq!(
            check_signature(Some(signed.as_bytes()), &other_body, &secrets),
            SignatureCheck::Invalid
        );
        let mut tampered = signed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        prop_assert_eq!(
            check_signature(Some(&tampered), &body, &secrets),
            SignatureCheck::Invalid
        );
        Ok(())
    });
}

/// An arbitrary JSON value, up to a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "text",
            "interactive",
            "button",
            "reaction",
            "",
            "image"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "id",
                        "from",
                        "from_user_id",
                        "timestamp",
                        "type",
                        "text",
                        "body",
                        "interactive",
                        "button_reply",
                        "list_reply",
                        "title",
                        "button",
                        "object",
                        "entry",
                        "x",
                    ]),
                    inner,
                ),
                0..6,
            )
            .prop_map(|members| {
                Value::Object(
                    members
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

#[test]
fn payload_parsing_never_panics() {
    run(
        512,
        (json_value(), prop::collection::vec(any::<u8>(), 0..256)),
        |(value, bytes)| {
            let text = value.to_string();
            let _ = serde_json::from_str::<Envelope<'_>>(&text);
            let _ = serde_json::from_slice::<Envelope<'_>>(&bytes);
            if let Ok(message) = serde_json::from_str::<RawMessage>(&text) {
                let _ = message.into_inbound();
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------------ fixed hostile cases

/// Inputs the mutations reach only by chance, with the status each must get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_hostile_payloads() {
    let h = Harness::start().await;
    let text = String::from_utf8(serde_json::to_vec(&fixture("text.json")).unwrap()).unwrap();
    let body_at = |raw: &str| text.replace("\"What time do you open tomorrow?\"", raw);
    let object_at = |raw: &str| text.replace("\"whatsapp_business_account\"", raw);
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Over serde_json's recursion limit (128): a parse error, not a stack overflow.
        ("200 nested arrays", deep(200).into_bytes(), 400),
        ("100 000 nested arrays", deep(100_000).into_bytes(), 400),
        (
            "100 000 open brackets",
            "[".repeat(100_000).into_bytes(),
            400,
        ),
        // An unknown member is skipped over, however deep; a known one is refused.
        (
            "200 nested objects in an unknown member",
            format!("{{\"x\":{}1{}}}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes(),
            200,
        ),
        (
            "200 nested objects as the object member",
            format!(
                "{{\"object\":{}1{}}}",
                "{\"a\":".repeat(200),
                "}".repeat(200)
            )
            .into_bytes(),
            400,
        ),
        // Inside an entry the envelope only skips over the value (without a depth
        // limit); the message itself is then unreadable, so it is skipped.
        (
            "deep nesting inside a message",
            text.replace("\"1764240000\"", &deep(200)).into_bytes(),
            200,
        ),
        // The envelope's own strings are read as &str/String: lone surrogates fail it.
        (
            "lone surrogate in object",
            object_at("\"\\ud800\"").into_bytes(),
            400,
        ),
        (
            "reversed pair in object",
            object_at("\"\\udc00\\ud800\"").into_bytes(),
            400,
        ),
        (
            "invalid UTF-8 in object",
            {
                let mut b = object_at("\"@\"").into_bytes();
                let i = b.iter().position(|&c| c == b'@').unwrap();
                b[i] = 0xff;
                b
            },
            400,
        ),
        // A message's text is read on its own: an unreadable message is skipped.
        (
            "lone surrogate in a text body",
            body_at("\"\\ud800\"").into_bytes(),
            200,
        ),
        (
            "invalid pair in a text body",
            body_at("\"\\ud800\\u0041\"").into_bytes(),
            200,
        ),
        ("empty body", Vec::new(), 400),
        ("JSON null", b"null".to_vec(), 400),
        // serde reads a struct from an array too: `[]` is an envelope with no entries.
        ("empty JSON array", b"[]".to_vec(), 200),
        ("JSON array of a number", b"[1]".to_vec(), 400),
        ("empty object", b"{}".to_vec(), 200),
        ("entry is a string", br#"{"entry":"x"}"#.to_vec(), 400),
        (
            "entry elements of every type",
            br#"{"entry":[1,"x",null,true,[],{}]}"#.to_vec(),
            200,
        ),
    ];
    for (what, body, want) in cases {
        let response = post_spawned(&h.app, body, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status(&response), want, "{what}: {}", body_text(&response));
        still_serving(&h)
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
}

/// 10 MB strings: in the text body, in an unknown field and as the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_strings() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    let h = Harness::builder().build().await;
    h.graph_accepts().await;
    // Short texts are echoed; a long one is answered with its length, so that the
    // 10 MB text is checked whole but is not sent back as 2560 reply parts.
    Mock::given(method("POST"))
        .and(path(ENGINE_PATH))
        .respond_with(|req: &wiremock::Request| {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let text = body["text"].as_str().unwrap_or_default();
            let reply = if text.len() <= 4096 {
                format!("echo: {text}")
            } else {
                format!("{} bytes", text.len())
            };
            ResponseTemplate::new(200).set_body_json(json!({ "reply": reply }))
        })
        .mount(&h.server)
        .await;

    let mut payload = text_message("15557654321", "wamid.BIG.1", &"a".repeat(TEN_MB));
    let response = post_spawned(&h.app, serde_json::to_vec(&payload).unwrap(), None)
        .await
        .expect("no panic");
    assert_eq!(status(&response), 200, "{}", body_text(&response));
    assert!(h.sent_bodies().await.contains(&format!("{TEN_MB} bytes")));

    let message = &mut payload["entry"][0]["changes"][0]["value"]["messages"][0];
    message["id"] = json!("wamid.BIG.2");
    message["text"]["body"] = json!("short");
    payload["entry"][0]["unknown"] = json!("é".repeat(TEN_MB / 2));
    let response = post_spawned(&h.app, serde_json::to_vec(&payload).unwrap(), None)
        .await
        .expect("no panic");
    assert_eq!(status(&response), 200, "{}", body_text(&response));
    assert!(h.sent_bodies().await.contains(&"echo: short".to_owned()));

    payload["object"] = json!("x".repeat(TEN_MB));
    let response = post_spawned(&h.app, serde_json::to_vec(&payload).unwrap(), None)
        .await
        .expect("no panic");
    assert_eq!(status(&response), 200, "{}", body_text(&response));

    still_serving(&h).await.expect("still serving");
}
