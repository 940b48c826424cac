//! The difference of a record as a scan read it against its prior state: which values are
//! new or changed (they get the stamp of this change), which are gone, and which the format
//! could not hold (they stay as they were: a CSV has no photo, and that is no deletion).

use super::{
    Fields, Record, Value, component_fields, component_key, contact_fields, normalized, same,
};
use tandem_proto::peer::{CalendarItem, Component, Contact, Stamp};

/// What a format holds of a record: the record as a write and a read back give it.
pub type Holds<'a> = &'a dyn Fn(&Record) -> Record;

/// The prior record with what a scan read in `parsed` (only what `holds` keeps) made on top of
/// it: new and changed values carry `dot`. `None` when nothing the format holds changed.
pub fn restamp(prior: &Record, parsed: &Record, holds: Holds<'_>, dot: &Stamp) -> Option<Record> {
    if normalized(&holds(prior)) == normalized(parsed) {
        return None;
    }
    match (prior, parsed) {
        (Record::Contact(prior), Record::Contact(parsed)) => {
            let mut out = prior.clone();
            let project = |c: Contact| match holds(&Record::Contact(c)) {
                Record::Contact(c) => c,
                Record::Calendar(_) => Contact::default(),
            };
            let mut walk = Restamp {
                out: &mut out,
                parsed: parsed.clone(),
                empty: Contact::default(),
                project: &project,
                dot,
                changed: false,
            };
            contact_fields(&mut walk);
            let mut changed = walk.changed;
            if parsed.revision != prior.revision && !parsed.revision.is_empty() {
                out.revision.clone_from(&parsed.revision);
                changed = true;
            }
            changed.then_some(Record::Contact(out))
        }
        (Record::Calendar(prior), Record::Calendar(parsed)) => {
            restamp_calendar(prior, parsed, holds, dot).map(Record::Calendar)
        }
        // A record of another kind where this one was: it replaces it whole.
        _ => Some(stamp_all(parsed.clone(), dot)),
    }
}

/// Gives every value of a record read for the first time the stamp of this change.
pub fn stamp_all(mut record: Record, dot: &Stamp) -> Record {
    match &mut record {
        Record::Contact(c) => contact_fields(&mut StampAll { out: c, dot }),
        Record::Calendar(item) => {
            for comp in &mut item.components {
                comp.stamp = Some(*dot);
                component_fields(&mut StampAll { out: comp, dot });
            }
            for tz in &mut item.timezones {
                tz.stamp = Some(*dot);
            }
        }
    }
    record
}

fn restamp_calendar(
    prior: &CalendarItem,
    parsed: &CalendarItem,
    holds: Holds<'_>,
    dot: &Stamp,
) -> Option<CalendarItem> {
    let mut changed = false;
    let mut out = CalendarItem {
        uid: prior.uid.clone(),
        components: Vec::new(),
        timezones: Vec::new(),
    };
    let mut used = vec![false; parsed.components.len()];
    for p in &prior.components {
        let key = component_key(p);
        let found = parsed
            .components
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && component_key(c) == key);
        let Some((i, now)) = found else {
            // An override the format could hold and no longer has was removed here.
            changed = true;
            continue;
        };
        used[i] = true;
        let mut comp = p.clone();
        comp.pos = now.pos;
        comp.kind = now.kind;
        if now.sequence > comp.sequence {
            comp.sequence = now.sequence;
            changed = true;
        }
        let shell = Component {
            kind: p.kind,
            recurrence_id: p.recurrence_id.clone(),
            ..Component::default()
        };
        let project = |c: Component| {
            let item = CalendarItem {
                uid: prior.uid.clone(),
                components: vec![c],
                timezones: Vec::new(),
            };
            match holds(&Record::Calendar(item)) {
                Record::Calendar(mut held) if !held.components.is_empty() => {
                    held.components.swap_remove(0)
                }
                _ => Component::default(),
            }
        };
        let mut walk = Restamp {
            out: &mut comp,
            parsed: now.clone(),
            empty: shell,
            project: &project,
            dot,
            changed: false,
        };
        component_fields(&mut walk);
        changed |= walk.changed;
        out.components.push(comp);
    }
    for (i, c) in parsed.components.iter().enumerate() {
        if !used[i] {
            let mut c = c.clone();
            c.stamp = Some(*dot);
            component_fields(&mut StampAll { out: &mut c, dot });
            out.components.push(c);
            changed = true;
        }
    }
    out.components.sort_by_key(|c| c.pos);
    // Time zones are what the components need: the parsed ones, keeping stamps of unchanged.
    for tz in &parsed.timezones {
        match prior.timezones.iter().find(|p| same(*p, tz)) {
            Some(p) => out.timezones.push(p.clone()),
            None => {
                let mut tz = tz.clone();
                tz.stamp = Some(*dot);
                out.timezones.push(tz);
                changed = true;
            }
        }
    }
    let held_any_tz = match holds(&Record::Calendar(prior.clone())) {
        Record::Calendar(h) => !h.timezones.is_empty(),
        Record::Contact(_) => false,
    };
    if !held_any_tz {
        // A format without time zone blocks keeps the ones it had.
        out.timezones.clone_from(&prior.timezones);
    } else if out.timezones.len() != prior.timezones.len() {
        changed = true;
    }
    changed.then_some(out)
}

