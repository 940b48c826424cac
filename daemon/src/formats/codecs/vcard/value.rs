//! vCard text values: escapes, lists and structured values, dates.

/// Splits `s` on `sep` where it is not escaped by a backslash.
pub(super) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Undoes text escapes (`\n`, `\,`, `\;`, `\\`, `\:`); an unknown escape stays as written.
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
            Some(c @ (',' | ';' | '\\' | ':')) => out.push(c),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Escapes text for a value. `newline` is what a line break becomes (`\n`, or a real line
/// break for 2.1's quoted-printable); `all` also escapes `,` and `;`, which only separate
/// something in lists and structured values but RFC 6350 escapes in every text.
pub(super) fn escape(s: &str, newline: &str, all: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str(newline);
            }
            '\n' => out.push_str(newline),
            ',' | ';' if all => {
                out.push('\\');
                out.push(c);
            }
            ';' => out.push_str("\\;"),
            _ => out.push(c),
        }
    }
    out
}

/// A date, date-time or `--MMDD` date as ISO 8601 extended ("1985-04-12", "--04-12",
/// "1985-04-12T10:30:00Z"); anything else as it is.
pub(in crate::formats::codecs) fn normalize_date(s: &str) -> String {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    let date_out = if date.len() == 8 && digits(date) {
        format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..])
    } else if date.len() == 6 && date.starts_with("--") && digits(&date[2..]) {
        format!("--{}-{}", &date[2..4], &date[4..])
    } else if is_extended_date(date) {
        date.to_string()
    } else {
        return s.to_string();
    };
    match time {
        None => date_out,
        Some(t) => match normalize_time(t) {
            Some(t) => format!("{date_out}T{t}"),
            None => s.to_string(),
        },
    }
}

fn is_extended_date(d: &str) -> bool {
    let b = d.as_bytes();
    let dig =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    (b.len() == 10 && dig(0..4) && b[4] == b'-' && dig(5..7) && b[7] == b'-' && dig(8..10))
        || (b.len() == 7 && d.starts_with("--") && dig(2..4) && b[4] == b'-' && dig(5..7))
}

/// "103000", "103000Z", "103000+0100" or already "10:30:00…" → "10:30:00…".
fn normalize_time(t: &str) -> Option<String> {
    let split = t.find(['Z', 'z', '+', '-']).unwrap_or(t.len());
    let (clock, zone) = t.split_at(split);
    let clock = if clock.len() == 6 && clock.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}:{}:{}", &clock[..2], &clock[2..4], &clock[4..])
    } else if clock.len() == 8
        && clock.as_bytes()[2] == b':'
        && clock.as_bytes()[5] == b':'
        && clock.bytes().filter(u8::is_ascii_digit).count() == 6
    {
        clock.to_string()
    } else {
        return None;
    };
    let zone = if zone.is_empty() || zone == "Z" {
        zone.to_string()
    } else if zone == "z" {
        "Z".to_string()
    } else if zone.len() == 5 && zone[1..].bytes().all(|b| b.is_ascii_digit()) {
        format!("{}:{}", &zone[..3], &zone[3..])
    } else if zone.len() == 6 && zone.as_bytes()[3] == b':' {
        zone.to_string()
    } else {
        return None;
    };
    Some(format!("{clock}{zone}"))
}

/// An extended ISO date as vCard 4.0 writes it (basic: "19850412", "--0412", "T103000Z");
/// anything else as it is.
pub(super) fn basic_date(s: &str) -> String {
    if normalize_date(s) != s {
        return s.to_string();
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    if !is_extended_date(date) || time.is_some_and(|t| normalize_time(t).is_none()) {
        return s.to_string();
    }
    let date = if let Some(rest) = date.strip_prefix("--") {
        format!("--{}", rest.replace('-', ""))
    } else {
        date.replace('-', "")
    };
    match time {
        None => date,
        Some(t) => format!("{date}T{}", t.replace(':', "")),
    }
}
