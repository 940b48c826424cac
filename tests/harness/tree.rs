//! Making and reading folder trees on disk, as a source's owner would.
//!
//! Must not: know about the agent; these are plain file operations and a plain `lstat` walk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Kind of an item, numbered as the `items.kind` column numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File = 0,
    Directory = 1,
    Symlink = 2,
}

impl Kind {
    /// The kind with this `items.kind` code, if any.
    pub fn from_code(code: i64) -> Option<Kind> {
        match code {
            0 => Some(Kind::File),
            1 => Some(Kind::Directory),
            2 => Some(Kind::Symlink),
            _ => None,
        }
    }
}

/// What `lstat` says about one item on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Length of a file; 0 for folders and symlinks (as the prior state records them).
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

/// Writes a file, creating its parent folders.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Overwrites a file from its start without truncating it first, in one write: the watcher
/// sees one modification, never an empty file. `contents` must be at least as long as the
/// file, so nothing of the old contents is left at the end.
pub fn overwrite_in_place(path: &Path, contents: &[u8]) {
    let old = fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .len();
    assert!(
        u64::try_from(contents.len()).is_ok_and(|n| n >= old),
        "overwrite_in_place needs at least {old} bytes for {}",
        path.display()
    );
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()));
    file.write_all(contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// The agent's marker folder in every source root.
pub const AGENT_DIR: &str = ".tandem";
/// Prefix of the agent's temp files, anywhere in a source.
pub const TEMP_PREFIX: &str = ".tandem-tmp-";

/// The agent's temp files in a source: in the tree, and in its temp folder `.tandem/tmp`
/// (where received content is built). Paths as in [`snapshot`], or `.tandem/tmp/NAME`.
pub fn temps(root: &Path) -> Vec<String> {
    let is_temp = |p: &str| {
        p.rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX))
    };
    let mut found: Vec<String> = snapshot(root).into_keys().filter(|p| is_temp(p)).collect();
    if let Ok(entries) = fs::read_dir(root.join(AGENT_DIR).join("tmp")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            found.push(format!("{AGENT_DIR}/tmp/{name}"));
        }
    }
    found
}

/// Every item under `root` (not `root` itself, nor the agent's own folder), by item path
/// ('/'-separated, relative).
pub fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Entry>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let name = entry.file_name();
        let name = name
            .to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 name in {}", dir.display()));
        if prefix.is_empty() && name == AGENT_DIR {
            // The agent's own folder (the source marker) is never part of the source.
            continue;
        }
        let item = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let m = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        let kind = if m.file_type().is_dir() {
            Kind::Directory
        } else if m.file_type().is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        out.insert(
            item.clone(),
            Entry {
                kind,
                size: if kind == Kind::File { m.len() } else { 0 },
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                inode: m.ino(),
            },
        );
        if kind == Kind::Directory {
            walk(&path, &item, out);
        }
    }
}

/// A listing of everything under `root` for failure reports, at most `max` lines.
pub fn listing(root: &Path, max: usize) -> String {
    let mut lines = Vec::new();
    list(root, root, &mut lines);
    let total = lines.len();
    let mut s = String::new();
    for line in lines.iter().take(max) {
        s.push_str(line);
        s.push('\n');
    }
    if total > max {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "… and {} more", total - max);
    }
    s
}

fn list(root: &Path, dir: &Path, lines: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        lines.push(format!("{} (cannot list)", dir.display()));
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                lines.push(format!("{shown}/"));
                list(root, &path, lines);
            }
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                lines.push(format!("{shown} -> {target}"));
            }
            Ok(m) => lines.push(format!("{shown}  {} bytes  mode {:o}", m.len(), m.mode())),
            Err(e) => lines.push(format!("{shown}  ({e})")),
        }
    }
}

/// An item as [`assert_same_trees`] compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Length, permission bits and mtime; the bytes are compared separately.
    File {
        size: u64,
        mode: u32,
        mtime_ns: i64,
    },
    /// Permission bits.
    Directory {
        mode: u32,
    },
    Symlink {
        target: std::path::PathBuf,
    },
}

