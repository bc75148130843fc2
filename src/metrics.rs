//! The bot's own metrics: a fixed set of counters and latency recorders that the edge,
//! the turn runner, the Graph API sender and the queues record into, and two renderers:
//! CloudWatch Embedded Metric Format lines (Lambda: [`Metrics::emit_emf`], once per
//! invocation, to stdout, which Lambda ships to CloudWatch Logs) and Prometheus text
//! (`serve` with `serve.metrics: true`: `GET /metrics`).
//!
//! One [`Metrics`] per [`crate::app::App`] (an `Arc` shared with the turn runner and
//! the metered messenger), not a process global: tests run many apps in one process
//! and each reads its own.
//!
//! Bounded and private by construction: every metric is a field here, and the only
//! "labels" are enums (Graph error kind, webhook status class), so no value from a
//! request (text, number, wa id, message id, error detail) can become a metric name,
//! dimension or value. Recording is an atomic add; a latency also pushes one `u32` onto
//! a buffer for the next EMF line, capped at [`MAX_PENDING`] values per recorder.
//!
//! Written here rather than with the `metrics` facade plus `metrics_cloudwatch_embedded`
//! 0.10 and `metrics-exporter-prometheus` 0.18 (their Cargo.toml read on crates.io):
//! the facade installs one global recorder per process, against the per-app reading
//! the tests need; its labels are string maps, bounded only by discipline; the
//! Prometheus exporter depends, even with `default-features = false`, on `metrics-util`,
//! `quanta`, `evmap`, `indexmap` and `base64`, and the EMF crate's default `lambda`
//! feature brings `lambda_http` (whose request conversion this crate avoids on purpose,
//! see `server::http_event`) and `tower`. The EMF JSON (one object per line) and the
//! Prometheus text format are a few dozen lines each on `serde_json`, already a
//! dependency. Measured: the stripped x86_64 release binary grew by 30,720 bytes
//! (10,071,560 -> 10,102,280, +0.3 %) with this module and its recording points.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::Recipient;
use crate::graph::{Messenger, ReplyButton, SendError};

/// The CloudWatch namespace of the EMF metrics.
pub const NAMESPACE: &str = "WhatsAppWebhook";

/// Most values of one metric in one EMF line (CloudWatch's limit).
pub const EMF_MAX_VALUES: usize = 100;

/// Most latency values kept for the next EMF flush per recorder (a 1000-message
/// delivery's turns; beyond it values still count in the totals but not in the EMF
/// distribution).
pub const MAX_PENDING: usize = 1000;

/// Prometheus histogram bounds, in seconds: a Graph call (~0.1 s) up to a long
/// agent turn (10 min).
const BUCKETS_SECS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// A counter: the total since start (Prometheus) and what the next EMF line reports.
#[derive(Default)]
pub struct Counter {
    total: AtomicU64,
    unflushed: AtomicU64,
}

impl Counter {
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.unflushed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn take(&self) -> u64 {
        self.unflushed.swap(0, Ordering::Relaxed)
    }
}

/// A latency recorder: a histogram since start (Prometheus) and the values since the
/// last EMF line, in milliseconds.
#[derive(Default)]
pub struct Latency {
    count: AtomicU64,
    sum_micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS_SECS.len()],
    pending: Mutex<Vec<u32>>,
}

