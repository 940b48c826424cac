//! The columns of contacts CSV: what each header of Google's current and older exports and of
//! Outlook's means, and the header our writer writes (Google's current layout).

/// A numbered block of columns ("E-mail 2 - Value"), or one of Outlook's fixed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Kind {
    Email,
    Phone,
    Address,
    Website,
    Event,
}

/// A cell of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Sub {
    Label,
    Value,
    Formatted,
    Street,
    City,
    PoBox,
    Region,
    PostalCode,
    Country,
    Extended,
}

/// What a column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Col {
    Given,
    Additional,
    Family,
    Prefix,
    Suffix,
    /// Google's older "Name".
    FullName,
    Nickname,
    OrgName,
    OrgTitle,
    OrgDept,
    Birthday,
    /// Outlook's "Anniversary".
    Anniversary,
    Notes,
    /// Google's "Labels" (older: "Group Membership"), joined by " ::: ".
    Labels,
    /// Outlook's "Categories", joined by ";".
    Categories,
    Uid,
    /// Block `n` of a kind (Google numbers them from 1).
    Block(Kind, u32, Sub),
    /// One of Outlook's fixed columns: a value of a kind with these types (and preference).
    Fixed(Kind, u32, &'static [&'static str], Sub),
    /// A column no field holds: kept as it is.
    Kept,
}

impl Col {
    /// Whether a field of the record is read from this column (the header is a contacts CSV).
    pub(super) fn is_known(&self) -> bool {
        !matches!(self, Col::Kept | Col::Uid)
    }
}

const KINDS: [(&str, Kind); 5] = [
    ("e-mail", Kind::Email),
    ("phone", Kind::Phone),
    ("address", Kind::Address),
    ("website", Kind::Website),
    ("event", Kind::Event),
];

const SUBS: [(&str, Sub); 11] = [
    ("label", Sub::Label),
    ("type", Sub::Label),
    ("value", Sub::Value),
    ("formatted", Sub::Formatted),
    ("street", Sub::Street),
    ("city", Sub::City),
    ("po box", Sub::PoBox),
    ("region", Sub::Region),
    ("postal code", Sub::PostalCode),
    ("country", Sub::Country),
    ("extended address", Sub::Extended),
];

/// "Relation 2 - Label" → ("relation", 2, "label"), lower-cased.
pub(super) fn numbered(header: &str) -> Option<(String, u32, String)> {
    let (head, sub) = header.split_once(" - ")?;
    let (kind, n) = head.trim().rsplit_once(' ')?;
    let n = n.parse::<u32>().ok().filter(|n| *n > 0)?;
    Some((kind.to_lowercase(), n, sub.trim().to_lowercase()))
}

/// What column `header` holds.
pub(super) fn classify(header: &str) -> Col {
    let h = header.trim_start_matches('\u{feff}').trim().to_lowercase();
    let fixed = |k, slot, types, sub| Col::Fixed(k, slot, types, sub);
    match h.as_str() {
        "first name" | "given name" => Col::Given,
        "middle name" | "additional name" => Col::Additional,
        "last name" | "family name" => Col::Family,
        // Outlook's "Title" is the name prefix (Mr., Dr.).
        "name prefix" | "title" => Col::Prefix,
        "name suffix" | "suffix" => Col::Suffix,
        "name" => Col::FullName,
        "nickname" => Col::Nickname,
        "organization name" | "organization 1 - name" | "company" => Col::OrgName,
        "organization title" | "organization 1 - title" | "job title" => Col::OrgTitle,
        "organization department" | "organization 1 - department" | "department" => Col::OrgDept,
        "birthday" => Col::Birthday,
        "anniversary" => Col::Anniversary,
        "notes" => Col::Notes,
        "labels" | "group membership" => Col::Labels,
        "categories" => Col::Categories,
        "uid" => Col::Uid,
        "e-mail address" => fixed(Kind::Email, 1, &[], Sub::Value),
        "e-mail 2 address" => fixed(Kind::Email, 2, &[], Sub::Value),
        "e-mail 3 address" => fixed(Kind::Email, 3, &[], Sub::Value),
        "primary phone" => fixed(Kind::Phone, 1, &["pref"], Sub::Value),
        "home phone" => fixed(Kind::Phone, 2, &["home"], Sub::Value),
        "home phone 2" => fixed(Kind::Phone, 3, &["home"], Sub::Value),
        "business phone" => fixed(Kind::Phone, 4, &["work"], Sub::Value),
        "business phone 2" => fixed(Kind::Phone, 5, &["work"], Sub::Value),
        "mobile phone" => fixed(Kind::Phone, 6, &["cell"], Sub::Value),
        "car phone" => fixed(Kind::Phone, 7, &["car"], Sub::Value),
        "other phone" => fixed(Kind::Phone, 8, &["other"], Sub::Value),
        "pager" => fixed(Kind::Phone, 9, &["pager"], Sub::Value),
        "business fax" => fixed(Kind::Phone, 10, &["work", "fax"], Sub::Value),
        "home fax" => fixed(Kind::Phone, 11, &["home", "fax"], Sub::Value),
        "other fax" => fixed(Kind::Phone, 12, &["fax"], Sub::Value),
        "company main phone" => fixed(Kind::Phone, 13, &["work"], Sub::Value),
        "web page" => fixed(Kind::Website, 1, &[], Sub::Value),
        "personal web page" => fixed(Kind::Website, 2, &["home"], Sub::Value),
        _ => outlook_address(&h).unwrap_or_else(|| google_block(&h)),
    }
}

