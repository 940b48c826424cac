//! The layout of a hub's storage, and who may write where. Every object has one writer:
//!
//! ```text
//! spaces/<space>/log/<n>                        membership events, written by hubs
//!                                               (create-only: two hubs appending at once
//!                                               both try n, one wins, the other reads
//!                                               the log again and takes n + 1)
//! spaces/<space>/devices/<device>/bundles/<s>   a member's sealed index updates through
//!                                               its sequence s (create-only)
//! spaces/<space>/devices/<device>/snapshots/<s> a member's sealed whole index at s
//! spaces/<space>/devices/<device>/cursor        how far the member applied each other
//!                                               member's bundles (sequences only)
//! spaces/<space>/devices/<device>/bundle-refs/<s>   the chunk names bundle s needs, and
//! spaces/<space>/devices/<device>/snapshot-refs/<s> snapshot s (opaque names, in plaintext,
//!                                               so the hub can tell which chunks are live)
//! spaces/<space>/chunks/<name>                  sealed content under its keyed name,
//!                                               written by any member (create-only: the
//!                                               same name is the same content)
//! spaces/<space>/gc/marks/<t>                   chunks a hub found unreferenced at t, the
//!                                               first phase of their collection (hubs)
//! ```
//!
//! Sequences are zero-padded to 20 digits so names sort as numbers. Must not: do I/O.

use std::fmt;

/// Width of a sequence in a name: `u64::MAX` has 20 digits.
const SEQ_WIDTH: usize = 20;

/// A part of a name that is not safe: spaces, device IDs and chunk names are base32 or
/// device-ID text, never a path.
fn safe_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 128
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One object of a space, as the hub and the agents name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// Membership event `n`.
    Log(u64),
    /// A member's bundle through its sequence.
    Bundle { device: String, through: u64 },
    /// A member's snapshot at its sequence.
    Snapshot { device: String, through: u64 },
    /// A member's cursor.
    Cursor { device: String },
    /// The chunk names a member's bundle needs.
    BundleRefs { device: String, through: u64 },
    /// The chunk names a member's snapshot needs.
    SnapshotRefs { device: String, through: u64 },
    /// A hub's mark of unreferenced chunks, made at Unix time `at`.
    GcMark(u64),
    /// A member's certificate (public), so other members can hand it keys.
    Cert { device: String },
    /// A key of a later generation, sealed by `device` for `member`.
    Handover {
        device: String,
        generation: u64,
        member: String,
    },
    /// Content under its keyed name.
    Chunk(String),
}

/// A name that is not one of the layout's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an object name of a hub's storage")]
pub struct BadName(pub String);

fn seq(n: u64) -> String {
    format!("{n:0SEQ_WIDTH$}")
}