impl Latency {
    pub fn record(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS_SECS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut pending) = self.pending.lock()
            && pending.len() < MAX_PENDING
        {
            pending.push(u32::try_from(took.as_millis()).unwrap_or(u32::MAX));
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn take(&self) -> Vec<u32> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Why a Graph API call failed, as a bounded set (Meta's codes are many; these are the
/// ones an operator acts on differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphErrorKind {
    /// HTTP 429 or a rate-limit code (4, 80007, 130429, 131056, 613).
    Throttled,
    /// The access token or its permissions (190, 10, 200–299; HTTP 401/403).
    Auth,
    /// Outside the 24 h customer-service window (131047).
    Window,
    /// Any other refusal: bad parameter, undeliverable recipient...
    Refused,
    /// HTTP 5xx or a temporary-outage code.
    Server,
    /// No HTTP answer: connection error or timeout.
    Network,
}

impl GraphErrorKind {
    pub const ALL: [GraphErrorKind; 6] = [
        GraphErrorKind::Throttled,
        GraphErrorKind::Auth,
        GraphErrorKind::Window,
        GraphErrorKind::Refused,
        GraphErrorKind::Server,
        GraphErrorKind::Network,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GraphErrorKind::Throttled => "Throttled",
            GraphErrorKind::Auth => "Auth",
            GraphErrorKind::Window => "Window",
            GraphErrorKind::Refused => "Refused",
            GraphErrorKind::Server => "Server",
            GraphErrorKind::Network => "Network",
        }
    }

    pub fn of(error: &SendError) -> GraphErrorKind {
        let (status, code) = match error {
            SendError::Permanent { status, code, .. } => (Some(*status), *code),
            SendError::Transient { detail, code, .. } => (
                detail
                    .strip_prefix("HTTP ")
                    .and_then(|s| s.parse::<u16>().ok()),
                *code,
            ),
        };
        match (status, code) {
            (_, Some(4 | 613 | 80007 | 130429 | 131056)) | (Some(429), _) => {
                GraphErrorKind::Throttled
            }
            (_, Some(10 | 190 | 200..=299)) | (Some(401 | 403), _) => GraphErrorKind::Auth,
            (_, Some(131047)) => GraphErrorKind::Window,
            (Some(s), _) if s >= 500 => GraphErrorKind::Server,
            (None, None) => GraphErrorKind::Network,
            _ if matches!(error, SendError::Transient { .. }) => GraphErrorKind::Server,
            _ => GraphErrorKind::Refused,
        }
    }
}

/// How the webhook answered a request, by the status classes Meta reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookStatus {
    /// 200: done (or queued); also verification GETs.
    Ok,
    /// 4xx: refused (signature, bad body, wrong path or method).
    Refused,
    /// 500: failed for now; Meta delivers again.
    Failed,
    /// 503: another delivery holds a message, or the local queue is full.
    Busy,
}

impl WebhookStatus {
    pub const ALL: [WebhookStatus; 4] = [
        WebhookStatus::Ok,
        WebhookStatus::Refused,
        WebhookStatus::Failed,
        WebhookStatus::Busy,
    ];

    pub fn of(status: u16) -> WebhookStatus {
        match status {
            503 => WebhookStatus::Busy,
            500..=599 => WebhookStatus::Failed,
            400..=499 => WebhookStatus::Refused,
            _ => WebhookStatus::Ok,
        }
    }

    /// The EMF metric name and the Prometheus `status` label.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            WebhookStatus::Ok => ("Webhook200", "200"),
            WebhookStatus::Refused => ("Webhook4xx", "4xx"),
            WebhookStatus::Failed => ("Webhook500", "500"),
            WebhookStatus::Busy => ("Webhook503", "503"),
        }
    }
}

/// Where EMF lines go: stdout in Lambda; tests capture them.
pub type EmfSink = Box<dyn Fn(&str) + Send + Sync>;

/// The metrics of one app.
#[derive(Default)]
pub struct Metrics {
    /// Messages accepted by the edge (allowed senders; per minute in the dashboard).
    pub messages: Counter,
    /// Turns run (engine turns, commands, notices), and those that failed for now.
    pub turns: Counter,
    pub turns_failed: Counter,
    pub turn_latency: Latency,
    /// Engine requests and those that failed (timeout, refused, unreachable).
    pub engine_calls: Counter,
    pub engine_failures: Counter,
    pub engine_latency: Latency,
    /// Graph API sends (retries inside one send not counted again), and failures.
    pub graph_calls: Counter,
    graph_errors: [Counter; GraphErrorKind::ALL.len()],
    webhook: [Counter; WebhookStatus::ALL.len()],
    /// Deliveries of messages already answered, skipped.
    pub duplicates: Counter,
    /// Queued mode: from enqueue (SQS `SentTimestamp`) to the worker taking the job.
    pub queue_wait: Latency,
    function: OnceLock<String>,
    sink: OnceLock<EmfSink>,
}

impl Metrics {
    pub fn graph_error(&self, kind: GraphErrorKind) {
        self.graph_errors[kind as usize].inc();
    }

    pub fn graph_errors(&self, kind: GraphErrorKind) -> u64 {
        self.graph_errors[kind as usize].total()
    }

    /// One engine request (a turn, or a Tier 3 decision passed on) that took `took`.
    pub fn engine_request(&self, took: Duration, failed: bool) {
        self.engine_calls.inc();
        self.engine_latency.record(took);
        if failed {
            self.engine_failures.inc();
        }
    }

