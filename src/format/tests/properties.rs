//! Property tests: generated Markdown-ish documents and arbitrary text keep their
//! words, stay WhatsApp-safe and keep code fences balanced.

use super::*;

const WORDS: &[&str] = &[
    "hello",
    "world",
    "foo",
    "bar",
    "snake_case_names",
    "a*b",
    "2",
    "*",
    "3",
    "=",
    "6",
    "x",
    "café",
    "你好",
    "世界",
    "😀",
    "🎉",
    "👍🏽",
    "42",
    "a_b",
    "C++",
    "e.g.",
    "(paren)",
    "end.",
    "wait!",
    "~approx",
    "~5",
    "a < b",
    "c > d",
    "&",
    "#tag",
    "\\*",
    "\\_",
    "\\~",
    "\\`",
    "\\#",
    "\\[",
    "\\\\",
    "_",
    "__",
    "~",
    "~~",
    "`",
    "**",
    "-",
    "1.",
    ">",
    "x_",
    "_y",
    "*z",
    "w*",
    "[",
    "]",
    "(",
    ")",
    "!",
];
const ENTITIES: &[&str] = &["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&nbsp;"];
const CODE_SPANS: &[&str] = &[
    "`x`",
    "`**not bold**`",
    "`a_b`",
    "`2 * 3`",
    "`&amp;`",
    "`[a](b)`",
    "`foo bar`",
    "`~~s~~`",
    "`_i_`",
    "``a ` b``",
    "`*`",
    "```tri```",
];
const URLS: &[&str] = &[
    "https://x.com/a_b_c*d",
    "https://ex.com/~u/p_q",
    "http://a.b/c?d=e&f=g",
    "https://x.com/(paren)",
    "www.ex.com/x_y",
    "https://z.com/_x_",
];
const LINK_TEXT: &[&str] = &["docs", "the site", "x", "a_b", "你好", "😀 emoji", "**b**"];
const HTML: &[&str] = &[
    "<br>",
    "<br/>",
    "<b>x</b>",
    "<i>y z</i>",
    "<span class=\"c\">w</span>",
    "</p>",
    "<img src=\"a.png\">",
];
const EMPH: &[&str] = &["**", "*", "_", "__", "***", "~~", "___"];
const PUNCT: &[&str] = &["", "", "", ",", ".", "!", ":", ")"];
const TAGS: &[&str] = &["b", "i", "em"];
const CODE_LINES: &[&str] = &[
    "let x = **not bold**;",
    "<b>tag</b> &amp; [l](u)",
    "snake_case *x* _y_",
    "",
    "    indented",
    "```python",
    "~~~",
    "a ``` b",
    "2 * 3",
    "# not a heading",
];
const ALIGN: &[&str] = &["---", ":--", "--:", ":-:"];

fn sel(v: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(v).prop_map(str::to_string)
}

/// Markdown-ish inline fragments; fragments are joined with spaces.
fn inline() -> impl Strategy<Value = String> + Clone {
    let leaf = prop_oneof![
        10 => sel(WORDS),
        1 => sel(ENTITIES),
        2 => sel(CODE_SPANS),
        1 => sel(URLS),
        2 => (sel(LINK_TEXT), sel(URLS), 0..5u8).prop_map(|(t, u, k)| match k {
            0 | 1 => format!("[{t}]({u})"),
            2 => format!("![{t}]({u})"),
            3 => format!("[{u}]({u})"),
            _ => format!("<{u}>"),
        }),
        1 => sel(HTML),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            3 => (sel(EMPH), prop::collection::vec(inner.clone(), 1..4), sel(PUNCT))
                .prop_map(|(m, v, p)| format!("{m}{}{m}{p}", v.join(" "))),
            1 => (sel(TAGS), prop::collection::vec(inner, 1..3))
                .prop_map(|(t, v)| format!("<{t}>{}</{t}>", v.join(" "))),
        ]
    })
}

fn line() -> impl Strategy<Value = String> {
    prop::collection::vec(inline(), 1..6).prop_map(|v| v.join(" "))
}

