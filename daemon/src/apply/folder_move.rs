//! A peer's folder move applied as one rename: the checks that make it safe, and the rename.
//!
//! A rename moves whatever the folder holds, so it is only done when the folder on disk holds
//! exactly what the prior state records there, each item unchanged since its scan (nothing
//! unrecorded, ignored or half-written rides along), and the new name is free under a real
//! folder. Must not: write anything but the one rename and the fsyncs of the two parents.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::{ApplyError, Disk, RealFolders, io_err, unchanged_since_scan};
use crate::item::PriorItem;
use crate::universal::ItemPath;

/// The folder above `item` (the root for a top-level item).
fn parent_of<'a>(root: &'a Path, item: &ItemPath) -> std::borrow::Cow<'a, Path> {
    match item.as_str().rsplit_once('/') {
        Some((parent, _)) => root.join(parent).into(),
        None => root.into(),
    }
}

/// True when renaming `from` to `to` moves exactly `recorded` (the live items at and under
/// `from`, as recorded): every entry on disk is recorded and unchanged since its scan, nothing
/// recorded is missing, no parent of either name is a link or a file, and `to` is free with a
/// folder above it. Blocking; reads only.
///
/// # Errors
/// When the disk cannot be looked at (the move is then applied item by item, which reports
/// each item's own error).
pub fn folder_movable(
    disk: &dyn Disk,
    root: &Path,
    from: &ItemPath,
    to: &ItemPath,
    recorded: &[PriorItem],
) -> Result<bool, ApplyError> {
    let mut real = RealFolders::for_looking();
    if real.blocked_parent(root, from).is_some() || real.blocked_parent(root, to).is_some() {
        return Ok(false);
    }
    match disk.symlink_metadata(&root.join(to.as_str())) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(_) => return Ok(false),
        Err(e) => return Err(io_err(to, "checking the new name")(e)),
    }
    match disk.symlink_metadata(&parent_of(root, to)) {
        Ok(m) if m.file_type().is_dir() => {}
        _ => return Ok(false),
    }
    let by_key: BTreeMap<&str, &PriorItem> = recorded
        .iter()
        .filter(|p| !p.header.deleted)
        .map(|p| (p.key.as_str(), p))
        .collect();
    let mut seen = 0usize;
    let mut folders = vec![from.to_string()];
    while let Some(key) = folders.pop() {
        let Some(prior) = by_key.get(key.as_str()) else {
            return Ok(false);
        };
        let Ok(item) = ItemPath::parse(&key) else {
            return Ok(false);
        };
        if !unchanged_since_scan(disk, root, &item, Some(prior))? {
            return Ok(false);
        }
        seen += 1;
        let is_folder = prior
            .file()
            .is_some_and(|f| f.meta.kind == crate::item::ItemKind::Directory);
        if !is_folder {
            continue;
        }
        let entries = std::fs::read_dir(root.join(&key)).map_err(io_err(&item, "listing"))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&item, "listing"))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Ok(false);
            };
            folders.push(format!("{key}/{name}"));
        }
    }
    Ok(seen == by_key.len())
}

/// Renames the folder `from` to `to` and makes that durable: both parent folders are
/// fsynced. Blocking. Nothing at `to` is ever replaced, not even an empty folder someone made
/// there since it was found free. When a parent cannot be flushed the rename is taken back,
/// so an error means the folder is where it was (unless taking it back failed too, which the
/// error then says; a scan finds it where it is).
///
/// # Errors
/// The rename or an fsync failed, naming the item.
pub fn move_folder(
    disk: &dyn Disk,
    root: &Path,
    from: &ItemPath,
    to: &ItemPath,
) -> Result<(), ApplyError> {
    let (old, new) = (root.join(from.as_str()), root.join(to.as_str()));
    disk.rename_no_replace(&old, &new)
        .map_err(io_err(to, "renaming the folder into place"))?;
    let (new_parent, old_parent) = (parent_of(root, to), parent_of(root, from));
    let mut synced = disk.sync_folder(&new_parent);
    if synced.is_ok() && old_parent != new_parent {
        synced = disk.sync_folder(&old_parent);
    }
    let Err(e) = synced else {
        return Ok(());
    };
    match disk.rename_no_replace(&new, &old) {
        Ok(()) => Err(io_err(to, "making the rename durable")(e)),
        Err(back) => Err(
            io_err(to, "making the rename durable, then taking it back")(io::Error::new(
                back.kind(),
                format!("{e}; {back}"),
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::apply::OsDisk;

    #[test]
    fn a_folder_never_moves_onto_anything_not_even_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("old/sub")).unwrap();
        std::fs::write(root.join("old/sub/f"), b"x").unwrap();
        // Made in the instant between the check and the rename.
        std::fs::create_dir(root.join("new")).unwrap();
        let (from, to) = (
            ItemPath::parse("old").unwrap(),
            ItemPath::parse("new").unwrap(),
        );
        let refused = move_folder(&OsDisk, root, &from, &to).unwrap_err();
        assert!(refused.to_string().contains("new"), "{refused}");
        assert!(root.join("new").is_dir() && root.join("old/sub/f").is_file());
        std::fs::remove_dir(root.join("new")).unwrap();
        move_folder(&OsDisk, root, &from, &to).unwrap();
        assert_eq!(std::fs::read(root.join("new/sub/f")).unwrap(), b"x");
        assert!(!root.join("old").exists());
    }
}
