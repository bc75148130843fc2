//! Markdown → WhatsApp markup (or plain text) for agent replies.
//!
//! Agents answer in (GitHub-flavoured) Markdown; WhatsApp only understands a
//! small markup of its own: `*bold*`, `_italic_`, `~strike~`, `` `code` ``,
//! ```` ``` ```` monospace blocks, `> ` quotes, `- ` bullets and `1. ` lists.
//! [`convert`] rewrites a reply line by line, without a Markdown-parser
//! dependency: one pass over the lines, and per line one left-to-right scan
//! plus the CommonMark delimiter algorithm (linear, with the usual
//! "openers bottom" bound), so a 1 MB reply converts in milliseconds.
//!
//! # Rules ([`Format::WhatsApp`])
//!
//! * `**x**`, `__x__` → `*x*`; `*x*`, `_x_` → `_x_`; `***x***` → `*_x_*`;
//!   `~~x~~` → `~x~`. A single `~` is never strikethrough (it is "about"
//!   in chat: `~5 min`).
//! * Emphasis follows WhatsApp's own rule, not CommonMark's looser one: an
//!   opening run must be at a word start (start, whitespace or punctuation
//!   before it, non-space after it) and a closing run at a word end. So
//!   `snake_case_names`, `a*b`, `2*3 + 4*5` and `2 * 3 * 4` are left as they
//!   are. The price: intra-word emphasis (`foo**bar**`, CJK `這是**重要**的`)
//!   stays literal, because WhatsApp could not render it either.
//! * Nested emphasis of *different* kinds nests (`**a _b_**` → `*a _b_*`);
//!   the same kind inside itself (`**a **b** c**`, bold inside a heading)
//!   is flattened, as WhatsApp cannot nest a marker in itself.
//! * Emphasis does not span lines (nor a `<br>`): it is resolved per line.
//! * Headings `#`…`######` → a bold line `*x*` (closing `#`s stripped).
//!   Setext headings (`===` underlines) are not recognised.
//! * `[text](url)` → `text (url)`; just `url` when the text is empty or equal
//!   to the URL (`[a@b.c](mailto:a@b.c)` → `a@b.c`). Images likewise with
//!   their alt text. `<https://…>` → `https://…`. Reference-style links
//!   (`[a][1]`) are left as written, and a destination is looked for at most
//!   4096 chars after `](` (with a per-line budget that keeps lines full of
//!   broken `](` linear). URLs (links, autolinks and bare
//!   `http(s)://` / `www.` URLs) are copied verbatim, never touched by the
//!   emphasis rules; a space is put between a URL and a letter glued to it.
//! * Tables → a ```` ``` ```` block of aligned columns (width counted in
//!   chars; `:-:`/`--:` alignment honoured); inline markup inside cells is
//!   stripped. Body rows continue while lines are non-blank and contain `|`;
//!   a row with more cells than the header widens the table (GFM would drop
//!   the extra cells; here no text is lost).
//! * HTML tags (`<` + optional `/` + ASCII letter + `[^<>]*` + `>`) are
//!   removed, `<br>` becomes a line break; entities `&amp; &lt; &gt; &quot;
//!   &apos; &#39; &nbsp;` and numeric `&#…;` are decoded (`&nbsp;` to a plain
//!   space). Note the tag shape also matches placeholders such as `<name>`.
//! * Horizontal rules (`---`, `***`, `___`, `* * *`) → a line of
//!   `──────────` (U+2500), in both formats.
//! * Bullets `*`/`+`/`-` → `- ` (indentation kept); `1. ` kept (`1)` →
//!   `1.`); `> ` quotes kept (one `> ` per nesting level).
//! * Fenced blocks (```` ``` ```` / `~~~`, any indentation, language tag
//!   dropped) and code spans are copied verbatim; an unclosed fence is
//!   closed. Indented (4-space) code blocks are not recognised (LLM replies
//!   indent list continuations, not code), nor are fences inside `>` quotes.
//!   Code spans whose content contains a backtick cannot be written in
//!   WhatsApp markup: their content is emitted as plain text.
//! * Backslash escapes of ASCII punctuation give the literal character.
//! * A marker character that is *not* markup (escaped, unmatched, from an
//!   entity, …) but sits where WhatsApp would read it as an opening marker
//!   gets an invisible U+200B ZERO WIDTH SPACE in front of it (and behind it
//!   when it could close an enclosing span of the same marker), so WhatsApp
//!   shows it literally: `\*not bold\*` → U+200B `*not bold*`, `~/bin` →
//!   U+200B `~/bin`.
//!   Likewise a ```` ``` ```` inside a code block gets a U+200B after its
//!   second backtick so it cannot end WhatsApp's block. Markup that WhatsApp
//!   would not render (e.g. a closer glued to a letter after tag removal)
//!   degrades to literal characters in the same way.
//! * Lines are kept; trailing whitespace is trimmed (not in code blocks);
//!   a run of 3 or more blank lines becomes one blank line (1 or 2 are
//!   kept); CRLF becomes LF.
//!
//! [`Format::Plain`] applies the same structure rules with every markup
//! marker removed: headings are plain lines, code fences and backticks are
//! dropped (content kept), tables are aligned lines without a fence.
//! [`Format::None`] returns the input unchanged.
//!
//! [`rebalance_fences`] is for the message splitter: it closes a code block
//! cut at a part boundary and reopens it in the next part.

use std::collections::HashMap;

/// How a reply is rendered for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// WhatsApp markup (`*bold*`, `_italic_`, …).
    #[default]
    WhatsApp,
    /// Plain text, no markup at all.
    Plain,
    /// The agent's text unchanged.
    None,
}

impl Format {
    /// Parses `"whatsapp"`, `"plain"` or `"none"` (case-insensitive,
    /// surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "whatsapp" => Some(Format::WhatsApp),
            "plain" => Some(Format::Plain),
            "none" => Some(Format::None),
            _ => None,
        }
    }
}

/// Extra room, in the splitter's units, that [`rebalance_fences`] may add to
/// one part: `"```\n"` (4) at its start when it continues an open code block
/// and `"\n```"` (4) at its end when it leaves one open. A caller that splits
/// text containing fences must split with `max_units - FENCE_HEADROOM`.
pub const FENCE_HEADROOM: usize = 8;

const ZWSP: char = '\u{200B}';
const HR_LINE: &str = "──────────";
/// Longest link destination (plus title) looked at after `](`.
const MAX_LINK_SCAN: usize = 4096;
const NIL: usize = usize::MAX;