    pub fn webhook(&self, status: u16) {
        self.webhook[WebhookStatus::of(status) as usize].inc();
    }

    pub fn webhook_count(&self, status: WebhookStatus) -> u64 {
        self.webhook[status as usize].total()
    }

    /// The `Function` dimension of the EMF lines (the Lambda function's name; set once).
    pub fn set_function(&self, name: &str) {
        let _ = self.function.set(name.to_string());
    }

    /// Send the EMF lines somewhere else than stdout (tests; set once).
    pub fn set_emf_sink(&self, sink: EmfSink) {
        let _ = self.sink.set(sink);
    }

    /// Write what was recorded since the last call as EMF lines (none if nothing was).
    /// Once per Lambda invocation, so each line covers one invocation.
    pub fn emit_emf(&self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let function = self.function.get().map_or("local", String::as_str);
        for line in self.take_emf(function, now_ms) {
            match self.sink.get() {
                Some(sink) => sink(&line),
                None => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }

    /// The EMF lines of what was recorded since the last call, resetting it: the
    /// counters (zeros left out) in the first line, with up to [`EMF_MAX_VALUES`]
    /// latency values per metric per line, more lines while values remain.
    pub fn take_emf(&self, function: &str, timestamp_ms: u64) -> Vec<String> {
        let mut counts: Vec<(&str, u64)> = vec![
            ("Messages", self.messages.take()),
            ("Turns", self.turns.take()),
            ("TurnsFailed", self.turns_failed.take()),
            ("EngineCalls", self.engine_calls.take()),
            ("EngineFailures", self.engine_failures.take()),
            ("GraphCalls", self.graph_calls.take()),
            ("DuplicatesSkipped", self.duplicates.take()),
        ];
        let mut graph_errors = 0;
        for kind in GraphErrorKind::ALL {
            let n = self.graph_errors[kind as usize].take();
            graph_errors += n;
            counts.push((graph_error_name(kind), n));
        }
        counts.push(("GraphErrors", graph_errors));
        for status in WebhookStatus::ALL {
            counts.push((status.names().0, self.webhook[status as usize].take()));
        }
        counts.retain(|(_, n)| *n > 0);
        let mut latencies: Vec<(&str, Vec<u32>)> = vec![
            ("TurnLatency", self.turn_latency.take()),
            ("EngineLatency", self.engine_latency.take()),
            ("QueueWait", self.queue_wait.take()),
        ];
        latencies.retain(|(_, v)| !v.is_empty());
        let mut lines = Vec::new();
        let mut first = true;
        while first || latencies.iter().any(|(_, v)| !v.is_empty()) {
            let mut root = serde_json::Map::new();
            let mut defs = Vec::new();
            if first {
                for (name, n) in counts.drain(..) {
                    root.insert(name.into(), n.into());
                    defs.push(serde_json::json!({"Name": name, "Unit": "Count"}));
                }
                first = false;
            }
            for (name, values) in &mut latencies {
                if values.is_empty() {
                    continue;
                }
                let chunk: Vec<u32> = values.drain(..values.len().min(EMF_MAX_VALUES)).collect();
                root.insert((*name).into(), chunk.into());
                defs.push(serde_json::json!({"Name": *name, "Unit": "Milliseconds"}));
            }
            if defs.is_empty() {
                break;
            }
            root.insert("Function".into(), function.into());
            root.insert(
                "_aws".into(),
                serde_json::json!({
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": NAMESPACE,
                        "Dimensions": [["Function"]],
                        "Metrics": defs,
                    }],
                }),
            );
            lines.push(serde_json::Value::Object(root).to_string());
        }
        lines
    }

