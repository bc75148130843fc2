//! Splitting a long reply into WhatsApp-sized text messages.
//!
//! Meta rejects a text message body longer than [`MAX_PART_UTF16`]; we count
//! the length conservatively in UTF-16 code units, so an emoji outside the
//! Basic Multilingual Plane counts 2 and a ZWJ family emoji such as
//! "👨‍👩‍👧‍👦" counts 11.
//!
//! [`split_reply`] cuts a reply into parts that each fit. Every cut is the
//! *last* boundary inside the window (the longest prefix that fits) of the
//! best kind that exists in that window, in this order of preference:
//!
//! 1. a paragraph break: a whitespace run holding two or more `'\n'`, i.e. a
//!    blank or whitespace-only line (`"\n\n"`, `"\n \n"`, `"\r\n\r\n"`, …);
//! 2. a line break: a whitespace run holding one `'\n'`;
//! 3. a sentence end: `.`, `!`, `?` or `…` followed by whitespace, or one of
//!    the full-width enders `。`, `！`, `？` (which need no whitespace after
//!    them);
//! 4. any other whitespace run ([`char::is_whitespace`]);
//! 5. an extended grapheme cluster boundary, so a cut never falls inside a
//!    char, a surrogate pair, a ZWJ sequence, a flag or a base letter with
//!    its combining marks.
//!
//! There are no further heuristics: in particular a paragraph break early in
//! the window still wins over a line break late in it.
//!
//! The whitespace at a cut is dropped, so every part is non-empty and has no
//! leading or trailing whitespace; the whitespace inside a part is kept as it
//! was. The reply as a whole is trimmed too, and an empty or whitespace-only
//! reply gives no parts at all.
//!
//! The limit is assumed to be at least 16 units or so, so that any grapheme
//! cluster that occurs in practice fits in one part. With a smaller limit a
//! cluster longer than the limit is cut at char boundaries instead (never
//! inside a surrogate pair); with a limit of 1 a char of 2 units is emitted
//! alone, as the only part longer than the limit. A limit of 0 is treated
//! as 1. The function never panics.
//!
//! Cost: each part is found by one forward walk over the graphemes of its
//! window with a running UTF-16 count, so the whole split is linear in the
//! length of the reply and allocates only the returned strings.

use unicode_segmentation::UnicodeSegmentation;

/// Meta's limit for a text message body, counted conservatively in UTF-16 code units (an emoji counts 2).
pub const MAX_PART_UTF16: usize = 4096;

/// Preference levels of a cut, best first; they index [`find_cut`]'s table.
const PARAGRAPH: usize = 0;
const LINE: usize = 1;
const SENTENCE: usize = 2;
const SPACE: usize = 3;
const GRAPHEME: usize = 4;
const LEVELS: usize = 5;

/// A cut in the remaining text: the part is `rest[..end]`, and the text after
/// it resumes at `rest[next..]`; what lies between is whitespace to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    end: usize,
    next: usize,
}

/// Split `text` into parts of at most `max_units` UTF-16 code units each.
///
/// See the [module documentation](self) for where the cuts fall. Parts are
/// never empty and never start or end with whitespace; removing all the
/// whitespace from their concatenation gives the input with all whitespace
/// removed. `max_units` is assumed to be at least 16 or so; smaller values
/// still work, see the module documentation.
pub fn split_reply(text: &str, max_units: usize) -> Vec<String> {
    let max_units = max_units.max(1);
    let mut parts = Vec::new();
    let mut rest = text.trim();
    // UTF-8 never takes fewer bytes than UTF-16 takes units, so a reply this short fits
    // without walking its graphemes (the common case).
    if !rest.is_empty() && rest.len() <= max_units {
        return vec![rest.to_owned()];
    }
    while !rest.is_empty() {
        match find_cut(rest, max_units) {
            None => {
                parts.push(rest.to_owned());
                break;
            }
            Some(cut) => {
                parts.push(rest[..cut.end].to_owned());
                rest = &rest[cut.next..];
            }
        }
    }
    parts
}