/// Convert an agent's Markdown reply into WhatsApp's markup (or plain text).
///
/// See the module documentation for the rules. [`Format::None`] returns the
/// input unchanged; the other formats end lines with `\n` (a final newline
/// is kept) and never fail.
pub fn convert(markdown: &str, format: Format) -> String {
    let target = match format {
        Format::None => return markdown.to_string(),
        Format::WhatsApp => Target::Wa,
        Format::Plain => Target::Plain,
    };
    let body = markdown.strip_suffix('\n').unwrap_or(markdown);
    let trailing_newline = body.len() != markdown.len();
    let lines: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut out: Vec<OutLine> = Vec::with_capacity(lines.len() + 2);
    let mut i = 0;
    while i < lines.len() {
        if let Some(fence) = fence_open(lines[i]) {
            i = code_block(&lines, i, &fence, target, &mut out);
        } else if let Some((n, aligns)) = table_at(&lines, i) {
            table(&lines[i..i + n], &aligns, target, &mut out);
            i += n;
        } else {
            for l in render_block(lines[i], target).split('\n') {
                out.push(OutLine::text(l));
            }
            i += 1;
        }
    }
    join_lines(&out, trailing_newline)
}

/// Given reply parts produced by a splitter that may cut inside a ``` fenced block,
/// close an open fence at the end of a part and reopen it at the start of the next,
/// so that every part renders on its own. Parts that already balance are unchanged.
///
/// A fence line is a line whose trimmed start begins with ```` ``` ````; a part
/// with an odd number of them (counting a reopening fence) leaves a block open.
/// Closing appends `"\n```"` and reopening prepends `"```\n"` (the language tag
/// is not repeated), so a part can grow by up to [`FENCE_HEADROOM`] units.
/// The splitter should cut at line boundaries: a fence line cut in two is not
/// recognised.
pub fn rebalance_fences(parts: Vec<String>) -> Vec<String> {
    let mut open = false;
    parts
        .into_iter()
        .map(|part| {
            let mut s = if open { format!("```\n{part}") } else { part };
            let fences = s
                .lines()
                .filter(|l| l.trim_start().starts_with("```"))
                .count();
            open = fences % 2 == 1;
            if open {
                s.push_str("\n```");
            }
            s
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Wa,
    Plain,
}

/// Where an inline run is rendered: a normal line, a heading (bold wrapper,
/// single line) or a table cell (single line).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    Normal,
    Heading,
    Cell,
}

struct OutLine {
    text: String,
    /// Inside a code block (or a table block): kept verbatim, never collapsed.
    code: bool,
}

impl OutLine {
    fn text(s: &str) -> Self {
        OutLine {
            text: s.to_string(),
            code: false,
        }
    }
    fn code(s: String) -> Self {
        OutLine {
            text: s,
            code: true,
        }
    }
}

fn join_lines(lines: &[OutLine], trailing_newline: bool) -> String {
    let mut out = String::new();
    let mut first = true;
    let mut blanks = 0usize;
    let mut emit = |out: &mut String, s: &str| {
        if !first {
            out.push('\n');
        }
        first = false;
        out.push_str(s);
    };
    for l in lines {
        if !l.code && l.text.trim().is_empty() {
            blanks += 1;
            continue;
        }
        for _ in 0..collapse(blanks) {
            emit(&mut out, "");
        }
        blanks = 0;
        emit(&mut out, &l.text);
    }
    for _ in 0..collapse(blanks) {
        emit(&mut out, "");
    }
    if trailing_newline {
        out.push('\n');
    }
    out
}

/// 3 or more consecutive blank lines become one.
fn collapse(blanks: usize) -> usize {
    if blanks >= 3 { 1 } else { blanks }
}

struct Fence {
    ch: char,
    len: usize,
    /// Leading spaces of the opening fence, removed from content lines.
    indent: usize,
}

fn fence_open(line: &str) -> Option<Fence> {
    let t = line.trim_start();
    let ch = t.chars().next()?;
    if ch != '`' && ch != '~' {
        return None;
    }
    let len = t.chars().take_while(|&c| c == ch).count();
    if len < 3 || (ch == '`' && t[len..].contains('`')) {
        return None;
    }
    let indent = line.bytes().take_while(|&b| b == b' ').count();
    Some(Fence { ch, len, indent })
}

fn is_fence_close(line: &str, f: &Fence) -> bool {
    let t = line.trim();
    t.len() >= f.len && t.chars().all(|c| c == f.ch)
}

fn code_block(
    lines: &[&str],
    start: usize,
    fence: &Fence,
    t: Target,
    out: &mut Vec<OutLine>,
) -> usize {
    let wa = t == Target::Wa;
    if wa {
        out.push(OutLine::code("```".into()));
    }
    let mut i = start + 1;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if is_fence_close(line, fence) {
            if wa {
                out.push(OutLine::code("```".into()));
            }
            return i;
        }
        let spaces = line
            .bytes()
            .take(fence.indent)
            .take_while(|&b| b == b' ')
            .count();
        let content = &line[spaces..];
        out.push(OutLine::code(if wa {
            break_backtick_runs(content)
        } else {
            content.to_string()
        }));
    }
    if wa {
        out.push(OutLine::code("```".into()));
    }
    i
}

