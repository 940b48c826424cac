//! Calendar items into iCalendar text: components line by line in the order their `pos`
//! give, the time zones they need, and a whole calendar around them.

use super::lex::{self, Prop};
use super::read::{self, claims_alarm_field, claims_sequence, claims_uid};
use super::scan;
use crate::formats::native::{
    Alarm, CalendarItem, Component, ComponentKind, DateTime, Param, Person, RawProperty, Text,
    Timezone,
};

/// One content line to write, and what the structure check needs to know of it.
struct Out {
    content: String,
    /// For a raw BEGIN or END line: whether it begins, and the component it names.
    boundary: Option<(bool, String)>,
}

impl Out {
    fn line(content: String) -> Self {
        Self {
            content,
            boundary: None,
        }
    }
}

/// Lines with a place (`pos`) among their component's properties.
struct Placed {
    pos: u32,
    lines: Vec<Out>,
    /// The posless field a raw line would be read as if it came first ("UID", "ACTION").
    claims: Option<&'static str>,
}

/// A field with no `pos` of its own (UID, SEQUENCE; an alarm's ACTION, TRIGGER and
/// DESCRIPTION): written in the places no positioned line takes, which is where a read
/// found it.
struct Floating {
    key: &'static str,
    lines: Vec<Out>,
}

/// The lines in order: positioned ones by `pos`; a floating one wherever the next position
/// is free, never inside a nested component, and always before a raw line of its name that
/// would be read in its stead. Raw BEGIN and END lines that would break the structure (an END
/// that closes nothing open, a BEGIN of a component that cannot nest) are left out, and what
/// is left open is closed, so the text always reads back.
fn arrange(mut placed: Vec<Placed>, mut floating: Vec<Floating>) -> Vec<Out> {
    placed.sort_by_key(|p| p.pos);
    let mut open: Vec<String> = Vec::new();
    // Each line that stays, and whether it lies outside every nested component.
    let mut kept: Vec<(Placed, bool)> = Vec::with_capacity(placed.len());
    for mut p in placed {
        let top = open.is_empty();
        if let Some((begin, target)) = p.lines.first().and_then(|l| l.boundary.clone()) {
            if begin {
                if scan::is_outer(&target) {
                    continue;
                }
                open.push(target);
            } else if open.last() == Some(&target) {
                open.pop();
            } else {
                continue;
            }
        }
        if !top {
            // Inside a nested component a line is read as raw, whatever its name.
            p.claims = None;
        }
        if p.claims == Some("UID") && !floating.iter().any(|f| f.key == "UID") {
            // With no UID of its own to come first, a raw UID would become the item's key.
            continue;
        }
        kept.push((p, top));
    }
    let mut out = Vec::new();
    let mut k = 0u32;
    let mut next = 0usize;
    while let Some((ahead, top)) = kept.get(next) {
        if *top && !floating.is_empty() {
            let claimed = ahead
                .claims
                .and_then(|c| floating.iter().position(|f| f.key == c));
            let pick = claimed
                .or_else(|| (k < ahead.pos).then(|| earliest_deadline(&floating, &kept[next..])));
            if let Some(i) = pick {
                out.append(&mut floating.remove(i).lines);
                k += 1;
                continue;
            }
        }
        if let Some((p, _)) = kept.get_mut(next) {
            out.append(&mut p.lines);
        }
        next += 1;
        k += 1;
    }
    while let Some(target) = open.pop() {
        out.push(Out::line(format!("END:{target}")));
    }
    for f in floating {
        out.extend(f.lines);
    }
    out
}

/// The floating field whose first would-be stand-in comes soonest: writing it first keeps
/// every field ahead of its stand-ins whenever the free places allow it.
fn earliest_deadline(floating: &[Floating], rest: &[(Placed, bool)]) -> usize {
    let deadline = |key: &str| {
        rest.iter()
            .filter(|(p, _)| p.claims == Some(key))
            .map(|(p, _)| p.pos)
            .min()
            .unwrap_or(u32::MAX)
    };
    let mut best = 0;
    for i in 1..floating.len() {
        if deadline(floating[i].key) < deadline(floating[best].key) {
            best = i;
        }
    }
    best
}

fn with_tzid(tzid: &str, params: &[Param]) -> Vec<Param> {
    let mut all = Vec::with_capacity(params.len() + 1);
    if !tzid.is_empty() {
        all.push(Param {
            name: "TZID".to_string(),
            values: vec![tzid.to_string()],
        });
    }
    all.extend(params.iter().cloned());
    all
}

fn date_line(name: &str, d: &DateTime) -> Placed {
    let content = lex::render(name, &with_tzid(&d.tzid, &d.params), &lex::plain(&d.value));
    Placed {
        pos: d.pos,
        lines: vec![Out::line(content)],
        claims: None,
    }
}

