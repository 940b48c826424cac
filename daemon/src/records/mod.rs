//! Records as the engine sees them: universal records whose every value carries the stamp of
//! the change that set it, the difference of a freshly read record against its prior state
//! (`restamp`), and the merge of two concurrent versions value by value (`merge`).
//!
//! Field by field is the point: a contact edited on two devices at once keeps both edits when
//! they touch different fields, and an email added on each side keeps both. The stamps stand
//! for the common base of a three-way merge: a value whose stamp the other side's version
//! already counts was seen there, so if that side no longer has it, it was changed or removed
//! there. Must not: do I/O, or know a native format (a format says what it holds through a
//! `holds` function); it imports no module of ours but `index`.

mod merge;
mod restamp;
#[cfg(test)]
mod tests;

use prost::Message;
use tandem_proto::peer as pb;

pub use merge::{CONFLICT_PROPERTY, RecordConflict, conflicts_in, merge};
pub use restamp::{restamp, stamp_all};

pub use tandem_proto::peer::record_body::Record;
use tandem_proto::peer::{
    Address, Alarm, CalendarItem, Component, Contact, DateTime, Name, Organization, Param, Person,
    Photo, RawProperty, Stamp, Text, Timezone,
};

/// A stored record that cannot be decoded (a store written by a broken build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {key:?} in the store cannot be read: {why}; rescan the source to read it again")]
pub struct BadStoredRecord {
    pub key: String,
    pub why: String,
}

/// Decodes a record as the store keeps it.
///
/// # Errors
/// [`BadStoredRecord`] when the bytes are not a stored record with a body.
pub fn decode_stored(key: &str, bytes: &[u8]) -> Result<pb::StoredRecord, BadStoredRecord> {
    let stored = pb::StoredRecord::decode(bytes).map_err(|e| BadStoredRecord {
        key: key.to_owned(),
        why: e.to_string(),
    })?;
    if stored
        .body
        .as_ref()
        .and_then(|b| b.record.as_ref())
        .is_none()
    {
        return Err(BadStoredRecord {
            key: key.to_owned(),
            why: "it has no body".into(),
        });
    }
    Ok(stored)
}

/// Decodes only the place of a record as the store keeps it (its body is skipped, not read).
///
/// # Errors
/// [`BadStoredRecord`] when the bytes are not a stored record.
pub fn decode_place(key: &str, bytes: &[u8]) -> Result<pb::StoredPlace, BadStoredRecord> {
    pb::StoredPlace::decode(bytes).map_err(|e| BadStoredRecord {
        key: key.to_owned(),
        why: e.to_string(),
    })
}

/// The record of a stored record (`None` only for one [`decode_stored`] refuses).
pub fn record_of(stored: &pb::StoredRecord) -> Option<&Record> {
    stored.body.as_ref().and_then(|b| b.record.as_ref())
}

/// Encodes a record for the store.
pub fn encode_stored(stored: &pb::StoredRecord) -> Vec<u8> {
    stored.encode_to_vec()
}

/// The record's UID (empty when it has none).
pub fn uid_of(record: &Record) -> &str {
    match record {
        Record::Contact(c) => &c.uid,
        Record::Calendar(c) => &c.uid,
    }
}

/// Sets the record's UID.
pub fn set_uid(record: &mut Record, uid: &str) {
    match record {
        Record::Contact(c) => uid.clone_into(&mut c.uid),
        Record::Calendar(c) => {
            uid.clone_into(&mut c.uid);
        }
    }
}

/// One value of a record: it carries the stamp of the change that set it and its place.
pub trait Value: Clone + PartialEq + std::fmt::Debug {
    /// The change that set it.
    fn stamp(&self) -> Option<&Stamp>;
    /// To set the stamp.
    fn stamp_mut(&mut self) -> &mut Option<Stamp>;
    /// Its place among its record's properties.
    fn pos(&self) -> u32;
    /// To set its place.
    fn pos_mut(&mut self) -> &mut u32;
    /// The value as one line, for conflict listings.
    fn show(&self) -> String;
    /// Takes from `full` (a prior value) what a format could not hold (`held` is what it did
    /// hold of it): a value edited in a CSV keeps its vCard group and parameters.
    fn carry(&mut self, _full: &Self, _held: &Self) {}
    /// A second change a version must count before it has seen this value, besides its
    /// stamp's (see [`merge::CONFLICT_PROPERTY`] notes).
    fn also_after(&self) -> Option<Stamp> {
        None
    }
    /// Clears what is not the value itself (stamps, places), so two values compare by content.
    fn normalize(&mut self) {
        *self.stamp_mut() = None;
        *self.pos_mut() = 0;
    }
}