fn outlook_address(h: &str) -> Option<Col> {
    let (slot, types, rest): (u32, &'static [&'static str], &str) =
        if let Some(r) = h.strip_prefix("business ") {
            (1, &["work"], r)
        } else if let Some(r) = h.strip_prefix("home ") {
            (2, &["home"], r)
        } else if let Some(r) = h.strip_prefix("other ") {
            (3, &["other"], r)
        } else {
            return None;
        };
    let sub = match rest {
        "street" => Sub::Street,
        "city" => Sub::City,
        "state" => Sub::Region,
        "postal code" => Sub::PostalCode,
        "country/region" | "country" => Sub::Country,
        "po box" => Sub::PoBox,
        _ => return None,
    };
    Some(Col::Fixed(Kind::Address, slot, types, sub))
}

fn google_block(h: &str) -> Col {
    let Some((kind, n, sub)) = numbered(h) else {
        return Col::Kept;
    };
    let kind = KINDS.iter().find(|(k, _)| *k == kind).map(|(_, k)| *k);
    let sub = SUBS.iter().find(|(s, _)| *s == sub).map(|(_, s)| *s);
    match (kind, sub) {
        (Some(Kind::Address), Some(sub)) if sub != Sub::Value => Col::Block(Kind::Address, n, sub),
        (Some(k), Some(sub @ (Sub::Label | Sub::Value))) if k != Kind::Address => {
            Col::Block(k, n, sub)
        }
        _ => Col::Kept,
    }
}

/// Google's current layout before its numbered blocks.
pub(super) const GOOGLE_HEAD: [&str; 17] = [
    "First Name",
    "Middle Name",
    "Last Name",
    "Phonetic First Name",
    "Phonetic Middle Name",
    "Phonetic Last Name",
    "Name Prefix",
    "Name Suffix",
    "Nickname",
    "File As",
    "Organization Name",
    "Organization Title",
    "Organization Department",
    "Birthday",
    "Notes",
    "Photo",
    "Labels",
];

/// The cells of an address block, in Google's order.
pub(super) const ADDRESS_CELLS: [(&str, Sub); 9] = [
    ("Label", Sub::Label),
    ("Formatted", Sub::Formatted),
    ("Street", Sub::Street),
    ("City", Sub::City),
    ("PO Box", Sub::PoBox),
    ("Region", Sub::Region),
    ("Postal Code", Sub::PostalCode),
    ("Country", Sub::Country),
    ("Extended Address", Sub::Extended),
];

/// Google's numbered blocks, in its order: the name in headers and its cells.
pub(super) const BLOCKS: [&str; 7] = [
    "E-mail",
    "Phone",
    "Address",
    "Relation",
    "Website",
    "Event",
    "Custom Field",
];

/// The header cells of block `n` of `block`.
pub(super) fn block_headers(block: &str, n: u32) -> Vec<String> {
    if block == "Address" {
        ADDRESS_CELLS
            .iter()
            .map(|(c, _)| format!("Address {n} - {c}"))
            .collect()
    } else {
        vec![
            format!("{block} {n} - Label"),
            format!("{block} {n} - Value"),
        ]
    }
}

/// Whether our writer gives `header` a fixed place (Google's layout), so that its place among
/// the values of a row is the same in every file we write.
pub(super) fn is_google_column(header: &str) -> bool {
    GOOGLE_HEAD.iter().any(|h| h.eq_ignore_ascii_case(header))
        || numbered(header)
            .is_some_and(|(kind, _, _)| BLOCKS.iter().any(|b| b.eq_ignore_ascii_case(&kind)))
}
