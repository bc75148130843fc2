//! Rendering parsed inline tokens as WhatsApp markup or plain text, with zero-width
//! escapes for marker characters that are not markup.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Text,
    /// A marker char shown literally: must not be read as markup.
    Lit,
    /// A markup marker of pair `id`.
    Mk(usize),
    /// Code or URL content: left exactly as it is.
    Prot,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Cell {
    pub(super) ch: char,
    pub(super) kind: Kind,
    /// A U+200B goes before / after this char.
    pub(super) zb: bool,
    pub(super) za: bool,
}

pub(super) struct Pair {
    pub(super) open: usize,
    pub(super) close: usize,
    pub(super) alive: bool,
    pub(super) code: bool,
}

pub(super) struct Renderer {
    pub(super) t: Target,
    pub(super) ctx: Ctx,
    pub(super) cells: Vec<Cell>,
    pub(super) pairs: Vec<Pair>,
    /// Open markup pairs per marker (`*`, `_`, `~`), to flatten self-nesting.
    pub(super) depth: [u32; 3],
    /// Emphasis id → markup pair (None when flattened or plain).
    pub(super) map: Vec<Option<usize>>,
    pub(super) space_if_alnum: bool,
}

pub(super) fn render_inline(src: &str, t: Target, ctx: Ctx) -> String {
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
pub(super) fn clean_lines(s: &str) -> String {
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
    pub(super) fn push(&mut self, ch: char, kind: Kind) {
        if std::mem::take(&mut self.space_if_alnum) && ch.is_alphanumeric() {
            self.cells.push(Cell::new(' ', Kind::Text));
        }
        self.cells.push(Cell::new(ch, kind));
    }

    pub(super) fn text(&mut self, ch: char) {
        let kind = if is_marker(ch) { Kind::Lit } else { Kind::Text };
        self.push(ch, kind);
    }

    pub(super) fn open_mk(&mut self, ch: char, code: bool) -> usize {
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

    pub(super) fn close_mk(&mut self, id: usize, ch: char) {
        self.push(ch, Kind::Mk(id));
        self.pairs[id].close = self.cells.len() - 1;
    }

    pub(super) fn emph_open(&mut self, pid: usize, kind: Emph) {
        let m = kind.marker();
        if self.t == Target::Plain || self.depth[marker_idx(m)] > 0 {
            return;
        }
        self.depth[marker_idx(m)] += 1;
        self.map[pid] = Some(self.open_mk(m, false));
    }

    pub(super) fn emph_close(&mut self, pid: usize, kind: Emph) {
        if let Some(id) = self.map[pid] {
            let m = kind.marker();
            self.depth[marker_idx(m)] -= 1;
            self.close_mk(id, m);
        }
    }

    /// A URL: protected up to where a linkifier would end it; trailing
    /// punctuation of an explicit target (`<https://a.io/x_>`) is kept but
    /// treated as ordinary text.
    pub(super) fn url(&mut self, s: &str) {
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

    pub(super) fn link_target(&mut self, s: &str) {
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
    pub(super) fn code(&mut self, s: &str) {
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

    pub(super) fn render(&mut self, p: &Parsed) {
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

    pub(super) fn finish(mut self) -> String {
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

    pub(super) fn prev_eff(&self, i: usize) -> Option<char> {
        if self.cells[i].zb {
            return Some(ZWSP);
        }
        let p = self.cells.get(i.checked_sub(1)?)?;
        Some(if p.za { ZWSP } else { p.ch })
    }

    pub(super) fn next_eff(&self, i: usize) -> Option<char> {
        if self.cells[i].za {
            return Some(ZWSP);
        }
        let n = self.cells.get(i + 1)?;
        Some(if n.zb { ZWSP } else { n.ch })
    }

    pub(super) fn is_opening(&self, i: usize) -> bool {
        opens_at(self.prev_eff(i), self.next_eff(i))
    }

    pub(super) fn is_closing(&self, i: usize) -> bool {
        closes_at(self.prev_eff(i), self.next_eff(i))
    }

    pub(super) fn pair_valid(&self, id: usize, line: &[u32]) -> bool {
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
    pub(super) fn fixup(&mut self) {
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

    pub(super) fn demote(&mut self, id: usize, work: &mut Vec<usize>) {
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
    pub(super) fn enclosed(&self, i: usize, spans: &[Vec<(usize, usize, usize)>; 4]) -> bool {
        let v = &spans[marker_idx(self.cells[i].ch)];
        let k = v.partition_point(|s| s.0 < i);
        k > 0 && {
            let (_, close, id) = v[k - 1];
            close > i && self.pairs[id].alive
        }
    }

    pub(super) fn neutralize(
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

    pub(super) fn recheck(&mut self, j: usize, line: &[u32], work: &mut Vec<usize>) {
        if let Kind::Mk(id) = self.cells[j].kind
            && self.pairs[id].alive
            && !self.pair_valid(id, line)
        {
            self.demote(id, work);
        }
    }
}

impl Cell {
    pub(super) fn new(ch: char, kind: Kind) -> Self {
        Cell {
            ch,
            kind,
            zb: false,
            za: false,
        }
    }
}
