//! Which turn an event on the shared WebSocket belongs to.
//!
//! The engine names each run itself (`"msg-" + id`, `internal/web/websocket.go`
//! `handleWSMessage`) and never tells the sender which id its message got. Every
//! event of a run carries `session_id` and `message_id`, and reaches every socket
//! subscribed to the session, including events of runs whose turn we gave up on
//! (`internal/engine/broadcaster.go`): a run goes on after its socket stops waiting.
//!
//! A turn learns its run's id from the `log_entry` the engine broadcasts to every
//! socket before it forwards the message (`ws_message_received`, with `session` and
//! `message_id`; the engine logs at Info or Debug, `internal/engine/engine.go`). If
//! no info-level log entry ever arrives (the engine's logger fell back to a no-op),
//! a turn binds to the first event on its session from a run not known to be stale.
//! Runs we gave up on are remembered per session, bounded, so that their late events
//! never become the reply to a later message.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

/// Stale runs remembered per session; an engine runs one message at a time, so a
/// session rarely has more than one or two runs still going.
const STALE_PER_SESSION: usize = 16;
/// Sessions with stale runs remembered; beyond this the oldest memory is cleared.
const MAX_SESSIONS: usize = 10_000;

/// What the router hands a waiting turn: one event of its run, as JSON.
pub(super) type RunEvents = mpsc::UnboundedSender<Value>;

#[derive(Default)]
pub(super) struct Router {
    waiting: HashMap<String, Waiter>,
    /// Runs of each session whose events must go nowhere.
    stale: HashMap<String, VecDeque<String>>,
    /// Per session, runs given up on before their id was known.
    unnamed_orphans: HashMap<String, usize>,
    /// Whether the engine broadcasts info-level log entries (then a run is bound only
    /// through its `ws_message_received` entry).
    info_logs: bool,
}

struct Waiter {
    run: Option<String>,
    events: RunEvents,
}

/// The envelope every event has; `log_entry` carries `entry` instead.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    entry: Option<LogEntry>,
}

#[derive(Deserialize)]
struct LogEntry {
    #[serde(default)]
    level: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    data: Option<LogData>,
}

#[derive(Deserialize)]
struct LogData {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
}

/// Why a turn could not wait on its session.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SessionBusy;

impl Router {
    /// Wait for the next run on `session`. Only one turn per session may wait: a
    /// second would not know which run is its own.
    pub(super) fn wait(&mut self, session: &str, events: RunEvents) -> Result<(), SessionBusy> {
        if self.waiting.contains_key(session) {
            return Err(SessionBusy);
        }
        self.waiting
            .insert(session.to_string(), Waiter { run: None, events });
        Ok(())
    }

    /// The turn on `session` stopped waiting. `finished`: its run ended (its last
    /// event came); otherwise the run goes on and its later events are stale.
    pub(super) fn done(&mut self, session: &str, finished: bool) {
        let Some(waiter) = self.waiting.remove(session) else {
            return;
        };
        match waiter.run {
            Some(run) => self.mark_stale(session, run),
            None if !finished => *self.unnamed_orphans.entry(session.to_string()).or_default() += 1,
            None => {}
        }
    }

    /// The run a turn on `session` is bound to, if known yet.
    #[cfg(test)]
    fn run_of(&self, session: &str) -> Option<&str> {
        self.waiting.get(session)?.run.as_deref()
    }

    /// Route one event. Events of no waiting turn are dropped (and their runs
    /// remembered as stale).
    pub(super) fn route(&mut self, event: Value) {
        let Ok(envelope) = Envelope::deserialize(&event) else {
            return;
        };
        if envelope.kind == "log_entry" {
            if let Some(entry) = envelope.entry {
                self.log_entry(entry);
            }
            return;
        }
        let Some(session) = envelope.session_id.filter(|s| !s.is_empty()) else {
            // `pong`, or an error about a frame itself (INVALID_JSON, UNKNOWN_TYPE):
            // we send neither kind of frame it could be about.
            if envelope.kind == "error" {
                tracing::warn!("the engine reported an error without a session; ignored");
            }
            return;
        };
        let run = envelope.message_id.unwrap_or_default();
        if self.is_stale(&session, &run) {
            return;
        }
        let bound = self.waiting.get(&session).map(|w| w.run.clone());
        match bound {
            Some(Some(ours)) if ours == run => self.deliver(&session, event),
            Some(Some(_)) => self.mark_stale(&session, run),
            Some(None) => {
                if self.take_orphan(&session) || self.info_logs {
                    // An earlier run's late event (with logs on, ours is named first).
                    self.mark_stale(&session, run);
                } else {
                    if let Some(waiter) = self.waiting.get_mut(&session) {
                        waiter.run = Some(run);
                    }
                    self.deliver(&session, event);
                }
            }
            None => {
                self.take_orphan(&session);
                self.mark_stale(&session, run);
            }
        }
    }

