//! One row ⇄ one contact.

use std::collections::HashMap;

use super::columns::{ADDRESS_CELLS, Col, Kind, Sub, classify, is_google_column, numbered};
use super::{KEPT_CELL, UID_COLUMN};
use crate::formats::codecs::vcard::normalize_date;
use crate::formats::native::{Address, Contact, Name, Organization, Param, RawProperty, Text};

/// How Google joins several values of one label in one cell.
const JOIN: &str = " ::: ";

/// Google's label cell → types, free label, preference ("* " marks the primary value).
fn read_label(cell: &str) -> (Vec<String>, String, u32) {
    let (pref, rest) = match cell.strip_prefix("* ") {
        Some(r) => (1, r),
        None => (0, cell),
    };
    let types: &[&str] = match rest.to_lowercase().as_str() {
        "" => &[],
        "home" => &["home"],
        "work" => &["work"],
        "other" => &["other"],
        "mobile" => &["cell"],
        "pager" => &["pager"],
        "home fax" => &["home", "fax"],
        "work fax" => &["work", "fax"],
        _ => return (Vec::new(), rest.to_string(), pref),
    };
    (
        types.iter().map(|t| t.to_string()).collect(),
        String::new(),
        pref,
    )
}

/// The label cell Google would show for a value.
fn label_cell(types: &[String], label: &str, pref: u32) -> String {
    let has = |t: &str| types.iter().any(|x| x == t);
    let base = if !label.is_empty() {
        // Apple's built-in labels are wrapped: `_$!<Work>!$_`.
        label
            .strip_prefix("_$!<")
            .and_then(|l| l.strip_suffix(">!$_"))
            .unwrap_or(label)
            .to_string()
    } else if has("fax") && has("work") {
        "Work Fax".into()
    } else if has("fax") && has("home") {
        "Home Fax".into()
    } else if has("cell") {
        "Mobile".into()
    } else if has("pager") {
        "Pager".into()
    } else if has("home") {
        "Home".into()
    } else if has("work") {
        "Work".into()
    } else if has("other") {
        "Other".into()
    } else {
        String::new()
    };
    if pref == 1 { format!("* {base}") } else { base }
}

/// The cells of one block, as they are read.
#[derive(Default)]
struct Block {
    preset: Vec<String>,
    pref: u32,
    cells: Vec<(Sub, usize, String)>,
}

impl Block {
    fn cell(&self, sub: Sub) -> Option<(usize, &str)> {
        self.cells
            .iter()
            .find(|(s, _, v)| *s == sub && !v.is_empty())
            .map(|(_, i, v)| (*i, v.as_str()))
    }
}

/// A place while reading: column, then the value's index within its cell.
fn anchor(col: usize, k: usize) -> u32 {
    u32::try_from(col.saturating_mul(1024).saturating_add(k.min(1023))).unwrap_or(u32::MAX)
}

fn plain(value: &str, pos: u32) -> Text {
    Text {
        value: value.to_string(),
        pos,
        ..Text::default()
    }
}

/// A kept cell's column as our writer names it (Google's older "… - Type" is "… - Label").
fn canonical(header: &str) -> String {
    match numbered(header) {
        Some((_, _, sub)) if sub == "type" => {
            let cut = header.len() - "type".len();
            format!("{}Label", &header[..cut])
        }
        _ => header.to_string(),
    }
}

fn kept(header: &str, value: &str, pos: u32) -> RawProperty {
    RawProperty {
        name: KEPT_CELL.into(),
        params: vec![Param {
            name: "COLUMN".into(),
            values: vec![canonical(header)],
        }],
        value: value.to_string(),
        pos,
        ..RawProperty::default()
    }
}

