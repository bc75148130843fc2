//! Unit tests of the Markdown conversion and fence rebalancing; the property tests are
//! in `tests/properties.rs`.

use super::*;
use proptest::prelude::*;

const Z: &str = "\u{200B}";

fn wa(s: &str) -> String {
    convert(s, Format::WhatsApp)
}

fn plain(s: &str) -> String {
    convert(s, Format::Plain)
}

/// WhatsApp's reading of its markup, as this module models it: outside
/// ``` blocks, `` `code` `` spans and URLs, every `*`, `_`, `~` in opening
/// position (start/whitespace/punctuation before, non-space after) must be
/// closed, on the same line, by the next one of its kind in closing
/// position (non-space before, end/whitespace/punctuation after), and two
/// openers of one kind may not be pending at once.
fn whatsapp_markers_balanced(s: &str) -> bool {
    let opening =
        |c: &[char], i: usize| opens_at(i.checked_sub(1).map(|k| c[k]), c.get(i + 1).copied());
    let closing =
        |c: &[char], i: usize| closes_at(i.checked_sub(1).map(|k| c[k]), c.get(i + 1).copied());
    let mut in_fence = false;
    for line in s.split('\n') {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let c: Vec<char> = line.chars().collect();
        let mut pending = [false; 3];
        let mut i = 0;
        while i < c.len() {
            let ch = c[i];
            if (i == 0 || !c[i - 1].is_alphanumeric())
                && let Some(len) = url_at(&c, i)
            {
                i += len;
                continue;
            }
            if ch == '`' {
                if opening(&c, i) {
                    match (i + 1..c.len()).find(|&k| c[k] == '`' && closing(&c, k)) {
                        Some(k) => i = k,
                        None => return false,
                    }
                }
            } else if let Some(m) = ['*', '_', '~'].iter().position(|&x| x == ch) {
                if pending[m] && closing(&c, i) {
                    pending[m] = false;
                } else if opening(&c, i) {
                    if pending[m] {
                        return false;
                    }
                    pending[m] = true;
                }
            }
            i += 1;
        }
        if pending.iter().any(|&p| p) {
            return false;
        }
    }
    true
}

fn fence_lines(s: &str) -> usize {
    s.lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count()
}

#[test]
fn format_parse() {
    assert_eq!(Format::parse("whatsapp"), Some(Format::WhatsApp));
    assert_eq!(Format::parse("WhatsApp"), Some(Format::WhatsApp));
    assert_eq!(Format::parse(" PLAIN "), Some(Format::Plain));
    assert_eq!(Format::parse("None"), Some(Format::None));
    assert_eq!(Format::parse("markdown"), None);
    assert_eq!(Format::parse(""), None);
    assert_eq!(Format::default(), Format::WhatsApp);
}

#[test]
fn none_is_identity() {
    let s = "# x\r\n**b** <b>t</b>\n\n\n\n```\n";
    assert_eq!(convert(s, Format::None), s);
}

#[test]
fn emphasis() {
    assert_eq!(wa("**bold**"), "*bold*");
    assert_eq!(wa("__bold__"), "*bold*");
    assert_eq!(wa("*it*"), "_it_");
    assert_eq!(wa("_it_"), "_it_");
    assert_eq!(wa("***both***"), "*_both_*");
    assert_eq!(wa("___both___"), "*_both_*");
    assert_eq!(wa("~~gone~~"), "~gone~");
    assert_eq!(wa("a **b** c *d* e ~~f~~ g"), "a *b* c _d_ e ~f~ g");
    assert_eq!(wa("**Note:** x"), "*Note:* x");
    assert_eq!(wa("(**x**), **y**."), "(*x*), *y*.");
}