/// Find where to cut `rest`, which starts and ends with non-whitespace.
///
/// Returns `None` when the whole of `rest` fits within `max` units.
fn find_cut(rest: &str, max: usize) -> Option<Cut> {
    // The last cut seen of each level; later ones replace earlier ones.
    let mut best: [Option<Cut>; LEVELS] = [None; LEVELS];
    // UTF-16 units of `rest` up to the end of the current grapheme.
    let mut units = 0usize;
    // The last non-whitespace grapheme seen: its end and its last char.
    let mut prev: Option<(usize, char)> = None;
    // The whitespace run since `prev`: whether there is one, its '\n' count.
    let mut in_run = false;
    let mut newlines = 0usize;

    for (start, g) in rest.grapheme_indices(true) {
        units += g.chars().map(char::len_utf16).sum::<usize>();
        if g.chars().all(char::is_whitespace) {
            in_run = true;
            newlines += g.bytes().filter(|&b| b == b'\n').count();
            continue;
        }
        // `g` is a non-whitespace grapheme; the boundary before it (after
        // any whitespace run) is a candidate, provided that trimming keeps to
        // grapheme boundaries: a cluster such as a space followed by a
        // combining mark must not begin or end a part.
        if let Some((end, last)) = prev
            && !last.is_whitespace()
            && !g.starts_with(char::is_whitespace)
        {
            let level = if in_run {
                if newlines >= 2 {
                    PARAGRAPH
                } else if newlines == 1 {
                    LINE
                } else if is_sentence_end(last) {
                    SENTENCE
                } else {
                    SPACE
                }
            } else if is_full_width_sentence_end(last) {
                SENTENCE
            } else {
                GRAPHEME
            };
            best[level] = Some(Cut { end, next: start });
        }
        if units > max {
            // Every later candidate would make the part too long.
            let chosen = best.into_iter().flatten().next();
            return Some(chosen.unwrap_or_else(|| char_cut(rest, max)));
        }
        let last = g.chars().next_back().unwrap_or(' ');
        prev = Some((start + g.len(), last));
        in_run = false;
        newlines = 0;
    }
    None
}

/// The fallback when no grapheme boundary fits (the first grapheme cluster is
/// longer than `max`): cut after the most chars that fit, at least one.
fn char_cut(rest: &str, max: usize) -> Cut {
    let mut units = 0usize;
    let mut end = 0usize;
    for (i, c) in rest.char_indices() {
        let u = c.len_utf16();
        if end > 0 && units + u > max {
            break;
        }
        units += u;
        end = i + c.len_utf8();
    }
    let tail = &rest[end..];
    Cut {
        end: rest[..end].trim_end().len(),
        next: end + (tail.len() - tail.trim_start().len()),
    }
}

/// A char that ends a sentence when whitespace follows it.
fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…') || is_full_width_sentence_end(c)
}

