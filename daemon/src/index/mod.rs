//! Index: the rules that decide how differences relate to each other. Today it
//! holds version vectors; local sequences, the conflict winner and the
//! three-way record merge will live here too.
//!
//! Must not: do any I/O. Everything here is pure and deterministic, so every
//! device reaches the same decision from the same inputs.

pub mod version;

pub use version::{MAX_COUNTER, Ordering, ShortId, VersionError, VersionVector};

/// One of two concurrent versions of an item, as every device sees it.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    pub deleted: bool,
    pub mtime_ns: i64,
    pub version: &'a VersionVector,
}

/// The conflict rule, the same on every device: an edit beats a deletion, then the later
/// modification time wins, and a tie goes to the larger encoded version vector (concurrent
/// vectors always differ, so some side always wins).
pub fn remote_wins(local: Contender<'_>, remote: Contender<'_>) -> bool {
    if local.deleted != remote.deleted {
        return local.deleted;
    }
    if local.mtime_ns != remote.mtime_ns {
        return remote.mtime_ns > local.mtime_ns;
    }
    remote.version.encode() > local.version.encode()
}

#[cfg(test)]
mod conflict_tests {
    use super::*;

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
                mtime_ns: am,
                version: &a,
            };
            let y = Contender {
                deleted: bd,
                mtime_ns: bm,
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
            mtime_ns: 1,
            version: &a,
        };
        let delete = Contender {
            deleted: true,
            mtime_ns: 9,
            version: &b,
        };
        assert!(remote_wins(delete, edit), "an edit beats a deletion");
    }
}
