//! Content lines: unfolding a text into logical lines that remember their bytes, splitting a
//! line into name, parameters and value, text escapes, and folding on the way out.

use crate::formats::native::Param;

/// One logical (unfolded) line and the bytes it came from.
#[derive(Debug, Clone)]
pub(super) struct Line {
    /// Offset of its first byte.
    pub start: usize,
    /// Offset just past its last byte, line break included.
    pub end: usize,
    /// Its 1-based number in the text.
    pub number: u32,
    /// Its content, unfolded, without the line break.
    pub content: String,
}

/// The logical lines of `text`. A leading BOM belongs to no line; an empty line is kept (with
/// empty content) so that folding never joins across it.
pub(super) fn lines(text: &str) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut at = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let mut number: u32 = 1;
    while at < text.len() {
        let rest = &text[at..];
        let (body, len) = match rest.find('\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        let body = body.strip_suffix('\r').unwrap_or(body);
        let folded = body.starts_with([' ', '\t']);
        match out.last_mut() {
            Some(prev) if folded && !prev.content.is_empty() => {
                prev.content.push_str(&body[1..]);
                prev.end = at + len;
            }
            _ => out.push(Line {
                start: at,
                end: at + len,
                number,
                content: body.to_string(),
            }),
        }
        at += len;
        number = number.saturating_add(1);
    }
    out
}

/// A content line split up: its name upper-cased, its parameters, its value as written.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Prop {
    pub name: String,
    pub params: Vec<Param>,
    pub value: String,
}

/// Whether `s` may be a property or parameter name. Wider than RFC 5545's token so that
/// vendor oddities still read, narrow enough that a written name always reads back.
pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// Splits a content line, or `None` when it is not one (no `:`, a bad name, an open quote).
pub(super) fn parse_prop(content: &str) -> Option<Prop> {
    let bytes = content.as_bytes();
    let name_end = content.find([';', ':'])?;
    let name = &content[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut i = name_end;
    let mut params = Vec::new();
    while bytes.get(i) == Some(&b';') {
        i += 1;
        let rel = content[i..].find(['=', ';', ':'])?;
        let pname = &content[i..i + rel];
        if !is_name(pname) {
            return None;
        }
        i += rel;
        let mut values = Vec::new();
        if bytes.get(i) == Some(&b'=') {
            loop {
                i += 1;
                if bytes.get(i) == Some(&b'"') {
                    let close = content[i + 1..].find('"')?;
                    values.push(content[i + 1..i + 1 + close].to_string());
                    i += close + 2;
                } else {
                    let rel = content[i..].find([',', ';', ':'])?;
                    values.push(content[i..i + rel].to_string());
                    i += rel;
                }
                if bytes.get(i) != Some(&b',') {
                    break;
                }
            }
        }
        params.push(Param {
            name: pname.to_ascii_uppercase(),
            values,
        });
    }
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    Some(Prop {
        name: name.to_ascii_uppercase(),
        params,
        value: content[i + 1..].to_string(),
    })
}

/// A TEXT value without its escapes. An unknown escape is kept as written.
pub(super) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(e @ ('\\' | ';' | ',')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A TEXT value with the escapes RFC 5545 asks for.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out
}

/// The parts of a list value (CATEGORIES) at its unescaped commas, each unescaped.
pub(super) fn split_text_list(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                part.push(c);
                if let Some(next) = chars.next() {
                    part.push(next);
                }
            }
            ',' => parts.push(unescape(&std::mem::take(&mut part))),
            _ => part.push(c),
        }
    }
    parts.push(unescape(&part));
    parts
}

/// A value written as it is: a line break would end the line, so it goes.
pub(super) fn plain(s: &str) -> String {
    s.replace('\n', "")
}

/// A content line from its parts, parameters quoted where they must be. What cannot be
/// written (a bad parameter name, a quote or line break in a parameter value) is left out.
pub(super) fn render(name: &str, params: &[Param], value: &str) -> String {
    let mut line = String::from(name);
    for p in params.iter().filter(|p| is_name(&p.name)) {
        line.push(';');
        line.push_str(&p.name);
        for (i, v) in p.values.iter().enumerate() {
            line.push(if i == 0 { '=' } else { ',' });
            let v: String = v.chars().filter(|c| !matches!(c, '"' | '\n')).collect();
            if v.contains([';', ':', ',']) {
                line.push('"');
                line.push_str(&v);
                line.push('"');
            } else {
                line.push_str(&v);
            }
        }
    }
    line.push(':');
    line.push_str(value);
    line
}

/// Appends `line` folded at 75 octets (never inside a character), with CRLF.
pub(super) fn push_folded(out: &mut String, line: &str) {
    const LIMIT: usize = 75;
    let mut rest = line;
    let mut room = LIMIT;
    loop {
        if rest.len() <= room {
            out.push_str(rest);
            out.push_str("\r\n");
            return;
        }
        let mut cut = room;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&rest[..cut]);
        out.push_str("\r\n ");
        rest = &rest[cut..];
        room = LIMIT - 1;
    }
}