/// True when two values hold the same content, whatever their stamps and places.
pub fn same<T: Value>(a: &T, b: &T) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.normalize();
    b.normalize();
    a == b
}

/// Carries a vCard group and parameters the new value lacks from the full prior value.
fn carry_native(
    group: &mut String,
    params: &mut Vec<Param>,
    full: (&str, &[Param]),
    held: (&str, &[Param]),
) {
    if group.is_empty() && held.0.is_empty() && !full.0.is_empty() {
        full.0.clone_into(group);
    }
    if params.is_empty() && held.1.is_empty() && !full.1.is_empty() {
        *params = full.1.to_vec();
    }
}

macro_rules! value_basics {
    () => {
        fn stamp(&self) -> Option<&Stamp> {
            self.stamp.as_ref()
        }
        fn stamp_mut(&mut self) -> &mut Option<Stamp> {
            &mut self.stamp
        }
        fn pos(&self) -> u32 {
            self.pos
        }
        fn pos_mut(&mut self) -> &mut u32 {
            &mut self.pos
        }
    };
}

impl Value for Text {
    value_basics!();
    fn show(&self) -> String {
        self.value.clone()
    }
    fn carry(&mut self, full: &Self, held: &Self) {
        carry_native(
            &mut self.group,
            &mut self.params,
            (&full.group, &full.params),
            (&held.group, &held.params),
        );
        if self.label.is_empty() && held.label.is_empty() {
            full.label.clone_into(&mut self.label);
        }
    }
}

