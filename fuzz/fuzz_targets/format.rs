//! `convert` (Markdown → WhatsApp markup, and plain text) on arbitrary UTF-8, the
//! engine's reply as the adapter gets it: never a panic, a stack overflow or a hang
//! (libFuzzer's `-timeout`), and `Format::None` returns the input unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_webhook::format::{Format, convert};

fuzz_target!(|data: &[u8]| {
    let Ok(markdown) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(convert(markdown, Format::None), markdown);
    let _ = convert(markdown, Format::Plain);
    let _ = convert(markdown, Format::WhatsApp);
});