    fn log_entry(&mut self, entry: LogEntry) {
        if entry.level == "info" || entry.level == "debug" {
            self.info_logs = true;
        }
        if entry.event != "ws_message_received" {
            return;
        }
        let Some(LogData {
            session: Some(session),
            message_id: Some(run),
        }) = entry.data
        else {
            return;
        };
        match self.waiting.get_mut(&session) {
            Some(waiter) if waiter.run.is_none() => waiter.run = Some(run),
            // Someone else's message on a session we listen to (another process).
            _ => self.mark_stale(&session, run),
        }
    }

    fn deliver(&mut self, session: &str, event: Value) {
        if let Some(waiter) = self.waiting.get(session) {
            let _ = waiter.events.send(event);
        }
    }

    fn take_orphan(&mut self, session: &str) -> bool {
        match self.unnamed_orphans.get_mut(session) {
            Some(count) if *count > 0 => {
                *count -= 1;
                if *count == 0 {
                    self.unnamed_orphans.remove(session);
                }
                true
            }
            _ => false,
        }
    }

    fn is_stale(&self, session: &str, run: &str) -> bool {
        self.stale
            .get(session)
            .is_some_and(|runs| runs.iter().any(|r| r == run))
    }

    fn mark_stale(&mut self, session: &str, run: String) {
        if self.is_stale(session, &run) {
            return;
        }
        if self.stale.len() >= MAX_SESSIONS && !self.stale.contains_key(session) {
            // Bounded memory: forgetting costs at most a late event ignored by binding.
            self.stale.clear();
        }
        let runs = self.stale.entry(session.to_string()).or_default();
        if runs.len() >= STALE_PER_SESSION {
            runs.pop_front();
        }
        runs.push_back(run);
    }

    /// Whether a turn waits for its run.
    pub(super) fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Every waiting turn learns that the connection is gone (its channel closes).
    pub(super) fn close_all(&mut self) {
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(session: &str, run: &str, kind: &str) -> Value {
        json!({"type": kind, "session_id": session, "message_id": run})
    }

    fn received(session: &str, run: &str) -> Value {
        json!({"type": "log_entry", "entry": {"level": "info", "event": "ws_message_received",
            "data": {"session": session, "message_id": run, "content_len": 2}}})
    }

    fn connected() -> Value {
        json!({"type": "log_entry", "entry": {"level": "info", "event": "ws_connected", "data": {"remote": "127.0.0.1:1"}}})
    }

    fn kinds(rx: &mut mpsc::UnboundedReceiver<Value>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(v) = rx.try_recv() {
            out.push(format!(
                "{}/{}",
                v["message_id"].as_str().unwrap_or(""),
                v["type"].as_str().unwrap_or("")
            ));
        }
        out
    }

    #[test]
    fn with_logs_a_turn_takes_only_the_run_named_for_it() {
        let mut router = Router::default();
        router.route(connected());
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        // A late event of an earlier run comes before ours is named.
        router.route(event("s", "msg-old", "response_complete"));
        router.route(received("s", "msg-new"));
        router.route(event("s", "msg-old", "llm_token"));
        router.route(event("other", "msg-x", "response_complete"));
        router.route(event("s", "msg-new", "response_complete"));
        assert_eq!(kinds(&mut rx), vec!["msg-new/response_complete"]);
        assert_eq!(router.run_of("s"), Some("msg-new"));
    }

    #[test]
    fn without_logs_a_turn_binds_to_the_first_run_not_known_stale() {
        let mut router = Router::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        router.route(event("s", "msg-1", "llm_token"));
        router.done("s", false); // gave up: msg-1 goes on
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        router.route(event("s", "msg-1", "response_complete"));
        router.route(event("s", "msg-2", "response_complete"));
        assert_eq!(kinds(&mut rx), vec!["msg-2/response_complete"]);
    }

    #[test]
    fn a_run_given_up_before_it_was_named_does_not_become_the_next_turns() {
        let mut router = Router::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        router.done("s", false); // nothing of its run came yet
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        router.route(event("s", "msg-1", "llm_token"));
        router.route(event("s", "msg-1", "response_complete"));
        router.route(event("s", "msg-2", "response_complete"));
        assert_eq!(kinds(&mut rx), vec!["msg-2/response_complete"]);
    }

    #[test]
    fn one_turn_per_session_and_a_closed_connection_ends_them_all() {
        let mut router = Router::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        let (other, _) = mpsc::unbounded_channel();
        assert_eq!(router.wait("s", other), Err(SessionBusy));
        router.close_all();
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn memory_of_stale_runs_is_bounded() {
        let mut router = Router::default();
        for i in 0..100 {
            router.route(event("s", &format!("msg-{i}"), "llm_token"));
        }
        assert_eq!(router.stale["s"].len(), STALE_PER_SESSION);
        for i in 0..MAX_SESSIONS + 5 {
            router.route(event(&format!("s{i}"), "msg", "llm_token"));
        }
        assert!(router.stale.len() <= MAX_SESSIONS);
    }

    #[test]
    fn events_it_cannot_read_are_dropped() {
        let mut router = Router::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.wait("s", tx).unwrap();
        for junk in [
            json!(null),
            json!([1]),
            json!({"type": 3}),
            json!({"type": "error"}),
        ] {
            router.route(junk);
        }
        assert!(kinds(&mut rx).is_empty());
    }
}