impl Value for Name {
    value_basics!();
    fn show(&self) -> String {
        [
            &self.prefixes,
            &self.given,
            &self.additional,
            &self.family,
            &self.suffixes,
        ]
        .iter()
        .flat_map(|p| p.iter())
        .filter(|s| !s.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
    }
    fn carry(&mut self, full: &Self, held: &Self) {
        carry_native(
            &mut self.group,
            &mut self.params,
            (&full.group, &full.params),
            (&held.group, &held.params),
        );
    }
}

impl Value for Address {
    value_basics!();
    fn show(&self) -> String {
        [
            &self.po_box,
            &self.extended,
            &self.street,
            &self.locality,
            &self.region,
            &self.postal_code,
            &self.country,
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
    }
    fn carry(&mut self, full: &Self, held: &Self) {
        carry_native(
            &mut self.group,
            &mut self.params,
            (&full.group, &full.params),
            (&held.group, &held.params),
        );
        if self.label.is_empty() && held.label.is_empty() {
            full.label.clone_into(&mut self.label);
        }
    }
}

impl Value for Organization {
    value_basics!();
    fn show(&self) -> String {
        std::iter::once(&self.name)
            .chain(&self.units)
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }
    fn carry(&mut self, full: &Self, held: &Self) {
        carry_native(
            &mut self.group,
            &mut self.params,
            (&full.group, &full.params),
            (&held.group, &held.params),
        );
    }
}

impl Value for Photo {
    value_basics!();
    fn show(&self) -> String {
        if self.uri.is_empty() {
            format!("photo ({}, {} bytes)", self.media_type, self.data.len())
        } else {
            format!("photo {}", self.uri)
        }
    }
}

impl Value for RawProperty {
    value_basics!();
    fn show(&self) -> String {
        format!("{}:{}", self.name, self.value)
    }
    // A conflict note is made by a merge, which numbers no change: it carries the loser's
    // stamp, and the winner's change in a parameter. A version has seen the note only when it
    // counts both; the loser's own device counts the loser's change long before the note
    // exists, and must still take the note when it arrives.
    fn also_after(&self) -> Option<Stamp> {
        if self.name != merge::CONFLICT_PROPERTY {
            return None;
        }
        let won = self.params.iter().find(|p| p.name == merge::WINNER_PARAM)?;
        let (device, counter) = won.values.first()?.split_once(':')?;
        Some(Stamp {
            device: u64::from_str_radix(device, 16).ok()?,
            counter: counter.parse().ok()?,
            unix_s: 0,
        })
    }
}

impl Value for DateTime {
    value_basics!();
    fn show(&self) -> String {
        if self.tzid.is_empty() {
            self.value.clone()
        } else {
            format!("{} ({})", self.value, self.tzid)
        }
    }
}

impl Value for Person {
    value_basics!();
    fn show(&self) -> String {
        if self.name.is_empty() {
            self.address.clone()
        } else {
            format!("{} <{}>", self.name, self.address)
        }
    }
}

impl Value for Alarm {
    value_basics!();
    fn show(&self) -> String {
        format!("{} {}", self.action, self.trigger)
    }
    fn normalize(&mut self) {
        self.stamp = None;
        self.pos = 0;
        for raw in &mut self.raw {
            raw.normalize();
        }
    }
}

impl Value for Timezone {
    value_basics!();
    fn show(&self) -> String {
        self.tzid.clone()
    }
}

/// Visits every field of a record type, naming it: single values and lists of values.
pub trait Fields<R> {
    /// A field that holds at most one value.
    fn one<T: Value>(&mut self, field: &'static str, get: fn(&mut R) -> &mut Option<T>);
    /// A field that holds any number of values, merged value by value.
    fn many<T: Value>(&mut self, field: &'static str, get: fn(&mut R) -> &mut Vec<T>);
}

/// Every field of a contact but its UID and revision.
pub fn contact_fields<V: Fields<Contact>>(v: &mut V) {
    v.one("formatted name", |c| &mut c.formatted_name);
    v.one("name", |c| &mut c.name);
    v.many("nickname", |c| &mut c.nicknames);
    v.many("email", |c| &mut c.emails);
    v.many("phone", |c| &mut c.phones);
    v.many("address", |c| &mut c.addresses);
    v.one("organization", |c| &mut c.organization);
    v.one("title", |c| &mut c.title);
    v.one("birthday", |c| &mut c.birthday);
    v.one("anniversary", |c| &mut c.anniversary);
    v.many("note", |c| &mut c.notes);
    v.many("url", |c| &mut c.urls);
    v.many("category", |c| &mut c.categories);
    v.one("photo", |c| &mut c.photo);
    v.many("property", |c| &mut c.raw);
}

/// Every field of a calendar component but its kind, recurrence id and sequence.
pub fn component_fields<V: Fields<Component>>(v: &mut V) {
    v.one("summary", |c| &mut c.summary);
    v.one("description", |c| &mut c.description);
    v.one("location", |c| &mut c.location);
    v.one("start", |c| &mut c.start);
    v.one("end", |c| &mut c.end);
    v.one("due", |c| &mut c.due);
    v.one("duration", |c| &mut c.duration);
    v.many("recurrence rule", |c| &mut c.rrules);
    v.many("recurrence date", |c| &mut c.rdates);
    v.many("excluded date", |c| &mut c.exdates);
    v.many("alarm", |c| &mut c.alarms);
    v.one("organizer", |c| &mut c.organizer);
    v.many("attendee", |c| &mut c.attendees);
    v.one("status", |c| &mut c.status);
    v.many("category", |c| &mut c.categories);
    v.many("property", |c| &mut c.raw);
}

/// The key of a component within its calendar item: its recurrence id ("" for the master).
pub fn component_key(c: &Component) -> String {
    match &c.recurrence_id {
        Some(r) if !r.tzid.is_empty() => format!("{};{}", r.value, r.tzid),
        Some(r) => r.value.clone(),
        None => String::new(),
    }
}

/// Clears every stamp and place in a contact, so two compare by content.
pub fn normalized_contact(c: &Contact) -> Contact {
    let mut out = c.clone();
    contact_fields(&mut Normalize(&mut out));
    out
}

/// Clears every stamp and place in a component, so two compare by content.
pub fn normalized_component(c: &Component) -> Component {
    let mut out = c.clone();
    out.stamp = None;
    out.pos = 0;
    component_fields(&mut Normalize(&mut out));
    out
}

/// Clears every stamp and place in a record, so two compare by content.
pub fn normalized(record: &Record) -> Record {
    match record {
        Record::Contact(c) => Record::Contact(normalized_contact(c)),
        Record::Calendar(item) => {
            let mut components: Vec<Component> =
                item.components.iter().map(normalized_component).collect();
            components.sort_by_key(component_key);
            let mut timezones: Vec<Timezone> = item
                .timezones
                .iter()
                .map(|t| Timezone {
                    stamp: None,
                    ..t.clone()
                })
                .collect();
            timezones.sort_by(|a, b| a.tzid.cmp(&b.tzid));
            Record::Calendar(CalendarItem {
                uid: item.uid.clone(),
                components,
                timezones,
            })
        }
    }
}

struct Normalize<'a, R>(&'a mut R);

impl<R> Fields<R> for Normalize<'_, R> {
    fn one<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Option<T>) {
        if let Some(v) = get(self.0) {
            v.normalize();
        }
    }
    fn many<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Vec<T>) {
        get(self.0).iter_mut().for_each(Value::normalize);
    }
}