/// Reads a row (`cells` has as many cells as `cols`).
pub(super) fn read(cols: &[Col], headers: &[String], cells: &csv::StringRecord) -> Contact {
    let mut c = Contact::default();
    let mut blocks: Vec<((Kind, u32), Block)> = Vec::new();
    for (i, (col, cell)) in cols.iter().zip(cells.iter()).enumerate() {
        let empty = cell.is_empty();
        match col {
            Col::Given if !empty => name_part(&mut c, i, cell, |n| &mut n.given),
            Col::Additional if !empty => name_part(&mut c, i, cell, |n| &mut n.additional),
            Col::Family if !empty => name_part(&mut c, i, cell, |n| &mut n.family),
            Col::Prefix if !empty => name_part(&mut c, i, cell, |n| &mut n.prefixes),
            Col::Suffix if !empty => name_part(&mut c, i, cell, |n| &mut n.suffixes),
            Col::FullName if !empty && c.formatted_name.is_none() => {
                c.formatted_name = Some(plain(cell, anchor(i, 0)));
            }
            Col::Nickname if !empty => c.nicknames.extend(
                cell.split(JOIN)
                    .enumerate()
                    .map(|(k, v)| plain(v, anchor(i, k))),
            ),
            Col::OrgName | Col::OrgDept if !empty => {
                let o = c.organization.get_or_insert_with(|| Organization {
                    pos: anchor(i, 0),
                    ..Organization::default()
                });
                if *col == Col::OrgName {
                    o.name = cell.to_string();
                } else {
                    o.units.extend(cell.split(JOIN).map(str::to_string));
                }
            }
            Col::OrgTitle if !empty && c.title.is_none() => {
                c.title = Some(plain(cell, anchor(i, 0)));
            }
            Col::Birthday | Col::Anniversary if is_no_date(cell) => {}
            Col::Birthday if !empty && c.birthday.is_none() => {
                c.birthday = Some(plain(&normalize_date(cell), anchor(i, 0)));
            }
            Col::Anniversary if !empty && c.anniversary.is_none() => {
                c.anniversary = Some(plain(&normalize_date(cell), anchor(i, 0)));
            }
            Col::Notes if !empty => c.notes.push(plain(cell, anchor(i, 0))),
            Col::Labels if !empty => c.categories.extend(
                cell.split(JOIN)
                    .enumerate()
                    .map(|(k, v)| plain(v, anchor(i, k))),
            ),
            Col::Categories if !empty => c.categories.extend(
                cell.split(';')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .enumerate()
                    .map(|(k, v)| plain(v, anchor(i, k))),
            ),
            Col::Uid => c.uid = cell.to_string(),
            Col::Block(kind, n, sub) => {
                block(&mut blocks, (*kind, *n))
                    .cells
                    .push((*sub, i, cell.to_string()))
            }
            Col::Fixed(kind, slot, types, sub) => {
                let b = block(&mut blocks, (*kind, 1_000_000 + slot));
                b.preset = types
                    .iter()
                    .filter(|t| **t != "pref")
                    .map(|t| t.to_string())
                    .collect();
                b.pref = u32::from(types.contains(&"pref"));
                b.cells.push((*sub, i, cell.to_string()));
            }
            Col::Kept if !empty => c.raw.push(kept(&headers[i], cell, anchor(i, 0))),
            _ if !empty => {
                // A second column for something the record holds once: kept as it is.
                c.raw.push(kept(&headers[i], cell, anchor(i, 0)));
            }
            _ => {}
        }
    }
    for ((kind, _), b) in blocks {
        read_block(&mut c, kind, &b, headers);
    }
    // The columns after Google's layout come in the order of the file's header, which other
    // rows and earlier files decide; by name, they come in the same order in every file.
    let mut extra: Vec<(String, usize)> = c
        .raw
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let column = r.params.first()?.values.first()?;
            (!is_google_column(column)).then(|| (column.clone(), i))
        })
        .collect();
    extra.sort_by(|a, b| a.0.to_lowercase().cmp(&b.0.to_lowercase()).then(a.cmp(b)));
    for (k, (_, i)) in extra.into_iter().enumerate() {
        c.raw[i].pos = anchor(AFTER_LAYOUT.saturating_add(k), 0);
    }
    renumber(&mut c);
    c.raw.sort_by_key(|r| r.pos);
    c
}