fn table_block() -> impl Strategy<Value = String> {
    (1..4usize, 0..3usize)
        .prop_flat_map(|(cols, rows)| {
            (
                prop::collection::vec(sel(WORDS), cols),
                prop::collection::vec(sel(ALIGN), cols),
                prop::collection::vec(prop::collection::vec(inline(), cols), rows),
            )
        })
        .prop_map(|(head, aligns, rows)| {
            let row = |cells: &[String]| format!("| {} |", cells.join(" | "));
            let mut s = format!("{}\n{}", row(&head), row(&aligns));
            for r in rows {
                s.push('\n');
                s.push_str(&row(&r));
            }
            s
        })
}

fn block() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => line(),
        1 => (1..=6usize, line()).prop_map(|(n, s)| format!("{} {s}", "#".repeat(n))),
        2 => (sel(&["", "  ", "    "]), sel(&["-", "*", "+", "1.", "2)"]), line())
            .prop_map(|(i, m, s)| format!("{i}{m} {s}")),
        1 => (sel(&[">", "> >"]), line()).prop_map(|(q, s)| format!("{q} {s}")),
        1 => sel(&["---", "***", "___", "* * *"]),
        1 => (
            sel(&["```", "~~~", "````", "  ```"]),
            sel(&["", "rust", "py thon"]),
            prop::collection::vec(sel(CODE_LINES), 0..4),
            any::<bool>(),
        )
            .prop_map(|(f, lang, body, closed)| {
                let mut s = format!("{f}{lang}");
                for l in body {
                    s.push('\n');
                    s.push_str(&l);
                }
                if closed {
                    s.push('\n');
                    s.push_str(f.trim_start());
                }
                s
            }),
        1 => table_block(),
        1 => Just(String::new()),
    ]
}

fn doc() -> impl Strategy<Value = String> {
    prop::collection::vec(block(), 1..8).prop_map(|v| v.join("\n"))
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The words a reader of the rendered Markdown sees: alphanumeric runs
/// outside HTML tags (and autolinks, which have the same shape), link
/// URLs `](…)`, entity names and fence lines (language tags).
fn visible_words(md: &str) -> Vec<String> {
    let mut kept = String::new();
    for line in md.split('\n') {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            kept.push('\n');
            continue;
        }
        let c: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < c.len() {
            if c[i] == '<' {
                let mut j = i + 1;
                if c.get(j) == Some(&'/') {
                    j += 1;
                }
                if c.get(j).is_some_and(|x| x.is_ascii_alphabetic()) {
                    let name_at = j;
                    while j < c.len() && c[j] != '<' && c[j] != '>' {
                        j += 1;
                    }
                    if c.get(j) == Some(&'>') {
                        let name: String = c[name_at..j].iter().take(2).collect();
                        let is_br = name.eq_ignore_ascii_case("br")
                            && !c
                                .get(name_at + 2)
                                .is_some_and(|x| x.is_ascii_alphanumeric());
                        kept.push_str(if is_br { " " } else { "" });
                        i = j + 1;
                        continue;
                    }
                }
            }
            if c[i] == ']'
                && c.get(i + 1) == Some(&'(')
                && let Some(k) = c[i + 2..].iter().position(|&x| x == ')')
            {
                kept.push(' ');
                i += k + 3;
                continue;
            }
            if c[i] == '&' {
                let mut j = i + 1;
                while j < c.len() && (c[j].is_ascii_alphanumeric() || c[j] == '#') {
                    j += 1;
                }
                if j > i + 1 && c.get(j) == Some(&';') {
                    kept.push(' ');
                    i = j + 1;
                    continue;
                }
            }
            kept.push(c[i]);
            i += 1;
        }
        kept.push('\n');
    }
    words(&kept)
}

fn is_subsequence(needle: &[String], hay: &[String]) -> bool {
    let mut it = hay.iter();
    needle.iter().all(|w| it.any(|h| h == w))
}