/// Puts a U+200B inside every run of 3+ backticks, so that code content can
/// neither end WhatsApp's monospace block nor look like a fence line.
fn break_backtick_runs(s: &str) -> String {
    if !s.contains("```") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 6);
    let mut run = 0;
    for c in s.chars() {
        if c == '`' {
            if run == 2 {
                out.push(ZWSP);
                run = 0;
            }
            run += 1;
        } else {
            run = 0;
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Align {
    Left,
    Center,
    Right,
}

/// A table starting at line `i`: the number of lines it spans and the column
/// alignments.
fn table_at(lines: &[&str], i: usize) -> Option<(usize, Vec<Align>)> {
    let header = lines[i];
    let sep = *lines.get(i + 1)?;
    if !header.contains('|') || !sep.contains('|') {
        return None;
    }
    let aligns = split_row(sep)
        .iter()
        .map(|c| parse_align(c))
        .collect::<Option<Vec<_>>>()?;
    if aligns.len() != split_row(header).len() {
        return None;
    }
    let mut n = 2;
    while let Some(l) = lines.get(i + n)
        && !l.trim().is_empty()
        && l.contains('|')
        && fence_open(l).is_none()
    {
        n += 1;
    }
    Some((n, aligns))
}

fn parse_align(cell: &str) -> Option<Align> {
    let c = cell.trim();
    let core = c.strip_prefix(':').unwrap_or(c);
    let core = core.strip_suffix(':').unwrap_or(core);
    if core.is_empty() || !core.chars().all(|x| x == '-') {
        return None;
    }
    Some(match (c.starts_with(':'), c.ends_with(':')) {
        (true, true) => Align::Center,
        (false, true) => Align::Right,
        _ => Align::Left,
    })
}

/// Splits a table row on unescaped `|` (outer pipes optional; `\|` is a
/// literal pipe). Cells are trimmed.
fn split_row(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = match t.strip_suffix('|') {
        Some(s) if !s.ends_with('\\') => s,
        _ => t,
    };
    let mut cells = vec![String::new()];
    let mut it = t.chars().peekable();
    while let Some(c) = it.next() {
        if c == '|' {
            cells.push(String::new());
            continue;
        }
        let cell = cells.last_mut().expect("cells is never empty");
        if c == '\\' && it.peek() == Some(&'|') {
            cell.push('|');
            it.next();
        } else {
            cell.push(c);
        }
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

fn table(rows: &[&str], aligns: &[Align], t: Target, out: &mut Vec<OutLine>) {
    let mut grid: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .filter(|&(k, _)| k != 1)
        .map(|(_, row)| {
            split_row(row)
                .iter()
                .map(|c| render_inline(c, Target::Plain, Ctx::Cell))
                .collect()
        })
        .collect();
    // Rows with more cells than the header widen the table rather than
    // losing text (GFM would drop the excess cells).
    let ncol = grid
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(aligns.len());
    let mut aligns = aligns.to_vec();
    aligns.resize(ncol, Align::Left);
    for row in &mut grid {
        row.resize(ncol, String::new());
    }
    let widths: Vec<usize> = (0..ncol)
        .map(|c| {
            grid.iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                .max(1)
        })
        .collect();
    let row_line = |row: &[String]| -> String {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| pad(cell, widths[c], aligns[c]))
            .collect();
        cells.join(" | ").trim_end().to_string()
    };
    let sep: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, w)| {
            let extra = match (ncol, c) {
                (1, _) => 0,
                (_, 0) => 1,
                _ => 2,
            };
            "-".repeat(w + extra)
        })
        .collect();
    let mut lines = Vec::with_capacity(grid.len() + 1);
    lines.push(row_line(&grid[0]));
    lines.push(sep.join("+"));
    lines.extend(grid[1..].iter().map(|r| row_line(r)));
    let wa = t == Target::Wa;
    if wa {
        out.push(OutLine::code("```".into()));
    }
    for l in lines {
        out.push(OutLine::code(if wa { break_backtick_runs(&l) } else { l }));
    }
    if wa {
        out.push(OutLine::code("```".into()));
    }
}

fn pad(s: &str, width: usize, align: Align) -> String {
    let fill = width.saturating_sub(s.chars().count());
    let (left, right) = match align {
        Align::Left => (0, fill),
        Align::Right => (fill, 0),
        Align::Center => (fill / 2, fill - fill / 2),
    };
    format!("{}{s}{}", " ".repeat(left), " ".repeat(right))
}

/// Renders one line outside code blocks and tables; the result may hold
/// several lines (from `<br>`).
fn render_block(line: &str, t: Target) -> String {
    let body = line.trim_start();
    if body.is_empty() {
        return String::new();
    }
    let indent = &line[..line.len() - body.len()];
    if is_hr(body) {
        return HR_LINE.to_string();
    }
    if let Some(content) = atx_heading(body) {
        return render_inline(content, t, Ctx::Heading);
    }
    if let Some(rest) = body.strip_prefix('>') {
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        return prefix_lines(&render_block(rest, t), "> ", "> ");
    }
    if let Some(content) = bullet(body) {
        let inner = render_inline(content, t, Ctx::Normal);
        return prefix_lines(&inner, &format!("{indent}- "), &format!("{indent}  "));
    }
    if let Some((num, content)) = ordered(body) {
        let inner = render_inline(content, t, Ctx::Normal);
        let cont = format!("{indent}{}", " ".repeat(num.len() + 2));
        return prefix_lines(&inner, &format!("{indent}{num}. "), &cont);
    }
    prefix_lines(&render_inline(body, t, Ctx::Normal), indent, indent)
}

fn prefix_lines(s: &str, first: &str, cont: &str) -> String {
    let mut out = String::with_capacity(s.len() + first.len());
    for (k, l) in s.split('\n').enumerate() {
        let p = if k == 0 { first } else { cont };
        if k > 0 {
            out.push('\n');
        }
        if l.is_empty() {
            out.push_str(p.trim_end());
        } else {
            out.push_str(p);
            out.push_str(l);
        }
    }
    out
}

fn is_hr(s: &str) -> bool {
    let mut kind = None;
    let mut n = 0;
    for c in s.chars() {
        if c == ' ' || c == '\t' {
            continue;
        }
        if !matches!(c, '-' | '*' | '_') || kind.is_some_and(|k| k != c) {
            return false;
        }
        kind = Some(c);
        n += 1;
    }
    n >= 3
}

fn atx_heading(s: &str) -> Option<&str> {
    let level = s.bytes().take_while(|&b| b == b'#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &s[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let content = rest.trim();
    let stripped = content.trim_end_matches('#');
    Some(if stripped.is_empty() {
        ""
    } else if stripped.ends_with([' ', '\t']) {
        stripped.trim_end()
    } else {
        content
    })
}

fn bullet(s: &str) -> Option<&str> {
    let rest = s.strip_prefix(['-', '*', '+'])?;
    rest.starts_with([' ', '\t']).then(|| rest.trim_start())
}

fn ordered(s: &str) -> Option<(&str, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let rest = &s[digits..];
    let after = rest.strip_prefix(['.', ')'])?;
    after
        .starts_with([' ', '\t'])
        .then(|| (&s[..digits], after.trim_start()))
}

// ---------------------------------------------------------------------------
// Character classes
// ---------------------------------------------------------------------------

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// Whitespace or punctuation (any visible non-alphanumeric char): what may
/// stand before an opening / after a closing WhatsApp marker.
fn is_boundary(c: char) -> bool {
    c.is_whitespace() || (!c.is_alphanumeric() && !is_invisible(c))
}

fn is_marker(c: char) -> bool {
    matches!(c, '*' | '_' | '~' | '`')
}

fn marker_idx(c: char) -> usize {
    match c {
        '*' => 0,
        '_' => 1,
        '~' => 2,
        _ => 3,
    }
}

/// Would WhatsApp read a marker at `i` as opening? (`prev`/`next` are the
/// neighbouring chars, `None` at the line's ends.)
fn opens_at(prev: Option<char>, next: Option<char>) -> bool {
    prev.is_none_or(is_boundary) && next.is_some_and(|c| !c.is_whitespace())
}

/// Would WhatsApp read a marker at `i` as closing?
fn closes_at(prev: Option<char>, next: Option<char>) -> bool {
    prev.is_some_and(|c| !c.is_whitespace()) && next.is_none_or(is_boundary)
}

fn run_len(chars: &[char], i: usize) -> usize {
    chars[i..].iter().take_while(|&&c| c == chars[i]).count()
}

/// Length of a URL (`http://`, `https://` or `www.`) starting at `i`, with
/// GFM's trailing-punctuation rules; `None` if there is none.
fn url_at(chars: &[char], i: usize) -> Option<usize> {
    let rest = &chars[i..];
    let plen = ["https://", "http://", "www."]
        .iter()
        .find(|p| {
            p.len() <= rest.len()
                && p.chars()
                    .zip(rest)
                    .all(|(a, b)| a == b.to_ascii_lowercase())
        })?
        .len();
    if !rest.get(plen).is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    let (mut open, mut close) = (0usize, 0usize);
    let mut end = plen;
    while end < rest.len() && !is_url_stop(rest[end]) {
        match rest[end] {
            '(' => open += 1,
            ')' => close += 1,
            _ => {}
        }
        end += 1;
    }
    while end > plen {
        match rest[end - 1] {
            '?' | '!' | '.' | ',' | ':' | ';' | '*' | '_' | '~' | '\'' => end -= 1,
            ')' if close > open => {
                close -= 1;
                end -= 1;
            }
            _ => break,
        }
    }
    Some(end)
}

fn is_url_stop(c: char) -> bool {
    c.is_whitespace() || is_invisible(c) || matches!(c, '<' | '>' | '[' | ']' | '`' | '"')
}

/// Does an explicit link target (autolink or `(dest)`) start like a URL?
/// Its whole text is then protected, trailing punctuation included.
fn is_url_target(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    url_at(&chars, 0).is_some() && !chars.iter().any(|&c| is_url_stop(c))
}

fn entity_at(chars: &[char], i: usize) -> Option<(usize, char)> {
    let mut j = i + 1;
    while j < chars.len()
        && j - i <= 12
        && (chars[j].is_ascii_alphanumeric() || (j == i + 1 && chars[j] == '#'))
    {
        j += 1;
    }
    if j == i + 1 || chars.get(j) != Some(&';') {
        return None;
    }
    let name: String = chars[i + 1..j].iter().collect();
    Some((j + 1, decode_entity(&name)?))
}

fn decode_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        _ => {
            let num = name.strip_prefix('#')?;
            let v = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse::<u32>().ok()?,
            };
            match char::from_u32(v) {
                Some(c) if c.is_control() => ' ',
                Some(c) if v != 0 => c,
                _ => '\u{FFFD}',
            }
        }
    })
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '&'
            && let Some((end, c)) = entity_at(&chars, i)
        {
            out.push(c);
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// `<scheme:…>` or `<local@domain>` at `i`: the end index and the target.
fn autolink(chars: &[char], i: usize) -> Option<(usize, String)> {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != '>' {
        if chars[j].is_whitespace() || chars[j] == '<' {
            return None;
        }
        j += 1;
    }
    if j >= chars.len() {
        return None;
    }
    let inner = &chars[i + 1..j];
    (is_uri(inner) || is_email(inner)).then(|| (j + 1, inner.iter().collect()))
}

fn is_uri(s: &[char]) -> bool {
    let Some(colon) = s.iter().position(|&c| c == ':') else {
        return false;
    };
    (2..=32).contains(&colon)
        && s[0].is_ascii_alphabetic()
        && s[1..colon]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
}

fn is_email(s: &[char]) -> bool {
    let Some(at) = s.iter().position(|&c| c == '@') else {
        return false;
    };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    !local.is_empty()
        && !domain.is_empty()
        && local
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c))
        && domain
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `<tag …>` at `i` (the spec's tag shape): the end index and whether it is
/// a `<br>`.
fn html_tag(chars: &[char], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    if chars.get(j) == Some(&'/') {
        j += 1;
    }
    if !chars.get(j).is_some_and(char::is_ascii_alphabetic) {
        return None;
    }
    let name_start = j;
    while j < chars.len() && chars[j] != '>' && chars[j] != '<' {
        j += 1;
    }
    if chars.get(j) != Some(&'>') {
        return None;
    }
    let name: String = chars[name_start..j]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    Some((j + 1, name.eq_ignore_ascii_case("br")))
}

// ---------------------------------------------------------------------------
// Inline parsing
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Emph {
    Strong,
    Em,
    Strike,
}

impl Emph {
    fn marker(self) -> char {
        match self {
            Emph::Strong => '*',
            Emph::Em => '_',
            Emph::Strike => '~',
        }
    }
}

/// A run of `*`, `_` or `~~`.
struct Delim {
    ch: char,
    len: usize,
    /// Chars not consumed by a match (rendered literally).
    rem: usize,
    can_open: bool,
    can_close: bool,
    /// Emphasis ids opened here, innermost first.
    opens: Vec<usize>,
    /// Emphasis ids closed here, innermost first.
    closes: Vec<usize>,
}

enum Tok {
    Text(String),
    /// A literal char (escape or entity): never markup.
    Lit(char),
    Code(String),
    Url(String),
    Delim(usize),
    Break,
    /// An unresolved `[` / `![`.
    Bracket {
        image: bool,
    },
    /// Start of a resolved link; `bare` is what to print instead of the text.
    Open {
        close: usize,
        bare: Option<String>,
    },
    Close {
        dest: String,
    },
}

struct Parsed {
    toks: Vec<Tok>,
    delims: Vec<Delim>,
    kinds: Vec<Emph>,
}

struct Bracket {
    tok: usize,
    image: bool,
    delim_h: usize,
    src_start: usize,
}

/// Positions of backtick runs by length, for finding code-span closers in
/// linear time.
struct Ticks {
    by_len: HashMap<usize, (Vec<usize>, usize)>,
}

impl Ticks {
    fn new(chars: &[char]) -> Self {
        let mut by_len: HashMap<usize, (Vec<usize>, usize)> = HashMap::new();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '`' {
                let len = run_len(chars, i);
                by_len.entry(len).or_default().0.push(i);
                i += len;
            } else {
                i += 1;
            }
        }
        Ticks { by_len }
    }

    /// First run of exactly `len` backticks starting at or after `from`
    /// (`from` never decreases between calls).
    fn find(&mut self, len: usize, from: usize) -> Option<usize> {
        let (starts, cur) = self.by_len.get_mut(&len)?;
        while *cur < starts.len() && starts[*cur] < from {
            *cur += 1;
        }
        starts.get(*cur).copied()
    }
}

