//! `split_reply` on arbitrary UTF-8 with a limit of 8..=300 UTF-16 units (the first
//! input byte), checking what its documentation promises: every part fits (with a
//! limit of 2 or more even a grapheme cluster longer than the limit is cut at char
//! boundaries to fit), no part is empty or starts or ends with whitespace, the parts
//! appear in the text in order, and no non-whitespace content is lost or added.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_webhook::split::split_reply;

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let limit = 8 + usize::from(limit) % 293;
    let parts = split_reply(text, limit);

    let mut offset = 0;
    for (i, part) in parts.iter().enumerate() {
        assert!(!part.is_empty(), "part {i} is empty");
        assert_eq!(part.trim(), part, "part {i} has whitespace at an end");
        let units = part.encode_utf16().count();
        assert!(
            units <= limit,
            "part {i} has {units} units > {limit}: {part:?}"
        );
        match text[offset..].find(part.as_str()) {
            Some(at) => offset += at + part.len(),
            None => panic!("part {i} is not in the text after byte {offset}: {part:?}"),
        }
    }
    assert_eq!(squash(&parts.concat()), squash(text), "content changed");
    if text.trim().is_empty() {
        assert!(parts.is_empty());
    }
});
