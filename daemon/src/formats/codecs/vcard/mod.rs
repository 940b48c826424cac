//! vCard text (2.1, 3.0, 4.0; one card or many) ⇄ contacts.
//!
//! Reads every card of a text on its own, so one broken card is an error naming its line and
//! every other card still syncs; writes a changed card in place and keeps every other byte.
//! Must not: do I/O, or know about stamps (a codec reads and writes values only).

mod lex;
mod read;
mod value;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::ops::Range;

use crate::formats::native::{
    Change, Codec, Contact, ContactChanges, NativeError, NativeRecord, Parsed, Record,
    WriteSettings, contact_changes, without_stamps,
};
use lex::BlockKind;
use write::Version;

pub(in crate::formats::codecs) use value::normalize_date;

/// The vCard codec: contacts in vCard 2.1, 3.0 or 4.0 text.
#[derive(Debug, Clone, Copy, Default)]
pub struct VCardCodec;

impl Codec for VCardCodec {
    fn reparse(&self, previous: &str, parsed: Parsed, text: &str) -> Parsed {
        // Cards read alone, so only the changed ones are read again.
        crate::formats::reparse::reparse_flat(previous, parsed, text, 0, |w| self.parse(w))
            .unwrap_or_else(|| self.parse(text))
    }

    fn parse(&self, text: &str) -> Parsed {
        let mut parsed = Parsed::default();
        for b in lex::blocks(text) {
            let Some(part) = text.get(b.span.clone()) else {
                continue;
            };
            let error = |message: String| NativeError {
                line: b.line,
                message,
                span: b.span.clone(),
            };
            match b.kind {
                BlockKind::Outside => parsed.errors.push(error(format!(
                    "text at line {} is not part of a vCard; remove it, or put it inside \
                     BEGIN:VCARD … END:VCARD",
                    b.line
                ))),
                BlockKind::Unterminated => parsed.errors.push(error(format!(
                    "vCard at line {} has no END:VCARD; add the line or remove the card",
                    b.line
                ))),
                BlockKind::Card => match read_card(part, b.line) {
                    Ok(contact) => parsed.records.push(NativeRecord {
                        record: Record::Contact(contact),
                        line: b.line,
                        spans: vec![b.span.clone()],
                    }),
                    Err(message) => parsed.errors.push(error(message)),
                },
            }
        }
        parsed
    }

    fn holds(&self, record: &Record) -> Record {
        let plain = without_stamps(record);
        let Record::Contact(c) = &plain else {
            return plain;
        };
        // What a vCard holds is exactly what a write and a read give back, so that is how it
        // is found: no second list of rules to keep in step with the reader and the writer.
        // 3.0 is the version a text without one gets.
        let text = write::card(c, Version::V30, "\r\n");
        match self.parse(&text).records.into_iter().next() {
            Some(r) => r.record,
            None => plain,
        }
    }

    fn write(
        &self,
        previous: Option<(&str, &Parsed)>,
        changes: &[Change],
        settings: &WriteSettings,
    ) -> String {
        let prev_text = previous.map(|(t, _)| t).unwrap_or("");
        let version = Version::parse(&settings.vcard_version)
            .or_else(|| most_common_version(prev_text))
            .unwrap_or(Version::V30);
        let eol = line_end(prev_text);

        // The last change for each key wins; records without a key are only added.
        let ContactChanges {
            order,
            by_uid,
            keyless,
        } = contact_changes(changes);

        let mut out = String::new();
        let mut written: HashSet<String> = HashSet::new();
        if let Some((text, parsed)) = previous {
            let mut parts: Vec<(Range<usize>, Option<&str>)> = parsed
                .records
                .iter()
                .flat_map(|r| r.spans.iter().map(move |s| (s.clone(), r.uid())))
                .chain(parsed.errors.iter().map(|e| (e.span.clone(), None)))
                .collect();
            parts.sort_by_key(|(s, _)| (s.start, s.end));
            let mut cursor = 0;
            for (span, uid) in parts {
                if span.start < cursor || text.get(span.clone()).is_none() {
                    continue;
                }
                out.push_str(text.get(cursor..span.start).unwrap_or(""));
                cursor = span.end;
                let change = uid.and_then(|u| by_uid.get(u).map(|c| (u, c)));
                match change {
                    // Replaced in place; a second record with the same key goes, as the key
                    // names one record.
                    Some((u, Some(c))) => {
                        if written.insert(u.to_string()) {
                            out.push_str(&write::card(c, version, eol));
                        }
                    }
                    Some((_, None)) => {}
                    None => out.push_str(text.get(span).unwrap_or("")),
                }
            }
            out.push_str(text.get(cursor..).unwrap_or(""));
        }
        let new_cards = order
            .iter()
            .filter(|u| !written.contains(*u))
            .filter_map(|u| by_uid.get(u).copied().flatten())
            .chain(keyless);
        for c in new_cards {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str(eol);
            }
            out.push_str(&write::card(c, version, eol));
        }
        out
    }
}

/// Reads one card; the error says which line is wrong and what to do.
fn read_card(block: &str, line: u32) -> Result<Contact, String> {
    let lines = lex::content_lines(block, line).map_err(|e| {
        format!(
            "vCard at line {line}: line {} {}; the other cards are still read",
            e.line, e.reason
        )
    })?;
    // calcard has the last word on whether this is a card at all (strict: an invalid line or
    // a missing END is an error, never silently skipped).
    match calcard::Parser::new(block).strict().entry() {
        calcard::Entry::VCard(_) => {}
        other => {
            return Err(format!(
                "vCard at line {line} cannot be read ({}); fix the card or remove it",
                calcard_problem(&other)
            ));
        }
    }
    Ok(read::contact(&lines))
}

fn calcard_problem(e: &calcard::Entry) -> String {
    match e {
        calcard::Entry::InvalidLine(l) => format!("invalid line {:?}", l.trim()),
        calcard::Entry::UnterminatedComponent(c) => format!("{c} without its END"),
        calcard::Entry::Eof => "no card in it".into(),
        _ => "not a vCard".into(),
    }
}

/// The VERSION most cards of `text` use (the first one seen on a tie).
fn most_common_version(text: &str) -> Option<Version> {
    let mut counts: Vec<(Version, usize)> = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        let Some(v) = l
            .get(..8)
            .filter(|h| h.eq_ignore_ascii_case("VERSION:"))
            .and_then(|_| l.get(8..))
            .and_then(Version::parse)
        else {
            continue;
        };
        match counts.iter_mut().find(|(seen, _)| *seen == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(v, _)| v)
}

/// The line end `text` uses (its first), CRLF when it has none.
fn line_end(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if i == 0 || text.as_bytes()[i - 1] != b'\r' => "\n",
        _ => "\r\n",
    }
}