struct Parser<'a> {
    chars: &'a [char],
    toks: Vec<Tok>,
    text: String,
    delims: Vec<Delim>,
    /// Delimiter stack of the current scope (ids into `delims`).
    stack: Vec<usize>,
    brackets: Vec<Bracket>,
    /// Brackets below this stack height are inside a link (inactive).
    barrier: usize,
    kinds: Vec<Emph>,
    ticks: Option<Ticks>,
    /// Chars that link destinations may still scan on this line.
    link_budget: usize,
}

fn parse_inline(chars: &[char]) -> Parsed {
    let mut p = Parser {
        chars,
        toks: Vec::new(),
        text: String::new(),
        delims: Vec::new(),
        stack: Vec::new(),
        brackets: Vec::new(),
        barrier: 0,
        kinds: Vec::new(),
        ticks: None,
        link_budget: 4 * chars.len() + 2 * MAX_LINK_SCAN,
    };
    let n = chars.len();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        i = match c {
            '\\' => match chars.get(i + 1) {
                Some(&e) if e.is_ascii_punctuation() => {
                    p.push(Tok::Lit(e));
                    i + 2
                }
                _ => p.plain(c, i),
            },
            '`' => p.backticks(i),
            '*' | '_' | '~' => p.delim_run(i),
            '<' => p.angle(i),
            '&' => match entity_at(chars, i) {
                Some((end, e)) => {
                    p.push(Tok::Lit(e));
                    end
                }
                None => p.plain(c, i),
            },
            '[' => p.open_bracket(i, false),
            '!' if chars.get(i + 1) == Some(&'[') => p.open_bracket(i, true),
            ']' => p.close_bracket(i),
            'h' | 'H' | 'w' | 'W' if i == 0 || !chars[i - 1].is_alphanumeric() => {
                match url_at(chars, i) {
                    Some(len) => {
                        p.push(Tok::Url(chars[i..i + len].iter().collect()));
                        i + len
                    }
                    None => p.plain(c, i),
                }
            }
            _ => p.plain(c, i),
        };
    }
    p.flush();
    let rest = std::mem::take(&mut p.stack);
    p.process_emphasis(&rest);
    Parsed {
        toks: p.toks,
        delims: p.delims,
        kinds: p.kinds,
    }
}

