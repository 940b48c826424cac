//! A text cut into cards, and a card into its content lines as written: group, name,
//! parameters and the unfolded value, with a quoted-printable value decoded.
//!
//! We read lines ourselves instead of taking calcard's typed entries because a property the
//! record has no field for keeps its value *as written* (escapes and all), and calcard hands
//! values back unescaped and retyped; calcard still checks every card (see `super::read`).

use std::ops::Range;

use crate::formats::native::Param;

/// A physical line: where it starts, where its content ends (before `\r\n` or `\n`), where the
/// next line starts, and its number from 1.
#[derive(Debug, Clone, Copy)]
pub(super) struct Line {
    pub start: usize,
    pub end: usize,
    pub next: usize,
    pub number: u32,
}

/// Every physical line of `text`.
pub(super) fn lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut number = 1u32;
    let bytes = text.as_bytes();
    while start < bytes.len() {
        let (end, next) = match memchr_newline(&bytes[start..]) {
            Some(i) => {
                let nl = start + i;
                let end = if nl > start && bytes[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                (end, nl + 1)
            }
            None => (bytes.len(), bytes.len()),
        };
        out.push(Line {
            start,
            end,
            next,
            number,
        });
        number = number.saturating_add(1);
        start = next;
    }
    out
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

/// What a stretch of the text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BlockKind {
    /// BEGIN:VCARD … END:VCARD.
    Card,
    /// BEGIN:VCARD with no END:VCARD before the next card or the end of the text.
    Unterminated,
    /// Non-blank text outside any card.
    Outside,
}

/// A stretch of the text: a card, an unterminated card, or text outside cards.
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub kind: BlockKind,
    pub span: Range<usize>,
    pub line: u32,
}

fn is_marker(content: &str, what: &str) -> bool {
    // Only trailing blanks: a line that starts with one is a folded continuation.
    let c = content.trim_start_matches('\u{feff}').trim_end();
    c.len() == what.len() && c.eq_ignore_ascii_case(what)
}

/// Cuts `text` into cards and the parts between them that are not blank.
pub(super) fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, u32)> = None;
    let mut outside: Option<(usize, usize, u32)> = None;
    for l in lines(text) {
        let content = text.get(l.start..l.end).unwrap_or("");
        // A BOM belongs to no card, so a writer keeps it where it is.
        let bom = if content.starts_with('\u{feff}') {
            3
        } else {
            0
        };
        if is_marker(content, "BEGIN:VCARD") {
            if let Some((s, e, line)) = outside.take() {
                out.push(Block {
                    kind: BlockKind::Outside,
                    span: s..e,
                    line,
                });
            }
            if let Some((s, line)) = open.take() {
                out.push(Block {
                    kind: BlockKind::Unterminated,
                    span: s..l.start,
                    line,
                });
            }
            open = Some((l.start + bom, l.number));
            continue;
        }
        if let Some((s, line)) = open {
            if is_marker(content, "END:VCARD") {
                out.push(Block {
                    kind: BlockKind::Card,
                    span: s..l.next,
                    line,
                });
                open = None;
            }
            continue;
        }
        if content.trim_start_matches('\u{feff}').trim().is_empty() {
            if let Some((s, e, line)) = outside.take() {
                out.push(Block {
                    kind: BlockKind::Outside,
                    span: s..e,
                    line,
                });
            }
            continue;
        }
        match &mut outside {
            Some((_, e, _)) => *e = l.next,
            None => outside = Some((l.start + bom, l.next, l.number)),
        }
    }
    if let Some((s, e, line)) = outside.take() {
        out.push(Block {
            kind: BlockKind::Outside,
            span: s..e,
            line,
        });
    }
    if let Some((s, line)) = open {
        out.push(Block {
            kind: BlockKind::Unterminated,
            span: s..text.len(),
            line,
        });
    }
    out
}

