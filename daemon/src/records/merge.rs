//! The merge of two versions of one record, value by value.
//!
//! A value is kept from one side when the other side's version does not count its stamp (the
//! other side never saw it: it is new here) or when the other side holds it too. A value the
//! other side saw and no longer holds was changed or removed there. That is a three-way merge
//! whose base is what both versions count, and it needs no copy of the base: an email added on
//! each side keeps both, a phone changed on one side and a title on the other keeps both edits.
//! When both sides set one single-valued field, the later change wins (then the larger
//! counter, then the device), so every device picks the same winner; the loser is kept in the
//! record as an `X-TANDEM-CONFLICT` property, which `tandemctl conflicts` lists and a format
//! that holds unknown properties keeps.
//!
//! The merge is symmetric: `merge(a, b)` and `merge(b, a)` hold the same values, so two
//! devices that merge the same versions agree without another round.

use std::cmp::Ordering;

use super::{Fields, Record, Value, component_fields, component_key, contact_fields, same};
use crate::index::{ShortId, VersionVector};
use tandem_proto::peer::{CalendarItem, Component, Contact, Param, RawProperty, Stamp};

/// Name of the property that keeps a value that lost a conflict.
pub const CONFLICT_PROPERTY: &str = "X-TANDEM-CONFLICT";
/// The parameter of a conflict note naming the winner's change (`DEVICE:COUNTER`, hex device).
pub const WINNER_PARAM: &str = "WON";

/// A value that lost to another set at the same time on another device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordConflict {
    /// The field, as people call it ("email", "title").
    pub field: String,
    /// What the field holds now.
    pub kept: String,
    /// The value that lost.
    pub lost: String,
    /// Short ID of the device that set the lost value.
    pub device: String,
    /// When it was set there (Unix seconds).
    pub unix_s: i64,
}

/// `a` and `b` merged, with `a_version` and `b_version` the versions that hold them. Values
/// `a` holds keep `a`'s places.
pub fn merge(
    a: &Record,
    a_version: &VersionVector,
    b: &Record,
    b_version: &VersionVector,
) -> Record {
    match (a, b) {
        (Record::Contact(a), Record::Contact(b)) => {
            let mut out = a.clone();
            let mut walk = Merge {
                out: &mut out,
                b: b.clone(),
                va: a_version,
                vb: b_version,
                lost: Vec::new(),
            };
            contact_fields(&mut walk);
            let lost = walk.lost;
            out.raw.extend(lost);
            dedupe(&mut out.raw);
            if b.revision > out.revision {
                out.revision.clone_from(&b.revision);
            }
            Record::Contact(out)
        }
        (Record::Calendar(a), Record::Calendar(b)) => {
            Record::Calendar(merge_calendar(a, a_version, b, b_version))
        }
        // Two kinds under one key: the source refuses a record of the wrong kind before this,
        // so only the conflict rule's winner can get here; keep it.
        _ => a.clone(),
    }
}

/// True when `version` counts the change that made `stamp` (a value without a stamp is as old
/// as the record).
fn covered(stamp: Option<&Stamp>, version: &VersionVector) -> bool {
    stamp.is_none_or(|s| version.counter(ShortId(s.device)) >= s.counter)
}

fn stamp_order(a: Option<&Stamp>, b: Option<&Stamp>) -> Ordering {
    let key = |s: Option<&Stamp>| s.map(|s| (s.unix_s, s.counter, s.device));
    key(a).cmp(&key(b))
}

fn merge_calendar(
    a: &CalendarItem,
    va: &VersionVector,
    b: &CalendarItem,
    vb: &VersionVector,
) -> CalendarItem {
    let mut out = CalendarItem {
        uid: a.uid.clone(),
        components: Vec::new(),
        timezones: Vec::new(),
    };
    for ca in &a.components {
        let key = component_key(ca);
        match b.components.iter().find(|cb| component_key(cb) == key) {
            Some(cb) => {
                let mut comp = ca.clone();
                let mut walk = Merge {
                    out: &mut comp,
                    b: cb.clone(),
                    va,
                    vb,
                    lost: Vec::new(),
                };
                component_fields(&mut walk);
                let lost = walk.lost;
                comp.raw.extend(lost);
                dedupe(&mut comp.raw);
                comp.sequence = comp.sequence.max(cb.sequence);
                if stamp_order(cb.stamp.as_ref(), comp.stamp.as_ref()) == Ordering::Less {
                    comp.stamp = cb.stamp;
                }
                out.components.push(comp);
            }
            None if news_for(ca, vb) => out.components.push(ca.clone()),
            None => {}
        }
    }
    for cb in &b.components {
        let key = component_key(cb);
        if !a.components.iter().any(|ca| component_key(ca) == key) && news_for(cb, va) {
            out.components.push(cb.clone());
        }
    }
    out.components.sort_by_key(|c| (c.pos, component_key(c)));
    let mut zones = merge_list(&a.timezones, va, &b.timezones, vb);
    // One block per time zone: of two different ones, the later change.
    zones.sort_by(|x, y| {
        x.tzid
            .cmp(&y.tzid)
            .then(stamp_order(y.stamp.as_ref(), x.stamp.as_ref()))
    });
    zones.dedup_by(|later, first| later.tzid == first.tzid);
    out.timezones = zones;
    out
}

