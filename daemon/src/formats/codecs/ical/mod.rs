//! iCalendar text (RFC 5545) ⇄ calendar items: the VEVENTs and VTODOs of one UID (a master
//! and its overrides) with the VTIMEZONEs they name. Pure: text in, items out, and back.
//! Must not: do I/O, or rewrite a byte of a component, time zone or broken part that no
//! change touches.
//!
//! Component boundaries are found from BEGIN:/END: lines (`scan`), so spans are exact and
//! a broken component is an error of its own; each readable VEVENT or VTODO is then read
//! line by line (`read`) so values stay as written (dates, RRULE, raw properties), which
//! calcard's typed model would normalise (it reorders RRULE parts, upper-cases dates and
//! unescapes unknown properties).
//!
//! How a component maps, where the record leaves room for choice:
//! - `pos` counts every content line of the component; a nested VALARM is one. A nested
//!   component other than VALARM has no field, so its lines (BEGIN and END included) are raw
//!   properties, one position each, and come back as they were.
//! - UID and SEQUENCE (and an alarm's ACTION, TRIGGER, DESCRIPTION) have no `pos`: the writer
//!   puts them in the positions nothing else takes, which is where the read found them.
//! - The first line of a single-valued field is the field; a second one stays raw, as do a
//!   SEQUENCE of 0 (no way to tell it from "not said") and alarm lines with parameters the
//!   alarm has no room for.
//! - [`Codec::holds`] is a write and a read back, so it can never drift from them.

mod lex;
mod read;
mod scan;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::Range;

use crate::formats::native::{
    CalendarItem, Change, Codec, Lines, NativeError, NativeRecord, Parsed, Record, Timezone,
    WriteSettings, without_stamps,
};

/// The iCalendar codec, for the `ical-dir` and `ical-file` formats.
#[derive(Debug, Clone, Copy, Default)]
pub struct IcalCodec;

/// The readable VEVENTs and VTODOs of a layout, in text order, each with its block's index.
fn read_blocks(layout: &scan::Layout) -> Vec<(usize, read::Read)> {
    layout
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.error.is_none() && matches!(b.name.as_str(), "VEVENT" | "VTODO"))
        .map(|(i, b)| {
            let body = &layout.lines[b.body.clone()];
            (i, read::component(body, b.name == "VTODO"))
        })
        .collect()
}

/// The readable VTIMEZONEs of a layout in text order, each TZID once (the first wins).
fn timezones(text: &str, layout: &scan::Layout) -> Vec<Timezone> {
    let mut out: Vec<Timezone> = Vec::new();
    for b in &layout.blocks {
        if b.error.is_some() || b.name != "VTIMEZONE" {
            continue;
        }
        let Some(tzid) = read::tzid_of_timezone(&layout.lines[b.body.clone()]) else {
            continue;
        };
        if out.iter().any(|t| t.tzid == tzid) {
            continue;
        }
        let mut text = text.get(b.span.clone()).unwrap_or_default().to_string();
        if !text.ends_with('\n') {
            // Last in a text with no final line break: given one, as it will need when
            // written before something else.
            text.push_str("\r\n");
        }
        out.push(Timezone {
            tzid,
            text,
            stamp: None,
            // Time zones go before the components, in no order of their own.
            pos: 0,
        });
    }
    out
}

impl Codec for IcalCodec {
    fn parse(&self, text: &str) -> Parsed {
        let layout = scan::scan(text);
        let zones = timezones(text, &layout);
        // Items in the order of their first component; a component with no UID is alone.
        let mut items: Vec<(CalendarItem, Vec<Range<usize>>, Vec<String>)> = Vec::new();
        let mut by_uid: HashMap<String, usize> = HashMap::new();
        for (block, read) in read_blocks(&layout) {
            let span = layout.blocks[block].span.clone();
            let at = match by_uid.get(&read.uid) {
                Some(&at) if !read.uid.is_empty() => at,
                _ => {
                    if !read.uid.is_empty() {
                        by_uid.insert(read.uid.clone(), items.len());
                    }
                    items.push((
                        CalendarItem {
                            uid: read.uid,
                            ..CalendarItem::default()
                        },
                        Vec::new(),
                        Vec::new(),
                    ));
                    items.len() - 1
                }
            };
            let (item, spans, tzids) = &mut items[at];
            let mut component = read.component;
            component.pos = u32::try_from(item.components.len()).unwrap_or(u32::MAX);
            item.components.push(component);
            spans.push(span);
            tzids.extend(read.tzids);
        }
        let mut lines = Lines::default();
        let records = items
            .into_iter()
            .map(|(mut item, spans, tzids)| {
                item.timezones = zones
                    .iter()
                    .filter(|z| tzids.contains(&z.tzid))
                    .cloned()
                    .collect();
                NativeRecord {
                    line: spans.first().map_or(1, |s| lines.at(text, s.start)),
                    record: Record::Calendar(item),
                    spans,
                }
            })
            .collect();
        let mut errors: Vec<NativeError> = layout
            .blocks
            .iter()
            .filter_map(|b| {
                b.error.as_ref().map(|message| NativeError {
                    line: b.line,
                    message: message.clone(),
                    span: b.span.clone(),
                })
            })
            .chain(layout.strays.iter().map(|s| NativeError {
                line: s.line,
                message: s.message.clone(),
                span: s.span.clone(),
            }))
            .collect();
        errors.sort_by_key(|e| e.span.start);
        Parsed { records, errors }
    }

