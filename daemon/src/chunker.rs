//! Chunker: splits content into content-defined chunks (FastCDC, v2020 cut
//! function) and names the whole content and every chunk by its xxh3-128 hash.
//!
//! Boundaries depend only on the bytes, so an edit moves at most the chunks
//! around it and the rest of a file keeps its chunk names; that is what lets a
//! peer fetch only what changed.
//!
//! Must not: know about sources, items or the store, or do any I/O beyond
//! reading the reader it is handed.

use std::fmt;
use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

/// Smallest chunk the chunker cuts (only the last chunk of a content may be smaller).
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// Chunk size the cut points aim for.
pub const AVG_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk the chunker cuts; a chunk list entry longer than this is refused.
pub const MAX_CHUNK_SIZE: u32 = 256 * 1024;

/// How much `hash_reader` reads at once; must hold at least one maximal chunk.
const BLOCK_SIZE: usize = 4 * 1024 * 1024;
/// Bytes per entry in an encoded chunk list: 16 hash bytes + a u32 length.
const ENCODED_CHUNK_LEN: usize = 20;

// `cut` looks at most MAX_CHUNK_SIZE bytes ahead, so a block that large is
// always enough to find the same boundary as over the whole content.
const _: () = assert!(BLOCK_SIZE >= 2 * MAX_CHUNK_SIZE as usize);

/// An xxh3-128 hash, stored as the big-endian bytes of the 128-bit value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Hash128(pub [u8; 16]);

impl Hash128 {
    /// The xxh3-128 hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(xxh3_128(data).to_be_bytes())
    }

    /// A hash from exactly 16 bytes, or `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for Hash128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One chunk of a content: where it starts, how long it is, and its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ChunkRef {
    /// Byte offset of the chunk within the content.
    pub offset: u64,
    /// Length in bytes (1..=MAX_CHUNK_SIZE).
    pub len: u32,
    /// xxh3-128 of the chunk's bytes.
    pub hash: Hash128,
}

/// The result of chunking one content: its size, its hash and its chunks in order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hashed {
    /// Total size in bytes.
    pub size: u64,
    /// xxh3-128 of the whole content.
    pub hash: Hash128,
    /// The chunks, tiling the content from offset 0 to `size` without gaps.
    pub chunks: Vec<ChunkRef>,
}

/// The v2020 cut parameters, computed once per content.
struct Cutter {
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    fn new() -> Self {
        let (mask_s, mask_l) = v2020::select_masks(AVG_CHUNK_SIZE as usize, Normalization::Level1);
        Self { mask_s, mask_l }
    }

    /// Length of the next chunk at the start of `data`.
    ///
    /// The result only depends on the first MAX_CHUNK_SIZE bytes of `data`,
    /// unless `data` is shorter, which callers allow only at the end of the content.
    fn next_len(&self, data: &[u8]) -> usize {
        let (_, len) = v2020::cut(
            data,
            MIN_CHUNK_SIZE as usize,
            AVG_CHUNK_SIZE as usize,
            MAX_CHUNK_SIZE as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }
}

/// Cuts chunks from `data` (which starts at content offset `offset`) and
/// appends them to `chunks`; returns how many bytes of `data` were consumed.
///
/// Unless `at_end`, it stops while fewer than MAX_CHUNK_SIZE bytes are left, so
/// that the next cut sees the same bytes it would over the whole content.
fn cut_chunks(
    cutter: &Cutter,
    data: &[u8],
    offset: u64,
    at_end: bool,
    chunks: &mut Vec<ChunkRef>,
) -> usize {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        if !at_end && rest.len() < MAX_CHUNK_SIZE as usize {
            break;
        }
        // `cut` returns a length in 1..=rest.len() for a non-empty slice.
        let len = cutter.next_len(rest).clamp(1, rest.len());
        chunks.push(ChunkRef {
            offset: offset + pos as u64,
            len: u32::try_from(len).expect("chunk length is bounded by MAX_CHUNK_SIZE"),
            hash: Hash128::of(&rest[..len]),
        });
        pos += len;
    }
    pos
}