impl Parser<'_> {
    fn flush(&mut self) {
        if !self.text.is_empty() {
            self.toks.push(Tok::Text(std::mem::take(&mut self.text)));
        }
    }

    fn push(&mut self, t: Tok) {
        self.flush();
        self.toks.push(t);
    }

    fn plain(&mut self, c: char, i: usize) -> usize {
        self.text.push(c);
        i + 1
    }

    fn backticks(&mut self, i: usize) -> usize {
        let chars = self.chars;
        let len = run_len(chars, i);
        let ticks = self.ticks.get_or_insert_with(|| Ticks::new(chars));
        match ticks.find(len, i + len) {
            Some(s) => {
                self.push(Tok::Code(chars[i + len..s].iter().collect()));
                s + len
            }
            None => {
                self.text.extend(&chars[i..i + len]);
                i + len
            }
        }
    }

    fn delim_run(&mut self, i: usize) -> usize {
        let chars = self.chars;
        let ch = chars[i];
        let len = run_len(chars, i);
        let prev = i.checked_sub(1).map(|k| chars[k]);
        let next = chars.get(i + len).copied();
        let can_open = opens_at(prev, next);
        let can_close = closes_at(prev, next);
        if (ch == '~' && len != 2) || !(can_open || can_close) {
            self.text.extend(&chars[i..i + len]);
            return i + len;
        }
        let id = self.delims.len();
        self.delims.push(Delim {
            ch,
            len,
            rem: len,
            can_open,
            can_close,
            opens: Vec::new(),
            closes: Vec::new(),
        });
        self.stack.push(id);
        self.push(Tok::Delim(id));
        i + len
    }

    fn angle(&mut self, i: usize) -> usize {
        if let Some((end, target)) = autolink(self.chars, i) {
            if is_url_target(&target) {
                self.push(Tok::Url(target));
            } else {
                let shown = target.strip_prefix("mailto:").unwrap_or(&target);
                self.text.push_str(shown);
            }
            return end;
        }
        if let Some((end, is_br)) = html_tag(self.chars, i) {
            self.flush();
            if is_br {
                // Emphasis never spans a line break.
                let scope = std::mem::take(&mut self.stack);
                self.process_emphasis(&scope);
                self.toks.push(Tok::Break);
            }
            return end;
        }
        self.plain('<', i)
    }

    fn open_bracket(&mut self, i: usize, image: bool) -> usize {
        self.push(Tok::Bracket { image });
        let width = if image { 2 } else { 1 };
        self.brackets.push(Bracket {
            tok: self.toks.len() - 1,
            image,
            delim_h: self.stack.len(),
            src_start: i + width,
        });
        i + width
    }

    fn close_bracket(&mut self, i: usize) -> usize {
        let Some(b) = self.brackets.pop() else {
            return self.plain(']', i);
        };
        let height = self.brackets.len();
        let inactive = !b.image && height < self.barrier;
        self.barrier = self.barrier.min(height);
        if inactive {
            return self.plain(']', i);
        }
        if self.chars.get(i + 1) != Some(&'(') {
            return self.plain(']', i);
        }
        // Failed attempts are charged their whole window against a per-line
        // budget, so lines full of `](` stay linear.
        let limit = (i + 1 + MAX_LINK_SCAN.min(self.link_budget)).min(self.chars.len());
        let found = link_dest(self.chars, i + 1, limit);
        let spent = found.as_ref().map_or(limit, |(end, _)| *end) - (i + 1);
        self.link_budget = self.link_budget.saturating_sub(spent);
        let Some((end, dest)) = found else {
            return self.plain(']', i);
        };
        self.flush();
        let h = b.delim_h.min(self.stack.len());
        let inner = self.stack.split_off(h);
        self.process_emphasis(&inner);
        let bare = bare_link(&self.chars[b.src_start..i], &dest);
        let close = self.toks.len();
        self.toks.push(Tok::Close { dest });
        self.toks[b.tok] = Tok::Open { close, bare };
        if !b.image {
            // Links cannot contain links: earlier `[` are now inactive.
            self.barrier = self.brackets.len();
        }
        end
    }

    /// The CommonMark "process emphasis" procedure over the delimiter ids
    /// `ds` (one scope), with a doubly linked list and openers-bottom bounds
    /// so it stays linear.
    fn process_emphasis(&mut self, ds: &[usize]) {
        let n = ds.len();
        if n < 2 {
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|k| k.checked_sub(1).unwrap_or(NIL)).collect();
        let mut next: Vec<usize> = (0..n)
            .map(|k| if k + 1 < n { k + 1 } else { NIL })
            .collect();
        let unlink = |prev: &mut Vec<usize>, next: &mut Vec<usize>, k: usize| {
            let (p, nx) = (prev[k], next[k]);
            if p != NIL {
                next[p] = nx;
            }
            if nx != NIL {
                prev[nx] = p;
            }
        };
        let mut bottom = [[[0usize; 3]; 2]; 3];
        let mut c = 0;
        while c != NIL {
            let cd = &self.delims[ds[c]];
            if !cd.can_close || cd.rem == 0 {
                c = next[c];
                continue;
            }
            let (ch, clen, c_open) = (cd.ch, cd.len, cd.can_open);
            let key = (marker_idx(ch), usize::from(c_open), clen % 3);
            let lo = bottom[key.0][key.1][key.2];
            let mut o = prev[c];
            while o != NIL && o >= lo {
                let od = &self.delims[ds[o]];
                if od.ch == ch && od.can_open && od.rem > 0 {
                    let odd = (od.can_close || c_open)
                        && (od.len + clen).is_multiple_of(3)
                        && !(od.len.is_multiple_of(3) && clen.is_multiple_of(3));
                    if !odd {
                        break;
                    }
                }
                o = prev[o];
            }
            if o == NIL || o < lo {
                bottom[key.0][key.1][key.2] = c;
                let nx = next[c];
                if !c_open {
                    unlink(&mut prev, &mut next, c);
                }
                c = nx;
                continue;
            }
            let (oid, cid) = (ds[o], ds[c]);
            let used = if ch == '~' || (self.delims[oid].rem >= 2 && self.delims[cid].rem >= 2) {
                2
            } else {
                1
            };
            let kind = match (ch, used) {
                ('~', _) => Emph::Strike,
                (_, 2) => Emph::Strong,
                _ => Emph::Em,
            };
            let pid = self.kinds.len();
            self.kinds.push(kind);
            // `***x***`: make it bold outside, italic inside (`*_x_*`).
            if let Some(&last) = self.delims[oid].opens.last()
                && self.delims[cid].closes.last() == Some(&last)
                && self.kinds[last] == Emph::Strong
                && kind == Emph::Em
            {
                self.kinds[last] = Emph::Em;
                self.kinds[pid] = Emph::Strong;
            }
            let od = &mut self.delims[oid];
            od.opens.push(pid);
            od.rem -= used;
            let o_done = od.rem == 0;
            let cd = &mut self.delims[cid];
            cd.closes.push(pid);
            cd.rem -= used;
            let c_done = cd.rem == 0;
            // Delimiters between the pair become literal text.
            next[o] = c;
            prev[c] = o;
            if o_done {
                unlink(&mut prev, &mut next, o);
            }
            if c_done {
                let nx = next[c];
                unlink(&mut prev, &mut next, c);
                c = nx;
            }
        }
    }
}