    fn holds(&self, record: &Record) -> Record {
        let Record::Calendar(item) = record else {
            return record.clone();
        };
        let Record::Calendar(mut item) = without_stamps(&Record::Calendar(item.clone())) else {
            return record.clone();
        };
        // Components without a UID are read back as items of their own: only one can stay.
        if item.uid.is_empty() && item.components.len() > 1 {
            item.components.sort_by_key(|c| c.pos);
            item.components.truncate(1);
        }
        let text = write::calendar(&[&item]);
        let read = self.parse(&text).records.into_iter().next();
        match read.map(|r| r.record) {
            Some(held @ Record::Calendar(_)) => held,
            _ => Record::Calendar(CalendarItem {
                uid: item.uid,
                ..CalendarItem::default()
            }),
        }
    }

    fn write(
        &self,
        previous: Option<(&str, &Parsed)>,
        changes: &[Change],
        _settings: &WriteSettings,
    ) -> String {
        // The last change of a UID wins; puts without a UID are each an item of their own.
        let mut order: Vec<&str> = Vec::new();
        let mut last: HashMap<&str, Option<&CalendarItem>> = HashMap::new();
        let mut loose: Vec<&CalendarItem> = Vec::new();
        for change in changes {
            let (uid, item) = match change {
                Change::Put(record) => match record.as_ref() {
                    Record::Calendar(item) if item.uid.is_empty() => {
                        loose.push(item);
                        continue;
                    }
                    Record::Calendar(item) => (item.uid.as_str(), Some(item)),
                    Record::Contact(_) => continue,
                },
                Change::Remove(uid) => (uid.as_str(), None),
            };
            if last.insert(uid, item).is_none() {
                order.push(uid);
            }
        }
        let text = previous.map(|(t, _)| t).unwrap_or_default();
        if text.trim_start_matches('\u{feff}').trim().is_empty() {
            let mut items: Vec<&CalendarItem> = order
                .iter()
                .filter_map(|u| last.get(u).copied().flatten())
                .collect();
            items.extend(loose);
            return write::calendar(&items);
        }
        splice(text, &order, &last, &loose)
    }
}

/// `text` with the changes made: replaced items in the place of their first component,
/// removed ones gone, new ones before the last END:VCALENDAR, missing time zones before the
/// first component; every other byte as it was.
fn splice(
    text: &str,
    order: &[&str],
    last: &HashMap<&str, Option<&CalendarItem>>,
    loose: &[&CalendarItem],
) -> String {
    let layout = scan::scan(text);
    let have: Vec<String> = timezones(text, &layout)
        .into_iter()
        .map(|t| t.tzid)
        .collect();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut placed: Vec<&str> = Vec::new();
    for (block, read) in read_blocks(&layout) {
        let Some(change) = last.get(read.uid.as_str()) else {
            continue;
        };
        if read.uid.is_empty() {
            continue;
        }
        let span = layout.blocks[block].span.clone();
        let mut with = String::new();
        if !placed.contains(&read.uid.as_str()) {
            if let Some(item) = change {
                write::push_item(&mut with, item);
            }
            if let Some(uid) = order.iter().find(|u| **u == read.uid) {
                placed.push(uid);
            }
        }
        edits.push((span, with));
    }
    let mut fresh: Vec<&CalendarItem> = order
        .iter()
        .filter(|u| !placed.contains(u))
        .filter_map(|u| last.get(u).copied().flatten())
        .collect();
    fresh.extend(loose);
    let put: Vec<&CalendarItem> = order
        .iter()
        .filter_map(|u| last.get(u).copied().flatten())
        .chain(loose.iter().copied())
        .collect();
    let zones: String = write::needed_timezones(&put, &have)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let mut new_items = String::new();
    for item in &fresh {
        write::push_item(&mut new_items, item);
    }
    let first_block = layout.blocks.first().map(|b| b.span.start);
    match layout.calendar_end {
        Some(end) => {
            let zones_at = first_block.filter(|s| *s < end).unwrap_or(end);
            edits.push((zones_at..zones_at, zones));
            edits.push((end..end, new_items));
        }
        None => {
            // No calendar closes in the text: the new items get one of their own at its end.
            let mut tail = String::new();
            if !text.ends_with('\n') {
                tail.push_str("\r\n");
            }
            if !zones.is_empty() || !new_items.is_empty() {
                tail.push_str("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Tandem//Tandem//EN\r\n");
                tail.push_str(&zones);
                tail.push_str(&new_items);
                tail.push_str("END:VCALENDAR\r\n");
                edits.push((text.len()..text.len(), tail));
            }
        }
    }
    // Stable: of two insertions at one offset, the time zones stay first.
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (range, with) in edits {
        if range.start < at {
            continue;
        }
        out.push_str(text.get(at..range.start).unwrap_or_default());
        out.push_str(&with);
        at = range.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}
