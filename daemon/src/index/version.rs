//! Version vectors: per item, one counter per device that changed it. Comparing
//! two vectors says whether one difference supersedes another or whether they
//! happened concurrently (a conflict).
//!
//! Must not: do any I/O, or read clocks; the result of every operation depends
//! only on its inputs.

use std::fmt;

/// The largest counter a vector may hold: counters are stored in SQLite,
/// whose integers are i64.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// Bytes per encoded entry: device short ID (u64 BE) then counter (u64 BE).
const ENTRY_LEN: usize = 16;

/// A device's key in version vectors: the first 8 bytes (big-endian) of its device ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ShortId(pub u64);

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How two version vectors relate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Ordering {
    /// Both have seen exactly the same changes.
    Equal,
    /// The left one has seen everything the right one has, and more.
    Dominates,
    /// The right one has seen everything the left one has, and more.
    Dominated,
    /// Each has seen a change the other has not: a conflict.
    Concurrent,
}

impl Ordering {
    /// The same relation seen from the other side.
    pub fn reverse(self) -> Self {
        match self {
            Self::Dominates => Self::Dominated,
            Self::Dominated => Self::Dominates,
            other => other,
        }
    }
}

/// One item's version: a counter per device, sorted by device, no zero counters.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct VersionVector {
    // Invariant: sorted by ShortId, ids unique, counters in 1..=MAX_COUNTER.
    // A device without an entry has counter 0.
    entries: Vec<(ShortId, u64)>,
}

/// Why encoded version vector bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    /// The byte length is not a whole number of entries.
    #[error(
        "version vector is {len} bytes, not a multiple of {ENTRY_LEN}; the data is truncated or corrupt and the difference carrying it cannot be used"
    )]
    BadLength {
        /// Length of the input in bytes.
        len: usize,
    },
    /// Entries are not in ascending device order.
    #[error(
        "version vector entry {index} (device {id}) is out of order; the sender wrote a malformed vector and the difference carrying it cannot be used"
    )]
    Unsorted {
        /// Position of the offending entry, from 0.
        index: usize,
        /// Device of the offending entry.
        id: ShortId,
    },
    /// The same device appears twice.
    #[error(
        "version vector names device {id} twice; the sender wrote a malformed vector and the difference carrying it cannot be used"
    )]
    Duplicate {
        /// The repeated device.
        id: ShortId,
    },
    /// An entry has counter 0, which must be left out instead.
    #[error(
        "version vector has a zero counter for device {id}; the sender wrote a malformed vector and the difference carrying it cannot be used"
    )]
    ZeroCounter {
        /// Device of the offending entry.
        id: ShortId,
    },
    /// An entry's counter is above [`MAX_COUNTER`].
    #[error(
        "version vector counter {counter} for device {id} is above the limit {MAX_COUNTER}; the difference carrying it cannot be used"
    )]
    CounterTooLarge {
        /// Device of the offending entry.
        id: ShortId,
        /// The counter it claims.
        counter: u64,
    },
}

impl VersionVector {
    /// An empty vector: the version of an item nobody has changed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no device has changed the item.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counter of `id` (0 if the device has no entry).
    pub fn counter(&self, id: ShortId) -> u64 {
        match self.entries.binary_search_by_key(&id, |&(k, _)| k) {
            Ok(at) => self.entries[at].1,
            Err(_) => 0,
        }
    }

