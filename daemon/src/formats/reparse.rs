//! A text read again after an edit, parsed only where it changed.
//!
//! One phone changed in a file of 10,000 contacts leaves every other record's bytes where they
//! were, only moved by the length the edit added. The records wholly inside the bytes the old
//! and the new text share at their start and at their end are taken from the old parse (moved);
//! only the window between is read again. That keeps a change's read proportional to the
//! change, not to the file, for codecs whose records each lie in one span and read alone (a
//! vCard file, a CSV under its header).
//!
//! Must not: give anything but what a parse of the whole text gives. Where that cannot be told
//! (the old parse had errors, the window has, a window that does not start and end at a line's
//! start), it gives up and the caller parses the whole text.

use std::ops::Range;

use super::native::Parsed;

/// `text` parsed, knowing `old` parsed into `parsed`: records before the first changed byte and
/// after the last are `parsed`'s, and the window between is read by `parse_window` (spans and
/// lines relative to the window). `head` is where records may start (a CSV's header ends there;
/// 0 for a vCard file): a window may not reach before it. `None` when the result could differ
/// from a parse of the whole text; the caller parses it whole then.
pub fn reparse_flat(
    old: &str,
    mut parsed: Parsed,
    text: &str,
    head: usize,
    parse_window: impl Fn(&str) -> Parsed,
) -> Option<Parsed> {
    if !parsed.errors.is_empty() || head > text.len() || head > old.len() {
        return None;
    }
    // Each record in one span, in order, not overlapping.
    let mut end = 0;
    for r in &parsed.records {
        let [span] = r.spans.as_slice() else {
            return None;
        };
        if span.start < end.max(head) || span.end < span.start {
            return None;
        }
        end = span.end;
    }
    let (ob, nb) = (old.as_bytes(), text.as_bytes());
    let prefix = ob.iter().zip(nb).take_while(|(a, b)| a == b).count();
    if prefix < head {
        return None;
    }
    let room = ob.len().min(nb.len()) - prefix;
    let suffix = ob
        .iter()
        .rev()
        .zip(nb.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    let span_of = |i: usize| parsed.records.get(i).and_then(|r| r.spans.first()).cloned();
    let n = parsed.records.len();
    let kept_before = parsed
        .records
        .iter()
        .take_while(|r| r.spans.first().is_some_and(|s| s.end <= prefix))
        .count();
    let kept_after = parsed
        .records
        .iter()
        .rev()
        .take(n - kept_before)
        .take_while(|r| {
            r.spans
                .first()
                .is_some_and(|s| s.start >= ob.len() - suffix)
        })
        .count();
    let start = if kept_before > 0 {
        span_of(kept_before - 1)?.end
    } else {
        head
    };
    let old_end = if kept_after > 0 {
        span_of(n - kept_after)?.start
    } else {
        ob.len()
    };
    let new_end = (old_end + nb.len()).checked_sub(ob.len())?;
    if new_end < start {
        return None;
    }
    // The window must start and end where a line does, as a parse of the whole text would
    // see it: a record ending without a line end would run into the next one there.
    let at_line_start = |b: &[u8], at: usize| at == 0 || b.get(at - 1) == Some(&b'\n');
    if !at_line_start(nb, start) || (kept_after > 0 && !at_line_start(nb, new_end)) {
        return None;
    }
    let window = parse_window(text.get(start..new_end)?);
    if !window.errors.is_empty() {
        return None;
    }
    let newlines = |s: &str| u32::try_from(s.bytes().filter(|b| *b == b'\n').count()).ok();
    // The window's first line in the whole text.
    let first_line = if kept_before > 0 {
        let last = &parsed.records[kept_before - 1];
        last.line + newlines(old.get(span_of(kept_before - 1)?.start..start)?)?
    } else {
        1 + newlines(text.get(..start)?)?
    };
    let line_shift = i64::from(newlines(text.get(start..new_end)?)?)
        - i64::from(newlines(old.get(start..old_end)?)?);
    let byte_shift = i64::try_from(nb.len()).ok()? - i64::try_from(ob.len()).ok()?;
    let moved = |r: Range<usize>, by: i64| -> Option<Range<usize>> {
        let s = usize::try_from(i64::try_from(r.start).ok()? + by).ok()?;
        let e = usize::try_from(i64::try_from(r.end).ok()? + by).ok()?;
        Some(s..e)
    };
    let mut after: Vec<_> = parsed.records.split_off(n - kept_after);
    parsed.records.truncate(kept_before);
    for mut r in window.records {
        r.spans = r
            .spans
            .into_iter()
            .map(|s| s.start + start..s.end + start)
            .collect();
        r.line = r.line + first_line - 1;
        parsed.records.push(r);
    }
    for r in &mut after {
        r.spans = r
            .spans
            .iter()
            .map(|s| moved(s.clone(), byte_shift))
            .collect::<Option<_>>()?;
        r.line = u32::try_from(i64::from(r.line) + line_shift).ok()?;
    }
    parsed.records.append(&mut after);
    Some(parsed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::formats::codecs::csv::CsvCodec;
    use crate::formats::codecs::vcard::VCardCodec;
    use crate::formats::native::Codec;

    fn cards(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c-{i}\r\nFN:Person {i}\r\n\
                     TEL;TYPE=CELL:+1 555 {i:05}\r\nNOTE:line one\\nline two\r\nEND:VCARD\r\n"
                )
            })
            .collect()
    }

    fn rows(n: usize) -> String {
        let mut out = String::from("First Name,Phone 1 - Label,Phone 1 - Value,Notes,UID\r\n");
        for i in 0..n {
            out.push_str(&format!(
                "Person {i},Mobile,+1 555 {i:05},\"two\r\nlines\",c-{i}\r\n"
            ));
        }
        out
    }

    /// Edits a whole text as people do: one value, a record added or removed, at the start,
    /// the middle and the end.
    fn edits(text: &str, record_start: &str) -> Vec<String> {
        let starts: Vec<usize> = text.match_indices(record_start).map(|(i, _)| i).collect();
        let (first, mid, last) = (
            starts[0],
            starts[starts.len() / 2],
            starts[starts.len() - 1],
        );
        let end_of = |at: usize| {
            starts
                .iter()
                .find(|s| **s > at)
                .copied()
                .unwrap_or(text.len())
        };
        vec![
            text.replacen("+1 555 00007", "+1 555 99997", 1),
            text.replacen("+1 555 00000", "+1 555 1", 1),
            format!(
                "{}{}",
                &text[..last],
                &text[last..].replacen("555", "556", 1)
            ),
            format!("{}{}", &text[..mid], &text[end_of(mid)..]),
            format!(
                "{}{}{}",
                &text[..mid],
                &text[first..end_of(first)],
                &text[mid..]
            ),
            format!("{}{}", &text[..first], &text[end_of(first)..]),
            format!("{text}{}", &text[last..]),
            text[..last].to_owned(),
        ]
    }

    #[test]
    fn an_edited_vcard_file_reads_again_as_the_whole_text_and_only_the_window() {
        let old = cards(20);
        let parsed = VCardCodec.parse(&old);
        for new in edits(&old, "BEGIN:VCARD") {
            let fast = reparse_flat(&old, parsed.clone(), &new, 0, |w| VCardCodec.parse(w));
            assert_eq!(fast, Some(VCardCodec.parse(&new)), "{new}");
        }
    }

    #[test]
    fn an_edited_csv_reads_again_as_the_whole_text() {
        let old = rows(20);
        let parsed = CsvCodec.parse(&old);
        assert_eq!(parsed.records.len(), 20);
        for new in edits(&old, "Person ") {
            assert_eq!(
                CsvCodec.reparse(&old, parsed.clone(), &new),
                CsvCodec.parse(&new),
                "{new}"
            );
        }
    }

    #[test]
    fn a_window_that_breaks_a_record_gives_up() {
        let old = cards(5);
        let parsed = VCardCodec.parse(&old);
        // An END:VCARD removed: the card would run into the next one in a whole parse.
        let new = old.replacen("END:VCARD\r\n", "", 1);
        assert_eq!(
            reparse_flat(&old, parsed.clone(), &new, 0, |w| VCardCodec.parse(w)),
            None
        );
        assert_eq!(
            VCardCodec.reparse(&old, parsed, &new),
            VCardCodec.parse(&new)
        );
    }
}
