//! What every record codec (vCard, CSV, iCalendar) shares: the records a native text holds,
//! where each lies in it, the errors of the ones that cannot be read, and the one trait that
//! turns text into universal records and back.
//!
//! A codec is pure: text in, records out, and the other way. The record formats
//! (`vcard-dir`, `vcard-file`, `csv-contacts`, `ical-dir`, `ical-file`) do the I/O around it.
//! Must not: do I/O, or know about stamps and versions (a codec reads and writes values only;
//! stamps are the engine's).

use std::ops::Range;

pub use tandem_proto::peer::record_body::Record;
pub use tandem_proto::peer::{
    Address, Alarm, CalendarItem, Component, ComponentKind, Contact, DateTime, Name, Organization,
    Param, Person, Photo, RawProperty, Stamp, Text, Timezone,
};

/// One record as a native text holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeRecord {
    /// The record as read, without stamps (the engine gives those).
    pub record: Record,
    /// Its first line in the text, from 1, for messages.
    pub line: u32,
    /// The bytes of the text it was read from, in order (a calendar item's master and its
    /// overrides may lie apart in one file). A writer keeps these bytes for a record that did
    /// not change.
    pub spans: Vec<Range<usize>>,
}

impl NativeRecord {
    /// The record's key as the text gives it: its UID, or `None` when it has none.
    pub fn uid(&self) -> Option<&str> {
        let uid = match &self.record {
            Record::Contact(c) => c.uid.as_str(),
            Record::Calendar(c) => c.uid.as_str(),
        };
        (!uid.is_empty()).then_some(uid)
    }
}

/// A part of a text that holds no readable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeError {
    /// Its first line, from 1.
    pub line: u32,
    /// What is wrong and what to do, for `status` (the file's name is added by the format).
    pub message: String,
    /// The bytes it spans; a writer keeps them as they are, so a broken record is never lost.
    pub span: Range<usize>,
}

/// Everything one text holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// Readable records, in the order of the text.
    pub records: Vec<NativeRecord>,
    /// Parts that could not be read, in the order of the text.
    pub errors: Vec<NativeError>,
}

/// A change a writer makes to a text, by key (a UID; a record without one has been given its
/// key by the engine, and keeps it).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Adds the record, or replaces the one with its key.
    Put(Box<Record>),
    /// Removes the record with this key.
    Remove(String),
}

/// How a writer writes records new to a text, per source (`records_version` in its config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSettings {
    /// The vCard version new records are written in ("2.1", "3.0" or "4.0"); empty: the
    /// version the text already uses, else 3.0, which Apple, Google and khard all read.
    pub vcard_version: String,
}

/// A codec: a native text format of records.
pub trait Codec: Send + Sync + std::fmt::Debug + 'static {
    /// Reads every record of `text`. Never fails as a whole: what cannot be read is a
    /// [`NativeError`] naming its line, and every other record is read.
    fn parse(&self, text: &str) -> Parsed;

    /// `text` read again after `previous` (an earlier text) parsed into `parsed`: the same as
    /// `parse(text)`, read only where the two texts differ where the codec can tell (see
    /// [`super::reparse`]). This default reads it whole.
    fn reparse(&self, previous: &str, parsed: Parsed, text: &str) -> Parsed {
        let _ = (previous, parsed);
        self.parse(text)
    }

    /// The part of `record` this codec can hold: what a write and a read back give. Values it
    /// has no place for are left out (a CSV has no photo), and `pos` is the order it writes
    /// them in. Stamps are cleared.
    fn holds(&self, record: &Record) -> Record;

    /// Writes a text anew: `previous` (its text and what it parsed into) with `changes` made.
    /// The bytes of untouched records, and of parts that could not be read, stay as they
    /// were, in their order; new records go at the end. With no previous text, a text of
    /// just the records put.
    fn write(
        &self,
        previous: Option<(&str, &Parsed)>,
        changes: &[Change],
        settings: &WriteSettings,
    ) -> String;
}

/// The contacts a batch of changes puts and removes, by key: the last change for each key
/// wins; contacts without a key are only added (in order). Calendar items are left out.
#[derive(Debug, Default)]
pub struct ContactChanges<'a> {
    /// Keys in the order their first change came.
    pub order: Vec<String>,
    /// The contact put under each key, or `None` for a removal.
    pub by_uid: std::collections::HashMap<String, Option<&'a Contact>>,
    pub keyless: Vec<&'a Contact>,
}