/// Inputs that once broke a property.
#[test]
fn property_regressions() {
    for md in [
        "_<b><br></b>_, ___**[docs](https://z.com/_x_)**___",
        "# ~~~ *https://x.com/a_b_c*d*,~~",
        "# ****`**** **`x` hello** **hello `x`**",
        "****`**** ****`x` hello**** **``a ` b``**",
        "__https://a_c#<b>https://a_c<b>__&amp;",
        "~~``````a```https://a_c``````~~&amp;",
    ] {
        let want = visible_words(md);
        for f in [Format::WhatsApp, Format::Plain] {
            let out = convert(md, f);
            assert!(
                is_subsequence(&want, &words(&out)),
                "{f:?} {md:?} → {out:?}"
            );
        }
        let out = wa(md);
        assert!(whatsapp_markers_balanced(&out), "{md:?} → {out:?}");
        assert_eq!(fence_lines(&out) % 2, 0);
    }
}

proptest! {
    #[test]
    fn prop_words_are_kept(md in doc()) {
        let want = visible_words(&md);
        for f in [Format::WhatsApp, Format::Plain] {
            let out = convert(&md, f);
            prop_assert!(
                is_subsequence(&want, &words(&out)),
                "{f:?} lost words\ninput: {md:?}\noutput: {out:?}\nwant: {want:?}"
            );
        }
    }

    #[test]
    fn prop_whatsapp_markers_balanced(md in doc()) {
        let out = wa(&md);
        prop_assert!(whatsapp_markers_balanced(&out), "input: {md:?}\noutput: {out:?}");
    }

    #[test]
    fn prop_fences_balanced(md in doc()) {
        let out = wa(&md);
        prop_assert_eq!(fence_lines(&out) % 2, 0, "input: {:?}\noutput: {:?}", md, out);
    }

    #[test]
    fn prop_none_is_identity(md in doc(), raw in any::<String>()) {
        prop_assert_eq!(convert(&md, Format::None), md);
        prop_assert_eq!(convert(&raw, Format::None), raw);
    }

    #[test]
    fn prop_arbitrary_text_is_safe(raw in any::<String>()) {
        let out = wa(&raw);
        prop_assert!(whatsapp_markers_balanced(&out), "input: {raw:?}\noutput: {out:?}");
        prop_assert_eq!(fence_lines(&out) % 2, 0);
        let _ = plain(&raw);
    }

    #[test]
    fn prop_marker_soup_is_safe(
        raw in "(https://a_b*c|www\\.x_y|<b>|<br>|&amp;|\\*\\*|__|~~|```|[*_~`\\[\\]()<>!&#;\\\\ \nab1|:/.-]){0,40}"
    ) {
        let out = wa(&raw);
        prop_assert!(whatsapp_markers_balanced(&out), "input: {raw:?}\noutput: {out:?}");
        prop_assert_eq!(fence_lines(&out) % 2, 0, "input: {:?}\noutput: {:?}", raw, out);
        let _ = plain(&raw);
    }

    #[test]
    fn prop_rebalance_fences(
        md in doc(),
        convert_first in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let text = if convert_first { wa(&md) } else { md };
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|ix| ix.index(text.len() + 1))
            .map(|mut k| {
                while !text.is_char_boundary(k) {
                    k -= 1;
                }
                k
            })
            .collect();
        at.sort_unstable();
        let mut parts = Vec::new();
        let mut last = 0;
        for k in at {
            parts.push(text[last..k].to_string());
            last = k;
        }
        parts.push(text[last..].to_string());
        let out = rebalance_fences(parts.clone());
        prop_assert_eq!(out.len(), parts.len());
        let mut reopened = false;
        let mut joined = String::new();
        for (o, p) in out.iter().zip(&parts) {
            prop_assert_eq!(fence_lines(o) % 2, 0, "part {:?}", o);
            let mut rest = o.as_str();
            if reopened {
                rest = rest.strip_prefix("```\n").expect("reopening fence");
            }
            let closed = rest.len() >= p.len() + 4;
            if closed {
                rest = rest.strip_suffix("\n```").expect("closing fence");
            }
            prop_assert_eq!(rest, p.as_str());
            prop_assert!(o.len() <= p.len() + FENCE_HEADROOM);
            reopened = closed;
            joined.push_str(rest);
        }
        prop_assert_eq!(joined, text);
    }
}
