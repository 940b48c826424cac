//! The content lines of a card → a `Contact`.

use std::collections::HashMap;

use data_encoding::{BASE64, BASE64_NOPAD};

use super::lex::ContentLine;
use super::value::{normalize_date, split_unescaped, unescape};
use crate::formats::native::{
    Address, Contact, Name, Organization, Param, Photo, RawProperty, Text,
};

/// The Text fields, in the order a writer sorts equal positions (the record's field order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Fn,
    Email,
    Tel,
    Title,
    Bday,
    Anniversary,
    Note,
    Url,
}

enum Item {
    Text(Slot, Text),
    List(bool, Vec<Text>),
    Name(Name),
    Adr(Address),
    Org(Organization),
    Photo(Photo),
    Raw(RawProperty),
    Uid(String),
    Rev(String),
    Version,
}

/// TYPE and PREF taken out of `params`: the types (lower-case), the preference, the rest.
pub(super) fn split_params(params: Vec<Param>) -> (Vec<String>, u32, Vec<Param>) {
    let mut types = Vec::new();
    let mut pref = 0;
    let mut rest = Vec::new();
    let add = |t: &str, types: &mut Vec<String>, pref: &mut u32| {
        let t = t.trim().to_lowercase();
        if t == "pref" {
            if *pref == 0 {
                *pref = 1;
            }
        } else if !t.is_empty() {
            types.push(t);
        }
    };
    for p in params {
        if p.name == "TYPE" {
            for v in &p.values {
                for t in v.split(',') {
                    add(t, &mut types, &mut pref);
                }
            }
        } else if p.name == "PREF" && p.values.len() == 1 {
            match p.values[0].trim().parse::<u32>() {
                Ok(n) => pref = n,
                Err(_) => rest.push(p),
            }
        } else if p.values.is_empty() {
            // vCard 2.1 writes types bare: `TEL;CELL;VOICE:`.
            add(&p.name, &mut types, &mut pref);
        } else {
            rest.push(p);
        }
    }
    (types, pref, rest)
}

fn text(value: String, cl: &ContentLine) -> Text {
    let (types, pref, params) = split_params(cl.params.clone());
    Text {
        value,
        types,
        pref,
        group: cl.group.clone(),
        params,
        ..Text::default()
    }
}

fn raw(cl: &ContentLine) -> RawProperty {
    RawProperty {
        group: cl.group.clone(),
        name: cl.name.clone(),
        params: cl.params.clone(),
        value: cl.value.clone(),
        ..RawProperty::default()
    }
}

fn components(value: &str) -> Vec<Vec<String>> {
    split_unescaped(value, ';')
        .into_iter()
        .map(|c| {
            if c.is_empty() {
                Vec::new()
            } else {
                split_unescaped(c, ',').into_iter().map(unescape).collect()
            }
        })
        .collect()
}

fn is_base64(params: &[Param]) -> bool {
    params.iter().any(|p| {
        let b = |v: &str| v.eq_ignore_ascii_case("B") || v.eq_ignore_ascii_case("BASE64");
        (p.name == "ENCODING" && p.values.iter().any(|v| b(v)))
            || (p.values.is_empty() && p.name == "BASE64")
    })
}

