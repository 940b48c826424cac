//! Index: the rules that decide how differences relate to each other: version vectors,
//! the conflict winner, and the one decision on a remote item ([`decide`]). The three-way
//! record merge will live here too.
//!
//! Must not: do any I/O. Everything here is pure and deterministic, so every
//! device reaches the same decision from the same inputs.

pub mod version;

pub use version::{MAX_COUNTER, Ordering, ShortId, VersionError, VersionVector};

/// One of two concurrent versions of an item, as every device sees it.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    pub deleted: bool,
    /// A folder: it may hold things the other side has never seen.
    pub is_dir: bool,
    pub mtime_ns: i64,
    /// Short ID of the device whose change this version is ("" if unknown).
    pub modified_by: &'a str,
    pub version: &'a VersionVector,
}

/// What to do with a remote version of an item, against what this device recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// New here, or newer than what is here: apply it.
    Apply,
    /// Concurrent with the local version and it wins the conflict rule: apply it under the
    /// merged vector; `keep_local` when the losing local version is live and is kept as a
    /// conflict copy (a local deletion that loses leaves nothing to keep).
    Conflict { keep_local: bool },
    /// The same version is here already.
    Equal,
    /// This device has a newer version.
    Dominated,
    /// Concurrent, and the local version wins: nothing to do here (the peer will take ours).
    LocalWins,
}

impl Decision {
    /// True when the remote version is to be written.
    pub fn applies(self) -> bool {
        matches!(self, Decision::Apply | Decision::Conflict { .. })
    }
}

/// The one decision on a remote item, the same on every device given the same two versions:
/// the receiver calls it before fetching (to fetch nothing that would not be applied) and
/// again right before writing (with the state then).
pub fn decide(remote: Contender<'_>, local: Option<Contender<'_>>) -> Decision {
    let Some(local) = local else {
        return Decision::Apply;
    };
    match remote.version.compare(local.version) {
        Ordering::Equal => Decision::Equal,
        Ordering::Dominated => Decision::Dominated,
        Ordering::Dominates => Decision::Apply,
        Ordering::Concurrent if remote_wins(local, remote) => Decision::Conflict {
            keep_local: !local.deleted,
        },
        Ordering::Concurrent => Decision::LocalWins,
    }
}

