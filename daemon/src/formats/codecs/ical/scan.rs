//! The shape of a text: its logical lines, the components directly inside its calendars
//! (or loose at the top), where they lie, and what is broken. Found from BEGIN:/END: lines
//! alone, so a broken component never hides the ones after it.

use std::ops::Range;

use super::lex::{self, Line};

/// Components that never nest inside an event, a to-do or a time zone: meeting one of them
/// inside another means the other was never closed.
const OUTER: [&str; 6] = [
    "VCALENDAR",
    "VEVENT",
    "VTODO",
    "VJOURNAL",
    "VFREEBUSY",
    "VTIMEZONE",
];

/// Whether a component of this name ends an open outer component.
pub(super) fn is_outer(name: &str) -> bool {
    OUTER.contains(&name)
}

/// A component directly inside a calendar.
#[derive(Debug, Clone)]
pub(super) struct Block {
    /// Its name, upper-case ("VEVENT", "X-FOO").
    pub name: String,
    /// The lines between its BEGIN and its END (both excluded), as indices into the lines.
    pub body: Range<usize>,
    /// Its bytes, BEGIN line to END line with its line break.
    pub span: Range<usize>,
    /// Its BEGIN line's number.
    pub line: u32,
    /// Why it cannot be read, if it cannot.
    pub error: Option<String>,
}

/// A part of the text outside any component that is wrong.
#[derive(Debug, Clone)]
pub(super) struct Stray {
    pub span: Range<usize>,
    pub line: u32,
    pub message: String,
}

/// Everything the scan finds.
#[derive(Debug, Default)]
pub(super) struct Layout {
    pub lines: Vec<Line>,
    pub blocks: Vec<Block>,
    pub strays: Vec<Stray>,
    /// Where the last END:VCALENDAR line starts.
    pub calendar_end: Option<usize>,
    /// Whether the text has a BEGIN:VCALENDAR at all.
    pub has_calendar: bool,
}

/// The name and BEGIN/END target of a line, if it is a property line.
pub(super) fn boundary(content: &str) -> Option<(String, String)> {
    let prop = lex::parse_prop(content)?;
    let target = prop.value.trim().to_ascii_uppercase();
    Some((prop.name, target))
}

/// What a component noun is in a message.
fn noun(name: &str) -> &'static str {
    match name {
        "VEVENT" => "the event",
        "VTODO" => "the to-do",
        "VTIMEZONE" => "the time zone",
        "VALARM" => "the alarm",
        _ => "the component",
    }
}

fn unterminated(name: &str, line: u32) -> String {
    format!(
        "{name} at line {line} has no END:{name}; add it or remove {}",
        noun(name)
    )
}

struct Open {
    name: String,
    first: usize,
    nested: Vec<(String, usize)>,
    error: Option<String>,
}

/// Scans `text`.
pub(super) fn scan(text: &str) -> Layout {
    let lines = lex::lines(text);
    let mut layout = Layout::default();
    let mut calendar: Option<usize> = None;
    let mut open: Option<Open> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        if line.content.is_empty() {
            i += 1;
            continue;
        }
        let parsed = boundary(&line.content);
        let Some(o) = open.as_mut() else {
            match parsed {
                Some((name, target)) if name == "BEGIN" && target == "VCALENDAR" => {
                    if let Some(c) = calendar.replace(i) {
                        layout.strays.push(calendar_unterminated(&lines[c]));
                    }
                    layout.has_calendar = true;
                }
                Some((name, target)) if name == "BEGIN" => {
                    open = Some(Open {
                        name: target,
                        first: i,
                        nested: Vec::new(),
                        error: None,
                    });
                }
                Some((name, target)) if name == "END" => {
                    if target == "VCALENDAR" && calendar.is_some() {
                        calendar = None;
                        layout.calendar_end = Some(line.start);
                    } else {
                        layout.strays.push(Stray {
                            span: line.start..line.end,
                            line: line.number,
                            message: format!(
                                "END:{target} at line {} closes nothing; remove the line",
                                line.number
                            ),
                        });
                    }
                }
                // Calendar properties and whatever lies between calendars: kept as they are.
                _ => {}
            }
            i += 1;
            continue;
        };
        let first = &lines[o.first];
        match parsed {
            None => {
                if o.error.is_none() {
                    o.error = Some(format!(
                        "line {} in the {} at line {} is not a property (no name and ':'); \
                         fix or remove the line",
                        line.number, o.name, first.number
                    ));
                }
            }
            Some((name, target)) if name == "BEGIN" => {
                if is_outer(&target) {
                    // Ends the open component before this line; the line is read again.
                    let msg = unterminated(&o.name, first.number);
                    close(&mut layout, &lines, o, i, line.start, Some(msg));
                    open = None;
                    continue;
                }
                o.nested.push((target, i));
            }
            Some((name, target)) if name == "END" => match o.nested.last() {
                Some((top, _)) if *top == target => {
                    o.nested.pop();
                }
                Some((top, at)) if target == o.name => {
                    let msg = unterminated(top, lines[*at].number);
                    close(&mut layout, &lines, o, i, line.end, Some(msg));
                    open = None;
                }
                None if target == o.name => {
                    close(&mut layout, &lines, o, i, line.end, None);
                    open = None;
                }
                _ if target == "VCALENDAR" => {
                    let msg = unterminated(&o.name, first.number);
                    close(&mut layout, &lines, o, i, line.start, Some(msg));
                    open = None;
                    continue;
                }
                Some((top, at)) => {
                    if o.error.is_none() {
                        o.error = Some(format!(
                            "END:{target} at line {} does not close the {top} at line {}; \
                             make it END:{top}",
                            line.number, lines[*at].number
                        ));
                    }
                }
                None => {
                    let msg = format!(
                        "{} at line {} ends with END:{target} at line {}; make it END:{}",
                        o.name, first.number, line.number, o.name
                    );
                    close(&mut layout, &lines, o, i, line.end, Some(msg));
                    open = None;
                }
            },
            Some(_) => {}
        }
        i += 1;
    }
    if let Some(o) = open.as_mut() {
        let msg = unterminated(&o.name, lines[o.first].number);
        close(&mut layout, &lines, o, lines.len(), text.len(), Some(msg));
    }
    if let Some(c) = calendar {
        layout.strays.push(calendar_unterminated(&lines[c]));
    }
    let blank = text.trim_start_matches('\u{feff}').trim().is_empty();
    if !blank && !layout.has_calendar && layout.blocks.is_empty() && layout.strays.is_empty() {
        layout.strays.push(Stray {
            span: 0..text.len(),
            line: 1,
            message: "no BEGIN:VCALENDAR: this is not iCalendar text; fix the file or move it \
                      out of the source"
                .to_string(),
        });
    }
    layout.lines = lines;
    layout
}

fn calendar_unterminated(line: &Line) -> Stray {
    Stray {
        span: line.start..line.end,
        line: line.number,
        message: format!(
            "VCALENDAR at line {} has no END:VCALENDAR; add it after its last component",
            line.number
        ),
    }
}

/// Records the open component as a block ending at line index `last` (its END line when it
/// has one) and byte `end`; a given error wins over one found inside.
fn close(
    layout: &mut Layout,
    lines: &[Line],
    open: &mut Open,
    last: usize,
    end: usize,
    error: Option<String>,
) {
    let first = &lines[open.first];
    let error = error.or_else(|| open.error.take());
    layout.blocks.push(Block {
        name: std::mem::take(&mut open.name),
        body: open.first + 1..last.max(open.first + 1),
        span: first.start..end,
        line: first.number,
        error,
    });
}