    /// Everything since start in the Prometheus text format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter); 7] = [
            (
                "messages",
                "Messages accepted from allowed senders.",
                &self.messages,
            ),
            (
                "turns",
                "Turns run (engine turns, commands, notices).",
                &self.turns,
            ),
            (
                "turns_failed",
                "Turns that failed for now (delivered again).",
                &self.turns_failed,
            ),
            ("engine_calls", "Engine requests.", &self.engine_calls),
            (
                "engine_failures",
                "Engine requests that failed.",
                &self.engine_failures,
            ),
            (
                "graph_calls",
                "Graph API sends (retries included in one).",
                &self.graph_calls,
            ),
            (
                "duplicates_skipped",
                "Deliveries of messages already answered.",
                &self.duplicates,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP whatsapp_{name}_total {help}\n# TYPE whatsapp_{name}_total counter\nwhatsapp_{name}_total {}",
                counter.total()
            );
        }
        out.push_str("# HELP whatsapp_graph_errors_total Graph API sends that failed, by kind.\n# TYPE whatsapp_graph_errors_total counter\n");
        for kind in GraphErrorKind::ALL {
            let _ = writeln!(
                out,
                "whatsapp_graph_errors_total{{kind=\"{}\"}} {}",
                kind.name().to_ascii_lowercase(),
                self.graph_errors(kind)
            );
        }
        out.push_str("# HELP whatsapp_webhook_deliveries_total Webhook requests, by answer.\n# TYPE whatsapp_webhook_deliveries_total counter\n");
        for status in WebhookStatus::ALL {
            let _ = writeln!(
                out,
                "whatsapp_webhook_deliveries_total{{status=\"{}\"}} {}",
                status.names().1,
                self.webhook_count(status)
            );
        }
        for (name, help, latency) in [
            (
                "turn",
                "Time to run a turn, claim to settle.",
                &self.turn_latency,
            ),
            (
                "engine",
                "Time the engine took per request.",
                &self.engine_latency,
            ),
            (
                "queue_wait",
                "Time a queued turn waited for the worker.",
                &self.queue_wait,
            ),
        ] {
            let metric = format!("whatsapp_{name}_seconds");
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS_SECS.iter().zip(&latency.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(out, "{metric}_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            let count = latency.count();
            let sum = latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "{metric}_bucket{{le=\"+Inf\"}} {count}\n{metric}_sum {sum}\n{metric}_count {count}"
            );
        }
        out
    }
}

/// A [`Messenger`] that counts the calls and failures of the one it wraps (the Graph
/// client or the dry run): the app wraps its messenger in one, so every send of the
/// turn runner, the notices and the approvals is counted, and the trait stays small.
pub struct MeteredMessenger {
    inner: Arc<dyn Messenger>,
    metrics: Arc<Metrics>,
}

impl MeteredMessenger {
    pub fn new(inner: Arc<dyn Messenger>, metrics: Arc<Metrics>) -> Self {
        MeteredMessenger { inner, metrics }
    }

    fn count(&self, result: Result<(), SendError>) -> Result<(), SendError> {
        self.metrics.graph_calls.inc();
        if let Err(e) = &result {
            self.metrics.graph_error(GraphErrorKind::of(e));
        }
        result
    }
}

#[async_trait]
impl Messenger for MeteredMessenger {
    async fn send_text(&self, to: &Recipient, body: &str) -> Result<(), SendError> {
        self.count(self.inner.send_text(to, body).await)
    }

    async fn send_reply(
        &self,
        to: &Recipient,
        body: &str,
        reply_to: &str,
    ) -> Result<(), SendError> {
        self.count(self.inner.send_reply(to, body, reply_to).await)
    }

    async fn send_buttons(
        &self,
        to: &Recipient,
        body: &str,
        buttons: &[ReplyButton],
    ) -> Result<(), SendError> {
        self.count(self.inner.send_buttons(to, body, buttons).await)
    }

    async fn mark_read_typing(&self, message_id: &str) -> Result<(), SendError> {
        self.count(self.inner.mark_read_typing(message_id).await)
    }
}

