//! Contacts CSV (Google's current and older exports, Outlook's) ⇄ contacts, one row a contact.
//!
//! Columns are recognised by their header names, never by place; a column no field holds is
//! kept in the contact as an `X-TANDEM-CSV` raw property and written back to its column. A
//! write is always Google's current layout, so the file imports back into Google Contacts.
//! Must not: do I/O, or know about stamps (a codec reads and writes values only).

mod columns;
mod row;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::formats::native::{
    Change, Codec, Contact, ContactChanges, Lines, NativeError, NativeRecord, Parsed, Record,
    WriteSettings, contact_changes, without_stamps,
};
use columns::{BLOCKS, Col, GOOGLE_HEAD, block_headers, classify, numbered};

/// The name of the raw property that keeps a cell of a column no field holds; its `COLUMN`
/// parameter names the column.
pub const KEPT_CELL: &str = "X-TANDEM-CSV";

/// The column that keeps a record's key. Google has none and ignores a column it does not
/// know on import, so our own writes add it at the end and a record keeps its key across a
/// round trip through Google Contacts' CSV.
const UID_COLUMN: &str = "UID";

/// The contacts CSV codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvCodec;

/// One CSV record as read: its cells and where it lies.
struct Row {
    cells: csv::StringRecord,
    span: Range<usize>,
}

/// Every CSV record of `text`; what the csv reader cannot go past is left out (the caller
/// makes it an error part).
fn rows(text: &str) -> (Vec<Row>, usize) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    let mut read_to = 0;
    loop {
        let mut cells = csv::StringRecord::new();
        match reader.read_record(&mut cells) {
            Ok(true) => {
                let mut start = cells
                    .position()
                    .and_then(|p| usize::try_from(p.byte()).ok())
                    .unwrap_or(read_to);
                let mut end = usize::try_from(reader.position().byte())
                    .unwrap_or(text.len())
                    .min(text.len());
                // The csv reader ends a record at the `\r` of a CRLF and starts the next at
                // its `\n`; a row's bytes are its line(s) with their line end.
                let bytes = text.as_bytes();
                while start < end && matches!(bytes.get(start), Some(b'\r' | b'\n')) {
                    start += 1;
                }
                if end > 0 && bytes.get(end - 1) == Some(&b'\r') && bytes.get(end) == Some(&b'\n') {
                    end += 1;
                }
                if start < read_to || start > end || text.get(start..end).is_none() {
                    break;
                }
                read_to = end;
                out.push(Row {
                    cells,
                    span: start..end,
                });
            }
            Ok(false) | Err(_) => break,
        }
    }
    (out, read_to)
}

/// Whether a first row is the header of a contacts CSV. Two columns we know, as every
/// export has many: a plain text whose first line is "Notes" is not a list of contacts.
fn is_header(cols: &[Col]) -> bool {
    cols.iter().filter(|c| c.is_known()).count() >= 2
}

/// The header of `text` when it is a contacts CSV.
fn header_of(text: &str) -> Option<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut first = csv::StringRecord::new();
    if !reader.read_record(&mut first).ok()? {
        return None;
    }
    let header: Vec<String> = first.iter().map(str::to_string).collect();
    let cols: Vec<Col> = header.iter().map(|h| classify(h)).collect();
    is_header(&cols).then_some(header)
}

/// Every non-blank line of a text that is not a contacts CSV, as an error part.
fn not_csv(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut start = 0;
    let mut lines = Lines::default();
    for piece in text.split_inclusive('\n') {
        let end = start + piece.len();
        if !piece.trim().is_empty() {
            let line = lines.at(text, start);
            parsed.errors.push(NativeError {
                line,
                message: format!(
                    "line {line} is not part of a contacts CSV (the first line names no \
                     column of Google's or Outlook's export); fix the header or remove the line"
                ),
                span: start..end,
            });
        }
        start = end;
    }
    parsed
}

impl Codec for CsvCodec {
    fn reparse(&self, previous: &str, parsed: Parsed, text: &str) -> Parsed {
        // A row reads alone under its header: the changed rows are read again under it, and
        // their places given back relative to the window.
        let head = parsed
            .records
            .first()
            .and_then(|r| r.spans.first())
            .map(|s| s.start);
        let Some(header) = head.and_then(|h| text.get(..h)) else {
            return self.parse(text);
        };
        let header_lines =
            u32::try_from(header.bytes().filter(|b| *b == b'\n').count()).unwrap_or(u32::MAX);
        let window = |w: &str| {
            let mut p = self.parse(&format!("{header}{w}"));
            for r in &mut p.records {
                r.line = r.line.saturating_sub(header_lines);
                for s in &mut r.spans {
                    *s = s.start.saturating_sub(header.len())..s.end.saturating_sub(header.len());
                }
            }
            if p.records.iter().any(|r| r.line == 0) {
                p.errors.push(NativeError {
                    line: 1,
                    message: "a row reached into the header".into(),
                    span: 0..0,
                });
            }
            p
        };
        crate::formats::reparse::reparse_flat(previous, parsed, text, header.len(), window)
            .unwrap_or_else(|| self.parse(text))
    }