/// A reading place after every column of Google's layout.
const AFTER_LAYOUT: usize = 1 << 20;

type Part = fn(&mut Name) -> &mut Vec<String>;

fn name_part(c: &mut Contact, i: usize, value: &str, part: Part) {
    let n = c.name.get_or_insert_with(|| Name {
        pos: anchor(i, 0),
        ..Name::default()
    });
    part(n).push(value.to_string());
}

/// Outlook writes "0/0/00" for no date.
fn is_no_date(cell: &str) -> bool {
    cell.chars()
        .all(|ch| ch == '0' || ch == '/' || ch.is_whitespace())
}

fn block(blocks: &mut Vec<((Kind, u32), Block)>, key: (Kind, u32)) -> &mut Block {
    let i = match blocks.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            blocks.push((key, Block::default()));
            blocks.len() - 1
        }
    };
    &mut blocks[i].1
}

fn read_block(c: &mut Contact, kind: Kind, b: &Block, headers: &[String]) {
    let (mut types, label, mut pref) = match b.cell(Sub::Label) {
        Some((_, l)) => read_label(l),
        None => (Vec::new(), String::new(), 0),
    };
    if !b.preset.is_empty() {
        types = b.preset.clone();
    }
    pref = pref.max(b.pref);
    match kind {
        Kind::Email | Kind::Phone | Kind::Website => {
            let Some((i, value)) = b.cell(Sub::Value) else {
                return;
            };
            let list = match kind {
                Kind::Email => &mut c.emails,
                Kind::Phone => &mut c.phones,
                _ => &mut c.urls,
            };
            for (k, v) in value.split(JOIN).enumerate() {
                list.push(Text {
                    value: v.to_string(),
                    types: types.clone(),
                    label: label.clone(),
                    // The star marks the primary value: the first of its cell.
                    pref: if k == 0 { pref } else { 0 },
                    pos: anchor(i, k),
                    ..Text::default()
                });
            }
        }
        Kind::Address => {
            let parts = |sub: Sub| -> Vec<&str> {
                b.cell(sub)
                    .map(|(_, v)| v.split(JOIN).collect())
                    .unwrap_or_default()
            };
            let first = b
                .cells
                .iter()
                .filter(|(s, _, v)| *s != Sub::Label && !v.is_empty())
                .map(|(_, i, _)| *i)
                .min();
            let Some(first) = first else {
                return;
            };
            let split: HashMap<Sub, Vec<&str>> =
                ADDRESS_CELLS.iter().map(|(_, s)| (*s, parts(*s))).collect();
            let count = split.values().map(Vec::len).max().unwrap_or(0);
            for k in 0..count {
                let get = |s: Sub| {
                    split
                        .get(&s)
                        .and_then(|v| v.get(k))
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                };
                let mut a = Address {
                    po_box: get(Sub::PoBox),
                    extended: get(Sub::Extended),
                    street: get(Sub::Street),
                    locality: get(Sub::City),
                    region: get(Sub::Region),
                    postal_code: get(Sub::PostalCode),
                    country: get(Sub::Country),
                    types: types.clone(),
                    label: label.clone(),
                    pref: if k == 0 { pref } else { 0 },
                    pos: anchor(first, k),
                    ..Address::default()
                };
                // The formatted address is derived from the parts; read alone only when
                // there are none.
                if structured_empty(&a) {
                    a.street = get(Sub::Formatted);
                }
                if !structured_empty(&a) {
                    c.addresses.push(a);
                }
            }
        }
        Kind::Event => {
            let value = b.cell(Sub::Value);
            let is_anniversary = b.cell(Sub::Label).is_some_and(|(_, l)| {
                l.trim_start_matches("* ")
                    .eq_ignore_ascii_case("anniversary")
            });
            match value {
                Some((i, v)) if is_anniversary && c.anniversary.is_none() => {
                    c.anniversary = Some(plain(&normalize_date(v), anchor(i, 0)));
                }
                _ => {
                    for (_, i, v) in &b.cells {
                        if !v.is_empty() {
                            c.raw.push(kept(&headers[*i], v, anchor(*i, 0)));
                        }
                    }
                }
            }
        }
    }
}