/// Chunks and hashes everything `reader` yields, with memory bounded by a few MiB.
///
/// `progress` is called after every block read with the number of bytes that
/// block added (not a running total).
///
/// # Errors
///
/// Any error from `reader` except `Interrupted`, which is retried.
pub fn hash_reader<R: Read>(reader: R, progress: &mut dyn FnMut(u64)) -> io::Result<Hashed> {
    hash_reader_sized(reader, BLOCK_SIZE as u64, progress)
}

/// [`hash_reader`] for content of about `expected` bytes: the buffer starts that small (a
/// small file needs no 4 MiB buffer, whose zeroing alone would cost more than hashing the
/// file) and grows to full size if more comes.
///
/// # Errors
///
/// Any error from `reader` except `Interrupted`, which is retried.
pub fn hash_reader_sized<R: Read>(
    mut reader: R,
    expected: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Hashed> {
    let cutter = Cutter::new();
    let mut whole = Xxh3Default::new();
    let mut chunks = Vec::new();
    // One byte more than expected, so the end is seen without growing.
    let first = usize::try_from(expected).map_or(BLOCK_SIZE, |n| n.saturating_add(1));
    let mut buf = vec![0u8; first.clamp(1, BLOCK_SIZE)];
    // buf[..filled] holds bytes read but not yet cut; they start at content offset `base`.
    let mut filled = 0usize;
    let mut base = 0u64;
    let mut at_end = false;

    while !at_end {
        let start = filled;
        loop {
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => {
                        at_end = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
            // Cutting needs a full block unless the end is in it.
            if at_end || buf.len() == BLOCK_SIZE {
                break;
            }
            buf.resize(BLOCK_SIZE, 0);
        }
        let fresh = &buf[start..filled];
        if !fresh.is_empty() {
            whole.update(fresh);
            progress(fresh.len() as u64);
        }

        let used = cut_chunks(&cutter, &buf[..filled], base, at_end, &mut chunks);
        base += used as u64;
        // Carry the uncut tail (less than one maximal chunk) to the front.
        buf.copy_within(used..filled, 0);
        filled -= used;
    }

    Ok(Hashed {
        size: base,
        hash: Hash128(whole.digest128().to_be_bytes()),
        chunks,
    })
}

/// Chunks and hashes in-memory content; same boundaries and hashes as [`hash_reader`].
pub fn chunk_bytes(data: &[u8]) -> Hashed {
    let mut chunks = Vec::with_capacity(data.len() / AVG_CHUNK_SIZE as usize + 1);
    cut_chunks(&Cutter::new(), data, 0, true, &mut chunks);
    Hashed {
        size: data.len() as u64,
        hash: Hash128::of(data),
        chunks,
    }
}

/// Why an encoded chunk list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkListError {
    /// The byte length is not a whole number of entries.
    #[error(
        "chunk list is {len} bytes, not a multiple of {ENCODED_CHUNK_LEN}; it is truncated or corrupt, rescan the item to rebuild it"
    )]
    BadLength {
        /// Length of the encoded list in bytes.
        len: usize,
    },
    /// An entry claims a length outside 1..=MAX_CHUNK_SIZE.
    #[error(
        "chunk {index} of the chunk list claims {len} bytes (allowed: 1..={MAX_CHUNK_SIZE}); the list is corrupt, rescan the item to rebuild it"
    )]
    BadChunkLen {
        /// Position of the entry in the list, from 0.
        index: usize,
        /// The length the entry claims.
        len: u32,
    },
}

/// Encodes a chunk list compactly: per chunk its 16 hash bytes, then its length as u32 LE.
///
/// Offsets are not stored; [`decode_chunk_list`] recomputes them from the lengths.
pub fn encode_chunk_list(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * ENCODED_CHUNK_LEN);
    for chunk in chunks {
        out.extend_from_slice(&chunk.hash.0);
        out.extend_from_slice(&chunk.len.to_le_bytes());
    }
    out
}