#[test]
fn nested_emphasis() {
    assert_eq!(wa("**bold _it_ more**"), "*bold _it_ more*");
    assert_eq!(wa("*it **bold** it*"), "_it *bold* it_");
    assert_eq!(wa("**_x_**"), "*_x_*");
    assert_eq!(wa("~~**x**~~"), "~*x*~");
    // A marker cannot nest in itself: the inner one is flattened.
    assert_eq!(wa("**a **b** c**"), "*a b c*");
    assert_eq!(wa("***x** y*"), "_*x* y_");
}

#[test]
fn emphasis_does_not_span_lines() {
    let out = wa("**a\nb**");
    assert!(whatsapp_markers_balanced(&out), "{out:?}");
    assert_eq!(out.replace(Z, ""), "**a\nb**");
}

#[test]
fn headings() {
    assert_eq!(wa("# Title"), "*Title*");
    assert_eq!(wa("###### Six ######"), "*Six*");
    assert_eq!(wa("## Trailing #s ##"), "*Trailing #s*");
    assert_eq!(wa("# C#"), "*C#*");
    assert_eq!(wa("#hashtag"), "#hashtag");
    assert_eq!(wa("####### seven"), "####### seven");
    assert_eq!(wa("#"), "");
    assert_eq!(wa("# **Bold** title"), "*Bold title*");
    assert_eq!(wa("## *it* title"), "*_it_ title*");
    assert_eq!(wa("# a<br>b"), "*a b*");
    assert_eq!(plain("## Title ##"), "Title");
}

#[test]
fn links() {
    assert_eq!(wa("[docs](https://d.io/x)"), "docs (https://d.io/x)");
    assert_eq!(wa("see [https://d.io](https://d.io)."), "see https://d.io.");
    assert_eq!(wa("[](https://d.io)"), "https://d.io");
    assert_eq!(
        wa("![a cat](https://i.io/c.png)"),
        "a cat (https://i.io/c.png)"
    );
    assert_eq!(wa("![](https://i.io/c.png)"), "https://i.io/c.png");
    assert_eq!(wa("<https://d.io/a>"), "https://d.io/a");
    assert_eq!(wa("<me@x.org>"), "me@x.org");
    assert_eq!(wa("[me@x.org](mailto:me@x.org)"), "me@x.org");
    assert_eq!(wa("[t](https://d.io \"Title\")"), "t (https://d.io)");
    assert_eq!(wa("[t](<https://d.io/a b>)"), "t (https://d.io/a b)");
    assert_eq!(
        wa("[**bold** link](https://d.io)"),
        "*bold* link (https://d.io)"
    );
    assert_eq!(wa("**[x](https://d.io)**"), "*x (https://d.io)*");
    assert_eq!(wa("[a](https://d.io/(b))"), "a (https://d.io/(b))");
    assert_eq!(
        wa("[a](https://d.io?a=1&amp;b=2)"),
        "a (https://d.io?a=1&b=2)"
    );
    // Not links.
    assert_eq!(wa("[a] (b)"), "[a] (b)");
    assert_eq!(wa("[ref][1]"), "[ref][1]");
    assert_eq!(wa("a [b c"), "a [b c");
    assert_eq!(plain("[docs](https://d.io)"), "docs (https://d.io)");
}

#[test]
fn urls_are_never_mangled() {
    let u = "https://x.com/a_b_c*d";
    assert_eq!(wa(u), u);
    assert_eq!(wa(&format!("see {u} now")), format!("see {u} now"));
    assert_eq!(wa(&format!("[x]({u})")), format!("x ({u})"));
    assert_eq!(wa(&format!("<{u}>")), u);
    assert_eq!(wa(&format!("**{u}**")), format!("*{u}*"));
    assert_eq!(wa("_https://x.com/~a_b_"), "_https://x.com/~a_b_");
    assert_eq!(wa("www.x.com/*a*"), "www.x.com/*a*");
    assert_eq!(wa("<https://z.com/_x_>"), "https://z.com/_x_");
    assert_eq!(plain(&format!("**{u}**")), u);
    // A URL glued to a word is separated from it.
    assert_eq!(wa("go<https://d.io>now"), "go https://d.io now");
    for s in [u, "https://x.com/~u/_a_", "<https://z.com/_x_>"] {
        assert!(whatsapp_markers_balanced(&wa(s)), "{s}");
    }
}

