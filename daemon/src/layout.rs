//! The agent's own names inside a source root and inside its home: the marker folder, the
//! versions folder, the temp-file prefix, the files of a home.
//!
//! One place for them, so the scanner, `universal`, `apply`, `versions` and the watcher agree
//! on what is the agent's and never synced. Must not: import anything of ours, or do I/O
//! beyond making the marker.

use std::path::{Path, PathBuf};

/// Name of the agent's own folder in a source root (the source marker); never synced.
pub const AGENT_DIR: &str = ".tandem";
/// Prefix of the agent's temp files in a source; never synced.
pub const TEMP_PREFIX: &str = ".tandem-tmp-";
/// Folder under [`AGENT_DIR`] where received content is built; the watcher leaves it out.
pub const TEMP_DIR: &str = "tmp";
/// Folder under [`AGENT_DIR`] that keeps replaced and deleted files.
pub const VERSIONS_DIR: &str = "versions";

/// `config.toml` in a home.
pub const CONFIG_FILE: &str = "config.toml";
/// Folder of the device's certificate and key in a home.
pub const IDENTITY_DIR: &str = "identity";
/// The SQLite database in a home.
pub const DATABASE_FILE: &str = "tandem.db";
/// The owner-only control socket in a home.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Folder of the agent's log files in a home.
pub const LOG_DIR: &str = "logs";
/// The lock file that keeps two agents off one home.
pub const LOCK_FILE: &str = "tandemd.lock";

/// True when item path `p` lies strictly under `dir`.
pub fn is_under(p: &str, dir: &str) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
}

/// True for the agent's own item paths: its folder, anything in it, and temp files.
pub fn is_internal(item_path: &str) -> bool {
    item_path == AGENT_DIR
        || is_under(item_path, AGENT_DIR)
        || item_path.rsplit('/').next().is_some_and(is_temp_name)
}

/// True for a file name the agent uses for content being built.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The marker folder a source root holds.
pub fn marker_path(root: &Path) -> PathBuf {
    root.join(AGENT_DIR)
}

/// The temp folder of a source root, where received content is built before its rename.
pub fn temp_dir(root: &Path) -> PathBuf {
    root.join(AGENT_DIR).join(TEMP_DIR)
}

/// The versions folder of a source root.
pub fn versions_dir(root: &Path) -> PathBuf {
    root.join(AGENT_DIR).join(VERSIONS_DIR)
}

/// The agent's own folder for a single-file source: beside the file, hidden
/// (`.NAME.tandem`), holding its versions folder.
pub fn single_file_agent_dir(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.tandem"))
}

/// The versions folder of a source: in its marker folder, or, for a single-file source, in
/// the agent's folder beside the file.
pub fn versions_dir_of(root: &Path, single_file: bool) -> PathBuf {
    if single_file {
        single_file_agent_dir(root).join(VERSIONS_DIR)
    } else {
        versions_dir(root)
    }
}

/// Creates a source root's marker folder (owner-only; it also keeps the agent's own files).
pub fn create_marker(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .create(marker_path(root))
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_are_the_agent_folder_and_temp_files() {
        assert!(is_internal(".tandem"));
        assert!(is_internal(".tandem/versions/a~1"));
        assert!(is_internal("a/b/.tandem-tmp-0123"));
        assert!(!is_internal(".tandemx"));
        assert!(
            !is_internal("a/.tandem"),
            "only the root's folder is the agent's"
        );
        assert!(is_under("a/b", "a"));
        assert!(!is_under("ab", "a"));
        assert!(!is_under("a", "a"));
    }
}