/// A full-width (CJK) sentence ender, which needs no whitespace after it.
fn is_full_width_sentence_end(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAMILY: &str = "👨\u{200d}👩\u{200d}👧\u{200d}👦";

    fn units(s: &str) -> usize {
        s.encode_utf16().count()
    }

    fn split(text: &str, max: usize) -> Vec<String> {
        split_reply(text, max)
    }

    #[test]
    fn empty_and_whitespace_only_give_no_parts() {
        assert!(split("", 10).is_empty());
        assert!(split(" \n\t\r\n \u{a0}\u{3000}", 10).is_empty());
        assert!(split(&" ".repeat(10_000), 16).is_empty());
    }

    #[test]
    fn fitting_text_is_one_trimmed_part() {
        assert_eq!(split("  hello world  ", MAX_PART_UTF16), ["hello world"]);
        assert_eq!(split("a\n\n  b\tc", 8), ["a\n\n  b\tc"]);
    }

    #[test]
    fn exactly_the_limit_fits_and_one_more_does_not() {
        let text = "a".repeat(MAX_PART_UTF16);
        assert_eq!(split(&text, MAX_PART_UTF16), [text.as_str()]);
        let text = "a".repeat(MAX_PART_UTF16 + 1);
        assert_eq!(
            split(&text, MAX_PART_UTF16),
            ["a".repeat(MAX_PART_UTF16), "a".to_owned()]
        );
        // 2047 emoji and two ASCII letters: 4096 units.
        let text = format!("{}ab", "😀".repeat(2047));
        assert_eq!(units(&text), MAX_PART_UTF16);
        assert_eq!(split(&text, MAX_PART_UTF16).len(), 1);
        let text = format!("{text}c");
        assert_eq!(split(&text, MAX_PART_UTF16).len(), 2);
    }

    #[test]
    fn paragraph_beats_line_sentence_space() {
        // The window (14 units) holds every kind of boundary.
        assert_eq!(split("aa\n\nbb\ncc. dd ee", 14), ["aa", "bb\ncc. dd ee"]);
        assert_eq!(split("aa\n \nbb\ncc. dd ee", 14), ["aa", "bb\ncc. dd ee"]);
        assert_eq!(split("aa\r\n\r\nbb\ncc dd ee", 14), ["aa", "bb\ncc dd ee"]);
    }

    #[test]
    fn line_beats_sentence_and_space() {
        assert_eq!(split("aa bb\ncc. dd ee ff", 14), ["aa bb", "cc. dd ee ff"]);
        assert_eq!(
            split("aa bb\r\ncc. dd ee ff", 14),
            ["aa bb", "cc. dd ee ff"]
        );
    }

    #[test]
    fn sentence_beats_space() {
        assert_eq!(split("aa. bb cc dd", 10), ["aa.", "bb cc dd"]);
        assert_eq!(split("aa! bb cc dd", 10), ["aa!", "bb cc dd"]);
        assert_eq!(split("aa? bb cc dd", 10), ["aa?", "bb cc dd"]);
        assert_eq!(split("aa… bb cc dd", 10), ["aa…", "bb cc dd"]);
        // No whitespace after the dot: not a sentence end.
        assert_eq!(split("a.b cc dd ee", 10), ["a.b cc dd", "ee"]);
    }

    #[test]
    fn space_beats_grapheme() {
        assert_eq!(split("aaaa bbbbbbbb", 8), ["aaaa", "bbbbbbbb"]);
        assert_eq!(split("aaaa\u{a0}bbbbbbbb", 8), ["aaaa", "bbbbbbbb"]);
    }

    #[test]
    fn grapheme_cut_when_nothing_better() {
        assert_eq!(split("abcdefghij", 4), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn last_boundary_of_the_best_kind_wins() {
        assert_eq!(split("a b c d e f", 5), ["a b c", "d e f"]);
        assert_eq!(split("a. b. c. d e", 7), ["a. b.", "c. d e"]);
        assert_eq!(
            split("p1\n\np2\n\np3 is long", 12),
            ["p1\n\np2", "p3 is long"]
        );
        // An early paragraph break wins over a late line break.
        assert_eq!(split("a\n\nbbb\ncc dd", 10), ["a", "bbb\ncc dd"]);
    }

    #[test]
    fn whitespace_at_cuts_is_dropped_interior_kept() {
        assert_eq!(split("a  b\n\n\n\n  c", 4), ["a  b", "c"]);
        assert_eq!(split("x\t y z\n\n\tw", 6), ["x\t y z", "w"]);
        // A long whitespace run after the window is dropped whole.
        let text = format!("abc{}def", " ".repeat(100));
        assert_eq!(split(&text, 16), ["abc", "def"]);
    }

    #[test]
    fn emoji_count_two_units() {
        let text = "😀".repeat(4096);
        assert_eq!(units(&text), 8192);
        let parts = split(&text, MAX_PART_UTF16);
        assert_eq!(parts, ["😀".repeat(2048), "😀".repeat(2048)]);
        assert_eq!(split("😀😀😀", 5), ["😀😀", "😀"]);
    }

    #[test]
    fn zwj_sequence_is_never_cut() {
        assert_eq!(units(FAMILY), 11);
        let text = FAMILY.repeat(3);
        assert_eq!(split(&text, 30), [FAMILY.repeat(2), FAMILY.to_owned()]);
        assert_eq!(split(&text, 21), [FAMILY; 3]);
        assert_eq!(
            split(&format!("ab{FAMILY}cd"), 12),
            ["ab", format!("{FAMILY}c").as_str(), "d"]
        );
    }

    #[test]
    fn flag_is_never_cut() {
        let text = "🇫🇷".repeat(5);
        assert_eq!(split(&text, 7), ["🇫🇷"; 5]);
        assert_eq!(split(&text, 9), ["🇫🇷🇫🇷", "🇫🇷🇫🇷", "🇫🇷"]);
    }

    #[test]
    fn combining_mark_stays_with_its_base() {
        let text = "e\u{301}".repeat(4);
        assert_eq!(split(&text, 3), ["e\u{301}"; 4]);
        assert_eq!(split("ae\u{301}", 2), ["a", "e\u{301}"]);
    }

    #[test]
    fn cjk_splits_after_full_stop() {
        let text = "今日は晴れです。明日は雨です。";
        assert_eq!(split(text, 10), ["今日は晴れです。", "明日は雨です。"]);
        assert_eq!(
            split("一二三！四五六七八九", 8),
            ["一二三！", "四五六七八九"]
        );
        assert_eq!(
            split("一二三？四五六七八九", 8),
            ["一二三？", "四五六七八九"]
        );
        // Without an ender: a grapheme cut at the very end of the window.
        assert_eq!(
            split("一二三四五六七八九十", 8),
            ["一二三四五六七八", "九十"]
        );
    }

    #[test]
    fn text_without_whitespace() {
        let text = "x".repeat(10_000);
        let lens: Vec<usize> = split(&text, MAX_PART_UTF16)
            .iter()
            .map(|p| p.len())
            .collect();
        assert_eq!(lens, [4096, 4096, 1808]);
    }

    #[test]
    fn tiny_limits_cut_at_chars_and_never_panic() {
        assert_eq!(split("😀a", 1), ["😀", "a"]);
        assert_eq!(split("ab c", 1), ["a", "b", "c"]);
        assert_eq!(split("ab", 0), ["a", "b"]);
        let parts = split(FAMILY, 2);
        assert_eq!(parts.concat(), FAMILY);
        assert!(parts.iter().all(|p| units(p) <= 2));
        let parts = split(&format!("{FAMILY} {FAMILY}"), 8);
        assert_eq!(parts.concat(), FAMILY.repeat(2));
        assert!(parts.iter().all(|p| units(p) <= 8));
    }

    #[test]
    fn megabyte_reply_is_linear() {
        let unit = "Lorem ipsum dolor sit amet. 今日は晴れです。😀👍🏽 e\u{301}\n";
        let text = unit.repeat(1_000_000 / unit.len() + 1);
        let started = std::time::Instant::now();
        let parts = split(&text, MAX_PART_UTF16);
        let elapsed = started.elapsed();
        assert!(parts.iter().all(|p| units(p) <= MAX_PART_UTF16));
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&parts.concat()), squash(&text));
        // Generous even for an unoptimised build; a quadratic walk takes far longer.
        assert!(elapsed.as_secs() < 5, "took {elapsed:?}");
    }

    // ---- property tests ----

    /// Whitespace separators, each piece on its own.
    const SEPARATORS: &[&str] = &[
        " ", " ", " ", "  ", "\n", "\n", "\n\n", "\n \n", "\r\n", "\r\n\r\n", "\t", "\u{a0}",
        "\u{3000}",
    ];
    const PUNCTUATION: &[&str] = &[
        ". ", "! ", "? ", ".", "…", "… ", ",", "。", "！", "？", "。 ",
    ];
    /// Whole grapheme clusters of more than one char, or astral chars.
    const CLUSTERS: &[&str] = &[
        "😀",
        "👍",
        "👍🏽",
        FAMILY,
        "👩🏽\u{200d}💻",
        "🏳\u{fe0f}\u{200d}🌈",
        "🇫🇷",
        "🇯🇵",
        "❤\u{fe0f}",
        "e\u{301}",
        "n\u{303}",
        "a\u{301}\u{302}",
        "क्षि",
        "𝄞",
    ];

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z]{1,10}",
            4 => prop::sample::select(SEPARATORS).prop_map(str::to_owned),
            2 => prop::sample::select(PUNCTUATION).prop_map(str::to_owned),
            2 => "[\u{4e00}-\u{4e80}\u{3041}-\u{3096}]{1,12}",
            2 => prop::sample::select(CLUSTERS).prop_map(str::to_owned),
            1 => "[a-z]{30,150}",
            1 => (prop::sample::select(CLUSTERS), 2..40usize).prop_map(|(c, n)| c.repeat(n)),
        ]
    }

    fn reply() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..120).prop_map(|v| v.concat())
    }

    fn is_ws_run_start(text: &str, p: usize) -> bool {
        text[p..].starts_with(char::is_whitespace)
            && text[..p].ends_with(|c: char| !c.is_whitespace())
    }

    /// The level and position of the cut the spec demands for a part that
    /// starts at `s`, judged char by char from the original text, for levels
    /// paragraph to whitespace; `None` when only grapheme cuts are left.
    fn expected_cut(text: &str, s: usize, max: usize) -> Option<(usize, usize)> {
        let mut found: Option<(usize, usize)> = None;
        let mut units = 0;
        for (i, c) in text[s..].char_indices() {
            let p = s + i;
            if units > max {
                break;
            }
            if i > 0 {
                let level = if is_ws_run_start(text, p) {
                    let run_len = text[p..]
                        .find(|c: char| !c.is_whitespace())
                        .unwrap_or(text.len() - p);
                    let run = &text[p..p + run_len];
                    let before = text[..p].chars().next_back().unwrap_or(' ');
                    if p + run_len == text.len() {
                        None
                    } else if run.matches('\n').count() >= 2 {
                        Some(PARAGRAPH)
                    } else if run.contains('\n') {
                        Some(LINE)
                    } else if matches!(before, '.' | '!' | '?' | '…' | '。' | '！' | '？') {
                        Some(SENTENCE)
                    } else {
                        Some(SPACE)
                    }
                } else if text[..p].ends_with(['。', '！', '？']) {
                    Some(SENTENCE)
                } else {
                    None
                };
                if let Some(level) = level
                    && found.is_none_or(|(l, _)| level <= l)
                {
                    found = Some((level, p));
                }
            }
            units += c.len_utf16();
        }
        found
    }

    /// Grapheme starts of `text`, plus its end.
    fn grapheme_bounds(text: &str) -> Vec<usize> {
        let mut b: Vec<usize> = text.grapheme_indices(true).map(|(i, _)| i).collect();
        b.push(text.len());
        b
    }

    /// Whether `p` is a grapheme boundary, or else lies inside a cluster longer than `max`.
    fn boundary_or_big_cluster(text: &str, bounds: &[usize], p: usize, max: usize) -> bool {
        match bounds.binary_search(&p) {
            Ok(_) => true,
            Err(i) => units(&text[bounds[i - 1]..bounds[i]]) > max,
        }
    }

    /// Locate each part in `text`, checking that only whitespace is skipped.
    fn locate(text: &str, parts: &[String]) -> Result<Vec<usize>, TestCaseError> {
        let mut offsets = Vec::with_capacity(parts.len());
        let mut off = 0;
        for part in parts {
            let found = text[off..].find(part.as_str());
            prop_assert!(found.is_some(), "part {part:?} not found in order");
            let at = off + found.unwrap_or_default();
            prop_assert!(text[off..at].trim().is_empty(), "lost {:?}", &text[off..at]);
            offsets.push(at);
            off = at + part.len();
        }
        prop_assert!(
            text[off..].trim().is_empty(),
            "lost tail {:?}",
            &text[off..]
        );
        Ok(offsets)
    }

    fn check_basic(text: &str, max: usize, parts: &[String]) -> Result<(), TestCaseError> {
        for part in parts {
            let n = units(part);
            prop_assert!(
                n <= max || (part.chars().count() == 1 && n == 2),
                "{part:?} has {n} units > {max}"
            );
            prop_assert!(!part.is_empty());
            prop_assert_eq!(part.as_str(), part.trim());
        }
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        prop_assert_eq!(squash(&parts.concat()), squash(text));
        Ok(())
    }

    proptest! {
        #[test]
        fn prop_parts_are_valid_and_cut_at_the_best_boundary(
            text in reply(),
            max in 8usize..300,
        ) {
            let parts = split_reply(&text, max);
            // (a), (b), (c)
            check_basic(&text, max, &parts)?;
            prop_assert_eq!(parts.is_empty(), text.trim().is_empty());
            let offsets = locate(&text, &parts)?;
            let bounds = grapheme_bounds(&text);
            for (k, (part, &s)) in parts.iter().zip(&offsets).enumerate() {
                let e = s + part.len();
                // (d) cuts fall on grapheme boundaries.
                prop_assert!(boundary_or_big_cluster(&text, &bounds, s, max), "start {s} of {part:?}");
                prop_assert!(boundary_or_big_cluster(&text, &bounds, e, max), "end {e} of {part:?}");
                let Some(&next) = offsets.get(k + 1) else { continue };
                // (e) the cut is the last one of the best kind in the window.
                match expected_cut(&text, s, max) {
                    Some((level, p)) => prop_assert_eq!(
                        e, p, "part {:?} should end at level {} cut {}", part, level, p
                    ),
                    None => {
                        prop_assert_eq!(e, next, "grapheme cut must drop nothing");
                        // The last grapheme boundary that fits, unless the
                        // first cluster is itself too big.
                        if let Ok(i) = bounds.binary_search(&s)
                            && units(&text[s..bounds[i + 1]]) <= max
                        {
                            let j = bounds.binary_search(&e);
                            prop_assert!(j.is_ok());
                            let after = bounds[j.unwrap_or_default() + 1];
                            prop_assert!(units(&text[s..after]) > max, "cut {e} is not the last");
                        }
                    }
                }
            }
        }

        #[test]
        fn prop_tiny_limits_never_panic_and_lose_nothing(
            text in reply(),
            max in 0usize..8,
        ) {
            let parts = split_reply(&text, max);
            check_basic(&text, max.max(1), &parts)?;
            locate(&text, &parts)?;
        }

        #[test]
        fn prop_fitting_text_is_one_part(text in reply()) {
            let trimmed = text.trim();
            let parts = split_reply(&text, units(trimmed).max(1));
            if trimmed.is_empty() {
                prop_assert!(parts.is_empty());
            } else {
                prop_assert_eq!(parts, vec![trimmed.to_owned()]);
            }
        }
    }
}