/// One property as written, unfolded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ContentLine {
    pub line: u32,
    pub group: String,
    /// Upper-cased.
    pub name: String,
    /// Names upper-cased, values as written without quotes; a bare 2.1 parameter
    /// (`TEL;CELL:`) has no values.
    pub params: Vec<Param>,
    /// Unfolded; decoded when it was quoted-printable (escapes still in).
    pub value: String,
    /// The value was quoted-printable (its ENCODING and CHARSET are gone from `params`).
    pub was_qp: bool,
}

/// Why a card cannot be read: its line and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LineError {
    pub line: u32,
    pub reason: String,
}

/// The content lines of one card (`block` runs from its BEGIN line to its END line).
pub(super) fn content_lines(block: &str, first_line: u32) -> Result<Vec<ContentLine>, LineError> {
    let phys: Vec<(u32, &str)> = lines(block)
        .into_iter()
        .map(|l| {
            (
                first_line.saturating_add(l.number - 1),
                block.get(l.start..l.end).unwrap_or(""),
            )
        })
        .collect();
    // The first line is BEGIN:VCARD and the last non-blank one END:VCARD.
    let last = phys
        .iter()
        .rposition(|(_, c)| is_marker(c, "END:VCARD"))
        .unwrap_or(phys.len());
    let body = phys.get(1..last).unwrap_or(&[]);
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let (number, first) = body[i];
        i += 1;
        if first.trim().is_empty() {
            continue;
        }
        if first.starts_with([' ', '\t']) {
            return Err(LineError {
                line: number,
                reason: "starts with a space but follows no property (a folded line out of \
                         place); join it to its property or remove it"
                    .into(),
            });
        }
        let mut logical = first.to_string();
        // The head (name and parameters) may itself be folded.
        while find_colon(&logical).is_none() {
            match body.get(i) {
                Some((_, next)) if next.starts_with([' ', '\t']) => {
                    logical.push_str(&next[1..]);
                    i += 1;
                }
                _ => break,
            }
        }
        let Some(colon) = find_colon(&logical) else {
            return Err(LineError {
                line: number,
                reason: "is not a property (it has no ':'); fix the line or remove it".into(),
            });
        };
        let (group, name, mut params) = parse_head(&logical[..colon]).ok_or_else(|| LineError {
            line: number,
            reason: "has no property name before ':'; fix the line or remove it".into(),
        })?;
        let mut value = logical[colon + 1..].to_string();
        let qp = take_qp(&mut params);
        loop {
            match body.get(i) {
                // A soft line break of quoted-printable: the next line goes on as it is.
                Some((_, next)) if qp.is_some() && value.ends_with('=') => {
                    value.pop();
                    value.push_str(next);
                    i += 1;
                }
                Some((_, next)) if next.starts_with([' ', '\t']) => {
                    value.push_str(&next[1..]);
                    i += 1;
                }
                _ => break,
            }
        }
        let was_qp = qp.is_some();
        if let Some(charset) = qp {
            // 2.1 writes a line break as =0D=0A; text values hold `\n`, as 3.0's do.
            value = decode_qp(&value, charset.as_deref()).replace("\r\n", "\n");
        }
        out.push(ContentLine {
            line: number,
            group,
            name,
            params,
            value,
            was_qp,
        });
    }
    Ok(out)
}

/// The byte index of the colon that ends a property's head (outside quoted parameter values).
fn find_colon(s: &str) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `s` on `sep` outside double quotes.
fn split_quoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_head(head: &str) -> Option<(String, String, Vec<Param>)> {
    let mut parts = split_quoted(head, ';').into_iter();
    let full = parts.next()?.trim();
    let (group, name) = match full.split_once('.') {
        Some((g, n)) => (g.to_string(), n),
        None => (String::new(), full),
    };
    if name.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        if p.trim().is_empty() {
            continue;
        }
        let (pname, values) = match p.split_once('=') {
            Some((n, v)) => (
                n,
                split_quoted(v, ',')
                    .into_iter()
                    .map(|v| v.replace('"', ""))
                    .collect(),
            ),
            None => (p, Vec::new()),
        };
        params.push(Param {
            name: pname.trim().to_ascii_uppercase(),
            values,
        });
    }
    Some((group, name.to_ascii_uppercase(), params))
}