fn parse_seq(text: &str) -> Option<u64> {
    (text.len() == SEQ_WIDTH && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

impl Object {
    /// The name of this object relative to its space.
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            Object::Log(n) => format!("log/{}", seq(*n)),
            Object::Bundle { device, through } => {
                format!("devices/{device}/bundles/{}", seq(*through))
            }
            Object::Snapshot { device, through } => {
                format!("devices/{device}/snapshots/{}", seq(*through))
            }
            Object::Cursor { device } => format!("devices/{device}/cursor"),
            Object::BundleRefs { device, through } => {
                format!("devices/{device}/bundle-refs/{}", seq(*through))
            }
            Object::SnapshotRefs { device, through } => {
                format!("devices/{device}/snapshot-refs/{}", seq(*through))
            }
            Object::GcMark(at) => format!("gc/marks/{}", seq(*at)),
            Object::Cert { device } => format!("devices/{device}/cert"),
            Object::Handover {
                device,
                generation,
                member,
            } => format!("devices/{device}/handovers/{}-{member}", seq(*generation)),
            Object::Chunk(name) => format!("chunks/{name}"),
        }
    }

    /// Reads a name relative to a space; anything else is refused.
    ///
    /// # Errors
    /// Not a name of the layout.
    pub fn parse(name: &str) -> Result<Object, BadName> {
        let bad = || BadName(name.to_owned());
        let parts: Vec<&str> = name.split('/').collect();
        let object = match parts.as_slice() {
            ["log", n] => Object::Log(parse_seq(n).ok_or_else(bad)?),
            ["devices", device, "bundles", n] if safe_part(device) => Object::Bundle {
                device: (*device).to_owned(),
                through: parse_seq(n).ok_or_else(bad)?,
            },
            ["devices", device, "snapshots", n] if safe_part(device) => Object::Snapshot {
                device: (*device).to_owned(),
                through: parse_seq(n).ok_or_else(bad)?,
            },
            ["devices", device, "cursor"] if safe_part(device) => Object::Cursor {
                device: (*device).to_owned(),
            },
            ["devices", device, "bundle-refs", n] if safe_part(device) => Object::BundleRefs {
                device: (*device).to_owned(),
                through: parse_seq(n).ok_or_else(bad)?,
            },
            ["devices", device, "snapshot-refs", n] if safe_part(device) => Object::SnapshotRefs {
                device: (*device).to_owned(),
                through: parse_seq(n).ok_or_else(bad)?,
            },
            ["gc", "marks", n] => Object::GcMark(parse_seq(n).ok_or_else(bad)?),
            ["devices", device, "cert"] if safe_part(device) => Object::Cert {
                device: (*device).to_owned(),
            },
            ["devices", device, "handovers", h] if safe_part(device) => {
                let (n, member) = h.split_once('-').ok_or_else(bad)?;
                if !safe_part(member) {
                    return Err(bad());
                }
                Object::Handover {
                    device: (*device).to_owned(),
                    generation: parse_seq(n).ok_or_else(bad)?,
                    member: member.to_owned(),
                }
            }
            ["chunks", chunk] if safe_part(chunk) => Object::Chunk((*chunk).to_owned()),
            _ => return Err(bad()),
        };
        Ok(object)
    }

    /// The member that alone may write this object (`None`: the hub, or any member for
    /// chunks; see [`Object::member_may_write`]).
    #[must_use]
    pub fn owner(&self) -> Option<&str> {
        match self {
            Object::Bundle { device, .. }
            | Object::Snapshot { device, .. }
            | Object::Cursor { device }
            | Object::BundleRefs { device, .. }
            | Object::SnapshotRefs { device, .. }
            | Object::Cert { device }
            | Object::Handover { device, .. } => Some(device),
            Object::Log(_) | Object::Chunk(_) | Object::GcMark(_) => None,
        }
    }

    /// Whether member `device` may write (or delete) this object through the hub.
    #[must_use]
    pub fn member_may_write(&self, device: &str) -> bool {
        match self {
            Object::Log(_) | Object::GcMark(_) => false,
            Object::Chunk(_) => true,
            _ => self.owner() == Some(device),
        }
    }

    /// Whether this object is written once and never replaced.
    #[must_use]
    pub fn create_only(&self) -> bool {
        !matches!(self, Object::Cursor { .. })
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The prefix of everything of one space in the store.
///
/// # Errors
/// The space is not a safe name.
pub fn space_prefix(space: &str) -> Result<String, BadName> {
    if safe_part(space) {
        Ok(format!("spaces/{space}"))
    } else {
        Err(BadName(space.to_owned()))
    }
}

/// The prefix under which a member's bundles are listed.
#[must_use]
pub fn bundles_of(device: &str) -> String {
    format!("devices/{device}/bundles/")
}

/// The prefix under which the chunk names of a member's bundles are listed.
#[must_use]
pub fn bundle_refs_of(device: &str) -> String {
    format!("devices/{device}/bundle-refs/")
}

/// The prefix under which the chunk names of a member's snapshots are listed.
#[must_use]
pub fn snapshot_refs_of(device: &str) -> String {
    format!("devices/{device}/snapshot-refs/")
}

/// The prefix under which the keys a member handed over are listed.
#[must_use]
pub fn handovers_of(device: &str) -> String {
    format!("devices/{device}/handovers/")
}

/// The prefix under which a member's snapshots are listed.
#[must_use]
pub fn snapshots_of(device: &str) -> String {
    format!("devices/{device}/snapshots/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_as_numbers() {
        let objects = [
            Object::Log(3),
            Object::Bundle {
                device: "AAAA-BBBB".into(),
                through: 42,
            },
            Object::Snapshot {
                device: "AAAA".into(),
                through: u64::MAX,
            },
            Object::Cursor {
                device: "AAAA".into(),
            },
            Object::BundleRefs {
                device: "AAAA".into(),
                through: 7,
            },
            Object::SnapshotRefs {
                device: "AAAA".into(),
                through: 7,
            },
            Object::GcMark(1_700_000_000),
            Object::Chunk("abc123".into()),
            Object::Cert {
                device: "AAAA".into(),
            },
            Object::Handover {
                device: "AAAA-BB".into(),
                generation: 2,
                member: "CCCC-DD".into(),
            },
        ];
        for o in objects {
            assert_eq!(Object::parse(&o.name()).unwrap(), o);
        }
        let a = Object::Bundle {
            device: "A".into(),
            through: 9,
        };
        let b = Object::Bundle {
            device: "A".into(),
            through: 10,
        };
        assert!(a.name() < b.name());
    }

    #[test]
    fn other_names_are_refused() {
        for bad in [
            "",
            "log/1",
            "log/../../etc",
            "devices/../cursor",
            "devices/A/bundles/0000000000000000000x",
            "devices/A/cursor/extra",
            "chunks/",
            "chunks/a.b",
            "chunks/a/b",
            "devices/A B/cursor",
            "/chunks/a",
        ] {
            assert!(Object::parse(bad).is_err(), "{bad:?}");
        }
        assert!(space_prefix("..").is_err());
        assert!(space_prefix("abc").is_ok());
    }

    #[test]
    fn each_object_has_its_writer() {
        let bundle = Object::Bundle {
            device: "A".into(),
            through: 1,
        };
        assert!(bundle.member_may_write("A"));
        assert!(!bundle.member_may_write("B"));
        assert!(Object::Chunk("x".into()).member_may_write("B"));
        assert!(!Object::Log(1).member_may_write("A"));
        assert!(bundle.create_only());
        assert!(!Object::Cursor { device: "A".into() }.create_only());
    }
}