fn graph_error_name(kind: GraphErrorKind) -> &'static str {
    match kind {
        GraphErrorKind::Throttled => "GraphErrorsThrottled",
        GraphErrorKind::Auth => "GraphErrorsAuth",
        GraphErrorKind::Window => "GraphErrorsWindow",
        GraphErrorKind::Refused => "GraphErrorsRefused",
        GraphErrorKind::Server => "GraphErrorsServer",
        GraphErrorKind::Network => "GraphErrorsNetwork",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn transient(detail: &str, code: Option<i64>) -> SendError {
        SendError::Transient {
            detail: detail.into(),
            code,
            fbtrace_id: None,
            retry_after: None,
        }
    }

    fn permanent(status: u16, code: Option<i64>) -> SendError {
        SendError::Permanent {
            status,
            code,
            fbtrace_id: Some("trace".into()),
        }
    }

    #[test]
    fn graph_errors_fall_into_a_few_kinds() {
        use GraphErrorKind::*;
        let cases = [
            (transient("HTTP 429", None), Throttled),
            (transient("HTTP 400", Some(130429)), Throttled),
            (permanent(401, Some(190)), Auth),
            (permanent(403, None), Auth),
            (permanent(400, Some(131047)), Window),
            (permanent(400, Some(100)), Refused),
            (permanent(404, None), Refused),
            (transient("HTTP 503", None), Server),
            (transient("HTTP 400", Some(131000)), Server),
            (transient("error sending request", None), Network),
        ];
        for (error, kind) in cases {
            assert_eq!(GraphErrorKind::of(&error), kind, "{error}");
        }
    }

    #[test]
    fn emf_reports_deltas_and_splits_latencies_at_100_values() {
        let m = Metrics::default();
        m.turns.add(3);
        m.graph_error(GraphErrorKind::Throttled);
        m.webhook(200);
        m.webhook(503);
        for i in 0..150 {
            m.turn_latency.record(Duration::from_millis(i));
        }
        let lines = m.take_emf("fn", 1_700_000_000_000);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        let directive = &first["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(first["_aws"]["Timestamp"], 1_700_000_000_000u64);
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], serde_json::json!([["Function"]]));
        assert_eq!(first["Function"], "fn");
        assert_eq!(first["Turns"], 3);
        assert_eq!(first["GraphErrors"], 1);
        assert_eq!(first["GraphErrorsThrottled"], 1);
        assert_eq!(first["Webhook200"], 1);
        assert_eq!(first["Webhook503"], 1);
        assert!(first.get("Webhook500").is_none(), "zeros are left out");
        assert_eq!(first["TurnLatency"].as_array().unwrap().len(), 100);
        // Every value in the object is declared, and every declared one is there.
        let declared: Vec<&str> = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["Name"].as_str().unwrap())
            .collect();
        for name in &declared {
            assert!(first.get(*name).is_some(), "{name}");
        }
        assert_eq!(first.as_object().unwrap().len(), declared.len() + 2);
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["TurnLatency"].as_array().unwrap().len(), 50);
        assert!(second.get("Turns").is_none(), "counters once per flush");
        // Flushed: nothing is reported twice.
        assert!(m.take_emf("fn", 0).is_empty());
        assert_eq!(m.turns.total(), 3, "the totals stay for Prometheus");
    }

    #[test]
    fn pending_latencies_are_capped() {
        let m = Metrics::default();
        for _ in 0..MAX_PENDING + 5 {
            m.engine_latency.record(Duration::from_millis(1));
        }
        assert_eq!(m.engine_latency.count(), (MAX_PENDING + 5) as u64);
        let lines = m.take_emf("fn", 0);
        assert_eq!(lines.len(), MAX_PENDING / EMF_MAX_VALUES);
    }

    #[test]
    fn prometheus_text_has_counters_labels_and_cumulative_buckets() {
        let m = Metrics::default();
        m.messages.add(2);
        m.graph_error(GraphErrorKind::Auth);
        m.webhook(500);
        m.webhook(404);
        m.engine_latency.record(Duration::from_millis(80));
        m.engine_latency.record(Duration::from_secs(3));
        let text = m.prometheus();
        for line in [
            "# TYPE whatsapp_messages_total counter",
            "whatsapp_messages_total 2",
            "whatsapp_graph_errors_total{kind=\"auth\"} 1",
            "whatsapp_graph_errors_total{kind=\"network\"} 0",
            "whatsapp_webhook_deliveries_total{status=\"500\"} 1",
            "whatsapp_webhook_deliveries_total{status=\"4xx\"} 1",
            "# TYPE whatsapp_engine_seconds histogram",
            "whatsapp_engine_seconds_bucket{le=\"0.05\"} 0",
            "whatsapp_engine_seconds_bucket{le=\"0.1\"} 1",
            "whatsapp_engine_seconds_bucket{le=\"5\"} 2",
            "whatsapp_engine_seconds_bucket{le=\"+Inf\"} 2",
            "whatsapp_engine_seconds_sum 3.08",
            "whatsapp_engine_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Reading does not reset: Prometheus scrapes totals.
        assert_eq!(m.prometheus(), text);
    }
}