    /// The (device, counter) entries in device order.
    pub fn iter(&self) -> impl Iterator<Item = (ShortId, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// Records a change by `id`: its counter becomes one more than the largest
    /// counter in the vector, so the result dominates everything seen so far.
    ///
    /// Counters stop at [`MAX_COUNTER`]; reaching it takes 2^63 changes, or a
    /// vector at the limit, which [`VersionVector::decode`] accepts at most.
    pub fn bump(&mut self, id: ShortId) {
        let highest = self.entries.iter().map(|&(_, c)| c).max().unwrap_or(0);
        let next = highest.saturating_add(1).min(MAX_COUNTER);
        match self.entries.binary_search_by_key(&id, |&(k, _)| k) {
            Ok(at) => self.entries[at].1 = next,
            Err(at) => self.entries.insert(at, (id, next)),
        }
    }

    /// The element-wise maximum: a vector that has seen everything either has.
    pub fn merge(&self, other: &Self) -> Self {
        let mut entries = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&(ida, ca)), Some(&&(idb, cb))) => match ida.cmp(&idb) {
                    std::cmp::Ordering::Less => a.next().map(|_| (ida, ca)),
                    std::cmp::Ordering::Greater => b.next().map(|_| (idb, cb)),
                    std::cmp::Ordering::Equal => {
                        a.next();
                        b.next();
                        Some((ida, ca.max(cb)))
                    }
                },
                (Some(_), None) => a.next().copied(),
                (None, Some(_)) => b.next().copied(),
                (None, None) => None,
            };
            match next {
                Some(entry) => entries.push(entry),
                None => break,
            }
        }
        Self { entries }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Ordering {
        // Whether self has a counter above other's somewhere, and the reverse.
        let (mut ahead, mut behind) = (false, false);
        let (mut i, mut j) = (0, 0);
        while i < self.entries.len() || j < other.entries.len() {
            let a = self.entries.get(i);
            let b = other.entries.get(j);
            match (a, b) {
                (Some(&(ida, ca)), Some(&(idb, cb))) if ida == idb => {
                    ahead |= ca > cb;
                    behind |= ca < cb;
                    i += 1;
                    j += 1;
                }
                // An id present on one side only is a non-zero counter against 0.
                (Some(&(ida, _)), Some(&(idb, _))) if ida < idb => {
                    ahead = true;
                    i += 1;
                }
                (Some(_), None) => {
                    ahead = true;
                    i += 1;
                }
                _ => {
                    behind = true;
                    j += 1;
                }
            }
            if ahead && behind {
                return Ordering::Concurrent;
            }
        }
        match (ahead, behind) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Dominates,
            (false, true) => Ordering::Dominated,
            (true, true) => Ordering::Concurrent,
        }
    }

    /// Encodes as 16 bytes per entry (device u64 BE, counter u64 BE), in device order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for &(ShortId(id), counter) in &self.entries {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
        out
    }

    /// Decodes bytes made by [`VersionVector::encode`].
    ///
    /// # Errors
    ///
    /// The length is not a multiple of 16, devices are unsorted or repeated,
    /// or a counter is 0 or above [`MAX_COUNTER`].
    pub fn decode(bytes: &[u8]) -> Result<Self, VersionError> {
        if !bytes.len().is_multiple_of(ENTRY_LEN) {
            return Err(VersionError::BadLength { len: bytes.len() });
        }
        let mut entries: Vec<(ShortId, u64)> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
        for (index, entry) in bytes.chunks_exact(ENTRY_LEN).enumerate() {
            let (id, counter) = entry.split_at(8);
            let id = ShortId(u64::from_be_bytes(id.try_into().expect("8 id bytes")));
            let counter = u64::from_be_bytes(counter.try_into().expect("8 counter bytes"));
            if counter == 0 {
                return Err(VersionError::ZeroCounter { id });
            }
            if counter > MAX_COUNTER {
                return Err(VersionError::CounterTooLarge { id, counter });
            }
            if let Some(&(prev, _)) = entries.last() {
                if prev == id {
                    return Err(VersionError::Duplicate { id });
                }
                if prev > id {
                    return Err(VersionError::Unsorted { index, id });
                }
            }
            entries.push((id, counter));
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: ShortId = ShortId(0xaaaa);
    const B: ShortId = ShortId(0xbbbb);
    const C: ShortId = ShortId(0xcccc);

    /// A vector from (device, counter) pairs in any order; counter 0 means absent.
    fn vv(pairs: &[(ShortId, u64)]) -> VersionVector {
        let mut entries: Vec<(ShortId, u64)> =
            pairs.iter().copied().filter(|&(_, c)| c > 0).collect();
        entries.sort();
        entries.dedup_by_key(|&mut (id, _)| id);
        VersionVector { entries }
    }

    /// Checks `a` against `b` both ways.
    fn check(a: &[(ShortId, u64)], b: &[(ShortId, u64)], expected: Ordering) {
        let (a, b) = (vv(a), vv(b));
        assert_eq!(a.compare(&b), expected, "{a:?} vs {b:?}");
        assert_eq!(b.compare(&a), expected.reverse(), "{b:?} vs {a:?}");
    }

    #[test]
    fn compare_equal() {
        check(&[], &[], Ordering::Equal);
        check(&[(A, 1), (B, 2)], &[(A, 1), (B, 2)], Ordering::Equal);
    }

    #[test]
    fn compare_dominates() {
        check(&[(A, 1)], &[], Ordering::Dominates);
        check(&[(A, 2), (B, 2)], &[(A, 1), (B, 2)], Ordering::Dominates);
        check(&[(A, 1), (B, 1)], &[(A, 1)], Ordering::Dominates);
        check(&[(A, 1), (C, 1)], &[(C, 1)], Ordering::Dominates);
    }

    #[test]
    fn compare_dominated() {
        check(&[], &[(B, 1)], Ordering::Dominated);
        check(&[(A, 1)], &[(A, 1), (C, 4)], Ordering::Dominated);
        check(&[(B, 3)], &[(A, 1), (B, 3)], Ordering::Dominated);
    }

    #[test]
    fn compare_concurrent() {
        check(&[(A, 1)], &[(B, 1)], Ordering::Concurrent);
        check(&[(A, 2), (B, 1)], &[(A, 1), (B, 2)], Ordering::Concurrent);
        check(&[(A, 1), (C, 1)], &[(B, 1)], Ordering::Concurrent);
    }

    #[test]
    fn bump_goes_past_every_counter() {
        let mut v = vv(&[(A, 5), (B, 2)]);
        v.bump(B);
        assert_eq!(v, vv(&[(A, 5), (B, 6)]));
        v.bump(C);
        assert_eq!(v.counter(C), 7);
        assert_eq!(v.counter(ShortId(1)), 0);
        let mut empty = VersionVector::new();
        assert!(empty.is_empty());
        empty.bump(A);
        assert_eq!(empty.iter().collect::<Vec<_>>(), [(A, 1)]);
    }

    #[test]
    fn bump_saturates_at_the_limit() {
        let mut v = vv(&[(A, MAX_COUNTER)]);
        v.bump(B);
        assert_eq!(v.counter(B), MAX_COUNTER);
        assert!(VersionVector::decode(&v.encode()).is_ok());
    }

    #[test]
    fn encoding_is_sixteen_big_endian_bytes_per_entry() {
        let v = vv(&[(ShortId(0x0102), 3), (ShortId(1), 0x0a0b)]);
        let mut expected = vec![0; 32];
        expected[7] = 1;
        expected[14] = 0x0a;
        expected[15] = 0x0b;
        expected[22] = 0x01;
        expected[23] = 0x02;
        expected[31] = 3;
        assert_eq!(v.encode(), expected);
        assert_eq!(VersionVector::decode(&expected).unwrap(), v);
        assert_eq!(VersionVector::decode(&[]).unwrap(), VersionVector::new());
    }

    fn entry(id: u64, counter: u64) -> Vec<u8> {
        [id.to_be_bytes(), counter.to_be_bytes()].concat()
    }

    #[test]
    fn decode_refuses_malformed_bytes() {
        let decode = VersionVector::decode;
        assert_eq!(decode(&[0; 15]), Err(VersionError::BadLength { len: 15 }));
        assert_eq!(decode(&[0; 17]), Err(VersionError::BadLength { len: 17 }));
        assert_eq!(
            decode(&[entry(2, 1), entry(1, 1)].concat()),
            Err(VersionError::Unsorted {
                index: 1,
                id: ShortId(1)
            })
        );
        assert_eq!(
            decode(&[entry(2, 1), entry(2, 3)].concat()),
            Err(VersionError::Duplicate { id: ShortId(2) })
        );
        assert_eq!(
            decode(&[entry(1, 1), entry(2, 0)].concat()),
            Err(VersionError::ZeroCounter { id: ShortId(2) })
        );
        assert_eq!(
            decode(&entry(9, MAX_COUNTER + 1)),
            Err(VersionError::CounterTooLarge {
                id: ShortId(9),
                counter: MAX_COUNTER + 1
            })
        );
    }

    /// Vectors over a handful of devices, so that random pairs overlap.
    fn vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u64..6, 0u64..20), 0..6).prop_map(|pairs| {
            let pairs: Vec<(ShortId, u64)> =
                pairs.into_iter().map(|(id, c)| (ShortId(id), c)).collect();
            vv(&pairs)
        })
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric(a in vector(), b in vector()) {
            let ab = a.compare(&b);
            prop_assert_eq!(b.compare(&a), ab.reverse());
            prop_assert_eq!(ab == Ordering::Equal, a == b);
            prop_assert_eq!(a.compare(&a), Ordering::Equal);
        }

        #[test]
        fn merge_is_a_join(a in vector(), b in vector(), c in vector()) {
            let ab = a.merge(&b);
            prop_assert_eq!(&ab, &b.merge(&a));
            prop_assert_eq!(ab.merge(&c), a.merge(&b.merge(&c)));
            prop_assert_eq!(a.merge(&a), a.clone());
            for input in [&a, &b] {
                let rel = ab.compare(input);
                prop_assert!(matches!(rel, Ordering::Equal | Ordering::Dominates), "{:?}", rel);
            }
        }

        #[test]
        fn bump_dominates_the_original(a in vector(), id in 0u64..8) {
            let mut bumped = a.clone();
            bumped.bump(ShortId(id));
            prop_assert_eq!(bumped.compare(&a), Ordering::Dominates);
        }

        #[test]
        fn bumps_by_two_devices_are_concurrent(base in vector(), x in 0u64..8, y in 0u64..8) {
            prop_assume!(x != y);
            let (mut left, mut right) = (base.clone(), base);
            left.bump(ShortId(x));
            right.bump(ShortId(y));
            prop_assert_eq!(left.compare(&right), Ordering::Concurrent);
            // Whoever merges both and changes again supersedes both.
            let mut joined = left.merge(&right);
            joined.bump(ShortId(x));
            prop_assert_eq!(joined.compare(&left), Ordering::Dominates);
            prop_assert_eq!(joined.compare(&right), Ordering::Dominates);
        }

        #[test]
        fn encoding_round_trips(a in vector()) {
            prop_assert_eq!(VersionVector::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(v) = VersionVector::decode(&bytes) {
                prop_assert_eq!(v.encode(), bytes);
            }
        }
    }
}