    fn parse(&self, text: &str) -> Parsed {
        let (rows, read_to) = rows(text);
        let Some((head, body)) = rows.split_first() else {
            return not_csv(text);
        };
        let header: Vec<String> = head.cells.iter().map(str::to_string).collect();
        let cols: Vec<Col> = header.iter().map(|h| classify(h)).collect();
        if !is_header(&cols) {
            return not_csv(text);
        }
        let mut parsed = Parsed::default();
        let mut lines = Lines::default();
        for r in body {
            let line = lines.at(text, r.span.start);
            if r.cells.len() != header.len() {
                parsed.errors.push(NativeError {
                    line,
                    message: format!(
                        "row at line {line} has {} cells, the header has {}; fix the row or \
                         remove it",
                        r.cells.len(),
                        header.len()
                    ),
                    span: r.span.clone(),
                });
                continue;
            }
            parsed.records.push(NativeRecord {
                record: Record::Contact(row::read(&cols, &header, &r.cells)),
                line,
                spans: vec![r.span.clone()],
            });
        }
        if !text.get(read_to..).unwrap_or("").trim().is_empty() {
            let line = lines.at(text, read_to);
            parsed.errors.push(NativeError {
                line,
                message: format!(
                    "the text from line {line} on cannot be read as CSV; fix it or remove it"
                ),
                span: read_to..text.len(),
            });
        }
        parsed
    }

    fn holds(&self, record: &Record) -> Record {
        let Record::Contact(c) = record else {
            return record.clone();
        };
        // What a CSV holds is what a write and a read give back: one set of rules (the
        // reader's and the writer's), not a third copy of them.
        let c = match without_stamps(record) {
            Record::Contact(c) => c,
            Record::Calendar(_) => c.clone(),
        };
        let text = self.write(
            None,
            &[Change::Put(Box::new(Record::Contact(c.clone())))],
            &WriteSettings::default(),
        );
        match self.parse(&text).records.into_iter().next() {
            Some(r) => r.record,
            None => Record::Contact(c),
        }
    }

    fn write(
        &self,
        previous: Option<(&str, &Parsed)>,
        changes: &[Change],
        _settings: &WriteSettings,
    ) -> String {
        let prev_text = previous.map(|(t, _)| t).unwrap_or("");
        let eol = line_end(prev_text);
        let prev_header = header_of(prev_text);

        let ContactChanges {
            order,
            by_uid,
            keyless,
        } = contact_changes(changes);

        // The parts of the new text in order: kept bytes, rows kept, rows written anew.
        let mut parts: Vec<Part<'_>> = Vec::new();
        let mut written: HashSet<String> = HashSet::new();
        if let Some((text, parsed)) = previous {
            let mut old: Vec<(Range<usize>, Option<&Contact>)> = parsed
                .records
                .iter()
                .filter_map(|r| match &r.record {
                    Record::Contact(c) => r.spans.first().map(|s| (s.clone(), Some(c))),
                    Record::Calendar(_) => None,
                })
                .chain(parsed.errors.iter().map(|e| (e.span.clone(), None)))
                .collect();
            old.sort_by_key(|(s, _)| (s.start, s.end));
            let mut cursor = 0;
            for (span, contact) in old {
                if span.start < cursor || text.get(span.clone()).is_none() {
                    continue;
                }
                cursor = span.end;
                let Some(c) = contact else {
                    parts.push(Part::Bytes(span));
                    continue;
                };
                let uid = c.uid.as_str();
                match by_uid.get(uid).filter(|_| !uid.is_empty()) {
                    // Replaced in place; a second row with the same key goes, as the key
                    // names one record.
                    Some(Some(new)) => {
                        if written.insert(uid.to_string()) {
                            parts.push(Part::Row(new, Some(span)));
                        } else {
                            parts.push(Part::Gone(span));
                        }
                    }
                    Some(None) => parts.push(Part::Gone(span)),
                    None => parts.push(Part::Kept(c, span)),
                }
            }
        }
        let new_rows: Vec<&Contact> = order
            .iter()
            .filter(|u| !written.contains(*u))
            .filter_map(|u| by_uid.get(u).copied().flatten())
            .chain(keyless)
            .collect();
        parts.extend(new_rows.into_iter().map(|c| Part::Row(c, None)));

        let contacts: Vec<&Contact> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Row(c, _) | Part::Kept(c, _) => Some(*c),
                _ => None,
            })
            .collect();
        let header = header_for(&contacts, prev_header.as_deref());
        let render = |c: &Contact| row::render(c, &header, eol);

        let mut out = String::new();
        if prev_header.as_ref() == Some(&header) {
            // The same header: untouched rows and everything between them keep their bytes.
            let mut cursor = 0;
            for p in &parts {
                let span = match p {
                    Part::Bytes(s) | Part::Kept(_, s) | Part::Gone(s) | Part::Row(_, Some(s)) => s,
                    Part::Row(c, None) => {
                        if cursor < prev_text.len() {
                            out.push_str(prev_text.get(cursor..).unwrap_or(""));
                            cursor = prev_text.len();
                        }
                        if !out.is_empty() && !out.ends_with(['\n', '\r']) {
                            out.push_str(eol);
                        }
                        out.push_str(&render(c));
                        continue;
                    }
                };
                out.push_str(prev_text.get(cursor..span.start).unwrap_or(""));
                cursor = span.end;
                match p {
                    Part::Row(c, _) => out.push_str(&render(c)),
                    Part::Gone(_) => {}
                    _ => out.push_str(prev_text.get(span.clone()).unwrap_or("")),
                }
            }
            out.push_str(prev_text.get(cursor..).unwrap_or(""));
        } else {
            // A new header: every row is written anew, the parts that could not be read keep
            // their bytes in their place.
            if prev_text.starts_with('\u{feff}') {
                out.push('\u{feff}');
            }
            out.push_str(&row::render_cells(&header, eol));
            for p in &parts {
                match p {
                    Part::Bytes(s) => {
                        out.push_str(prev_text.get(s.clone()).unwrap_or(""));
                        if !out.ends_with(['\n', '\r']) {
                            out.push_str(eol);
                        }
                    }
                    Part::Kept(c, _) | Part::Row(c, _) => out.push_str(&render(c)),
                    Part::Gone(_) => {}
                }
            }
        }
        out
    }
}