/// Decodes a list made by [`encode_chunk_list`], with offsets counted from 0.
///
/// # Errors
///
/// The input is not a whole number of entries, or an entry's length is 0 or
/// above [`MAX_CHUNK_SIZE`] (bytes from a peer or the store are not trusted).
pub fn decode_chunk_list(bytes: &[u8]) -> Result<Vec<ChunkRef>, ChunkListError> {
    if !bytes.len().is_multiple_of(ENCODED_CHUNK_LEN) {
        return Err(ChunkListError::BadLength { len: bytes.len() });
    }
    let mut chunks = Vec::with_capacity(bytes.len() / ENCODED_CHUNK_LEN);
    let mut offset = 0u64;
    for (index, entry) in bytes.chunks_exact(ENCODED_CHUNK_LEN).enumerate() {
        let (hash, len) = entry.split_at(16);
        let hash = Hash128::from_slice(hash).expect("an entry holds 16 hash bytes");
        let len = u32::from_le_bytes(len.try_into().expect("an entry holds 4 length bytes"));
        if len == 0 || len > MAX_CHUNK_SIZE {
            return Err(ChunkListError::BadChunkLen { index, len });
        }
        chunks.push(ChunkRef { offset, len, hash });
        offset += u64::from(len);
    }
    Ok(chunks)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A reader that hands out at most `max` bytes per call, cycling 1..=max.
    struct Dribble<'a> {
        data: &'a [u8],
        max: usize,
        next: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.next = self.next % self.max + 1;
            let n = self.next.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn via_reader(data: &[u8]) -> Hashed {
        let mut seen = 0;
        let hashed = hash_reader(data, &mut |n| seen += n).unwrap();
        assert_eq!(seen, data.len() as u64, "progress must add up to the size");
        hashed
    }

    /// Checks everything a chunking of `data` must satisfy.
    fn check(data: &[u8], hashed: &Hashed) {
        assert_eq!(hashed.size, data.len() as u64);
        assert_eq!(hashed.hash, Hash128::of(data));
        let mut offset = 0u64;
        for (i, chunk) in hashed.chunks.iter().enumerate() {
            assert_eq!(chunk.offset, offset, "chunk {i} leaves a gap or overlaps");
            assert!(
                chunk.len >= 1 && chunk.len <= MAX_CHUNK_SIZE,
                "chunk {i}: {}",
                chunk.len
            );
            if i + 1 < hashed.chunks.len() {
                assert!(
                    chunk.len >= MIN_CHUNK_SIZE,
                    "chunk {i} too small: {}",
                    chunk.len
                );
            }
            let start = usize::try_from(chunk.offset).unwrap();
            let bytes = &data[start..start + chunk.len as usize];
            assert_eq!(chunk.hash, Hash128::of(bytes), "chunk {i} hash");
            offset += u64::from(chunk.len);
        }
        assert_eq!(offset, hashed.size, "chunks must cover the content");
    }

    #[test]
    fn empty_input_has_no_chunks() {
        for hashed in [chunk_bytes(&[]), via_reader(&[])] {
            assert_eq!(hashed.size, 0);
            assert!(hashed.chunks.is_empty());
            assert_eq!(hashed.hash, Hash128(xxh3_128(b"").to_be_bytes()));
        }
    }

    #[test]
    fn small_input_is_one_chunk() {
        let data = noise(1000, 3);
        let hashed = chunk_bytes(&data);
        check(&data, &hashed);
        assert_eq!(hashed.chunks.len(), 1);
        assert_eq!(hashed.chunks[0].hash, hashed.hash);
    }

    #[test]
    fn zeroes_cut_at_max_size() {
        let data = vec![0u8; 3 * MAX_CHUNK_SIZE as usize + 5];
        let hashed = chunk_bytes(&data);
        check(&data, &hashed);
        let lens: Vec<u32> = hashed.chunks.iter().map(|c| c.len).collect();
        assert_eq!(lens, [MAX_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_CHUNK_SIZE, 5]);
        assert_eq!(via_reader(&data), hashed);
    }

    #[test]
    fn hash_display_is_lowercase_hex_of_big_endian_value() {
        let hash = Hash128::of(b"tandem");
        let expected = format!("{:032x}", xxh3_128(b"tandem"));
        assert_eq!(hash.to_string(), expected);
        assert_eq!(Hash128::from_slice(&hash.0), Some(hash));
        assert_eq!(Hash128::from_slice(&[0; 15]), None);
        assert_eq!(Hash128::from_slice(&[0; 17]), None);
    }

    #[test]
    fn reader_matches_bytes_across_block_borders() {
        // Several blocks, so the carried tail is exercised many times.
        let data = noise(3 * BLOCK_SIZE + 12345, 7);
        let hashed = chunk_bytes(&data);
        check(&data, &hashed);
        assert_eq!(via_reader(&data), hashed);
        let avg = data.len() / hashed.chunks.len();
        assert!(
            (AVG_CHUNK_SIZE as usize / 2..AVG_CHUNK_SIZE as usize * 2).contains(&avg),
            "average chunk {avg} is far from the target"
        );
    }

    #[test]
    fn reader_with_tiny_reads_matches_bytes() {
        let data = noise(MAX_CHUNK_SIZE as usize * 3 + 77, 11);
        let expected = chunk_bytes(&data);
        for max in [1, 7, 4096] {
            let reader = Dribble {
                data: &data,
                max,
                next: 0,
            };
            assert_eq!(
                hash_reader(reader, &mut |_| {}).unwrap(),
                expected,
                "max {max}"
            );
        }
    }

    #[test]
    fn reader_errors_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err = hash_reader(Broken, &mut |_| {}).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    #[test]
    fn insertion_changes_only_nearby_chunks() {
        let data = noise(2 * 1024 * 1024, 42);
        let mut edited = data.clone();
        let middle = data.len() / 2;
        edited.splice(middle..middle, *b"a few bytes");

        let before = chunk_bytes(&data);
        let after = chunk_bytes(&edited);
        check(&edited, &after);
        let old: std::collections::HashSet<Hash128> =
            before.chunks.iter().map(|c| c.hash).collect();
        let changed = after
            .chunks
            .iter()
            .filter(|c| !old.contains(&c.hash))
            .count();
        assert!(changed >= 1, "the chunk holding the insertion must change");
        assert!(
            changed <= 3,
            "{changed} of {} chunks changed",
            after.chunks.len()
        );
        // The chunks before the edit are untouched, and so are the ones well after it.
        let first_changed = after
            .chunks
            .iter()
            .position(|c| !old.contains(&c.hash))
            .unwrap();
        assert_eq!(
            after.chunks[..first_changed],
            before.chunks[..first_changed]
        );
        let shared_tail = after
            .chunks
            .iter()
            .rev()
            .zip(before.chunks.iter().rev())
            .take_while(|(a, b)| a.hash == b.hash && a.len == b.len)
            .count();
        assert!(shared_tail + first_changed + 3 >= after.chunks.len());
    }

    #[test]
    fn edit_in_a_large_file_moves_less_than_a_mib() {
        let data = noise(64 * 1024 * 1024, 5);
        let mut edited = data.clone();
        let middle = data.len() / 2;
        edited[middle..middle + 4096].copy_from_slice(&noise(4096, 99));
        let old: std::collections::HashSet<Hash128> =
            chunk_bytes(&data).chunks.iter().map(|c| c.hash).collect();
        let moved: u64 = chunk_bytes(&edited)
            .chunks
            .iter()
            .filter(|c| !old.contains(&c.hash))
            .map(|c| u64::from(c.len))
            .sum();
        assert!(moved > 0 && moved < 1024 * 1024, "{moved} bytes moved");
    }

    #[test]
    fn chunk_list_round_trips() {
        let data = noise(1024 * 1024, 8);
        let hashed = chunk_bytes(&data);
        let encoded = encode_chunk_list(&hashed.chunks);
        assert_eq!(encoded.len(), hashed.chunks.len() * ENCODED_CHUNK_LEN);
        assert_eq!(decode_chunk_list(&encoded).unwrap(), hashed.chunks);
        assert_eq!(decode_chunk_list(&[]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_chunk_lists_are_refused() {
        let good = encode_chunk_list(&chunk_bytes(&noise(300_000, 1)).chunks);
        assert_eq!(
            decode_chunk_list(&good[..good.len() - 1]),
            Err(ChunkListError::BadLength {
                len: good.len() - 1
            })
        );
        assert_eq!(
            decode_chunk_list(&[0; 19]),
            Err(ChunkListError::BadLength { len: 19 })
        );

        let mut zero = good.clone();
        zero[36..40].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode_chunk_list(&zero),
            Err(ChunkListError::BadChunkLen { index: 1, len: 0 })
        );

        let mut huge = good;
        huge[16..20].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_le_bytes());
        let err = decode_chunk_list(&huge).unwrap_err();
        assert_eq!(
            err,
            ChunkListError::BadChunkLen {
                index: 0,
                len: MAX_CHUNK_SIZE + 1
            }
        );
        assert!(err.to_string().contains("rescan the item"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn chunking_tiles_the_input(len in 0usize..1_500_000, seed: u64) {
            let data = noise(len, seed);
            let hashed = chunk_bytes(&data);
            check(&data, &hashed);
            prop_assert_eq!(chunk_bytes(&data), hashed.clone());
            prop_assert_eq!(via_reader(&data), hashed);
        }

        #[test]
        fn tiny_reads_do_not_move_boundaries(len in 0usize..700_000, seed: u64, max in 1usize..70_000) {
            let data = noise(len, seed);
            let reader = Dribble { data: &data, max, next: 0 };
            prop_assert_eq!(hash_reader(reader, &mut |_| {}).unwrap(), chunk_bytes(&data));
        }

        #[test]
        fn a_wrong_size_hint_does_not_move_boundaries(
            len in 0usize..1_200_000,
            seed: u64,
            expected in 0u64..1_300_000,
            max in 1usize..300_000,
        ) {
            // A file that grew or shrank since its stat: the buffer grows, the cut stays.
            let data = noise(len, seed);
            let reader = Dribble { data: &data, max, next: 0 };
            prop_assert_eq!(
                hash_reader_sized(reader, expected, &mut |_| {}).unwrap(),
                chunk_bytes(&data)
            );
        }

        #[test]
        fn low_entropy_input_still_tiles(len in 0usize..1_000_000, period in 1usize..300) {
            let data: Vec<u8> = (0..len).map(|i| (i % period) as u8).collect();
            check(&data, &chunk_bytes(&data));
        }

        #[test]
        fn insertion_keeps_far_chunks(
            seed: u64,
            at in 0usize..2_000_000,
            insert in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let data = noise(2 * 1024 * 1024, seed);
            let mut edited = data.clone();
            edited.splice(at..at, insert);
            let before = chunk_bytes(&data);
            let after = chunk_bytes(&edited);
            let old: std::collections::HashSet<Hash128> =
                before.chunks.iter().map(|c| c.hash).collect();
            let shared = after.chunks.iter().filter(|c| old.contains(&c.hash)).count();
            prop_assert!(shared + 4 >= after.chunks.len(),
                "only {} of {} chunks shared", shared, after.chunks.len());
        }

        #[test]
        fn encoded_lists_round_trip(entries in proptest::collection::vec((any::<[u8; 16]>(), 1..=MAX_CHUNK_SIZE), 0..50)) {
            let mut offset = 0;
            let chunks: Vec<ChunkRef> = entries
                .into_iter()
                .map(|(hash, len)| {
                    let chunk = ChunkRef { offset, len, hash: Hash128(hash) };
                    offset += u64::from(len);
                    chunk
                })
                .collect();
            prop_assert_eq!(decode_chunk_list(&encode_chunk_list(&chunks)).unwrap(), chunks);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(chunks) = decode_chunk_list(&bytes) {
                prop_assert_eq!(encode_chunk_list(&chunks), bytes);
            }
        }
    }
}