/// True when a component holds a change `version` has not seen: it was added, or edited,
/// where `version` was not (an edit beats a removal, so nothing in it is lost).
fn news_for(c: &Component, version: &VersionVector) -> bool {
    struct Unseen<'a> {
        version: &'a VersionVector,
        comp: Component,
        found: bool,
    }
    impl Fields<Component> for Unseen<'_> {
        fn one<T: Value>(&mut self, _: &'static str, get: fn(&mut Component) -> &mut Option<T>) {
            if let Some(v) = get(&mut self.comp) {
                self.found |= !covered(v.stamp(), self.version);
            }
        }
        fn many<T: Value>(&mut self, _: &'static str, get: fn(&mut Component) -> &mut Vec<T>) {
            self.found |= get(&mut self.comp)
                .iter()
                .any(|v| !covered(v.stamp(), self.version));
        }
    }
    if !covered(c.stamp.as_ref(), version) {
        return true;
    }
    let mut walk = Unseen {
        version,
        comp: c.clone(),
        found: false,
    };
    component_fields(&mut walk);
    walk.found
}

/// The values of two lists that survive a merge, each once, in order of place.
fn merge_list<T: Value>(a: &[T], va: &VersionVector, b: &[T], vb: &VersionVector) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(a.len().max(b.len()));
    // A stamp names the change that set a value, and one change sets many values (every value
    // of a record read for the first time shares one): a value is the same on both sides when
    // its stamp and its content are.
    let held = |list: &[T], v: &T| list.iter().any(|w| w.stamp() == v.stamp() && same(w, v));
    let seen = |v: &T, by: &VersionVector| {
        covered(v.stamp(), by) && v.also_after().is_none_or(|s| covered(Some(&s), by))
    };
    for x in a {
        if held(b, x) || !seen(x, vb) {
            out.push(x.clone());
        }
    }
    for y in b {
        let in_a = held(a, y);
        if !in_a && !seen(y, va) {
            out.push(y.clone());
        }
    }
    // The same content set on both sides is one value (the later stamp, so both sides agree).
    let mut kept: Vec<T> = Vec::with_capacity(out.len());
    for v in out {
        match kept.iter_mut().find(|k| same(*k, &v)) {
            Some(k) => {
                if stamp_order(v.stamp(), k.stamp()) == Ordering::Greater {
                    let pos = k.pos();
                    *k = v;
                    *k.pos_mut() = pos;
                }
            }
            None => kept.push(v),
        }
    }
    kept.sort_by(|x, y| {
        x.pos()
            .cmp(&y.pos())
            .then(stamp_order(x.stamp(), y.stamp()))
    });
    kept
}

/// Keeps one of each conflict note (a note can reach a device by two ways).
fn dedupe(raw: &mut Vec<RawProperty>) {
    let mut kept: Vec<RawProperty> = Vec::with_capacity(raw.len());
    for p in raw.drain(..) {
        let dup = p.name == CONFLICT_PROPERTY && kept.iter().any(|k| same(k, &p));
        if !dup {
            kept.push(p);
        }
    }
    *raw = kept;
}

struct Merge<'a, R> {
    /// Starts as `a`; ends as the merge.
    out: &'a mut R,
    b: R,
    va: &'a VersionVector,
    vb: &'a VersionVector,
    /// Notes of values that lost, to add to the record's unknown properties.
    lost: Vec<RawProperty>,
}

