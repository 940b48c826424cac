//! A `Contact` → the text of one card, in a vCard version.

use std::collections::HashSet;

use data_encoding::BASE64;

use super::value::{basic_date, escape};
use crate::formats::native::{Address, Contact, Param, Text};

/// A vCard version a card is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Version {
    V21,
    V30,
    V40,
}

impl Version {
    /// "2.1", "3.0" or "4.0" (also "3", "4"); `None` for anything else.
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "2.1" | "2" => Some(Self::V21),
            "3.0" | "3" => Some(Self::V30),
            "4.0" | "4" => Some(Self::V40),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::V21 => "2.1",
            Self::V30 => "3.0",
            Self::V40 => "4.0",
        }
    }
}

struct Out<'a> {
    text: String,
    v: Version,
    eol: &'a str,
}

/// Keeps only what a name or group may hold.
fn token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

fn param_value(v: &str) -> String {
    let v: String = v
        .chars()
        .filter(|c| !matches!(c, '"' | '\r' | '\n'))
        .collect();
    if v.contains([',', ';', ':']) {
        format!("\"{v}\"")
    } else {
        v
    }
}

impl Out<'_> {
    fn line(&mut self, group: &str, name: &str, params: &[Param], value: &str) {
        let mut head = String::new();
        let group = token(group);
        if !group.is_empty() {
            head.push_str(&group);
            head.push('.');
        }
        head.push_str(name);
        for p in params {
            let pname = token(&p.name).to_ascii_uppercase();
            if pname.is_empty() {
                continue;
            }
            head.push(';');
            head.push_str(&pname);
            if !p.values.is_empty() {
                head.push('=');
                let values: Vec<String> = p.values.iter().map(|v| param_value(v)).collect();
                head.push_str(&values.join(","));
            }
        }
        let needs_qp = self.v == Version::V21 && !value.bytes().all(|b| (32..127).contains(&b));
        if needs_qp {
            head.push_str(";CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:");
            self.qp(&head, value);
        } else {
            head.push(':');
            // Outside 2.1 a value holds no line break (text escapes it as `\n`).
            let value = value.replace("\r\n", "\\n").replace(['\r', '\n'], "\\n");
            head.push_str(&value);
            self.fold(&head);
        }
    }

    /// Folds at 75 octets, never inside a character.
    fn fold(&mut self, line: &str) {
        let mut len = 0;
        for ch in line.chars() {
            let l = ch.len_utf8();
            if len + l > 75 {
                self.text.push_str(self.eol);
                self.text.push(' ');
                len = 1;
            }
            self.text.push(ch);
            len += l;
        }
        self.text.push_str(self.eol);
    }

    /// 2.1's quoted-printable with soft line breaks. A space never starts a continuation (a
    /// reader would take it for folding) and `:` is encoded too, so no line of it can read as
    /// END:VCARD.
    fn qp(&mut self, head: &str, value: &str) {
        self.text.push_str(head);
        let mut len = head.len();
        let bytes: Vec<u8> = value.replace("\r\n", "\n").replace('\r', "\n").into_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let mut tok = match b {
                b'\n' => "=0D=0A".to_string(),
                b' ' if !last => " ".to_string(),
                33..=126 if b != b'=' && b != b':' => char::from(b).to_string(),
                _ => format!("={b:02X}"),
            };
            if len + tok.len() + 1 > 76 {
                self.text.push('=');
                self.text.push_str(self.eol);
                len = 0;
                if tok == " " {
                    tok = "=20".to_string();
                }
            }
            len += tok.len();
            self.text.push_str(&tok);
        }
        self.text.push_str(self.eol);
    }

    /// TYPE and PREF as this version writes them, then the other parameters.
    fn typed_params(&self, types: &[String], pref: u32, rest: &[Param]) -> Vec<Param> {
        let mut out = Vec::new();
        let mut types: Vec<String> = types.to_vec();
        match self.v {
            Version::V21 => {
                let (bare, named): (Vec<String>, Vec<String>) = types
                    .into_iter()
                    .partition(|t| !t.is_empty() && token(t) == *t);
                out.extend(bare.into_iter().map(|t| Param {
                    name: t.to_ascii_uppercase(),
                    values: Vec::new(),
                }));
                if !named.is_empty() {
                    out.push(Param {
                        name: "TYPE".into(),
                        values: named,
                    });
                }
                if pref == 1 {
                    out.push(Param {
                        name: "PREF".into(),
                        values: Vec::new(),
                    });
                }
            }
            Version::V30 | Version::V40 => {
                if self.v == Version::V30 && pref == 1 {
                    types.push("pref".into());
                }
                if !types.is_empty() {
                    out.push(Param {
                        name: "TYPE".into(),
                        values: types,
                    });
                }
            }
        }
        // 3.0 and 2.1 say only "preferred"; a rank beyond 1 is kept as 4.0's PREF, which
        // readers that do not know it ignore.
        if pref > 1 || (self.v == Version::V40 && pref == 1) {
            out.push(Param {
                name: "PREF".into(),
                values: vec![pref.to_string()],
            });
        }
        out.extend(rest.iter().cloned());
        out
    }

    fn text_line(&mut self, name: &str, t: &Text, value: &str) {
        let params = self.typed_params(&t.types, t.pref, &t.params);
        self.line(&t.group, name, &params, value);
    }

    fn newline(&self) -> &'static str {
        if self.v == Version::V21 { "\n" } else { "\\n" }
    }

    fn esc(&self, s: &str) -> String {
        escape(s, self.newline(), true)
    }

    fn esc_light(&self, s: &str) -> String {
        escape(s, self.newline(), false)
    }

    fn label(&mut self, group: &str, label: &str) {
        if !label.is_empty() {
            let value = self.esc(label);
            self.line(group, "X-ABLabel", &[], &value);
        }
    }
}

