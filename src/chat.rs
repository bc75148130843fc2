//! `whatsapp-webhook chat`: talk to the bot in a terminal, or through a pipe.
//!
//! Each line read becomes a signed text webhook from [`CHAT_NUMBER`] handed to
//! [`App::handle`], the same edge Meta's POSTs meet (signature, payload walk,
//! allow-list, commands, engine, formatting, splitting), in process: no network unless
//! the configured engine needs one. [`ChatMessenger`] stands in for the Graph API and
//! prints what WhatsApp would show: each message sent (each part of a split reply) as
//! its own `bot:` block in WhatsApp markup, the read receipt and typing indicator as a
//! status line, reply buttons as numbered choices; typing a choice's number sends the
//! tap back as a `button_reply` webhook.
//!
//! The app runs its turns in sync mode, so a line's replies are printed before the
//! next line is read. A Tier 3 approval waits inside its turn for the tap, so while a
//! turn runs and buttons are shown, the next line is read and sent at once.
//!
//! Message text goes to the chat's output only, never through `tracing`.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use serde_json::json;
use tokio::sync::mpsc;

use crate::app::App;
use crate::domain::Recipient;
use crate::graph::{Messenger, ReplyButton, SendError};
use crate::webhook::signature::{SIGNATURE_HEADER, sign};

/// The number the chat's messages come from (a reserved 555 test number).
pub const CHAT_NUMBER: &str = "15550001234";
/// The documented test app secret (the one that signs `events/`): the chat signs with
/// it when the config has no app secret of its own.
pub const TEST_APP_SECRET: &str = "whatsapp-webhook-test-secret";
/// Longest line taken; the rest of a longer one is dropped. WhatsApp caps a text at
/// 4096 characters; this leaves room to try longer ones.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// What WhatsApp shows while the bot reads and answers.
pub const STATUS_LINE: &str = "  \u{2713}\u{2713} read \u{b7} typing\u{2026}";

const INDENT: &str = "     ";

