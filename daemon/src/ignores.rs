//! `.tandemignore`: gitignore patterns in a source root, applied when scanning and when
//! applying a peer's changes. The file itself belongs to this device and is not synced, so each
//! device may ignore different things.
//!
//! Must not: read anything but the one pattern file.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Name of the pattern file in a source root.
pub const IGNORE_FILE: &str = ".tandemignore";

/// The compiled patterns of one source (none when there is no file).
#[derive(Debug, Clone, Default)]
pub struct Ignores {
    matcher: Option<Gitignore>,
}

/// One line of the pattern file that could not be used; the other lines still apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern {
    pub line: usize,
    pub message: String,
}

impl Ignores {
    /// Reads `ROOT/.tandemignore`; a missing file means nothing is ignored.
    ///
    /// # Errors
    /// The file exists but cannot be read; the caller keeps the previous patterns.
    pub fn load(root: &Path) -> Result<(Ignores, Vec<BadPattern>), std::io::Error> {
        let path = root.join(IGNORE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Ignores::default(), Vec::new()));
            }
            Err(e) => return Err(e),
        };
        Ok(Self::parse(root, &path, &text))
    }

    /// Compiles pattern text as if it were `file` in `root`.
    pub fn parse(root: &Path, file: &Path, text: &str) -> (Ignores, Vec<BadPattern>) {
        let mut builder = GitignoreBuilder::new(root);
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if let Err(e) = builder.add_line(Some(PathBuf::from(file)), line) {
                bad.push(BadPattern {
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
        match builder.build() {
            Ok(matcher) if !matcher.is_empty() => (
                Ignores {
                    matcher: Some(matcher),
                },
                bad,
            ),
            Ok(_) => (Ignores::default(), bad),
            Err(e) => {
                bad.push(BadPattern {
                    line: 0,
                    message: e.to_string(),
                });
                (Ignores::default(), bad)
            }
        }
    }

    /// True when an item path (or a folder above it) matches an ignore pattern and no later
    /// `!` pattern takes it back.
    pub fn is_ignored(&self, item_path: &str, is_dir: bool) -> bool {
        if item_path == IGNORE_FILE {
            return true;
        }
        match &self.matcher {
            None => false,
            Some(m) => m.matched_path_or_any_parents(item_path, is_dir).is_ignore(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(patterns: &str, cases: &[(&str, bool, bool)]) {
        let root = Path::new("/src");
        let (ig, bad) = Ignores::parse(root, &root.join(IGNORE_FILE), patterns);
        assert!(bad.is_empty(), "{bad:?}");
        for (path, is_dir, want) in cases {
            assert_eq!(
                ig.is_ignored(path, *is_dir),
                *want,
                "{path} with {patterns:?}"
            );
        }
    }

    #[test]
    fn gitignore_syntax_applies_to_items_and_their_subtrees() {
        check(
            "*.tmp\nbuild/\n/top-only\n!keep.tmp\n# comment\n",
            &[
                ("a.tmp", false, true),
                ("d/e/b.tmp", false, true),
                ("keep.tmp", false, false),
                ("build", true, true),
                ("build/out/x.o", false, true),
                ("src/build", true, true),
                ("build", false, false),
                ("top-only", false, true),
                ("d/top-only", false, false),
                ("notes.txt", false, false),
                (IGNORE_FILE, false, true),
            ],
        );
    }

    #[test]
    fn no_file_ignores_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (ig, bad) = Ignores::load(dir.path()).unwrap();
        assert!(bad.is_empty());
        assert!(!ig.is_ignored("anything", false));
        assert!(ig.is_ignored(IGNORE_FILE, false));
    }

    #[test]
    fn a_bad_line_is_reported_and_the_rest_applies() {
        let root = Path::new("/src");
        let (ig, bad) = Ignores::parse(root, &root.join(IGNORE_FILE), "*.log\na[z-a]\n");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].line, 2);
        assert!(ig.is_ignored("x.log", false));
    }
}