/// A part of the text a writer makes.
enum Part<'a> {
    /// An error part of the previous text, kept as it is.
    Bytes(Range<usize>),
    /// An untouched row: its bytes, or (under a new header) its record written anew.
    Kept(&'a Contact, Range<usize>),
    /// A row removed.
    Gone(Range<usize>),
    /// A row written from a record: replacing a previous row, or new.
    Row(&'a Contact, Option<Range<usize>>),
}

/// Google's current layout with as many numbered blocks as the previous header or the widest
/// contact needs, then the kept columns (the previous header's, then new ones), then UID.
fn header_for(contacts: &[&Contact], prev: Option<&[String]>) -> Vec<String> {
    let mut width: HashMap<&str, u32> = HashMap::new();
    let mut widen = |block: &str, n: u32| {
        if let Some(b) = BLOCKS.iter().find(|b| b.eq_ignore_ascii_case(block)) {
            let w = width.entry(b).or_default();
            *w = (*w).max(n);
        }
    };
    for h in prev.unwrap_or(&[]) {
        if let Some((kind, n, _)) = numbered(h) {
            widen(&kind, n);
        }
    }
    for c in contacts {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        widen("E-mail", count(c.emails.len()));
        widen("Phone", count(c.phones.len()));
        widen("Address", count(c.addresses.len()));
        widen("Website", count(c.urls.len()));
        if c.anniversary.is_some() {
            widen("Event", row::anniversary_slot(c));
        }
        for (column, _) in row::kept_cells(c) {
            if let Some((kind, n, _)) = numbered(&column) {
                widen(&kind, n);
            }
        }
    }
    let mut header: Vec<String> = GOOGLE_HEAD.iter().map(|h| h.to_string()).collect();
    for b in BLOCKS {
        for n in 1..=width.get(b).copied().unwrap_or(0) {
            header.extend(block_headers(b, n));
        }
    }
    let mut seen: HashSet<String> = header.iter().map(|h| h.to_lowercase()).collect();
    seen.insert(UID_COLUMN.to_lowercase());
    let prev_kept = prev
        .unwrap_or(&[])
        .iter()
        .filter(|h| classify(h) == Col::Kept)
        .cloned();
    let new_kept = contacts
        .iter()
        .flat_map(|c| row::kept_cells(c).into_iter().map(|(h, _)| h));
    for h in prev_kept.chain(new_kept) {
        if seen.insert(h.to_lowercase()) {
            header.push(h);
        }
    }
    header.push(UID_COLUMN.to_string());
    header
}

/// The line end `text` uses (its first), CRLF when it has none.
fn line_end(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if i == 0 || text.as_bytes()[i - 1] != b'\r' => "\n",
        _ => "\r\n",
    }
}