#[test]
fn tables() {
    let t = "| a | b |\n|---|:--:|\n| 1 | 2 |";
    assert_eq!(wa(t), "```\na | b\n--+---\n1 | 2\n```");
    let t = "| Name | Qty | Note |\n|:-----|----:|:---:|\n| **apple** | 3 | `fresh` |\n| kiwi | 12 | [x](https://k.io) |";
    assert_eq!(
        wa(t),
        "```\n\
         Name  | Qty |       Note\n\
         ------+-----+------------------\n\
         apple |   3 |      fresh\n\
         kiwi  |  12 | x (https://k.io)\n\
         ```"
    );
    assert_eq!(
        plain(t),
        "Name  | Qty |       Note\n\
         ------+-----+------------------\n\
         apple |   3 |      fresh\n\
         kiwi  |  12 | x (https://k.io)"
    );
    // Escaped pipe, missing and extra cells, no outer pipes.
    let t = "a | b\n--|--\nx \\| y\n1 | 2 | 3";
    assert_eq!(
        wa(t),
        "```\na     | b |\n------+---+---\nx | y |   |\n1     | 2 | 3\n```"
    );
    // Width is counted in chars.
    let t = "|é|日本|\n|-|-|\n|😀|x|";
    assert_eq!(wa(t), "```\né | 日本\n--+----\n😀 | x\n```");
    // A table ends at a blank line.
    assert_eq!(wa("|a|\n|-|\n|b|\n\ntext"), "```\na\n-\nb\n```\n\ntext");
}

#[test]
fn heading_then_table() {
    let s = "## Prices\n| item | € |\n|---|---|\n| tea | 2 |\nafter";
    assert_eq!(
        wa(s),
        "*Prices*\n```\nitem | €\n-----+---\ntea  | 2\n```\nafter"
    );
}

#[test]
fn not_a_table() {
    assert_eq!(wa("a | b\nc | d"), "a | b\nc | d");
    assert_eq!(wa("| a | b |\n|---|"), "| a | b |\n|---|");
}

#[test]
fn html() {
    assert_eq!(wa("<b>bold</b> <i>x</i>"), "bold x");
    assert_eq!(wa("a<br>b<br/>c<BR />d"), "a\nb\nc\nd");
    assert_eq!(wa("foo<span class=\"x\">bar</span>"), "foobar");
    assert_eq!(wa("a < b and c > d"), "a < b and c > d");
    assert_eq!(wa("1<2 and 3>2"), "1<2 and 3>2");
    assert_eq!(wa("x <!-- c --> y"), "x <!-- c --> y");
    assert_eq!(wa("- a<br>b"), "- a\n  b");
    assert_eq!(wa("> a<br>b"), "> a\n> b");
    assert_eq!(wa("**a<br>b**").replace(Z, ""), "**a\nb**");
    assert!(whatsapp_markers_balanced(&wa("**a<br>b**")));
}

#[test]
fn entities() {
    assert_eq!(
        wa("&amp; &lt;b&gt; &quot;q&quot; &#39;s&#39; a&nbsp;b &#x41; &apos;"),
        "& <b> \"q\" 's' a b A '"
    );
    assert_eq!(wa("&unknown; & &amp"), "&unknown; & &amp");
    // Decoded markers are literal text, never markup.
    assert_eq!(wa("&#42;x&#42;"), format!("{Z}*x*"));
    assert_eq!(plain("&lt;b&gt;x&lt;/b&gt;"), "<b>x</b>");
}