struct StampAll<'a, R> {
    out: &'a mut R,
    dot: &'a Stamp,
}

impl<R> Fields<R> for StampAll<'_, R> {
    fn one<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Option<T>) {
        if let Some(v) = get(self.out) {
            *v.stamp_mut() = Some(*self.dot);
        }
    }
    fn many<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Vec<T>) {
        for v in get(self.out) {
            *v.stamp_mut() = Some(*self.dot);
        }
    }
}

/// Walks the fields of one record (a contact, a component) and makes the read values on top
/// of the prior ones.
struct Restamp<'a, R> {
    /// Starts as the prior record; ends as the new one.
    out: &'a mut R,
    parsed: R,
    /// A record with nothing in it but what identifies it, to project one value at a time.
    empty: R,
    /// What the format holds of a record.
    project: &'a dyn Fn(R) -> R,
    dot: &'a Stamp,
    changed: bool,
}

impl<R: Clone> Restamp<'_, R> {
    /// What the format holds of one value alone: `None` when it cannot hold it at all.
    fn held_one<T: Value>(&self, value: &T, get: fn(&mut R) -> &mut Option<T>) -> Option<T> {
        let mut alone = self.empty.clone();
        *get(&mut alone) = Some(value.clone());
        get(&mut (self.project)(alone)).take()
    }

    fn held_in_list<T: Value>(&self, value: &T, get: fn(&mut R) -> &mut Vec<T>) -> Option<T> {
        let mut alone = self.empty.clone();
        *get(&mut alone) = vec![value.clone()];
        let mut held = (self.project)(alone);
        let list = get(&mut held);
        (!list.is_empty()).then(|| list.swap_remove(0))
    }
}

impl<R: Clone> Fields<R> for Restamp<'_, R> {
    fn one<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Option<T>) {
        let prior = get(self.out).clone();
        let now = get(&mut self.parsed).clone();
        let held = prior.as_ref().and_then(|p| self.held_one(p, get));
        match (&held, now) {
            // Not held by the format (or never set): left as it was.
            (None, None) => {}
            (Some(h), Some(now)) if same(h, &now) => {
                if let Some(v) = get(self.out) {
                    *v.pos_mut() = now.pos();
                }
            }
            (Some(_), None) => {
                *get(self.out) = None;
                self.changed = true;
            }
            (_, Some(mut now)) => {
                if let (Some(prior), Some(held)) = (&prior, &held) {
                    now.carry(prior, held);
                }
                *now.stamp_mut() = Some(*self.dot);
                *get(self.out) = Some(now);
                self.changed = true;
            }
        }
    }

    fn many<T: Value>(&mut self, _: &'static str, get: fn(&mut R) -> &mut Vec<T>) {
        let prior = std::mem::take(get(self.out));
        let now = std::mem::take(get(&mut self.parsed));
        let mut used = vec![false; now.len()];
        let mut out: Vec<T> = Vec::with_capacity(prior.len().max(now.len()));
        // Prior values the format held that are not read any more: removed or edited here.
        let mut gone: Vec<(T, T)> = Vec::new();
        for p in prior {
            let Some(held) = self.held_in_list(&p, get) else {
                out.push(p);
                continue;
            };
            match (0..now.len()).find(|&i| !used[i] && same(&held, &now[i])) {
                Some(i) => {
                    used[i] = true;
                    let mut kept = p;
                    *kept.pos_mut() = now[i].pos();
                    out.push(kept);
                }
                None => gone.push((p, held)),
            }
        }
        if !gone.is_empty() {
            self.changed = true;
        }
        let mut gone = gone.into_iter();
        for (i, n) in now.iter().enumerate() {
            if used[i] {
                continue;
            }
            let mut n = n.clone();
            // An edit in place (a value gone, another new) keeps what the format could not
            // hold of the old one.
            if let Some((prior, held)) = gone.next() {
                n.carry(&prior, &held);
            }
            *n.stamp_mut() = Some(*self.dot);
            out.push(n);
            self.changed = true;
        }
        out.sort_by_key(Value::pos);
        *get(self.out) = out;
    }
}