/// "JPEG" or "image/jpeg" → "image/jpeg".
fn media_type(t: &str) -> String {
    let t = t.trim().to_lowercase();
    if t.contains('/') {
        t
    } else {
        format!("image/{t}")
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    BASE64
        .decode(clean.as_bytes())
        .or_else(|_| BASE64_NOPAD.decode(clean.trim_end_matches('=').as_bytes()))
        .ok()
}

fn photo(cl: &ContentLine) -> Option<Photo> {
    let mut p = Photo {
        group: cl.group.clone(),
        ..Photo::default()
    };
    let b64 = is_base64(&cl.params);
    for param in &cl.params {
        match param.name.as_str() {
            "ENCODING" | "VALUE" => {}
            "TYPE" | "MEDIATYPE" => {
                if let Some(t) = param.values.first() {
                    p.media_type = media_type(t);
                }
            }
            // 2.1's bare `;JPEG`.
            "BASE64" | "B" if param.values.is_empty() => {}
            n if param.values.is_empty() => p.media_type = media_type(n),
            _ => p.params.push(param.clone()),
        }
    }
    if b64 {
        p.data = decode_base64(&cl.value)?;
    } else if let Some(rest) = cl.value.strip_prefix("data:") {
        let (head, data) = rest.split_once(',')?;
        let mt = head.strip_suffix(";base64")?;
        p.data = decode_base64(data)?;
        p.media_type = mt.to_lowercase();
    } else {
        p.uri = cl.value.clone();
    }
    Some(p)
}

/// Whether this is the first `key` of the card (later ones of a property a record holds once
/// are kept raw).
fn first(seen: &mut HashMap<&'static str, bool>, key: &'static str) -> bool {
    !std::mem::replace(seen.entry(key).or_default(), true)
}

fn item(cl: &ContentLine, seen: &mut HashMap<&'static str, bool>) -> Item {
    let mut once = |key: &'static str| first(seen, key);
    // A value in base64 that is not a photo is kept as written.
    if cl.name != "PHOTO" && is_base64(&cl.params) {
        return Item::Raw(raw(cl));
    }
    let slot = |s: Slot| Item::Text(s, text(unescape(&cl.value), cl));
    match cl.name.as_str() {
        "VERSION" if once("VERSION") => Item::Version,
        "UID" if once("UID") => Item::Uid(unescape(&cl.value)),
        "REV" if once("REV") => Item::Rev(unescape(&cl.value)),
        "FN" if once("FN") => slot(Slot::Fn),
        "TITLE" if once("TITLE") => slot(Slot::Title),
        "EMAIL" => slot(Slot::Email),
        "TEL" => slot(Slot::Tel),
        "NOTE" => slot(Slot::Note),
        "URL" => slot(Slot::Url),
        "BDAY" if once("BDAY") => {
            Item::Text(Slot::Bday, text(normalize_date(&unescape(&cl.value)), cl))
        }
        "ANNIVERSARY" if once("ANNIVERSARY") => Item::Text(
            Slot::Anniversary,
            text(normalize_date(&unescape(&cl.value)), cl),
        ),
        "NICKNAME" | "CATEGORIES" => {
            let values = split_unescaped(&cl.value, ',')
                .into_iter()
                .map(|v| text(unescape(v), cl))
                .collect();
            Item::List(cl.name == "NICKNAME", values)
        }
        "N" if once("N") => {
            let mut c = components(&cl.value).into_iter();
            let mut next = || c.next().unwrap_or_default();
            Item::Name(Name {
                family: next(),
                given: next(),
                additional: next(),
                prefixes: next(),
                suffixes: next(),
                group: cl.group.clone(),
                params: cl.params.clone(),
                ..Name::default()
            })
        }
        "ADR" => {
            let parts: Vec<String> = split_unescaped(&cl.value, ';')
                .into_iter()
                .map(unescape)
                .collect();
            let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
            let (types, pref, params) = split_params(cl.params.clone());
            Item::Adr(Address {
                po_box: part(0),
                extended: part(1),
                street: part(2),
                locality: part(3),
                region: part(4),
                postal_code: part(5),
                country: part(6),
                types,
                pref,
                group: cl.group.clone(),
                params,
                ..Address::default()
            })
        }
        "ORG" if once("ORG") => {
            let mut parts = split_unescaped(&cl.value, ';').into_iter().map(unescape);
            Item::Org(Organization {
                name: parts.next().unwrap_or_default(),
                units: parts.collect(),
                group: cl.group.clone(),
                params: cl.params.clone(),
                ..Organization::default()
            })
        }
        "PHOTO" => match photo(cl) {
            Some(p) if once("PHOTO") => Item::Photo(p),
            _ => Item::Raw(raw(cl)),
        },
        _ => Item::Raw(raw(cl)),
    }
}

/// Whether an item can take an Apple label from its group.
fn label_target(item: &Item) -> Option<&str> {
    match item {
        Item::Text(_, t) => Some(t.group.as_str()),
        Item::Adr(a) => Some(a.group.as_str()),
        _ => None,
    }
    .filter(|g| !g.is_empty())
}

fn is_label(cl: &ContentLine) -> bool {
    cl.name == "X-ABLABEL" && !cl.group.is_empty() && cl.params.is_empty()
}

/// Builds the contact of a card's content lines.
pub(super) fn contact(lines: &[ContentLine]) -> Contact {
    let mut seen = HashMap::new();
    let items: Vec<Item> = lines.iter().map(|cl| item(cl, &mut seen)).collect();
    // Apple's label: `item1.EMAIL:…` and `item1.X-ABLabel:…`. Taken into the value only when
    // the group holds exactly one of each, so nothing is guessed.
    let mut targets: HashMap<String, usize> = HashMap::new();
    let mut labels: HashMap<String, usize> = HashMap::new();
    for (it, cl) in items.iter().zip(lines) {
        if let Some(g) = label_target(it) {
            *targets.entry(g.to_ascii_lowercase()).or_default() += 1;
        }
        if is_label(cl) {
            *labels.entry(cl.group.to_ascii_lowercase()).or_default() += 1;
        }
    }
    let absorbed = |g: &str| {
        let g = g.to_ascii_lowercase();
        targets.get(&g) == Some(&1) && labels.get(&g) == Some(&1)
    };
    let label_of = |g: &str| {
        lines
            .iter()
            .find(|cl| is_label(cl) && cl.group.eq_ignore_ascii_case(g))
            .map(|cl| unescape(&cl.value))
            .unwrap_or_default()
    };

    let mut c = Contact::default();
    let mut pos = 0u32;
    for (it, cl) in items.into_iter().zip(lines) {
        if is_label(cl) && absorbed(&cl.group) {
            continue;
        }
        let here = pos;
        let counted = !matches!(it, Item::Version | Item::Uid(_) | Item::Rev(_));
        if counted {
            pos += 1;
        }
        match it {
            Item::Version => {}
            Item::Uid(u) => c.uid = u,
            Item::Rev(r) => c.revision = r,
            Item::Text(slot, mut t) => {
                t.pos = here;
                if absorbed(&t.group) {
                    t.label = label_of(&t.group);
                }
                match slot {
                    Slot::Fn => c.formatted_name = Some(t),
                    Slot::Title => c.title = Some(t),
                    Slot::Bday => c.birthday = Some(t),
                    Slot::Anniversary => c.anniversary = Some(t),
                    Slot::Email => c.emails.push(t),
                    Slot::Tel => c.phones.push(t),
                    Slot::Note => c.notes.push(t),
                    Slot::Url => c.urls.push(t),
                }
            }
            Item::List(nick, values) => {
                let list = if nick {
                    &mut c.nicknames
                } else {
                    &mut c.categories
                };
                list.extend(values.into_iter().map(|mut t| {
                    t.pos = here;
                    t
                }));
            }
            Item::Name(mut n) => {
                n.pos = here;
                c.name = Some(n);
            }
            Item::Adr(mut a) => {
                a.pos = here;
                if absorbed(&a.group) {
                    a.label = label_of(&a.group);
                }
                c.addresses.push(a);
            }
            Item::Org(mut o) => {
                o.pos = here;
                c.organization = Some(o);
            }
            Item::Photo(mut p) => {
                p.pos = here;
                c.photo = Some(p);
            }
            Item::Raw(mut r) => {
                r.pos = here;
                c.raw.push(r);
            }
        }
    }
    c
}
