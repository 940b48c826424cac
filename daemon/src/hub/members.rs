//! Who belongs to a space: the fold of its membership log, and what a device may ask of it.
//! The log is append-only (each event a create-only object), so hubs that act at once never
//! overwrite each other; a fold of the same log gives every hub the same members.
//!
//! Must not: do I/O.

use std::collections::BTreeSet;

/// One event of a space's membership log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub device: String,
    /// Removed (else added).
    pub removed: bool,
    /// The member that asked for it.
    pub by: String,
}

/// The members of a space after its log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub members: BTreeSet<String>,
    pub removed: BTreeSet<String>,
}

/// Why the hub refuses a device's request about a space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "device {0} was removed from this source; a member can add it again \
         (`tandemctl source share ID DEVICE`)"
    )]
    Removed(String),
    #[error(
        "device {0} is not a member of this source; ask a member to add it \
         (`tandemctl source share ID DEVICE`)"
    )]
    NotMember(String),
    #[error("device {0} is already a member")]
    AlreadyMember(String),
}

impl Members {
    /// The members after every event of a log, in order. An event by a device that was not a
    /// member at that point is skipped (only a hub writes the log, and it checks first; this
    /// keeps a fold right even over a log two hubs raced on).
    #[must_use]
    pub fn fold<'e>(events: impl IntoIterator<Item = &'e Event>) -> Members {
        let mut m = Members::default();
        for e in events {
            let founder = m.members.is_empty() && m.removed.is_empty() && e.by == e.device;
            if !founder && !m.members.contains(&e.by) {
                continue;
            }
            if e.removed {
                if m.members.remove(&e.device) {
                    m.removed.insert(e.device.clone());
                }
            } else {
                m.removed.remove(&e.device);
                m.members.insert(e.device.clone());
            }
        }
        m
    }

    /// Whether the space has never had a member: the first device to join makes it.
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.members.is_empty() && self.removed.is_empty()
    }

    /// The event a join by `device` appends (`None`: it is a member already).
    ///
    /// # Errors
    /// Removed, or not a member of a space that has members.
    pub fn join(&self, device: &str) -> Result<Option<Event>, Refusal> {
        if self.members.contains(device) {
            return Ok(None);
        }
        if self.removed.contains(device) {
            return Err(Refusal::Removed(device.to_owned()));
        }
        if self.is_new() {
            return Ok(Some(Event {
                device: device.to_owned(),
                removed: false,
                by: device.to_owned(),
            }));
        }
        Err(Refusal::NotMember(device.to_owned()))
    }

    /// Checks that `device` may read and write in the space now.
    ///
    /// # Errors
    /// Removed, or not a member.
    pub fn check(&self, device: &str) -> Result<(), Refusal> {
        if self.members.contains(device) {
            Ok(())
        } else if self.removed.contains(device) {
            Err(Refusal::Removed(device.to_owned()))
        } else {
            Err(Refusal::NotMember(device.to_owned()))
        }
    }

    /// The event of member `by` adding `device` (`None`: already a member).
    ///
    /// # Errors
    /// `by` is not a member.
    pub fn add(&self, by: &str, device: &str) -> Result<Option<Event>, Refusal> {
        self.check(by)?;
        if self.members.contains(device) {
            return Ok(None);
        }
        Ok(Some(Event {
            device: device.to_owned(),
            removed: false,
            by: by.to_owned(),
        }))
    }

    /// The event of member `by` removing `device` (`None`: not a member).
    ///
    /// # Errors
    /// `by` is not a member.
    pub fn remove(&self, by: &str, device: &str) -> Result<Option<Event>, Refusal> {
        self.check(by)?;
        if !self.members.contains(device) {
            return Ok(None);
        }
        Ok(Some(Event {
            device: device.to_owned(),
            removed: true,
            by: by.to_owned(),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn apply(log: &mut Vec<Event>, e: Result<Option<Event>, Refusal>) {
        if let Some(e) = e.unwrap() {
            log.push(e);
        }
    }

    #[test]
    fn the_first_device_founds_a_space_and_members_add_and_remove() {
        let mut log = Vec::new();
        let e = Members::fold(&log).join("A");
        apply(&mut log, e);
        assert!(Members::fold(&log).check("A").is_ok());
        assert_eq!(
            Members::fold(&log).join("B"),
            Err(Refusal::NotMember("B".into()))
        );
        let e = Members::fold(&log).add("A", "B");
        apply(&mut log, e);
        assert_eq!(Members::fold(&log).join("B"), Ok(None));
        let e = Members::fold(&log).remove("B", "A");
        apply(&mut log, e);
        let m = Members::fold(&log);
        assert_eq!(m.check("A"), Err(Refusal::Removed("A".into())));
        assert_eq!(m.join("A"), Err(Refusal::Removed("A".into())));
        assert_eq!(m.add("A", "C"), Err(Refusal::Removed("A".into())));
        assert_eq!(m.add("X", "C"), Err(Refusal::NotMember("X".into())));
        let e = m.add("B", "A");
        apply(&mut log, e);
        assert!(Members::fold(&log).check("A").is_ok(), "added again");
    }

    #[test]
    fn events_by_outsiders_are_skipped_in_the_fold() {
        let log = vec![
            Event {
                device: "A".into(),
                removed: false,
                by: "A".into(),
            },
            Event {
                device: "M".into(),
                removed: false,
                by: "M".into(),
            },
            Event {
                device: "A".into(),
                removed: true,
                by: "M".into(),
            },
        ];
        let m = Members::fold(&log);
        assert_eq!(m.members.iter().collect::<Vec<_>>(), ["A"]);
    }
}