impl<R> Fields<R> for Merge<'_, R> {
    fn one<T: Value>(&mut self, field: &'static str, get: fn(&mut R) -> &mut Option<T>) {
        let a = get(self.out).clone();
        let b = get(&mut self.b).clone();
        let same_stamp =
            |x: &T, other: &Option<T>| other.as_ref().is_some_and(|o| o.stamp() == x.stamp());
        let keep_a = a
            .as_ref()
            .filter(|x| same_stamp(x, &b) || !covered(x.stamp(), self.vb));
        let keep_b = b
            .as_ref()
            .filter(|y| same_stamp(y, &a) || !covered(y.stamp(), self.va));
        let merged = match (keep_a, keep_b) {
            (Some(x), Some(y)) if x.stamp() == y.stamp() => Some(x.clone()),
            (Some(x), Some(y)) if same(x, y) => {
                let mut v = if stamp_order(y.stamp(), x.stamp()) == Ordering::Greater {
                    y.clone()
                } else {
                    x.clone()
                };
                *v.pos_mut() = x.pos();
                Some(v)
            }
            (Some(x), Some(y)) => {
                let (winner, loser) = if stamp_order(x.stamp(), y.stamp()) == Ordering::Less {
                    (y, x)
                } else {
                    (x, y)
                };
                self.lost.push(conflict_note(field, loser, winner));
                let mut v = winner.clone();
                *v.pos_mut() = x.pos();
                Some(v)
            }
            (Some(x), None) => Some(x.clone()),
            (None, Some(y)) => Some(y.clone()),
            (None, None) => None,
        };
        *get(self.out) = merged;
    }

    fn many<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Vec<T>) {
        let a = std::mem::take(get(self.out));
        let b = std::mem::take(get(&mut self.b));
        *get(self.out) = merge_list(&a, self.va, &b, self.vb);
    }
}

/// The property that keeps a losing value: the field, the device and time that set it.
fn conflict_note<T: Value>(field: &str, loser: &T, winner: &T) -> RawProperty {
    let (device, unix_s) = loser.stamp().map_or((String::new(), 0), |s| {
        (crate::identity::short_name(s.device), s.unix_s)
    });
    RawProperty {
        group: String::new(),
        name: CONFLICT_PROPERTY.to_owned(),
        params: vec![
            Param {
                name: "FIELD".into(),
                values: vec![field.to_owned()],
            },
            Param {
                name: "DEVICE".into(),
                values: vec![device],
            },
            Param {
                name: "TIME".into(),
                values: vec![unix_s.to_string()],
            },
            Param {
                name: WINNER_PARAM.into(),
                values: vec![
                    winner
                        .stamp()
                        .map(|w| format!("{:x}:{}", w.device, w.counter))
                        .unwrap_or_default(),
                ],
            },
        ],
        value: escape(&loser.show()),
        pos: u32::MAX,
        stamp: loser.stamp().copied(),
    }
}

/// Escapes a value for a property line (vCard and iCalendar text rules).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            ',' => out.push_str("\\,"),
            ';' => out.push_str("\\;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The conflicts a record keeps notes of, each with what its field holds now.
pub fn conflicts_in(record: &Record) -> Vec<RecordConflict> {
    let mut found = Vec::new();
    match record {
        Record::Contact(c) => notes(c, &c.raw, contact_fields::<Show<Contact>>, &mut found),
        Record::Calendar(item) => {
            for comp in &item.components {
                notes(
                    comp,
                    &comp.raw,
                    component_fields::<Show<Component>>,
                    &mut found,
                );
            }
        }
    }
    found
}

fn notes<R: Clone>(
    record: &R,
    raw: &[RawProperty],
    walk: fn(&mut Show<R>),
    found: &mut Vec<RecordConflict>,
) {
    for p in raw.iter().filter(|p| p.name == CONFLICT_PROPERTY) {
        let param = |name: &str| {
            p.params
                .iter()
                .find(|q| q.name == name)
                .and_then(|q| q.values.first())
                .cloned()
                .unwrap_or_default()
        };
        let field = param("FIELD");
        let mut show = Show {
            record: record.clone(),
            field: field.clone(),
            shown: Vec::new(),
        };
        walk(&mut show);
        found.push(RecordConflict {
            kept: show.shown.join(", "),
            lost: unescape(&p.value),
            device: param("DEVICE"),
            unix_s: param("TIME").parse().unwrap_or(0),
            field,
        });
    }
}

/// Shows what one named field holds.
struct Show<R> {
    record: R,
    field: String,
    shown: Vec<String>,
}

impl<R> Fields<R> for Show<R> {
    fn one<T: Value>(&mut self, field: &'static str, get: fn(&mut R) -> &mut Option<T>) {
        if field == self.field
            && let Some(v) = get(&mut self.record)
        {
            self.shown.push(v.show());
        }
    }
    fn many<T: Value>(&mut self, field: &'static str, get: fn(&mut R) -> &mut Vec<T>) {
        if field == self.field {
            self.shown
                .extend(get(&mut self.record).iter().map(Value::show));
        }
    }
}
