//! One VEVENT or VTODO into a [`Component`], its UID and the time zones it names.

use super::lex::{self, Line, Prop};
use crate::formats::native::{
    Alarm, Component, ComponentKind, DateTime, Param, Person, RawProperty, Text,
};

/// Whether a UID line is the one that gives the component its key (the first such line
/// does; the writer relies on the same test).
pub(super) fn claims_uid(p: &Prop) -> bool {
    p.params.is_empty() && !p.value.is_empty()
}

/// Whether a SEQUENCE line is read as the sequence rather than kept raw: a 0, a parameter or
/// a value that is no number could not be written back as it was.
pub(super) fn claims_sequence(p: &Prop) -> bool {
    p.params.is_empty() && p.value.parse::<u32>().is_ok_and(|n| n > 0)
}

/// Whether a line of a VALARM is read as its ACTION, TRIGGER or DESCRIPTION (the first such
/// line of each name is); the alarm has no place for their parameters, bar TRIGGER's.
pub(super) fn claims_alarm_field(p: &Prop) -> bool {
    match p.name.as_str() {
        "ACTION" | "DESCRIPTION" => p.params.is_empty() && !p.value.is_empty(),
        "TRIGGER" => !p.value.is_empty() || !p.params.is_empty(),
        _ => false,
    }
}

/// A component read, with what the item around it needs.
pub(super) struct Read {
    pub uid: String,
    pub component: Component,
    /// The TZIDs its dates name, in order, each once.
    pub tzids: Vec<String>,
}

fn raw(p: Prop, pos: u32) -> RawProperty {
    RawProperty {
        group: String::new(),
        name: p.name,
        params: p.params,
        value: p.value,
        pos,
        stamp: None,
    }
}

fn date(p: Prop, pos: u32, value: String) -> DateTime {
    let mut params = p.params;
    let tz = params
        .iter()
        .position(|q| q.name == "TZID" && q.values.len() == 1);
    let tzid = tz
        .map(|i| params.remove(i).values.concat())
        .unwrap_or_default();
    DateTime {
        value,
        tzid,
        params,
        pos,
        stamp: None,
    }
}

fn text(p: Prop, pos: u32, value: String) -> Text {
    Text {
        value,
        params: p.params,
        pos,
        ..Text::default()
    }
}

/// Takes out the first parameter `name` with one non-empty value, and gives that value.
fn take_param(params: &mut Vec<Param>, name: &str) -> String {
    let at = params
        .iter()
        .position(|p| p.name == name && p.values.len() == 1 && !p.values[0].is_empty());
    at.map(|i| params.remove(i).values.concat())
        .unwrap_or_default()
}

fn person(p: Prop, pos: u32) -> Person {
    let mut params = p.params;
    let name = take_param(&mut params, "CN");
    let role = take_param(&mut params, "ROLE");
    let status = take_param(&mut params, "PARTSTAT");
    let rsvp_at = params.iter().position(|q| {
        q.name == "RSVP" && q.values.len() == 1 && q.values[0].eq_ignore_ascii_case("TRUE")
    });
    let rsvp = rsvp_at.map(|i| params.remove(i)).is_some();
    Person {
        address: p.value,
        name,
        role,
        status,
        rsvp,
        params,
        pos,
        stamp: None,
    }
}

/// The properties of a component body, nested components as single entries.
enum Entry<'a> {
    Prop(Prop),
    /// A nested component: its lines, BEGIN and END included.
    Nested(String, &'a [Line]),
}

/// Splits body lines into properties and nested components. Lines that are not properties
/// were refused by the scan; they are skipped here all the same.
fn entries(body: &[Line]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let line = &body[i];
        i += 1;
        let Some(p) = lex::parse_prop(&line.content) else {
            continue;
        };
        if p.name != "BEGIN" {
            out.push(Entry::Prop(p));
            continue;
        }
        let name = p.value.trim().to_ascii_uppercase();
        let start = i - 1;
        let mut depth = 1usize;
        while i < body.len() && depth > 0 {
            if let Some(q) = lex::parse_prop(&body[i].content) {
                let target = q.value.trim().to_ascii_uppercase();
                match q.name.as_str() {
                    "BEGIN" => depth += 1,
                    "END" if target == name || depth > 1 => depth -= 1,
                    _ => {}
                }
            }
            i += 1;
        }
        out.push(Entry::Nested(name, &body[start..i]));
    }
    out
}

/// Every line of a nested component as raw properties, from position `pos` on.
fn nested_raw(lines: &[Line], pos: &mut u32, into: &mut Vec<RawProperty>) {
    for line in lines.iter().filter(|l| !l.content.is_empty()) {
        if let Some(p) = lex::parse_prop(&line.content) {
            into.push(raw(p, *pos));
            *pos += 1;
        }
    }
}