fn structured_empty(a: &Address) -> bool {
    [
        &a.po_box,
        &a.extended,
        &a.street,
        &a.locality,
        &a.region,
        &a.postal_code,
        &a.country,
    ]
    .iter()
    .all(|s| s.is_empty())
}

/// Turns reading places into positions 0, 1, 2… in the same order.
fn renumber(c: &mut Contact) {
    let mut all: Vec<u32> = Vec::new();
    each_pos(c, &mut |p| all.push(*p));
    all.sort_unstable();
    all.dedup();
    each_pos(c, &mut |p| {
        *p = u32::try_from(all.partition_point(|x| x < p)).unwrap_or(u32::MAX);
    });
}

fn each_pos(c: &mut Contact, f: &mut dyn FnMut(&mut u32)) {
    for t in c
        .formatted_name
        .iter_mut()
        .chain(c.title.iter_mut())
        .chain(c.birthday.iter_mut())
        .chain(c.anniversary.iter_mut())
        .chain(c.nicknames.iter_mut())
        .chain(c.emails.iter_mut())
        .chain(c.phones.iter_mut())
        .chain(c.notes.iter_mut())
        .chain(c.urls.iter_mut())
        .chain(c.categories.iter_mut())
    {
        f(&mut t.pos);
    }
    c.addresses.iter_mut().for_each(|a| f(&mut a.pos));
    c.raw.iter_mut().for_each(|r| f(&mut r.pos));
    if let Some(n) = &mut c.name {
        f(&mut n.pos);
    }
    if let Some(o) = &mut c.organization {
        f(&mut o.pos);
    }
    if let Some(p) = &mut c.photo {
        f(&mut p.pos);
    }
}

/// The kept cells of a contact a writer can give a column: (column, value), the first
/// non-empty one per column, never a column a field of the record is written to.
pub(super) fn kept_cells(c: &Contact) -> Vec<(String, String)> {
    let mut raws: Vec<&RawProperty> = c.raw.iter().filter(|r| r.name == KEPT_CELL).collect();
    raws.sort_by_key(|r| r.pos);
    let mut out: Vec<(String, String)> = Vec::new();
    for r in raws {
        let Some(column) = r
            .params
            .iter()
            .find(|p| p.name == "COLUMN")
            .and_then(|p| p.values.first())
        else {
            continue;
        };
        let column = canonical(column);
        let writable = matches!(classify(&column), Col::Kept | Col::Block(Kind::Event, _, _));
        if writable
            && !r.value.is_empty()
            && !column.eq_ignore_ascii_case(UID_COLUMN)
            && !column.contains(['\r', '\n'])
            && !out.iter().any(|(h, _)| h.eq_ignore_ascii_case(&column))
        {
            out.push((column, r.value.clone()));
        }
    }
    out
}

/// The Event block the anniversary goes to: the first one its kept cells leave free.
pub(super) fn anniversary_slot(c: &Contact) -> u32 {
    let used: Vec<u32> = kept_cells(c)
        .iter()
        .filter_map(|(h, _)| numbered(h))
        .filter(|(kind, _, _)| kind == "event")
        .map(|(_, n, _)| n)
        .collect();
    (1..).find(|n| !used.contains(n)).unwrap_or(1)
}

fn sorted<T: Clone>(v: &[T], pos: fn(&T) -> u32) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by_key(pos);
    v
}

