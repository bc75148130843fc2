//! `split_reply` on long replies: 4 KB, 64 KB and 1 MB of ASCII prose with
//! paragraphs, of CJK text, and of emoji-heavy text (ZWJ sequences, flags, skin tones).
//!
//! `cargo bench --bench split -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use whatsapp_webhook::split::{MAX_PART_UTF16, split_reply};

const SIZES: [(&str, usize); 3] = [("4KB", 4 << 10), ("64KB", 64 << 10), ("1MB", 1 << 20)];

/// A small deterministic generator, so every run splits the same text.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Cut `text` to at most `len` bytes, at a char boundary.
fn truncate(mut text: String, len: usize) -> String {
    let mut end = len.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// English prose: sentences of 6–20 words, paragraphs of 2–6 sentences, an
/// occasional single line break (a list item).
fn ascii_prose(len: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "agent",
        "replies",
        "with",
        "a",
        "short",
        "answer",
        "to",
        "every",
        "message",
        "and",
        "keeps",
        "its",
        "session",
        "for",
        "thirty",
        "days",
        "while",
        "webhook",
        "delivery",
        "may",
        "repeat",
        "so",
        "each",
        "id",
        "is",
        "stored",
        "once",
        "before",
        "sending",
        "text",
        "parts",
        "in",
        "order",
        "WhatsApp",
        "limits",
        "body",
        "length",
        "of",
        "characters",
        "which",
        "means",
        "long",
        "output",
        "must",
        "be",
        "split",
    ];
    const ENDS: &[&str] = &[".", ".", ".", "!", "?", "…"];
    let mut rng = Rng(1);
    let mut out = String::with_capacity(len + 256);
    while out.len() < len {
        for s in 0..2 + rng.below(5) {
            if s > 0 {
                out.push_str(if rng.below(8) == 0 { "\n- " } else { " " });
            }
            for w in 0..6 + rng.below(15) {
                if w > 0 {
                    out.push(' ');
                }
                let word = rng.pick(WORDS);
                if w == 0 {
                    let mut chars = word.chars();
                    if let Some(first) = chars.next() {
                        out.extend(first.to_uppercase());
                        out.push_str(chars.as_str());
                    }
                } else {
                    out.push_str(word);
                }
            }
            out.push_str(rng.pick(ENDS));
        }
        out.push_str("\n\n");
    }
    truncate(out, len)
}

/// Chinese and Japanese text: no spaces, full-width sentence enders, paragraphs.
fn cjk(len: usize) -> String {
    const PHRASES: &[&str] = &[
        "我们明天早上九点开门",
        "请在下午五点之前预约",
        "会话在三十天后过期",
        "每条消息只回复一次",
        "明日の営業時間は十時からです",
        "ご予約はこちらからどうぞ",
        "長い返信は複数のメッセージに分割されます",
        "感谢您的耐心等待",
    ];
    const ENDS: &[&str] = &["。", "。", "！", "？", "，"];
    let mut rng = Rng(2);
    let mut out = String::with_capacity(len + 256);
    while out.len() < len {
        for _ in 0..3 + rng.below(6) {
            out.push_str(rng.pick(PHRASES));
            out.push_str(rng.pick(ENDS));
        }
        out.push_str(if rng.below(3) == 0 { "\n" } else { "\n\n" });
    }
    truncate(out, len)
}

/// Emoji-heavy chat text: runs of emoji (ZWJ families, flags, skin tones, VS16),
/// short words between them, few spaces and sentence ends.
fn emoji(len: usize) -> String {
    const EMOJI: &[&str] = &[
        "😀",
        "🎉",
        "👍🏽",
        "❤️",
        "👨‍👩‍👧‍👦",
        "🏳️‍🌈",
        "🇧🇷",
        "🇯🇵",
        "🧑🏿‍💻",
        "🙏",
        "🔥",
        "✅",
        "👩‍❤️‍👨",
        "🤷‍♀️",
        "🚀",
        "1️⃣",
    ];
    const WORDS: &[&str] = &["ok", "great", "thanks", "see you", "lol", "yes", "party"];
    let mut rng = Rng(3);
    let mut out = String::with_capacity(len + 256);
    while out.len() < len {
        for _ in 0..1 + rng.below(6) {
            out.push_str(rng.pick(EMOJI));
        }
        match rng.below(10) {
            0 => out.push_str("!\n"),
            1 => out.push_str("\n\n"),
            2..=5 => {
                out.push(' ');
                out.push_str(rng.pick(WORDS));
                out.push(' ');
            }
            _ => out.push(' '),
        }
    }
    truncate(out, len)
}

fn split(c: &mut Criterion) {
    type MakeText = fn(usize) -> String;
    let kinds: [(&str, MakeText); 3] =
        [("ascii_prose", ascii_prose), ("cjk", cjk), ("emoji", emoji)];
    for (kind, make) in kinds {
        let mut group = c.benchmark_group(format!("split_reply/{kind}"));
        for (size_name, size) in SIZES {
            let text = make(size);
            let parts = split_reply(&text, MAX_PART_UTF16);
            assert!(!parts.is_empty(), "{kind} {size_name}: no parts");
            eprintln!(
                "split_reply/{kind}/{size_name}: {} bytes, {} UTF-16 units -> {} parts",
                text.len(),
                text.encode_utf16().count(),
                parts.len()
            );
            if size >= 1 << 20 {
                group.sample_size(20);
            }
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_with_input(BenchmarkId::from_parameter(size_name), &text, |b, text| {
                b.iter(|| split_reply(black_box(text), MAX_PART_UTF16))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, split);
criterion_main!(benches);
