//! Block structure, line by line: fenced code blocks, tables, headings, rules,
//! bullets, ordered lists and quotes; inline text goes to [`super::render`].

use super::*;

pub(super) struct Fence {
    pub(super) ch: char,
    pub(super) len: usize,
    /// Leading spaces of the opening fence, removed from content lines.
    pub(super) indent: usize,
}

pub(super) fn fence_open(line: &str) -> Option<Fence> {
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

pub(super) fn is_fence_close(line: &str, f: &Fence) -> bool {
    let t = line.trim();
    t.len() >= f.len && t.chars().all(|c| c == f.ch)
}

pub(super) fn code_block(
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
pub(super) fn break_backtick_runs(s: &str) -> String {
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
pub(super) enum Align {
    Left,
    Center,
    Right,
}

/// A table starting at line `i`: the number of lines it spans and the column
/// alignments.
pub(super) fn table_at(lines: &[&str], i: usize) -> Option<(usize, Vec<Align>)> {
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

pub(super) fn parse_align(cell: &str) -> Option<Align> {
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
pub(super) fn split_row(line: &str) -> Vec<String> {
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

pub(super) fn table(rows: &[&str], aligns: &[Align], t: Target, out: &mut Vec<OutLine>) {
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

pub(super) fn pad(s: &str, width: usize, align: Align) -> String {
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
pub(super) fn render_block(line: &str, t: Target) -> String {
    // Quote levels are peeled in a loop, not by recursion: a reply of 100,000 `>`
    // must not overflow the stack. Empty lines, rules and headings end the peeling
    // first, as they did at each level before.
    let mut inner = line;
    let mut depth = 0;
    loop {
        let body = inner.trim_start();
        if body.is_empty() || is_hr(body) || atx_heading(body).is_some() {
            break;
        }
        let Some(rest) = body.strip_prefix('>') else {
            break;
        };
        inner = rest.strip_prefix(' ').unwrap_or(rest);
        depth += 1;
    }
    let rendered = render_unquoted(inner, t);
    if depth == 0 {
        return rendered;
    }
    // One `> ` per level; an empty line keeps the markers without the last space.
    let quote = "> ".repeat(depth);
    prefix_lines(&rendered, &quote, &quote)
}

/// A line without leading `>`: empty, a rule, a heading, a list item or text.
fn render_unquoted(line: &str, t: Target) -> String {
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

pub(super) fn prefix_lines(s: &str, first: &str, cont: &str) -> String {
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

pub(super) fn is_hr(s: &str) -> bool {
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

pub(super) fn atx_heading(s: &str) -> Option<&str> {
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

pub(super) fn bullet(s: &str) -> Option<&str> {
    let rest = s.strip_prefix(['-', '*', '+'])?;
    rest.starts_with([' ', '\t']).then(|| rest.trim_start())
}

pub(super) fn ordered(s: &str) -> Option<(&str, &str)> {
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