/// The cells of a contact by column.
fn cells(c: &Contact) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    let mut set = |k: String, v: String| {
        if !v.is_empty() {
            m.insert(k, v);
        }
    };
    if let Some(n) = &c.name {
        set("First Name".into(), n.given.join(" "));
        set("Middle Name".into(), n.additional.join(" "));
        set("Last Name".into(), n.family.join(" "));
        set("Name Prefix".into(), n.prefixes.join(" "));
        set("Name Suffix".into(), n.suffixes.join(" "));
    }
    let values =
        |v: &[Text]| -> Vec<String> { sorted(v, |t| t.pos).into_iter().map(|t| t.value).collect() };
    set("Nickname".into(), values(&c.nicknames).join(JOIN));
    if let Some(o) = &c.organization {
        set("Organization Name".into(), o.name.clone());
        let units: Vec<&str> = o
            .units
            .iter()
            .map(String::as_str)
            .filter(|u| !u.is_empty())
            .collect();
        set("Organization Department".into(), units.join(JOIN));
    }
    if let Some(t) = &c.title {
        set("Organization Title".into(), t.value.clone());
    }
    if let Some(t) = &c.birthday {
        set("Birthday".into(), t.value.clone());
    }
    set("Notes".into(), values(&c.notes).join("\n"));
    set("Labels".into(), values(&c.categories).join(JOIN));
    for (block, list) in [
        ("E-mail", &c.emails),
        ("Phone", &c.phones),
        ("Website", &c.urls),
    ] {
        for (k, t) in sorted(list, |t| t.pos).iter().enumerate() {
            let n = k + 1;
            set(
                format!("{block} {n} - Label"),
                label_cell(&t.types, &t.label, t.pref),
            );
            set(format!("{block} {n} - Value"), t.value.clone());
        }
    }
    for (k, a) in sorted(&c.addresses, |a| a.pos).iter().enumerate() {
        let n = k + 1;
        set(
            format!("Address {n} - Label"),
            label_cell(&a.types, &a.label, a.pref),
        );
        set(format!("Address {n} - Formatted"), formatted(a));
        set(format!("Address {n} - Street"), a.street.clone());
        set(format!("Address {n} - City"), a.locality.clone());
        set(format!("Address {n} - PO Box"), a.po_box.clone());
        set(format!("Address {n} - Region"), a.region.clone());
        set(format!("Address {n} - Postal Code"), a.postal_code.clone());
        set(format!("Address {n} - Country"), a.country.clone());
        set(
            format!("Address {n} - Extended Address"),
            a.extended.clone(),
        );
    }
    if let Some(t) = &c.anniversary {
        let n = anniversary_slot(c);
        set(format!("Event {n} - Label"), "Anniversary".into());
        set(format!("Event {n} - Value"), t.value.clone());
    }
    for (h, v) in kept_cells(c) {
        m.entry(h).or_insert(v);
    }
    m.insert(UID_COLUMN.into(), c.uid.clone());
    m
}

/// An address on lines, as Google shows it.
fn formatted(a: &Address) -> String {
    let city: Vec<&str> = [&a.locality, &a.region, &a.postal_code]
        .into_iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let city = city.join(" ");
    [
        a.street.as_str(),
        a.extended.as_str(),
        a.po_box.as_str(),
        city.as_str(),
        a.country.as_str(),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join("\n")
}

/// One CSV line of `cells`, quoted where needed, ending with `eol`.
pub(super) fn render_cells(cells: &[String], eol: &str) -> String {
    let terminator = if eol == "\n" {
        csv::Terminator::Any(b'\n')
    } else {
        csv::Terminator::CRLF
    };
    let mut w = csv::WriterBuilder::new()
        .terminator(terminator)
        .from_writer(Vec::new());
    // Writing to memory cannot fail; an empty line would only lose a row already empty.
    let mut bytes = match w.write_record(cells) {
        Ok(()) => w.into_inner().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if bytes.is_empty() {
        bytes = eol.as_bytes().to_vec();
    }
    String::from_utf8(bytes).unwrap_or_default()
}

/// A contact's row under `header`.
pub(super) fn render(c: &Contact, header: &[String], eol: &str) -> String {
    let m = cells(c);
    let row: Vec<String> = header
        .iter()
        .map(|h| m.get(h).cloned().unwrap_or_default())
        .collect();
    render_cells(&row, eol)
}