/// One thing to write, with where it goes.
struct Entry<'c> {
    pos: u32,
    order: u8,
    what: What<'c>,
}

enum What<'c> {
    Text(&'static str, &'c Text, bool),
    Date(&'static str, &'c Text),
    List(&'static str, Vec<&'c Text>),
    Name,
    Adr(&'c Address),
    Org,
    Photo,
    Raw(usize),
}

/// Renders `c` as one card (without stamps: a codec never writes them).
pub(super) fn card(c: &Contact, v: Version, eol: &str) -> String {
    let mut c = c.clone();
    assign_label_groups(&mut c);
    let c = &c;
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut push = |pos: u32, order: u8, what| entries.push(Entry { pos, order, what });
    if let Some(t) = &c.formatted_name {
        push(t.pos, 3, What::Text("FN", t, true));
    }
    if let Some(n) = &c.name {
        push(n.pos, 4, What::Name);
    }
    if let Some(first) = c.nicknames.first() {
        push(
            first.pos,
            5,
            What::List("NICKNAME", c.nicknames.iter().collect()),
        );
    }
    for t in &c.emails {
        push(t.pos, 6, What::Text("EMAIL", t, false));
    }
    for t in &c.phones {
        push(t.pos, 7, What::Text("TEL", t, false));
    }
    for a in &c.addresses {
        push(a.pos, 8, What::Adr(a));
    }
    if let Some(o) = &c.organization {
        push(o.pos, 9, What::Org);
    }
    if let Some(t) = &c.title {
        push(t.pos, 10, What::Text("TITLE", t, true));
    }
    if let Some(t) = &c.birthday {
        push(t.pos, 11, What::Date("BDAY", t));
    }
    if let Some(t) = &c.anniversary {
        push(t.pos, 12, What::Date("ANNIVERSARY", t));
    }
    for t in &c.notes {
        push(t.pos, 13, What::Text("NOTE", t, true));
    }
    for t in &c.urls {
        push(t.pos, 14, What::Text("URL", t, false));
    }
    if let Some(first) = c.categories.first() {
        push(
            first.pos,
            15,
            What::List("CATEGORIES", c.categories.iter().collect()),
        );
    }
    if let Some(p) = &c.photo {
        push(p.pos, 16, What::Photo);
    }
    for (i, r) in c.raw.iter().enumerate() {
        push(r.pos, 17, What::Raw(i));
    }
    entries.sort_by_key(|e| (e.pos, e.order));

    let mut out = Out {
        text: String::new(),
        v,
        eol,
    };
    out.line("", "BEGIN", &[], "VCARD");
    out.line("", "VERSION", &[], v.as_str());
    if !c.uid.is_empty() {
        let uid = out.esc_light(&c.uid);
        out.line("", "UID", &[], &uid);
    }
    for e in entries {
        write_entry(&mut out, c, e.what);
    }
    if !c.revision.is_empty() {
        let rev = out.esc_light(&c.revision);
        out.line("", "REV", &[], &rev);
    }
    out.line("", "END", &[], "VCARD");
    out.text
}