fn alarm(lines: &[Line], pos: u32) -> Alarm {
    let body = lines.get(1..lines.len().saturating_sub(1)).unwrap_or(&[]);
    let mut a = Alarm {
        pos,
        ..Alarm::default()
    };
    let mut at = 0u32;
    for entry in entries(body) {
        match entry {
            Entry::Nested(_, lines) => nested_raw(lines, &mut at, &mut a.raw),
            Entry::Prop(p) => {
                let fresh = match p.name.as_str() {
                    "ACTION" => a.action.is_empty(),
                    "TRIGGER" => a.trigger.is_empty() && a.trigger_params.is_empty(),
                    "DESCRIPTION" => a.description.is_empty(),
                    _ => false,
                };
                if fresh && claims_alarm_field(&p) {
                    match p.name.as_str() {
                        "ACTION" => a.action = p.value,
                        "TRIGGER" => {
                            a.trigger = p.value;
                            a.trigger_params = p.params;
                        }
                        _ => a.description = lex::unescape(&p.value),
                    }
                } else {
                    a.raw.push(raw(p, at));
                }
                at += 1;
            }
        }
    }
    a
}

/// Reads a VEVENT (`todo` false) or VTODO from its body lines.
pub(super) fn component(body: &[Line], todo: bool) -> Read {
    let mut c = Component {
        kind: if todo {
            ComponentKind::Todo
        } else {
            ComponentKind::Event
        } as i32,
        ..Component::default()
    };
    let mut uid: Option<String> = None;
    let mut pos = 0u32;
    for entry in entries(body) {
        let p = match entry {
            Entry::Nested(name, lines) if name == "VALARM" => {
                c.alarms.push(alarm(lines, pos));
                pos += 1;
                continue;
            }
            Entry::Nested(_, lines) => {
                nested_raw(lines, &mut pos, &mut c.raw);
                continue;
            }
            Entry::Prop(p) => p,
        };
        let at = pos;
        pos += 1;
        match p.name.as_str() {
            "UID" if uid.is_none() && claims_uid(&p) => uid = Some(lex::unescape(&p.value)),
            "SEQUENCE" if c.sequence == 0 && claims_sequence(&p) => {
                c.sequence = p.value.parse().unwrap_or_default();
            }
            "RECURRENCE-ID" if c.recurrence_id.is_none() => {
                let v = p.value.clone();
                c.recurrence_id = Some(date(p, at, v));
            }
            "DTSTART" if c.start.is_none() => {
                let v = p.value.clone();
                c.start = Some(date(p, at, v));
            }
            "DTEND" if c.end.is_none() => {
                let v = p.value.clone();
                c.end = Some(date(p, at, v));
            }
            "DUE" if c.due.is_none() => {
                let v = p.value.clone();
                c.due = Some(date(p, at, v));
            }
            "RDATE" | "EXDATE" => {
                let list: Vec<DateTime> = p
                    .value
                    .split(',')
                    .map(|v| date(p.clone(), at, v.to_string()))
                    .collect();
                if p.name == "RDATE" {
                    c.rdates.extend(list);
                } else {
                    c.exdates.extend(list);
                }
            }
            "SUMMARY" if c.summary.is_none() => {
                let v = lex::unescape(&p.value);
                c.summary = Some(text(p, at, v));
            }
            "DESCRIPTION" if c.description.is_none() => {
                let v = lex::unescape(&p.value);
                c.description = Some(text(p, at, v));
            }
            "LOCATION" if c.location.is_none() => {
                let v = lex::unescape(&p.value);
                c.location = Some(text(p, at, v));
            }
            "DURATION" if c.duration.is_none() => {
                let v = p.value.clone();
                c.duration = Some(text(p, at, v));
            }
            "STATUS" if c.status.is_none() => {
                let v = p.value.clone();
                c.status = Some(text(p, at, v));
            }
            "RRULE" => {
                let v = p.value.clone();
                c.rrules.push(text(p, at, v));
            }
            "CATEGORIES" => {
                for v in lex::split_text_list(&p.value) {
                    c.categories.push(text(p.clone(), at, v));
                }
            }
            "ORGANIZER" if c.organizer.is_none() => c.organizer = Some(person(p, at)),
            "ATTENDEE" => c.attendees.push(person(p, at)),
            _ => c.raw.push(raw(p, at)),
        }
    }
    let mut tzids: Vec<String> = Vec::new();
    for tz in tzids_of(&c) {
        if !tzids.iter().any(|t| t == tz) {
            tzids.push(tz.to_string());
        }
    }
    Read {
        uid: uid.unwrap_or_default(),
        component: c,
        tzids,
    }
}

/// The TZID a VTIMEZONE's body gives (its own, not one of a nested STANDARD or DAYLIGHT).
pub(super) fn tzid_of_timezone(body: &[Line]) -> Option<String> {
    entries(body).into_iter().find_map(|e| match e {
        Entry::Prop(p) if p.name == "TZID" => Some(p.value),
        _ => None,
    })
}

/// The TZIDs a component's dates name (DTSTART, DTEND, DUE, RECURRENCE-ID, RDATE, EXDATE).
pub(super) fn tzids_of(c: &Component) -> impl Iterator<Item = &str> {
    [&c.start, &c.end, &c.due, &c.recurrence_id]
        .into_iter()
        .flatten()
        .chain(c.rdates.iter())
        .chain(c.exdates.iter())
        .map(|d| d.tzid.as_str())
        .filter(|t| !t.is_empty())
}