#[test]
fn horizontal_rules() {
    for hr in ["---", "***", "___", "* * *", "- - -", "  ----  "] {
        assert_eq!(wa(&format!("a\n{hr}\nb")), "a\n──────────\nb", "{hr}");
    }
    assert_eq!(plain("---"), "──────────");
    assert_eq!(wa("--"), "--");
    assert_eq!(wa("-*-").replace(Z, ""), "-*-");
}

#[test]
fn lists() {
    assert_eq!(
        wa("* one\n  + two\n    - three\n      * **four**\n- five"),
        "- one\n  - two\n    - three\n      - *four*\n- five"
    );
    assert_eq!(
        wa("1. a\n2. b\n   1) c\n10. d"),
        "1. a\n2. b\n   1. c\n10. d"
    );
    assert_eq!(wa("-no space"), "-no space");
    assert_eq!(wa("*not a bullet*"), "_not a bullet_");
    assert_eq!(plain("+ x\n3) y"), "- x\n3. y");
}

#[test]
fn quotes() {
    assert_eq!(wa("> hello **you**"), "> hello *you*");
    assert_eq!(wa(">tight"), "> tight");
    assert_eq!(wa("> > deep\n>\n> - item"), "> > deep\n>\n> - item");
    assert_eq!(wa("> # Head"), "> *Head*");
    assert_eq!(plain("> *x*"), "> x");
}

#[test]
fn code_blocks_verbatim() {
    let s = "```rust\nlet a = **not bold**; // <b>x</b> &amp; [l](u)\n  indented   \n\n\n\n\nsnake_case *x*\n```";
    assert_eq!(
        wa(s),
        "```\nlet a = **not bold**; // <b>x</b> &amp; [l](u)\n  indented   \n\n\n\n\nsnake_case *x*\n```"
    );
    assert_eq!(
        plain(s),
        "let a = **not bold**; // <b>x</b> &amp; [l](u)\n  indented   \n\n\n\n\nsnake_case *x*"
    );
    assert_eq!(wa("~~~python\nx = 1\n~~~"), "```\nx = 1\n```");
    assert_eq!(
        wa("````\n```js\nx\n```\n````"),
        format!("```\n``{Z}`js\nx\n``{Z}`\n```")
    );
    assert_eq!(
        wa("- item\n  ```\n  code\n    more\n  ```"),
        "- item\n```\ncode\n  more\n```"
    );
    assert_eq!(wa("```code```"), "`code`");
}

#[test]
fn unclosed_fence_is_closed() {
    assert_eq!(wa("text\n```sh\nls -la"), "text\n```\nls -la\n```");
    assert_eq!(wa("```\nx\n"), "```\nx\n```\n");
    assert_eq!(plain("```\nx"), "x");
    assert_eq!(fence_lines(&wa("```\n```\n```")), 4);
}

#[test]
fn inline_code_verbatim() {
    assert_eq!(wa("run `rm -rf *_tmp_*` now"), "run `rm -rf *_tmp_*` now");
    assert_eq!(wa("`<b>&amp;\\*`"), "`<b>&amp;\\*`");
    assert_eq!(
        wa("``a `b` c``"),
        "a `b` c".replace('`', &format!("{Z}`")).replacen(
            &format!("{Z}`b{Z}`"),
            &format!("{Z}`b`"),
            1
        )
    );
    assert_eq!(wa("``` x ```"), "`x`");
    assert_eq!(wa("**`x`**"), "*`x`*");
    assert_eq!(plain("use `a*b` here"), "use a*b here");
    assert_eq!(wa("`unclosed"), format!("{Z}`unclosed"));
}