fn write_entry(out: &mut Out<'_>, c: &Contact, what: What<'_>) {
    match what {
        What::Text(name, t, full) => {
            let value = if full {
                out.esc(&t.value)
            } else {
                out.esc_light(&t.value)
            };
            out.text_line(name, t, &value);
            out.label(&t.group, &t.label);
        }
        What::Date(name, t) => {
            let value = if out.v == Version::V40 {
                basic_date(&t.value)
            } else {
                t.value.clone()
            };
            let value = out.esc_light(&value);
            out.text_line(name, t, &value);
            out.label(&t.group, &t.label);
        }
        What::List(name, values) => {
            let joined: Vec<String> = values.iter().map(|t| out.esc(&t.value)).collect();
            if let Some(first) = values.first() {
                out.text_line(name, first, &joined.join(","));
            }
        }
        What::Name => {
            if let Some(n) = &c.name {
                let comp = |v: &[String]| -> String {
                    v.iter().map(|s| out.esc(s)).collect::<Vec<_>>().join(",")
                };
                let value = [
                    comp(&n.family),
                    comp(&n.given),
                    comp(&n.additional),
                    comp(&n.prefixes),
                    comp(&n.suffixes),
                ]
                .join(";");
                out.line(&n.group, "N", &n.params, &value);
            }
        }
        What::Adr(a) => {
            let value = [
                &a.po_box,
                &a.extended,
                &a.street,
                &a.locality,
                &a.region,
                &a.postal_code,
                &a.country,
            ]
            .iter()
            .map(|s| out.esc(s))
            .collect::<Vec<_>>()
            .join(";");
            let params = out.typed_params(&a.types, a.pref, &a.params);
            out.line(&a.group, "ADR", &params, &value);
            out.label(&a.group, &a.label);
        }
        What::Org => {
            if let Some(o) = &c.organization {
                let value = std::iter::once(&o.name)
                    .chain(&o.units)
                    .map(|s| out.esc(s))
                    .collect::<Vec<_>>()
                    .join(";");
                out.line(&o.group, "ORG", &o.params, &value);
            }
        }
        What::Photo => {
            if let Some(p) = &c.photo {
                write_photo(out, p);
            }
        }
        What::Raw(i) => {
            if let Some(r) = c.raw.get(i) {
                let mut name = token(&r.name).to_ascii_uppercase();
                if name.is_empty() || name == "BEGIN" || name == "END" {
                    name = format!("X-{name}");
                }
                out.line(&r.group, &name, &r.params, &r.value);
            }
        }
    }
}

fn write_photo(out: &mut Out<'_>, p: &crate::formats::native::Photo) {
    let kind = p
        .media_type
        .strip_prefix("image/")
        .map(str::to_ascii_uppercase)
        .unwrap_or_else(|| p.media_type.clone());
    let mut params = Vec::new();
    let param = |n: &str, v: &str| Param {
        name: n.into(),
        values: vec![v.into()],
    };
    let value = if p.data.is_empty() {
        let uri: String = p
            .uri
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect();
        match out.v {
            Version::V40 => {
                if !p.media_type.is_empty() {
                    params.push(param("MEDIATYPE", &p.media_type));
                }
            }
            Version::V30 | Version::V21 => {
                let v = if out.v == Version::V30 { "uri" } else { "URL" };
                params.push(param("VALUE", v));
                if !kind.is_empty() {
                    params.push(param("TYPE", &kind));
                }
            }
        }
        uri
    } else {
        let b64 = BASE64.encode(&p.data);
        match out.v {
            Version::V40 => format!("data:{};base64,{b64}", p.media_type),
            Version::V30 | Version::V21 => {
                let enc = if out.v == Version::V30 { "b" } else { "BASE64" };
                params.push(param("ENCODING", enc));
                if !kind.is_empty() {
                    params.push(param("TYPE", &kind));
                }
                b64
            }
        }
    };
    params.extend(p.params.iter().cloned());
    out.line(&p.group, "PHOTO", &params, &value);
    if out.v == Version::V21 && !p.data.is_empty() {
        // 2.1 ends a base64 value with a blank line.
        out.text.push_str(out.eol);
    }
}

/// Gives every labelled value without a group a group of its own (`itemN`), since Apple's
/// label lives in the value's group.
fn assign_label_groups(c: &mut Contact) {
    let mut used: HashSet<String> = HashSet::new();
    let mut note = |g: &str| {
        if !g.is_empty() {
            used.insert(g.to_ascii_lowercase());
        }
    };
    for t in c
        .formatted_name
        .iter()
        .chain(&c.title)
        .chain(&c.birthday)
        .chain(&c.anniversary)
        .chain(&c.nicknames)
        .chain(&c.emails)
        .chain(&c.phones)
        .chain(&c.notes)
        .chain(&c.urls)
        .chain(&c.categories)
    {
        note(&t.group);
    }
    c.addresses.iter().for_each(|a| note(&a.group));
    c.raw.iter().for_each(|r| note(&r.group));
    c.name.iter().for_each(|n| note(&n.group));
    c.organization.iter().for_each(|o| note(&o.group));
    c.photo.iter().for_each(|p| note(&p.group));
    let mut n = 0u32;
    let mut fresh = || loop {
        n += 1;
        let g = format!("item{n}");
        if used.insert(g.clone()) {
            return g;
        }
    };
    for t in c
        .formatted_name
        .iter_mut()
        .chain(c.title.iter_mut())
        .chain(c.birthday.iter_mut())
        .chain(c.anniversary.iter_mut())
        .chain(c.emails.iter_mut())
        .chain(c.phones.iter_mut())
        .chain(c.notes.iter_mut())
        .chain(c.urls.iter_mut())
    {
        if !t.label.is_empty() && token(&t.group).is_empty() {
            t.group = fresh();
        }
    }
    for a in &mut c.addresses {
        if !a.label.is_empty() && token(&a.group).is_empty() {
            a.group = fresh();
        }
    }
}
