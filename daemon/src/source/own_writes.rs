//! What the source task itself just wrote for peers, so that the file events of its own
//! writes do not send the scanner over every item a peer sent.
//!
//! Applying an item records its state as it is on disk right after the write. The events the
//! write raises come back through the watcher; a path whose entry still looks exactly as
//! recorded (same kind, size, mtime and inode, or still absent after a deletion) is dropped
//! from the scan, since the scanner would stat it, find it unchanged and move on. Anything
//! else (a user's write right after ours, a file put into a folder we just made) is scanned
//! as usual. Must not: decide anything about a path it has not been told of.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::item::{ItemKind, Metadata};
use crate::layout::is_internal;

/// How long a write is remembered for its events to come back: far longer than any debounce.
const REMEMBER: Duration = Duration::from_secs(120);
/// How often writes older than that are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// The recorded state of one path this task wrote.
#[derive(Debug, Clone)]
struct Written {
    /// `None` after a deletion: the path should be absent.
    state: Option<State>,
    at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    kind: ItemKind,
    size: u64,
    mtime_ns: i64,
    inode: u64,
}

/// Paths written for peers and not yet seen again through the watcher.
#[derive(Debug, Default)]
pub(super) struct OwnWrites {
    written: HashMap<String, Written>,
    /// When writes older than [`REMEMBER`] were last forgotten: not on every look, which
    /// during a large sync would walk hundreds of thousands of entries each time.
    pruned: Option<Instant>,
}

impl OwnWrites {
    /// Remembers that `path` was written and now looks like `meta` (`None`: deleted).
    pub(super) fn note(&mut self, path: &str, meta: Option<&Metadata>) {
        let state = meta.map(|m| State {
            kind: m.kind,
            size: if m.kind == ItemKind::File { m.size } else { 0 },
            mtime_ns: m.mtime_ns,
            inode: m.inode,
        });
        self.written.insert(
            path.to_owned(),
            Written {
                state,
                at: Instant::now(),
            },
        );
    }

    /// True when nothing is remembered (the common case outside a sync).
    pub(super) fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The paths of `paths` still worth scanning, looking at the disk for the ones this task
    /// wrote (blocking). A folder it made is listed: whatever is in it that it did not write
    /// is scanned too, since a file put there before the watch reached the folder raises no
    /// event of its own.
    pub(super) fn worth_scanning(&mut self, root: &Path, paths: Vec<String>) -> Vec<String> {
        let now = Instant::now();
        if self
            .pruned
            .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY)
        {
            self.written
                .retain(|_, w| now.duration_since(w.at) < REMEMBER);
            self.pruned = Some(now);
        }
        let mut out = Vec::new();
        for path in paths {
            let Some(written) = self.written.get(&path) else {
                out.push(path);
                continue;
            };
            let full = root.join(&path);
            let looks = std::fs::symlink_metadata(&full).ok();
            let same = match (&written.state, &looks) {
                (None, None) => true,
                // A folder's mtime moves with every entry put in it (ours too): the same
                // folder is the same inode, and its entries are checked below.
                (Some(state), Some(m)) if state.kind == ItemKind::Directory => {
                    m.file_type().is_dir() && m.ino() == state.inode
                }
                (Some(state), Some(m)) => state_of(m).as_ref() == Some(state),
                _ => false,
            };
            if !same {
                out.push(path);
                continue;
            }
            if written
                .state
                .as_ref()
                .is_some_and(|s| s.kind == ItemKind::Directory)
            {
                out.extend(self.unknown_entries(&full, &path));
            }
        }
        out
    }

    /// Entries of a folder this task made that it did not write itself.
    fn unknown_entries(&self, dir: &PathBuf, item: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            // Gone or unreadable: the scanner says which.
            return vec![item.to_owned()];
        };
        let mut unknown = Vec::new();
        for entry in entries {
            let Ok(entry) = entry else {
                return vec![item.to_owned()];
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return vec![item.to_owned()];
            };
            let child = format!("{item}/{name}");
            if !is_internal(&child) && !self.written.contains_key(&child) {
                unknown.push(child);
            }
        }
        unknown
    }
}

/// The parts of an entry's state a write fixes.
fn state_of(m: &std::fs::Metadata) -> Option<State> {
    let kind = if m.file_type().is_file() {
        ItemKind::File
    } else if m.file_type().is_dir() {
        ItemKind::Directory
    } else if m.file_type().is_symlink() {
        ItemKind::Symlink
    } else {
        return None;
    };
    Some(State {
        kind,
        size: if kind == ItemKind::File { m.len() } else { 0 },
        mtime_ns: crate::scanner::mtime_ns(m),
        inode: m.ino(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta_of(path: &Path) -> Metadata {
        let m = std::fs::symlink_metadata(path).unwrap();
        let s = state_of(&m).unwrap();
        Metadata {
            kind: s.kind,
            size: s.size,
            mtime_ns: s.mtime_ns,
            inode: s.inode,
            mode: 0o644,
            symlink_target: None,
        }
    }

    #[test]
    fn only_what_changed_since_our_own_write_is_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("new")).unwrap();
        std::fs::write(root.join("new/ours.txt"), b"from the peer").unwrap();
        std::fs::write(root.join("new/theirs.txt"), b"put there by a user").unwrap();
        std::fs::write(root.join("edited.txt"), b"from the peer").unwrap();
        let mut own = OwnWrites::default();
        own.note("new", Some(&meta_of(&root.join("new"))));
        own.note("new/ours.txt", Some(&meta_of(&root.join("new/ours.txt"))));
        own.note("edited.txt", Some(&meta_of(&root.join("edited.txt"))));
        own.note("gone.txt", None);
        own.note("back.txt", None);
        // A user edits one of ours right after, and makes a file where we deleted one.
        std::fs::write(root.join("edited.txt"), b"edited by a user, longer").unwrap();
        std::fs::write(root.join("back.txt"), b"made again").unwrap();
        let paths = [
            "new",
            "new/ours.txt",
            "edited.txt",
            "gone.txt",
            "back.txt",
            "other",
        ];
        let mut scan = own.worth_scanning(root, paths.iter().map(|p| (*p).to_owned()).collect());
        scan.sort();
        assert_eq!(scan, ["back.txt", "edited.txt", "new/theirs.txt", "other"]);
    }

    #[test]
    fn a_folder_we_made_and_filled_is_not_scanned_unless_someone_else_put_something_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("made")).unwrap();
        let mut own = OwnWrites::default();
        own.note("made", Some(&meta_of(&root.join("made"))));
        // Filling it moves the folder's mtime; that alone is no reason to scan it.
        for name in ["a.txt", "b.txt"] {
            let path = root.join("made").join(name);
            std::fs::write(&path, name).unwrap();
            own.note(&format!("made/{name}"), Some(&meta_of(&path)));
        }
        let made = || vec!["made".to_owned()];
        assert!(own.worth_scanning(root, made()).is_empty());
        std::fs::write(root.join("made/user.txt"), b"not ours").unwrap();
        assert_eq!(own.worth_scanning(root, made()), ["made/user.txt"]);
        // A file in its place is not the folder we made.
        std::fs::remove_dir_all(root.join("made")).unwrap();
        std::fs::write(root.join("made"), b"a file now").unwrap();
        assert_eq!(own.worth_scanning(root, made()), ["made"]);
    }
}