#[test]
fn escapes() {
    assert_eq!(wa("\\*not bold\\*"), format!("{Z}*not bold*"));
    assert_eq!(
        wa("\\_x\\_ \\~y\\~ \\`z\\`"),
        format!("{Z}_x_ {Z}~y~ {Z}`z`")
    );
    assert_eq!(wa("\\# not heading"), "# not heading");
    assert_eq!(wa("\\[not a link](x)"), "[not a link](x)");
    assert_eq!(wa("a\\\\b \\a C:\\path"), "a\\b \\a C:\\path");
    assert_eq!(plain("\\*x\\* \\_y\\_"), "*x* _y_");
    for s in ["\\*not bold\\*", "\\_x\\_", "\\~\\~s\\~\\~", "\\`c\\`"] {
        assert!(whatsapp_markers_balanced(&wa(s)), "{s}");
    }
}

#[test]
fn unbalanced_markers_left_alone() {
    for s in [
        "snake_case_names",
        "2 * 3 * 4",
        "2 * 3 = 6",
        "a*b",
        "2*3 + 4*5",
        "x_1 and y_2",
        "a ~ b",
        "a * b * c",
        "file_name.txt",
    ] {
        assert_eq!(wa(s), s);
        assert_eq!(plain(s), s);
    }
    // Markers WhatsApp could read as opening get a zero-width space.
    assert_eq!(
        wa("*args and **kwargs"),
        format!("{Z}*args and {Z}*{Z}*kwargs")
    );
    assert_eq!(wa("~5 min"), format!("{Z}~5 min"));
    assert_eq!(wa("**unclosed bold"), format!("{Z}*{Z}*unclosed bold"));
    assert_eq!(plain("*args"), "*args");
    // As in Markdown itself: a word-bounded pair is emphasis.
    assert_eq!(wa("__init__.py"), "*init*.py");
    assert_eq!(wa("foo**bar**").replace(Z, ""), "foo**bar**");
}

#[test]
fn emoji_and_cjk() {
    assert_eq!(wa("**你好 🌍**"), "*你好 🌍*");
    assert_eq!(wa("*😀*"), "_😀_");
    assert_eq!(wa("~~日本語~~ and **👍🏽 ok**"), "~日本語~ and *👍🏽 ok*");
    assert_eq!(wa("# 标题 🎉"), "*标题 🎉*");
    assert_eq!(plain("**你好**"), "你好");
    // Intra-word emphasis stays literal (WhatsApp could not render it).
    assert_eq!(wa("這是**重要**的").replace(Z, ""), "這是**重要**的");
}

#[test]
fn plain_format() {
    let s = "# Head\n**b** _i_ ~~s~~ ***bi*** `c`\n[t](https://u.io) <b>x</b>\n```py\nprint(1)\n```\n* item";
    assert_eq!(
        plain(s),
        "Head\nb i s bi c\nt (https://u.io) x\nprint(1)\n- item"
    );
}

#[test]
fn whitespace() {
    assert_eq!(wa("a   \nb\t"), "a\nb");
    assert_eq!(wa("a\n\nb"), "a\n\nb");
    assert_eq!(wa("a\n\n\nb"), "a\n\n\nb");
    assert_eq!(wa("a\n\n\n\nb"), "a\n\nb");
    assert_eq!(wa("a\n \n\t\n  \n\nb\n"), "a\n\nb\n");
    assert_eq!(wa("a\r\nb\r\n"), "a\nb\n");
    assert_eq!(wa(""), "");
    assert_eq!(wa("\n"), "\n");
    assert_eq!(wa("  indented"), "  indented");
    // Tag-only lines become blank and are collapsed too.
    assert_eq!(wa("a\n<p>\n</p>\n<div>\n\nb"), "a\n\nb");
}

#[test]
fn rebalance() {
    let parts = vec![
        "intro\n```rust\nfn a() {}".to_string(),
        "fn b() {}".to_string(),
        "fn c() {}\n```\nafter".to_string(),
        "plain".to_string(),
    ];
    assert_eq!(
        rebalance_fences(parts),
        vec![
            "intro\n```rust\nfn a() {}\n```",
            "```\nfn b() {}\n```",
            "```\nfn c() {}\n```\nafter",
            "plain",
        ]
    );
    let balanced = vec!["a\n```\nx\n```".to_string(), "b".to_string()];
    assert_eq!(rebalance_fences(balanced.clone()), balanced);
    assert!(rebalance_fences(vec![]).is_empty());
    for p in rebalance_fences(vec!["```\na".into(), "".into(), "b\n```".into()]) {
        assert_eq!(fence_lines(&p) % 2, 0, "{p:?}");
        assert!(p.len() <= 1 + FENCE_HEADROOM + 1);
    }
}

