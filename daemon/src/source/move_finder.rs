//! Folders a scan finds renamed whole: a new folder whose inode a live recorded folder has,
//! holding the same items with the same metadata and content. Its additions and the old
//! folder's deletions are held back until the scan ends (the sender streams what is committed
//! at once), then committed together in one transaction with a note of the move, so a peer can
//! be sent one operation instead of two entries per item (see `moves`). Anything that does not
//! check out is committed as usual.
//!
//! Must not: do I/O (the source task looks folders up by inode and commits).

use std::collections::BTreeMap;

use crate::item::{Content, ItemKind, Metadata, PriorItem};
use crate::layout::is_under;
use crate::moves::relative;
use crate::scanner::Found;
use crate::universal::MAX_MOVE_ITEMS;

/// What a scan found, held back for one possible folder move.
#[derive(Debug)]
struct Candidate {
    from: String,
    to: String,
    adds: Vec<Found>,
    dels: Vec<Found>,
    /// Something under either name could not be read: not a move to announce.
    spoiled: bool,
}

/// What becomes of a candidate at the scan's end.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A folder renamed whole: its additions, then its deletions, to commit as one move.
    Moved {
        from: String,
        to: String,
        items: u32,
        found: Vec<Found>,
    },
    /// Not a whole move after all: commit these as usual.
    Plain(Vec<Found>),
}

/// The moves one scan may have found.
#[derive(Debug, Default)]
pub(super) struct MoveFinder {
    candidates: Vec<Candidate>,
}

fn at_or_under(path: &str, folder: &str) -> bool {
    path == folder || is_under(path, folder)
}

fn is_live(prior: Option<&PriorItem>) -> bool {
    prior.is_some_and(|p| !p.header.deleted)
}

impl MoveFinder {
    /// New folders in a batch worth looking up by inode: the top of each new subtree not
    /// already followed, with its inode.
    pub(super) fn new_folders(&self, found: &[Found]) -> Vec<(String, u64)> {
        let mut tops: Vec<(String, u64)> = Vec::new();
        for f in found {
            let Found::Changed {
                path, meta, prior, ..
            } = f
            else {
                continue;
            };
            let fresh = meta.kind == ItemKind::Directory && !is_live(prior.as_ref());
            let followed = self.candidates.iter().any(|c| at_or_under(path, &c.to));
            let nested = tops.iter().any(|(top, _)| is_under(path, top));
            if fresh && meta.inode != 0 && !followed && !nested {
                tops.push((path.clone(), meta.inode));
            }
        }
        tops
    }

    /// Follows a possible move of `from` to `to`, unless it overlaps one already followed.
    pub(super) fn follow(&mut self, from: String, to: String) {
        let overlaps = |a: &str, b: &str| at_or_under(a, b) || at_or_under(b, a);
        if overlaps(&from, &to)
            || self.candidates.iter().any(|c| {
                overlaps(&c.from, &from)
                    || overlaps(&c.to, &to)
                    || overlaps(&c.from, &to)
                    || overlaps(&c.to, &from)
            })
        {
            return;
        }
        self.candidates.push(Candidate {
            from,
            to,
            adds: Vec::new(),
            dels: Vec::new(),
            spoiled: false,
        });
    }

    /// Takes out of a batch what a followed move holds back; gives back the rest, in order.
    pub(super) fn sort(&mut self, found: Vec<Found>) -> Vec<Found> {
        let mut rest = Vec::with_capacity(found.len());
        for f in found {
            let held = match &f {
                Found::Changed { path, .. } => self
                    .candidates
                    .iter()
                    .position(|c| at_or_under(path, &c.to))
                    .map(|i| (i, true)),
                Found::Deleted { prior } => self
                    .candidates
                    .iter()
                    .position(|c| at_or_under(&prior.key, &c.from))
                    .map(|i| (i, false)),
                Found::Error { path, .. } => {
                    for c in &mut self.candidates {
                        if at_or_under(path, &c.to) || at_or_under(path, &c.from) {
                            c.spoiled = true;
                        }
                    }
                    None
                }
            };
            let Some((i, added)) = held else {
                rest.push(f);
                continue;
            };
            let c = &mut self.candidates[i];
            if added {
                c.adds.push(f);
            } else {
                c.dels.push(f);
            }
            // Too big to announce as one: what it held goes on as usual, and so does the rest.
            let max = usize::try_from(MAX_MOVE_ITEMS).unwrap_or(usize::MAX);
            if c.adds.len() > max || c.dels.len() > max {
                let c = self.candidates.swap_remove(i);
                rest.extend(c.adds);
                rest.extend(c.dels);
            }
        }
        rest
    }

    /// What became of each followed move once the scan is done.
    pub(super) fn finish(self) -> Vec<Outcome> {
        self.candidates
            .into_iter()
            .map(|c| match whole_move(&c) {
                Some(items) => Outcome::Moved {
                    from: c.from,
                    to: c.to,
                    items,
                    found: c.adds.into_iter().chain(c.dels).collect(),
                },
                None => Outcome::Plain(c.adds.into_iter().chain(c.dels).collect()),
            })
            .collect()
    }
}

/// The number of items moved if `c` is a folder renamed whole: every live item at and under
/// the old name gone, and the same relative paths added under the new one with the same
/// metadata (mtimes of folders and links aside) and content.
fn whole_move(c: &Candidate) -> Option<u32> {
    if c.spoiled || c.adds.is_empty() || c.adds.len() != c.dels.len() {
        return None;
    }
    let mut gone: BTreeMap<&str, (&Metadata, Option<[u8; 16]>)> = BTreeMap::new();
    for d in &c.dels {
        let Found::Deleted { prior } = d else {
            return None;
        };
        let file = prior.file()?;
        let rel = relative(&prior.key, &c.from)?;
        gone.insert(rel, (&file.meta, file.hash.map(|h| h.0)));
    }
    for a in &c.adds {
        let Found::Changed {
            path,
            meta,
            content,
            prior,
        } = a
        else {
            return None;
        };
        if is_live(prior.as_ref()) {
            return None;
        }
        let rel = relative(path, &c.to)?;
        let (old, old_hash) = gone.remove(rel)?;
        let hash = match content {
            Content::Replace { hash, .. } => Some(hash.0),
            Content::Empty => None,
            Content::Keep => return None,
        };
        let same = old.kind == meta.kind
            && old.size == meta.size
            && old.mode == meta.mode
            && old.symlink_target == meta.symlink_target
            // A folder's or link's mtime is this device's own (a peer's writes set it), and
            // the moved folder's may change with the rename: only a file's must match.
            && (meta.kind != ItemKind::File || old.mtime_ns == meta.mtime_ns)
            && old_hash == hash;
        if !same {
            return None;
        }
    }
    let root_is_folder = c.adds.iter().any(|a| {
        matches!(a, Found::Changed { path, meta, .. }
            if *path == c.to && meta.kind == ItemKind::Directory)
    });
    if !gone.is_empty() || !root_is_folder {
        return None;
    }
    u32::try_from(c.adds.len()).ok()
}

#[cfg(test)]
mod tests;