/// Removes a quoted-printable ENCODING (and the CHARSET with it) from `params`; `Some(charset)`
/// when the value is quoted-printable. A CHARSET without it is dropped too: the text is
/// already decoded, and a writer says it again where it must.
fn take_qp(params: &mut Vec<Param>) -> Option<Option<String>> {
    let is_qp = |p: &Param| {
        let qp = |v: &str| v.eq_ignore_ascii_case("QUOTED-PRINTABLE");
        (p.name == "ENCODING" && p.values.iter().any(|v| qp(v)))
            || (p.values.is_empty() && qp(&p.name))
    };
    let qp = params.iter().any(is_qp);
    let charset = params
        .iter()
        .find(|p| p.name == "CHARSET")
        .and_then(|p| p.values.first().cloned());
    params.retain(|p| {
        !(is_qp(p)
            || p.name == "CHARSET"
            || (p.name == "ENCODING"
                && p.values
                    .iter()
                    .all(|v| v.eq_ignore_ascii_case("8BIT") || v.eq_ignore_ascii_case("7BIT"))))
    });
    qp.then_some(charset)
}

/// Decodes a quoted-printable value in `charset` (UTF-8 when unnamed and valid, else
/// ISO-8859-1, as 2.1 writers mean it).
///
/// calcard decodes these too (a test shows it), but it hands back the value unescaped, and
/// we keep escapes for the properties we hold as written, so the bytes are decoded here and
/// only a charset we do not know ourselves is passed to calcard.
pub(super) fn decode_qp(value: &str, charset: Option<&str>) -> String {
    let b = value.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    bytes.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => bytes.push(b'='),
            }
        } else {
            bytes.push(b[i]);
        }
        i += 1;
    }
    decode_charset(&bytes, charset, value)
}

fn decode_charset(bytes: &[u8], charset: Option<&str>, qp_text: &str) -> String {
    let cs = charset.unwrap_or("").trim().to_ascii_lowercase();
    let latin1 = |bytes: &[u8]| bytes.iter().map(|b| char::from(*b)).collect::<String>();
    match cs.as_str() {
        "" => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => latin1(bytes),
        },
        "utf-8" | "utf8" => String::from_utf8_lossy(bytes).into_owned(),
        "iso-8859-1" | "latin1" | "latin-1" | "us-ascii" | "ascii" => latin1(bytes),
        "windows-1252" | "cp1252" => bytes.iter().map(|b| cp1252(*b)).collect(),
        other => via_calcard(qp_text, other).unwrap_or_else(|| latin1(bytes)),
    }
}

/// Windows-1252: Latin-1 but for 0x80–0x9F.
fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

/// Lets calcard decode a quoted-printable value in a charset we do not know ourselves.
fn via_calcard(qp_text: &str, charset: &str) -> Option<String> {
    if charset.contains([';', ':', '"', '\r', '\n']) || qp_text.contains(['\r', '\n']) {
        return None;
    }
    let card = format!(
        "BEGIN:VCARD\r\nVERSION:2.1\r\nX-T;ENCODING=QUOTED-PRINTABLE;CHARSET={charset}:{qp_text}\r\nEND:VCARD\r\n"
    );
    let parsed = calcard::vcard::VCard::parse(card).ok()?;
    let entry = parsed
        .entries
        .iter()
        .find(|e| matches!(&e.name, calcard::vcard::VCardProperty::Other(n) if n.eq_ignore_ascii_case("X-T")))?;
    let text: Vec<&str> = entry
        .values
        .iter()
        .filter_map(|v| match v {
            calcard::vcard::VCardValue::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    (!text.is_empty()).then(|| text.join(","))
}