/// RDATE or EXDATE lines: values read from one line share its `pos`, tzid and parameters,
/// and go back on one line.
fn date_lists(name: &str, dates: &[DateTime], into: &mut Vec<Placed>) {
    for group in dates.chunk_by(|a, b| a.pos == b.pos && a.tzid == b.tzid && a.params == b.params) {
        let values: Vec<String> = group.iter().map(|d| lex::plain(&d.value)).collect();
        let first = &group[0];
        let content = lex::render(
            name,
            &with_tzid(&first.tzid, &first.params),
            &values.join(","),
        );
        into.push(Placed {
            pos: first.pos,
            lines: vec![Out::line(content)],
            claims: None,
        });
    }
}

fn text_line(name: &str, t: &Text, value: String) -> Placed {
    Placed {
        pos: t.pos,
        lines: vec![Out::line(lex::render(name, &t.params, &value))],
        claims: None,
    }
}

fn person_line(name: &str, p: &Person) -> Placed {
    let mut params = Vec::new();
    let mut one = |name: &str, value: &str| {
        if !value.is_empty() {
            params.push(Param {
                name: name.to_string(),
                values: vec![value.to_string()],
            });
        }
    };
    one("CN", &p.name);
    one("ROLE", &p.role);
    one("PARTSTAT", &p.status);
    if p.rsvp {
        one("RSVP", "TRUE");
    }
    params.extend(p.params.iter().cloned());
    Placed {
        pos: p.pos,
        lines: vec![Out::line(lex::render(
            name,
            &params,
            &lex::plain(&p.address),
        ))],
        claims: None,
    }
}

/// A raw property's line, or `None` when its name cannot be written.
fn raw_line(r: &RawProperty, claims: fn(&Prop) -> Option<&'static str>) -> Option<Placed> {
    if !lex::is_name(&r.name) {
        return None;
    }
    let value = lex::plain(&r.value);
    let name = r.name.to_ascii_uppercase();
    let boundary = match name.as_str() {
        "BEGIN" => Some((true, value.trim().to_ascii_uppercase())),
        "END" => Some((false, value.trim().to_ascii_uppercase())),
        _ => None,
    };
    let content = lex::render(&r.name, &r.params, &value);
    let read_back = lex::parse_prop(&content)?;
    Some(Placed {
        pos: r.pos,
        claims: claims(&read_back),
        lines: vec![Out { content, boundary }],
    })
}

fn component_claims(p: &Prop) -> Option<&'static str> {
    match p.name.as_str() {
        "UID" if claims_uid(p) => Some("UID"),
        "SEQUENCE" if claims_sequence(p) => Some("SEQUENCE"),
        _ => None,
    }
}

fn alarm_claims(p: &Prop) -> Option<&'static str> {
    if !claims_alarm_field(p) {
        return None;
    }
    match p.name.as_str() {
        "ACTION" => Some("ACTION"),
        "TRIGGER" => Some("TRIGGER"),
        _ => Some("DESCRIPTION"),
    }
}

fn alarm_lines(a: &Alarm) -> Placed {
    let mut floating = Vec::new();
    if !a.action.is_empty() {
        let content = format!("ACTION:{}", lex::plain(&a.action));
        floating.push(Floating {
            key: "ACTION",
            lines: vec![Out::line(content)],
        });
    }
    if !a.trigger.is_empty() || !a.trigger_params.is_empty() {
        let content = lex::render("TRIGGER", &a.trigger_params, &lex::plain(&a.trigger));
        floating.push(Floating {
            key: "TRIGGER",
            lines: vec![Out::line(content)],
        });
    }
    if !a.description.is_empty() {
        let content = format!("DESCRIPTION:{}", lex::escape(&a.description));
        floating.push(Floating {
            key: "DESCRIPTION",
            lines: vec![Out::line(content)],
        });
    }
    let placed = a
        .raw
        .iter()
        .filter_map(|r| raw_line(r, alarm_claims))
        .collect();
    let mut lines = vec![Out::line("BEGIN:VALARM".to_string())];
    // Balanced inside the alarm, so no concern of the component's own check.
    lines.extend(
        arrange(placed, floating)
            .into_iter()
            .map(|l| Out::line(l.content)),
    );
    lines.push(Out::line("END:VALARM".to_string()));
    Placed {
        pos: a.pos,
        lines,
        claims: None,
    }
}

