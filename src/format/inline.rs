//! Inline parsing of one line: code spans, links, autolinks and bare URLs, entities,
//! HTML tags, and emphasis delimiters (the CommonMark delimiter algorithm with
//! WhatsApp's word-boundary rule).

use std::collections::HashMap;

use super::*;

pub(super) fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// Whitespace or punctuation (any visible non-alphanumeric char): what may
/// stand before an opening / after a closing WhatsApp marker.
pub(super) fn is_boundary(c: char) -> bool {
    c.is_whitespace() || (!c.is_alphanumeric() && !is_invisible(c))
}

pub(super) fn is_marker(c: char) -> bool {
    matches!(c, '*' | '_' | '~' | '`')
}

pub(super) fn marker_idx(c: char) -> usize {
    match c {
        '*' => 0,
        '_' => 1,
        '~' => 2,
        _ => 3,
    }
}

/// Would WhatsApp read a marker at `i` as opening? (`prev`/`next` are the
/// neighbouring chars, `None` at the line's ends.)
pub(super) fn opens_at(prev: Option<char>, next: Option<char>) -> bool {
    prev.is_none_or(is_boundary) && next.is_some_and(|c| !c.is_whitespace())
}

/// Would WhatsApp read a marker at `i` as closing?
pub(super) fn closes_at(prev: Option<char>, next: Option<char>) -> bool {
    prev.is_some_and(|c| !c.is_whitespace()) && next.is_none_or(is_boundary)
}

pub(super) fn run_len(chars: &[char], i: usize) -> usize {
    chars[i..].iter().take_while(|&&c| c == chars[i]).count()
}

/// Length of a URL (`http://`, `https://` or `www.`) starting at `i`, with
/// GFM's trailing-punctuation rules; `None` if there is none.
pub(super) fn url_at(chars: &[char], i: usize) -> Option<usize> {
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

pub(super) fn is_url_stop(c: char) -> bool {
    c.is_whitespace() || is_invisible(c) || matches!(c, '<' | '>' | '[' | ']' | '`' | '"')
}

/// Does an explicit link target (autolink or `(dest)`) start like a URL?
/// Its whole text is then protected, trailing punctuation included.
pub(super) fn is_url_target(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    url_at(&chars, 0).is_some() && !chars.iter().any(|&c| is_url_stop(c))
}

pub(super) fn entity_at(chars: &[char], i: usize) -> Option<(usize, char)> {
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

pub(super) fn decode_entity(name: &str) -> Option<char> {
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

pub(super) fn decode_entities(s: &str) -> String {
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
pub(super) fn autolink(chars: &[char], i: usize) -> Option<(usize, String)> {
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

pub(super) fn is_uri(s: &[char]) -> bool {
    let Some(colon) = s.iter().position(|&c| c == ':') else {
        return false;
    };
    (2..=32).contains(&colon)
        && s[0].is_ascii_alphabetic()
        && s[1..colon]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
}

pub(super) fn is_email(s: &[char]) -> bool {
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
pub(super) fn html_tag(chars: &[char], i: usize) -> Option<(usize, bool)> {
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
pub(super) enum Emph {
    Strong,
    Em,
    Strike,
}

impl Emph {
    pub(super) fn marker(self) -> char {
        match self {
            Emph::Strong => '*',
            Emph::Em => '_',
            Emph::Strike => '~',
        }
    }
}

/// A run of `*`, `_` or `~~`.
pub(super) struct Delim {
    pub(super) ch: char,
    pub(super) len: usize,
    /// Chars not consumed by a match (rendered literally).
    pub(super) rem: usize,
    pub(super) can_open: bool,
    pub(super) can_close: bool,
    /// Emphasis ids opened here, innermost first.
    pub(super) opens: Vec<usize>,
    /// Emphasis ids closed here, innermost first.
    pub(super) closes: Vec<usize>,
}

pub(super) enum Tok {
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

pub(super) struct Parsed {
    pub(super) toks: Vec<Tok>,
    pub(super) delims: Vec<Delim>,
    pub(super) kinds: Vec<Emph>,
}

pub(super) struct Bracket {
    pub(super) tok: usize,
    pub(super) image: bool,
    pub(super) delim_h: usize,
    pub(super) src_start: usize,
}

/// Positions of backtick runs by length, for finding code-span closers in
/// linear time.
pub(super) struct Ticks {
    pub(super) by_len: HashMap<usize, (Vec<usize>, usize)>,
}

impl Ticks {
    pub(super) fn new(chars: &[char]) -> Self {
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
    pub(super) fn find(&mut self, len: usize, from: usize) -> Option<usize> {
        let (starts, cur) = self.by_len.get_mut(&len)?;
        while *cur < starts.len() && starts[*cur] < from {
            *cur += 1;
        }
        starts.get(*cur).copied()
    }
}

pub(super) struct Parser<'a> {
    pub(super) chars: &'a [char],
    pub(super) toks: Vec<Tok>,
    pub(super) text: String,
    pub(super) delims: Vec<Delim>,
    /// Delimiter stack of the current scope (ids into `delims`).
    pub(super) stack: Vec<usize>,
    pub(super) brackets: Vec<Bracket>,
    /// Brackets below this stack height are inside a link (inactive).
    pub(super) barrier: usize,
    pub(super) kinds: Vec<Emph>,
    pub(super) ticks: Option<Ticks>,
    /// Chars that link destinations may still scan on this line.
    pub(super) link_budget: usize,
}

pub(super) fn parse_inline(chars: &[char]) -> Parsed {
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
    pub(super) fn flush(&mut self) {
        if !self.text.is_empty() {
            self.toks.push(Tok::Text(std::mem::take(&mut self.text)));
        }
    }

    pub(super) fn push(&mut self, t: Tok) {
        self.flush();
        self.toks.push(t);
    }

    pub(super) fn plain(&mut self, c: char, i: usize) -> usize {
        self.text.push(c);
        i + 1
    }

    pub(super) fn backticks(&mut self, i: usize) -> usize {
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

    pub(super) fn delim_run(&mut self, i: usize) -> usize {
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

    pub(super) fn angle(&mut self, i: usize) -> usize {
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

    pub(super) fn open_bracket(&mut self, i: usize, image: bool) -> usize {
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

    pub(super) fn close_bracket(&mut self, i: usize) -> usize {
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
    pub(super) fn process_emphasis(&mut self, ds: &[usize]) {
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
pub(super) fn bare_link(raw: &[char], dest: &str) -> Option<String> {
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
pub(super) fn link_dest(chars: &[char], p: usize, limit: usize) -> Option<(usize, String)> {
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