/// Sorts a batch of changes for a contacts codec's write.
pub fn contact_changes(changes: &[Change]) -> ContactChanges<'_> {
    let mut out = ContactChanges::default();
    for change in changes {
        let (uid, put) = match change {
            Change::Put(record) => match record.as_ref() {
                Record::Contact(c) if c.uid.is_empty() => {
                    out.keyless.push(c);
                    continue;
                }
                Record::Contact(c) => (c.uid.clone(), Some(c)),
                Record::Calendar(_) => continue,
            },
            Change::Remove(uid) => (uid.clone(), None),
        };
        if out.by_uid.insert(uid.clone(), put).is_none() {
            out.order.push(uid);
        }
    }
    out
}

/// Clears every stamp in a record, for codecs' [`Codec::holds`] and tests.
pub fn without_stamps(record: &Record) -> Record {
    let mut r = record.clone();
    match &mut r {
        Record::Contact(c) => {
            let text = |t: &mut Text| t.stamp = None;
            c.formatted_name.as_mut().map(text);
            c.title.as_mut().map(text);
            c.birthday.as_mut().map(text);
            c.anniversary.as_mut().map(text);
            for list in [
                &mut c.nicknames,
                &mut c.emails,
                &mut c.phones,
                &mut c.notes,
                &mut c.urls,
                &mut c.categories,
            ] {
                list.iter_mut().for_each(text);
            }
            if let Some(n) = &mut c.name {
                n.stamp = None;
            }
            c.addresses.iter_mut().for_each(|a| a.stamp = None);
            if let Some(o) = &mut c.organization {
                o.stamp = None;
            }
            if let Some(p) = &mut c.photo {
                p.stamp = None;
            }
            c.raw.iter_mut().for_each(|p| p.stamp = None);
        }
        Record::Calendar(item) => {
            for comp in &mut item.components {
                clear_component(comp);
            }
            item.timezones.iter_mut().for_each(|t| t.stamp = None);
        }
    }
    r
}

fn clear_component(c: &mut Component) {
    let text = |t: &mut Text| t.stamp = None;
    let date = |d: &mut DateTime| d.stamp = None;
    c.stamp = None;
    for t in [
        &mut c.summary,
        &mut c.description,
        &mut c.location,
        &mut c.duration,
        &mut c.status,
    ] {
        t.as_mut().map(text);
    }
    for d in [&mut c.recurrence_id, &mut c.start, &mut c.end, &mut c.due] {
        d.as_mut().map(date);
    }
    c.rrules.iter_mut().for_each(text);
    c.categories.iter_mut().for_each(text);
    c.rdates.iter_mut().for_each(date);
    c.exdates.iter_mut().for_each(date);
    c.alarms.iter_mut().for_each(|a| {
        a.stamp = None;
        a.raw.iter_mut().for_each(|p| p.stamp = None);
    });
    if let Some(o) = &mut c.organizer {
        o.stamp = None;
    }
    c.attendees.iter_mut().for_each(|p| p.stamp = None);
    c.raw.iter_mut().for_each(|p| p.stamp = None);
}

/// The 1-based line number of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> u32 {
    let upto = text.get(..offset.min(text.len())).unwrap_or(text);
    u32::try_from(upto.bytes().filter(|b| *b == b'\n').count() + 1).unwrap_or(u32::MAX)
}

/// Line numbers of offsets asked for in increasing order, counted from the last one asked
/// (a parse that asked [`line_of`] for every record would read its text once per record).
#[derive(Debug, Default)]
pub struct Lines {
    offset: usize,
    line: u32,
}

impl Lines {
    /// The 1-based line of byte `offset` in `text`.
    pub fn at(&mut self, text: &str, offset: usize) -> u32 {
        let offset = offset.min(text.len());
        if offset < self.offset || self.line == 0 {
            self.offset = 0;
            self.line = 1;
        }
        let added = text
            .as_bytes()
            .get(self.offset..offset)
            .map_or(0, |b| b.iter().filter(|c| **c == b'\n').count());
        self.line = self
            .line
            .saturating_add(u32::try_from(added).unwrap_or(u32::MAX));
        self.offset = offset;
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_counted_forward_agree_with_line_of() {
        let text = "a\nbb\n\nccc\nd";
        let mut lines = Lines::default();
        for offset in [0, 1, 2, 5, 6, 7, 11, 12, 3, 0, 100] {
            assert_eq!(lines.at(text, offset), line_of(text, offset), "{offset}");
        }
    }
}