/// What a link shows instead of `text (dest)` when its text (`raw`, the
/// source between the brackets) is empty or just repeats the destination.
fn bare_link(raw: &[char], dest: &str) -> Option<String> {
    let start = raw.iter().position(|c| !c.is_whitespace());
    let Some(start) = start else {
        return Some(dest.to_string());
    };
    let end = raw
        .iter()
        .rposition(|c| !c.is_whitespace())
        .map_or(start, |e| e + 1);
    let text = &raw[start..end];
    let same = |s: &str| text.len() == s.chars().count() && s.chars().eq(text.iter().copied());
    if same(dest) {
        Some(dest.to_string())
    } else if dest.strip_prefix("mailto:").is_some_and(same) {
        Some(text.iter().collect())
    } else {
        None
    }
}

/// `(dest "title")` at `p`, looking no further than `limit`: the end index
/// and the destination.
fn link_dest(chars: &[char], p: usize, limit: usize) -> Option<(usize, String)> {
    if chars.get(p) != Some(&'(') {
        return None;
    }
    let skip_ws = |mut j: usize| {
        while j < limit && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let mut j = skip_ws(p + 1);
    let mut dest = String::new();
    if chars.get(j) == Some(&'<') {
        j += 1;
        loop {
            let c = *chars.get(j).filter(|_| j < limit)?;
            match c {
                '>' => {
                    j += 1;
                    break;
                }
                '<' => return None,
                '\\' if chars.get(j + 1).is_some_and(char::is_ascii_punctuation) => {
                    dest.push(chars[j + 1]);
                    j += 2;
                }
                _ => {
                    dest.push(c);
                    j += 1;
                }
            }
        }
    } else {
        let mut depth = 0usize;
        while j < limit {
            let c = chars[j];
            if c.is_whitespace() {
                break;
            }
            if c == '\\' && chars.get(j + 1).is_some_and(char::is_ascii_punctuation) {
                dest.push(chars[j + 1]);
                j += 2;
                continue;
            }
            if c == '(' {
                depth += 1;
            } else if c == ')' {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            dest.push(c);
            j += 1;
        }
        if depth != 0 {
            return None;
        }
    }
    let before_title = j;
    j = skip_ws(j);
    if j > before_title && j < limit && matches!(chars[j], '"' | '\'' | '(') {
        let close = if chars[j] == '(' { ')' } else { chars[j] };
        j += 1;
        while j < limit && chars[j] != close {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        if j >= limit {
            return None;
        }
        j = skip_ws(j + 1);
    }
    (j < limit && chars[j] == ')').then(|| (j + 1, decode_entities(&dest)))
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Text,
    /// A marker char shown literally: must not be read as markup.
    Lit,
    /// A markup marker of pair `id`.
    Mk(usize),
    /// Code or URL content: left exactly as it is.
    Prot,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    ch: char,
    kind: Kind,
    /// A U+200B goes before / after this char.
    zb: bool,
    za: bool,
}

struct Pair {
    open: usize,
    close: usize,
    alive: bool,
    code: bool,
}

struct Renderer {
    t: Target,
    ctx: Ctx,
    cells: Vec<Cell>,
    pairs: Vec<Pair>,
    /// Open markup pairs per marker (`*`, `_`, `~`), to flatten self-nesting.
    depth: [u32; 3],
    /// Emphasis id → markup pair (None when flattened or plain).
    map: Vec<Option<usize>>,
    space_if_alnum: bool,
}

fn render_inline(src: &str, t: Target, ctx: Ctx) -> String {
    let chars: Vec<char> = src.chars().collect();
    let parsed = parse_inline(&chars);
    let mut r = Renderer {
        t,
        ctx,
        cells: Vec::with_capacity(chars.len() + 4),
        pairs: Vec::new(),
        depth: [0; 3],
        map: vec![None; parsed.kinds.len()],
        space_if_alnum: false,
    };
    r.render(&parsed);
    clean_lines(&r.finish())
}

/// Trims each line's end, and the start of lines after the first.
fn clean_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (k, l) in s.split('\n').enumerate() {
        if k > 0 {
            out.push('\n');
            out.push_str(l.trim());
        } else {
            out.push_str(l.trim_end());
        }
    }
    out
}

impl Renderer {
    fn push(&mut self, ch: char, kind: Kind) {
        if std::mem::take(&mut self.space_if_alnum) && ch.is_alphanumeric() {
            self.cells.push(Cell::new(' ', Kind::Text));
        }
        self.cells.push(Cell::new(ch, kind));
    }

    fn text(&mut self, ch: char) {
        let kind = if is_marker(ch) { Kind::Lit } else { Kind::Text };
        self.push(ch, kind);
    }

    fn open_mk(&mut self, ch: char, code: bool) -> usize {
        let id = self.pairs.len();
        self.push(ch, Kind::Mk(id));
        self.pairs.push(Pair {
            open: self.cells.len() - 1,
            close: NIL,
            alive: true,
            code,
        });
        id
    }

    fn close_mk(&mut self, id: usize, ch: char) {
        self.push(ch, Kind::Mk(id));
        self.pairs[id].close = self.cells.len() - 1;
    }

    fn emph_open(&mut self, pid: usize, kind: Emph) {
        let m = kind.marker();
        if self.t == Target::Plain || self.depth[marker_idx(m)] > 0 {
            return;
        }
        self.depth[marker_idx(m)] += 1;
        self.map[pid] = Some(self.open_mk(m, false));
    }

    fn emph_close(&mut self, pid: usize, kind: Emph) {
        if let Some(id) = self.map[pid] {
            let m = kind.marker();
            self.depth[marker_idx(m)] -= 1;
            self.close_mk(id, m);
        }
    }

    /// A URL: protected up to where a linkifier would end it; trailing
    /// punctuation of an explicit target (`<https://a.io/x_>`) is kept but
    /// treated as ordinary text.
    fn url(&mut self, s: &str) {
        let chars: Vec<char> = s.chars().collect();
        let end = url_at(&chars, 0).unwrap_or(chars.len());
        if self.cells.last().is_some_and(|c| c.ch.is_alphanumeric()) {
            self.push(' ', Kind::Text);
        }
        for (k, &ch) in chars.iter().enumerate() {
            if k < end {
                self.push(ch, Kind::Prot);
            } else {
                self.text(ch);
            }
        }
        self.space_if_alnum = true;
    }

    fn link_target(&mut self, s: &str) {
        if is_url_target(s) {
            self.url(s);
        } else {
            for ch in s.chars() {
                self.text(ch);
            }
            self.space_if_alnum = true;
        }
    }

    /// A code span; `s` is its raw content. Where it is not written as a
    /// WhatsApp span it is kept raw, so a padding space still separates it
    /// from its neighbours.
    fn code(&mut self, s: &str) {
        let padded =
            s.len() >= 2 && s.starts_with(' ') && s.ends_with(' ') && !s.bytes().all(|b| b == b' ');
        let stripped = if padded { &s[1..s.len() - 1] } else { s };
        match self.t {
            Target::Wa if !stripped.is_empty() && !stripped.contains('`') => {
                let id = self.open_mk('`', true);
                for ch in stripped.chars() {
                    self.push(ch, Kind::Prot);
                }
                self.close_mk(id, '`');
            }
            Target::Wa => s.chars().for_each(|ch| self.text(ch)),
            Target::Plain => s.chars().for_each(|ch| self.push(ch, Kind::Text)),
        }
    }

    fn render(&mut self, p: &Parsed) {
        let wrap = (self.t == Target::Wa && self.ctx == Ctx::Heading).then(|| {
            self.depth[0] += 1;
            self.open_mk('*', false)
        });
        let mut i = 0;
        while i < p.toks.len() {
            match &p.toks[i] {
                Tok::Text(s) => s.chars().for_each(|ch| self.text(ch)),
                Tok::Lit(ch) => self.text(*ch),
                Tok::Code(s) => self.code(s),
                Tok::Url(s) => self.url(s),
                Tok::Delim(id) => {
                    let d = &p.delims[*id];
                    for &pid in &d.closes {
                        self.emph_close(pid, p.kinds[pid]);
                    }
                    for _ in 0..d.rem {
                        self.text(d.ch);
                    }
                    for &pid in d.opens.iter().rev() {
                        self.emph_open(pid, p.kinds[pid]);
                    }
                }
                Tok::Break if self.ctx == Ctx::Normal => self.push('\n', Kind::Text),
                Tok::Break => self.push(' ', Kind::Text),
                Tok::Bracket { image } => {
                    if *image {
                        self.text('!');
                    }
                    self.text('[');
                }
                Tok::Open { close, bare } => {
                    if let Some(target) = bare {
                        self.link_target(target);
                        i = close + 1;
                        continue;
                    }
                }
                Tok::Close { dest } => {
                    if !dest.is_empty() {
                        self.push(' ', Kind::Text);
                        self.text('(');
                        self.link_target(dest);
                        self.text(')');
                        self.space_if_alnum = true;
                    }
                }
            }
            i += 1;
        }
        if let Some(id) = wrap {
            if self.cells.len() == 1 {
                self.cells.clear();
                self.pairs.clear();
            } else {
                self.close_mk(id, '*');
            }
        }
    }

    fn finish(mut self) -> String {
        if self.t == Target::Wa {
            self.fixup();
        }
        let mut s = String::with_capacity(self.cells.len() + 8);
        for c in &self.cells {
            if c.zb {
                s.push(ZWSP);
            }
            s.push(c.ch);
            if c.za {
                s.push(ZWSP);
            }
        }
        s
    }

    // -- WhatsApp safety pass ------------------------------------------------

    fn prev_eff(&self, i: usize) -> Option<char> {
        if self.cells[i].zb {
            return Some(ZWSP);
        }
        let p = self.cells.get(i.checked_sub(1)?)?;
        Some(if p.za { ZWSP } else { p.ch })
    }

    fn next_eff(&self, i: usize) -> Option<char> {
        if self.cells[i].za {
            return Some(ZWSP);
        }
        let n = self.cells.get(i + 1)?;
        Some(if n.zb { ZWSP } else { n.ch })
    }

    fn is_opening(&self, i: usize) -> bool {
        opens_at(self.prev_eff(i), self.next_eff(i))
    }

    fn is_closing(&self, i: usize) -> bool {
        closes_at(self.prev_eff(i), self.next_eff(i))
    }

    fn pair_valid(&self, id: usize, line: &[u32]) -> bool {
        let p = &self.pairs[id];
        p.alive
            && p.close != NIL
            && p.close > p.open + 1
            && line[p.open] == line[p.close]
            && self.is_opening(p.open)
            && self.is_closing(p.close)
    }

    /// Makes every markup pair renderable by WhatsApp's rules (or demotes it
    /// to literal chars) and keeps every literal marker from being read as
    /// markup, by adding U+200B next to it. Each cell is revisited only when a
    /// neighbour changes, so this is linear.
    fn fixup(&mut self) {
        let mut line = Vec::with_capacity(self.cells.len());
        let mut cur = 0u32;
        for c in &self.cells {
            line.push(cur);
            if c.ch == '\n' {
                cur += 1;
            }
        }
        // WhatsApp turns URLs into links and reads no markup inside them, so
        // a URL must not run into a markup marker (`https://a.io*` after a
        // tag was removed, a URL-like text in code): end it with an
        // invisible U+200B, which no linkifier takes as part of a URL.
        let chars: Vec<char> = self.cells.iter().map(|c| c.ch).collect();
        let mut i = 0;
        while i < chars.len() {
            if matches!(chars[i], 'h' | 'H' | 'w' | 'W')
                && (i == 0 || !chars[i - 1].is_alphanumeric())
                && let Some(len) = url_at(&chars, i)
            {
                let mk = (i..i + len).find(|&k| matches!(self.cells[k].kind, Kind::Mk(_)));
                match mk {
                    Some(k) => {
                        self.cells[k - 1].za = true;
                        i = k;
                    }
                    None => i += len,
                }
                continue;
            }
            i += 1;
        }
        let mut work = Vec::new();
        for id in 0..self.pairs.len() {
            if !self.pair_valid(id, &line) {
                self.demote(id, &mut work);
            }
        }
        // Same-marker pairs never nest, so per marker they are disjoint and
        // sorted by their opening position.
        let mut spans: [Vec<(usize, usize, usize)>; 4] = Default::default();
        for (id, p) in self.pairs.iter().enumerate() {
            if p.close != NIL {
                spans[marker_idx(self.cells[p.open].ch)].push((p.open, p.close, id));
            }
        }
        work.extend(
            self.cells
                .iter()
                .enumerate()
                .filter(|(_, c)| c.kind == Kind::Lit)
                .map(|(i, _)| i),
        );
        while let Some(i) = work.pop() {
            self.neutralize(i, &spans, &line, &mut work);
        }
    }

    fn demote(&mut self, id: usize, work: &mut Vec<usize>) {
        let p = &mut self.pairs[id];
        p.alive = false;
        let (open, close, code) = (p.open, p.close, p.code);
        for k in [open, close] {
            if k != NIL {
                self.cells[k].kind = Kind::Lit;
                work.push(k);
            }
        }
        if code && close != NIL {
            for k in open + 1..close {
                let ch = self.cells[k].ch;
                self.cells[k].kind = if is_marker(ch) {
                    work.push(k);
                    Kind::Lit
                } else {
                    Kind::Text
                };
            }
        }
    }

    /// Is cell `i` inside a live markup pair of its own marker?
    fn enclosed(&self, i: usize, spans: &[Vec<(usize, usize, usize)>; 4]) -> bool {
        let v = &spans[marker_idx(self.cells[i].ch)];
        let k = v.partition_point(|s| s.0 < i);
        k > 0 && {
            let (_, close, id) = v[k - 1];
            close > i && self.pairs[id].alive
        }
    }

    fn neutralize(
        &mut self,
        i: usize,
        spans: &[Vec<(usize, usize, usize)>; 4],
        line: &[u32],
        work: &mut Vec<usize>,
    ) {
        if self.cells[i].kind != Kind::Lit {
            return;
        }
        for _ in 0..3 {
            let mut changed = false;
            if !self.cells[i].zb && self.is_opening(i) {
                self.cells[i].zb = true;
                changed = true;
                if i > 0 {
                    self.recheck(i - 1, line, work);
                }
            }
            if !self.cells[i].za && self.is_closing(i) && self.enclosed(i, spans) {
                self.cells[i].za = true;
                changed = true;
                if i + 1 < self.cells.len() {
                    self.recheck(i + 1, line, work);
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn recheck(&mut self, j: usize, line: &[u32], work: &mut Vec<usize>) {
        if let Kind::Mk(id) = self.cells[j].kind
            && self.pairs[id].alive
            && !self.pair_valid(id, line)
        {
            self.demote(id, work);
        }
    }
}

impl Cell {
    fn new(ch: char, kind: Kind) -> Self {
        Cell {
            ch,
            kind,
            zb: false,
            za: false,
        }
    }
}

#[cfg(test)]
mod tests {
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

    // ---- property tests ---------------------------------------------------

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
}