/// Appends one VEVENT or VTODO of the item `uid`.
fn push_component(out: &mut String, uid: &str, c: &Component) {
    let mut placed = Vec::new();
    let mut floating = Vec::new();
    if !uid.is_empty() {
        floating.push(Floating {
            key: "UID",
            lines: vec![Out::line(format!("UID:{}", lex::escape(uid)))],
        });
    }
    if c.sequence > 0 {
        floating.push(Floating {
            key: "SEQUENCE",
            lines: vec![Out::line(format!("SEQUENCE:{}", c.sequence))],
        });
    }
    for (name, d) in [
        ("RECURRENCE-ID", &c.recurrence_id),
        ("DTSTART", &c.start),
        ("DTEND", &c.end),
        ("DUE", &c.due),
    ] {
        if let Some(d) = d {
            placed.push(date_line(name, d));
        }
    }
    for (name, t) in [
        ("SUMMARY", &c.summary),
        ("DESCRIPTION", &c.description),
        ("LOCATION", &c.location),
    ] {
        if let Some(t) = t {
            placed.push(text_line(name, t, lex::escape(&t.value)));
        }
    }
    for (name, t) in [("DURATION", &c.duration), ("STATUS", &c.status)] {
        if let Some(t) = t {
            placed.push(text_line(name, t, lex::plain(&t.value)));
        }
    }
    for t in &c.rrules {
        placed.push(text_line("RRULE", t, lex::plain(&t.value)));
    }
    date_lists("RDATE", &c.rdates, &mut placed);
    date_lists("EXDATE", &c.exdates, &mut placed);
    for group in c
        .categories
        .chunk_by(|a, b| a.pos == b.pos && a.params == b.params)
    {
        let values: Vec<String> = group.iter().map(|t| lex::escape(&t.value)).collect();
        placed.push(text_line("CATEGORIES", &group[0], values.join(",")));
    }
    if let Some(p) = &c.organizer {
        placed.push(person_line("ORGANIZER", p));
    }
    for p in &c.attendees {
        placed.push(person_line("ATTENDEE", p));
    }
    for a in &c.alarms {
        placed.push(alarm_lines(a));
    }
    placed.extend(c.raw.iter().filter_map(|r| raw_line(r, component_claims)));
    let name = match c.kind() {
        ComponentKind::Todo => "VTODO",
        ComponentKind::Event => "VEVENT",
    };
    lex::push_folded(out, &format!("BEGIN:{name}"));
    for line in arrange(placed, floating) {
        lex::push_folded(out, &line.content);
    }
    lex::push_folded(out, &format!("END:{name}"));
}

/// Appends the components of `item`, in the order of their `pos`.
pub(super) fn push_item(out: &mut String, item: &CalendarItem) {
    let mut components: Vec<&Component> = item.components.iter().collect();
    components.sort_by_key(|c| c.pos);
    for c in components {
        push_component(out, &item.uid, c);
    }
}

/// A time zone's text as it will be written, or `None` when it is not exactly one VTIMEZONE
/// with this TZID (writing it would break the calendar or name the wrong zone).
pub(super) fn timezone_text(tz: &Timezone) -> Option<String> {
    if tz.tzid.is_empty() || tz.text.starts_with('\u{feff}') {
        return None;
    }
    let mut text = tz.text.clone();
    if !text.ends_with('\n') {
        text.push_str("\r\n");
    }
    let layout = scan::scan(&text);
    let [block] = layout.blocks.as_slice() else {
        return None;
    };
    let whole = block.span == (0..text.len());
    let tzid = read::tzid_of_timezone(&layout.lines[block.body.clone()]);
    (whole
        && block.name == "VTIMEZONE"
        && block.error.is_none()
        && layout.strays.is_empty()
        && !layout.has_calendar
        && tzid.as_deref() == Some(tz.tzid.as_str()))
    .then_some(text)
}

/// The time zones `items` need and carry, each TZID once, leaving out those in `have`.
pub(super) fn needed_timezones(items: &[&CalendarItem], have: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        let used: Vec<&str> = item.components.iter().flat_map(read::tzids_of).collect();
        for tz in &item.timezones {
            let wanted = used.contains(&tz.tzid.as_str())
                && !have.contains(&tz.tzid)
                && !out.iter().any(|(t, _)| *t == tz.tzid);
            if let Some(text) = wanted.then(|| timezone_text(tz)).flatten() {
                out.push((tz.tzid.clone(), text));
            }
        }
    }
    out
}

/// A whole calendar of `items`.
pub(super) fn calendar(items: &[&CalendarItem]) -> String {
    let mut out =
        String::from("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Tandem//Tandem//EN\r\n");
    for (_, text) in needed_timezones(items, &[]) {
        out.push_str(&text);
    }
    for item in items {
        push_item(&mut out, item);
    }
    out.push_str("END:VCALENDAR\r\n");
    out
}