#[test]
fn checker_itself() {
    assert!(whatsapp_markers_balanced("*a* _b_ ~c~ `*d`"));
    assert!(whatsapp_markers_balanced("2 * 3 snake_case a*b"));
    assert!(whatsapp_markers_balanced("```\n*open\n```"));
    assert!(whatsapp_markers_balanced("see https://x.com/_a and more"));
    assert!(whatsapp_markers_balanced(&format!("{Z}*a")));
    assert!(!whatsapp_markers_balanced("*a"));
    assert!(!whatsapp_markers_balanced("*a\nb*"));
    assert!(!whatsapp_markers_balanced("_a _b_"));
    assert!(!whatsapp_markers_balanced("`code"));
}

#[test]
fn one_megabyte_reply() {
    let block = "## Section **one**\nSome *text* with snake_case, 2 * 3, [a link](https://x.io/a_b) and `code`.\n\
                 - item ~~old~~ <b>new</b> &amp; more\n| a | b |\n|---|---|\n| 1 | **2** |\n\
                 ```rust\nlet x = **y**;\n```\n\n";
    let input = block.repeat(1_000_000 / block.len() + 1);
    assert!(input.len() >= 1_000_000);
    let out = wa(&input);
    let one = wa(block);
    assert_eq!(out, one.repeat(input.len() / block.len()));
    assert!(whatsapp_markers_balanced(&out));
    // One long line.
    let line = "**a** _b_ x*y [l](https://u.io) `c` ".repeat(30_000);
    let out = wa(&line);
    assert_eq!(
        out,
        "*a* _b_ x*y l (https://u.io) `c`"
            .repeat(30_000)
            .replace("`c`*", "`c` *")
    );
    // Pathological unmatched runs stay linear.
    let nasty = "*a _b [c `d <e &f ".repeat(50_000);
    assert_eq!(wa(&nasty).replace(Z, ""), nasty.trim_end());
}

/// 100,000 levels of every nesting the syntax has: each converts in bounded stack (a
/// recursion per level would abort the whole process, as `>` once did).
#[test]
fn deep_nesting_of_any_kind_is_converted() {
    const N: usize = 100_000;
    let quoted = wa(&format!("{} x", ">".repeat(N)));
    assert_eq!(quoted.matches('>').count(), N);
    assert!(
        quoted.starts_with("> > ") && quoted.ends_with("> x"),
        "{}",
        &quoted[..20]
    );
    let spaced = wa(&format!("{}x", "> ".repeat(N)));
    assert_eq!(spaced, format!("{}x", "> ".repeat(N)));
    assert_eq!(
        wa(&">".repeat(N)),
        ">".repeat(N).replace('>', "> ").trim_end()
    );
    let list: String = (0..2_000)
        .map(|i| format!("{}- x\n", "  ".repeat(i)))
        .collect();
    assert_eq!(wa(&list).lines().count(), 2_000);
    for input in [
        "*".repeat(N),
        "_".repeat(N),
        "[".repeat(N),
        "`".repeat(N),
        format!("{}x{}", "**a ".repeat(N / 4), " b**".repeat(N / 4)),
        format!("{}x{}", "[".repeat(N / 2), "](u)".repeat(N / 2)),
        "- ".repeat(N) + "x",
        "1. ".repeat(N / 2) + "x",
    ] {
        let out = wa(&input);
        assert!(!out.is_empty() || input.trim().is_empty());
        let _ = plain(&input);
    }
}

mod properties;