/// The conflict rule, the same on every device: an edit beats a deletion, a folder beats a
/// file or link (whatever is in it survives; the file is kept as a conflict copy), then the
/// later modification time wins, then the larger author short ID, and a last tie goes to the larger
/// encoded version vector (concurrent vectors always differ, so some side always wins).
///
/// Only the last step looks at the vector, because a version's vector grows when a device
/// merges it after a conflict while its content, mtime and author stay: deciding on the vector
/// earlier would let A prefer X over Y while B, holding Y under a merged vector, prefers Y
/// (two writes in one kernel clock tick have the same mtime).
pub fn remote_wins(local: Contender<'_>, remote: Contender<'_>) -> bool {
    if local.deleted != remote.deleted {
        return local.deleted;
    }
    if local.is_dir != remote.is_dir {
        return remote.is_dir;
    }
    if local.mtime_ns != remote.mtime_ns {
        return remote.mtime_ns > local.mtime_ns;
    }
    if local.modified_by != remote.modified_by {
        return remote.modified_by > local.modified_by;
    }
    remote.version.encode() > local.version.encode()
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

    fn contender(version: &VersionVector, mtime_ns: i64, deleted: bool) -> Contender<'_> {
        Contender {
            deleted,
            is_dir: false,
            mtime_ns,
            modified_by: "AAA",
            version,
        }
    }

    #[test]
    fn the_one_decision_covers_new_newer_equal_older_and_both_conflict_outcomes() {
        let mut base = VersionVector::new();
        base.bump(ShortId(1));
        let mut newer = base.clone();
        newer.bump(ShortId(2));
        let mut other = base.clone();
        other.bump(ShortId(3));
        let check = |remote: Contender<'_>, local: Option<Contender<'_>>| decide(remote, local);
        assert_eq!(check(contender(&base, 1, false), None), Decision::Apply);
        assert_eq!(
            check(
                contender(&newer, 1, false),
                Some(contender(&base, 1, false))
            ),
            Decision::Apply
        );
        assert_eq!(
            check(contender(&base, 1, false), Some(contender(&base, 1, false))),
            Decision::Equal
        );
        assert_eq!(
            check(
                contender(&base, 1, false),
                Some(contender(&newer, 1, false))
            ),
            Decision::Dominated
        );
        // Concurrent: the later write wins, and a live loser is kept.
        assert_eq!(
            check(
                contender(&other, 9, false),
                Some(contender(&newer, 1, false))
            ),
            Decision::Conflict { keep_local: true }
        );
        assert_eq!(
            check(
                contender(&other, 1, false),
                Some(contender(&newer, 9, false))
            ),
            Decision::LocalWins
        );
        // An edit beats a concurrent local deletion, and there is nothing to keep of it.
        assert_eq!(
            check(
                contender(&other, 1, false),
                Some(contender(&newer, 9, true))
            ),
            Decision::Conflict { keep_local: false }
        );
        assert!(Decision::Conflict { keep_local: false }.applies());
        assert!(!Decision::LocalWins.applies());
    }

    #[test]
    fn the_rule_is_the_same_from_both_sides() {
        let mut a = VersionVector::new();
        a.bump(ShortId(1));
        let mut b = VersionVector::new();
        b.bump(ShortId(2));
        let cases = [
            ((false, 5), (false, 7)),
            ((false, 9), (false, 7)),
            ((true, 9), (false, 7)),
            ((false, 7), (true, 9)),
            ((false, 7), (false, 7)),
        ];
        for ((ad, am), (bd, bm)) in cases {
            let x = Contender {
                deleted: ad,
                is_dir: false,
                mtime_ns: am,
                modified_by: "AAA",
                version: &a,
            };
            let y = Contender {
                deleted: bd,
                is_dir: false,
                mtime_ns: bm,
                modified_by: "AAA",
                version: &b,
            };
            assert_ne!(
                remote_wins(x, y),
                remote_wins(y, x),
                "exactly one side wins: {ad} {am} / {bd} {bm}"
            );
        }
        let edit = Contender {
            deleted: false,
            is_dir: false,
            mtime_ns: 1,
            modified_by: "AAA",
            version: &a,
        };
        let delete = Contender {
            deleted: true,
            is_dir: false,
            mtime_ns: 9,
            modified_by: "BBB",
            version: &b,
        };
        assert!(remote_wins(delete, edit), "an edit beats a deletion");
        let newer_file = Contender {
            mtime_ns: 50,
            ..edit
        };
        let folder = Contender {
            is_dir: true,
            ..edit
        };
        assert!(
            remote_wins(newer_file, folder),
            "a folder beats a later file"
        );
        assert!(!remote_wins(folder, newer_file));
    }

    #[test]
    fn a_merged_vector_does_not_change_which_content_wins() {
        // X by device B and Y by device C, written in the same clock tick.
        let (mut vx, mut vy) = (VersionVector::new(), VersionVector::new());
        vx.bump(ShortId(2));
        vy.bump(ShortId(3));
        let mut va = VersionVector::new();
        va.bump(ShortId(1));
        // A lost to Y first and holds Y's content under the merged vector.
        let y_merged = vy.merge(&va);
        let x = Contender {
            deleted: false,
            is_dir: false,
            mtime_ns: 7,
            modified_by: "BBBBBBB",
            version: &vx,
        };
        let y = Contender {
            deleted: false,
            is_dir: false,
            mtime_ns: 7,
            modified_by: "CCCCCCC",
            version: &vy,
        };
        let y_on_a = Contender {
            version: &y_merged,
            ..y
        };
        assert_eq!(remote_wins(x, y), remote_wins(x, y_on_a));
        assert_eq!(remote_wins(y, x), remote_wins(y_on_a, x));
    }
}