/// One message as WhatsApp shows it: `bot:` then the text (continuation lines
/// indented); a reply quoting the user's message says so.
pub fn render_message(body: &str, quoting: bool) -> String {
    let head = if quoting {
        "bot (replying to you):"
    } else {
        "bot:"
    };
    let mut out = String::new();
    for (i, line) in body.split('\n').enumerate() {
        if i == 0 {
            out.push_str(head);
            if quoting {
                out.push('\n');
                out.push_str(INDENT);
            } else {
                out.push(' ');
            }
        } else {
            out.push_str(INDENT);
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// An interactive message: its text, then its buttons as numbered choices.
pub fn render_buttons(body: &str, buttons: &[ReplyButton]) -> String {
    let mut out = render_message(body, false);
    for (i, b) in buttons.iter().enumerate() {
        out.push_str(&format!("{INDENT}[{}] {}\n", i + 1, b.title));
    }
    out.push_str(&format!(
        "{INDENT}(type 1-{} to tap a button)\n",
        buttons.len()
    ));
    out
}

/// Prints what the bot sends, in place of the Graph API.
pub struct ChatMessenger {
    out: Mutex<Box<dyn Write + Send>>,
    /// The buttons of the last interactive message, until one is tapped.
    buttons: Mutex<Vec<ReplyButton>>,
    /// Messages printed (status lines not counted): tells a turn that sent nothing.
    printed: AtomicUsize,
    shown: mpsc::UnboundedSender<()>,
}

impl ChatMessenger {
    /// A messenger writing to `out`, and the receiver told each time buttons are shown.
    pub fn new(out: Box<dyn Write + Send>) -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (shown, rx) = mpsc::unbounded_channel();
        let messenger = ChatMessenger {
            out: Mutex::new(out),
            buttons: Mutex::new(Vec::new()),
            printed: AtomicUsize::new(0),
            shown,
        };
        (Arc::new(messenger), rx)
    }

    /// Write `text` (already line-terminated). A closed stdout is not the bot's
    /// failure: the message counts as sent.
    pub fn print(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn printed(&self) -> usize {
        self.printed.load(Ordering::SeqCst)
    }

    /// The button a line names by its number, taken off the pending ones; any other
    /// line drops them (the user answered otherwise).
    fn tap(&self, line: &str) -> Option<ReplyButton> {
        let mut buttons = self.buttons.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = line
            .trim()
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| buttons.get(i).cloned());
        buttons.clear();
        chosen
    }

    fn message(&self, text: String) {
        self.print(&text);
        self.printed.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Messenger for ChatMessenger {
    async fn send_text(&self, _to: &Recipient, body: &str) -> Result<(), SendError> {
        self.message(render_message(body, false));
        Ok(())
    }

    async fn send_reply(
        &self,
        _to: &Recipient,
        body: &str,
        _reply_to: &str,
    ) -> Result<(), SendError> {
        self.message(render_message(body, true));
        Ok(())
    }

    async fn send_buttons(
        &self,
        _to: &Recipient,
        body: &str,
        buttons: &[ReplyButton],
    ) -> Result<(), SendError> {
        *self.buttons.lock().unwrap_or_else(|e| e.into_inner()) = buttons.to_vec();
        self.message(render_buttons(body, buttons));
        let _ = self.shown.send(());
        Ok(())
    }

    async fn mark_read_typing(&self, _message_id: &str) -> Result<(), SendError> {
        self.print(&format!("{STATUS_LINE}\n"));
        Ok(())
    }
}

/// What one line sends: a text, or a tap on a reply button.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Text(&'a str),
    Tap(&'a ReplyButton),
}

/// The webhook body Meta would POST for `input` from [`CHAT_NUMBER`].
pub fn webhook_body(
    phone_number_id: &str,
    message_id: &str,
    timestamp: u64,
    input: Input<'_>,
) -> Vec<u8> {
    let mut message = json!({
        "from": CHAT_NUMBER,
        "id": message_id,
        "timestamp": timestamp.to_string(),
    });
    match input {
        Input::Text(text) => {
            message["type"] = json!("text");
            message["text"] = json!({ "body": text });
        }
        Input::Tap(button) => {
            message["type"] = json!("interactive");
            message["interactive"] = json!({
                "type": "button_reply",
                "button_reply": {"id": button.id, "title": button.title},
            });
        }
    }
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "0",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {
                        "display_phone_number": "15550000000",
                        "phone_number_id": phone_number_id,
                    },
                    "contacts": [{"profile": {"name": "You"}, "wa_id": CHAT_NUMBER}],
                    "messages": [message],
                },
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Lines of `input`, each at most [`MAX_LINE_BYTES`], read on a thread of their own
/// (stdin blocks) and handed over one at a time; the channel closes at end of input.
pub fn read_lines(input: impl BufRead + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        let mut input = input;
        loop {
            let mut buf = Vec::new();
            let limit = MAX_LINE_BYTES as u64 + 1;
            match std::io::Read::take(&mut input, limit).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE_BYTES {
                // Drop the rest of an over-long line.
                let mut rest = Vec::new();
                let _ = input.read_until(b'\n', &mut rest);
                buf.truncate(MAX_LINE_BYTES);
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The chat session: the app, how to sign, and what the user sees.
pub struct Chat {
    pub app: Arc<App>,
    /// Signs each webhook; `None` when the app takes unsigned POSTs.
    pub app_secret: Option<String>,
    pub phone_number_id: String,
    pub messenger: Arc<ChatMessenger>,
    /// Told when buttons are shown (from [`ChatMessenger::new`]).
    pub buttons_shown: mpsc::UnboundedReceiver<()>,
    /// Print `> ` before each line (a terminal); otherwise each line read is echoed as
    /// `> line`, so a piped transcript reads as a conversation.
    pub interactive: bool,
}

impl Chat {
    /// Answer every line of `lines` until it closes.
    pub async fn run(mut self, mut lines: mpsc::Receiver<String>) {
        let mut sent = 0u64;
        // The turn in flight and how many messages were printed before it.
        let mut running: Option<(tokio::task::JoinHandle<Response<Bytes>>, usize)> = None;
        loop {
            if let Some((turn, before)) = running.as_mut() {
                tokio::select! {
                    biased;
                    response = turn => {
                        let before = *before;
                        running = None;
                        self.report(response, before);
                        while self.buttons_shown.try_recv().is_ok() {}
                        continue;
                    }
                    // A Tier 3 approval waits in its turn for a tap: read the next line.
                    Some(()) = self.buttons_shown.recv() => {}
                }
            }
            if self.interactive {
                self.messenger.print("> ");
            }
            let Some(line) = lines.recv().await else {
                if let Some((turn, before)) = running.take() {
                    self.report(turn.await, before);
                }
                if self.interactive {
                    self.messenger.print("\n");
                }
                return;
            };
            if !self.interactive {
                self.messenger.print(&format!("> {line}\n"));
            }
            if line.trim().is_empty() {
                continue;
            }
            sent += 1;
            let request = self.request(&line, sent);
            let before = self.messenger.printed();
            let app = self.app.clone();
            let turn = tokio::spawn(async move { app.handle(request).await });
            if running.is_some() {
                // The tap of a turn that waits: its own POST answers at once.
                self.report(turn.await, before);
            } else {
                running = Some((turn, before));
            }
        }
    }

    /// The signed POST for one line: a tap when it names a pending button.
    fn request(&self, line: &str, n: u64) -> Request<Bytes> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Unique across runs too: a DynamoDB state table remembers answered ids.
        let id = format!("wamid.chat.{}.{n}", now.as_nanos());
        let tap = self.messenger.tap(line);
        let input = match &tap {
            Some(button) => Input::Tap(button),
            None => Input::Text(line),
        };
        let body = Bytes::from(webhook_body(
            &self.phone_number_id,
            &id,
            now.as_secs(),
            input,
        ));
        let mut request = Request::post("/webhook").header("content-type", "application/json");
        if let Some(secret) = &self.app_secret {
            request = request.header(SIGNATURE_HEADER, sign(secret, &body));
        }
        request
            .body(body)
            .unwrap_or_else(|_| Request::new(Bytes::new()))
    }

    /// Say so when a line got no message back, or the webhook refused it.
    fn report(
        &self,
        response: Result<Response<Bytes>, tokio::task::JoinError>,
        printed_before: usize,
    ) {
        let response = match response {
            Ok(r) => r,
            Err(_) => {
                self.messenger
                    .print("  (the turn failed: see the log above)\n");
                return;
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = String::from_utf8_lossy(response.body());
            self.messenger
                .print(&format!("  (webhook answered {status}: {})\n", body.trim()));
        } else if self.messenger.printed() == printed_before {
            self.messenger.print("  (no reply)\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buttons() -> Vec<ReplyButton> {
        vec![
            ReplyButton {
                id: "t3:a".into(),
                title: "Approve".into(),
            },
            ReplyButton {
                id: "t3:d".into(),
                title: "Deny".into(),
            },
        ]
    }

    #[test]
    fn a_message_is_one_block_with_indented_lines() {
        assert_eq!(
            render_message("*hi*\nthere", false),
            "bot: *hi*\n     there\n"
        );
        assert_eq!(
            render_message("hi", true),
            "bot (replying to you):\n     hi\n"
        );
    }

    #[test]
    fn buttons_are_numbered_choices() {
        assert_eq!(
            render_buttons("Run `ls`?", &buttons()),
            "bot: Run `ls`?\n     [1] Approve\n     [2] Deny\n     (type 1-2 to tap a button)\n"
        );
    }

    #[tokio::test]
    async fn a_number_taps_a_pending_button_once() {
        let (m, mut shown) = ChatMessenger::new(Box::new(std::io::sink()));
        let to = Recipient::Phone(CHAT_NUMBER.into());
        m.send_buttons(&to, "Run?", &buttons()).await.unwrap();
        assert!(shown.try_recv().is_ok());
        assert_eq!(m.tap("3"), None, "no third button; the others are dropped");
        m.send_buttons(&to, "Run?", &buttons()).await.unwrap();
        assert_eq!(m.tap(" 2 ").map(|b| b.id), Some("t3:d".to_string()));
        assert_eq!(m.tap("2"), None, "a button is tapped once");
    }

    #[test]
    fn a_tap_is_a_button_reply_from_the_chat_number() {
        let body = webhook_body("123", "wamid.x", 7, Input::Tap(&buttons()[0]));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = &v["entry"][0]["changes"][0]["value"]["messages"][0];
        assert_eq!(message["from"], CHAT_NUMBER);
        assert_eq!(message["interactive"]["button_reply"]["id"], "t3:a");
        assert_eq!(
            v["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"],
            "123"
        );
    }

    #[tokio::test]
    async fn over_long_lines_are_cut_and_the_next_line_kept() {
        let mut input = vec![b'a'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nnext\r\n");
        let mut lines = read_lines(std::io::Cursor::new(input));
        assert_eq!(lines.recv().await.map(|l| l.len()), Some(MAX_LINE_BYTES));
        assert_eq!(lines.recv().await.as_deref(), Some("next"));
        assert_eq!(lines.recv().await, None);
    }
}