/// Fails unless the trees under `a` and `b` hold the same items: the same folders, the same
/// symlinks with the same targets, and files with the same bytes, length, permission bits and
/// mtime (to the nanosecond). Also fails if either holds an agent temp file
/// (`.tandem-tmp-*`). Folder mtimes and modes are not compared.
pub fn assert_same_trees(a: &Path, b: &Path) {
    let (left, right) = (shapes(a), shapes(b));
    let mut problems = String::new();
    // Writing to a String cannot fail.
    for (root, items) in [(a, &left), (b, &right)] {
        for path in items.keys().filter(|p| is_temp(p)) {
            let _ = writeln!(
                problems,
                "{path}: an agent temp file left in {}",
                root.display()
            );
        }
    }
    for (path, shape) in &left {
        match right.get(path) {
            None => {
                let _ = writeln!(problems, "{path:?}: only in {} ({shape:?})", a.display());
            }
            Some(other) if other != shape => {
                let _ = writeln!(problems, "{path:?}: {shape:?} ≠ {other:?}");
            }
            Some(Shape::File { .. }) => {
                if let Some(offset) = first_difference(&a.join(path), &b.join(path)) {
                    let _ = writeln!(problems, "{path:?}: contents differ from byte {offset}");
                }
            }
            Some(_) => {}
        }
    }
    for (path, shape) in right.iter().filter(|(p, _)| !left.contains_key(*p)) {
        let _ = writeln!(problems, "{path:?}: only in {} ({shape:?})", b.display());
    }
    assert!(
        problems.is_empty(),
        "the trees differ:\n{problems}\n──── {} ────\n{}──── {} ────\n{}",
        a.display(),
        listing(a, 100),
        b.display(),
        listing(b, 100),
    );
}

/// True for a path whose last name is an agent temp file.
fn is_temp(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with(".tandem-tmp-"))
}

fn shapes(root: &Path) -> BTreeMap<String, Shape> {
    snapshot(root)
        .into_iter()
        .map(|(path, entry)| {
            let full = root.join(&path);
            let shape = match entry.kind {
                Kind::Directory => {
                    let m = fs::symlink_metadata(&full)
                        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", full.display()));
                    Shape::Directory {
                        mode: m.mode() & 0o7777,
                    }
                }
                Kind::Symlink => Shape::Symlink {
                    target: fs::read_link(&full)
                        .unwrap_or_else(|e| panic!("cannot read link {}: {e}", full.display())),
                },
                Kind::File => {
                    let m = fs::symlink_metadata(&full)
                        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", full.display()));
                    Shape::File {
                        size: m.len(),
                        mode: m.mode() & 0o7777,
                        mtime_ns: entry.mtime_ns,
                    }
                }
            };
            (path, shape)
        })
        .collect()
}

/// Where two files of the same length first differ, if they do; read a block at a time, so
/// large files are never held in memory whole.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    use std::io::Read as _;
    const BLOCK: usize = 1 << 20;
    let open =
        |p: &Path| fs::File::open(p).unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba, a);
        let nb = read_full(&mut fb, &mut bb, b);
        if let Some(i) = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y) {
            return Some(offset + u64::try_from(i).expect("a block index fits u64"));
        }
        if na != nb {
            return Some(offset + u64::try_from(na.min(nb)).expect("fits"));
        }
        if na == 0 {
            return None;
        }
        offset += u64::try_from(na).expect("fits");
    }

    fn read_full(f: &mut fs::File, buf: &mut [u8], path: &Path) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => panic!("cannot read {}: {e}", path.display()),
            }
        }
        n
    }
}

/// Sets a file's mtime, to the nanosecond.
pub fn set_mtime(path: &Path, unix_ns: i64) {
    let secs = u64::try_from(unix_ns.div_euclid(1_000_000_000)).expect("an mtime after 1970");
    let nanos = u64::try_from(unix_ns.rem_euclid(1_000_000_000)).expect("below 1e9");
    let when = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(secs)
        + std::time::Duration::from_nanos(nanos);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    f.set_times(fs::FileTimes::new().set_modified(when))
        .unwrap_or_else(|e| panic!("cannot set the mtime of {}: {e}", path.display()));
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {mode:o} {}: {e}", path.display()));
}

/// Deterministic pseudo-random bytes (xorshift64*): the same `seed` and length always give the
/// same bytes, so a rerun moves exactly the same data.
pub struct PseudoRandom(u64);

impl PseudoRandom {
    /// A generator; `seed` 0 is replaced by a fixed non-zero value (xorshift needs one).
    pub fn new(seed: u64) -> PseudoRandom {
        PseudoRandom(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for block in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let bytes = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            block.copy_from_slice(&bytes[..block.len()]);
        }
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b) % n.max(1)
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf);
        buf
    }
}

/// Writes `len` pseudo-random bytes from `seed` to a new file at `path`, a block at a time.
pub fn write_pseudo_random(path: &Path, seed: u64, len: u64) {
    const BLOCK: u64 = 1 << 20;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    let mut file =
        fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let mut rng = PseudoRandom::new(seed);
    let mut buf = vec![0u8; usize::try_from(BLOCK).expect("1 MiB fits usize")];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(BLOCK)).expect("at most 1 MiB");
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        left -= u64::try_from(n).expect("fits");
    }
}
