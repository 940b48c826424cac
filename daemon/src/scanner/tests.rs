#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;
use crate::index::{ShortId, VersionVector};
use crate::layout::{AGENT_DIR, TEMP_PREFIX};

#[derive(Default)]
struct Collect {
    found: Vec<Found>,
    hashed: u64,
}

impl Sink for Collect {
    fn found(&mut self, found: Found) -> bool {
        self.found.push(found);
        true
    }
    fn hashed(&mut self, bytes: u64) {
        self.hashed += bytes;
    }
}

/// Scans `root` against `prior` and returns what was found plus the new prior state.
fn check(root: &Path, scope: Scope, prior: &mut HashMap<String, PriorItem>) -> (Vec<String>, u64) {
    let in_scope: HashMap<String, PriorItem> = prior
        .iter()
        .filter(|(p, _)| match &scope {
            Scope::Full => true,
            Scope::Under(paths) => paths.iter().any(|q| *p == q || is_under(p, q)),
        })
        .map(|(p, i)| (p.clone(), i.clone()))
        .collect();
    let mut sink = Collect::default();
    let req = ScanRequest {
        root: root.to_path_buf(),
        scope,
        prior: in_scope,
        force_rehash: HashSet::new(),
        ignores: Default::default(),
    };
    scan(req, &mut sink).unwrap();
    let mut lines = Vec::new();
    for f in sink.found {
        match f {
            Found::Changed {
                path,
                meta,
                content,
                ..
            } => {
                let what = match content {
                    Content::Replace { .. } => "content",
                    Content::Keep => "meta",
                    Content::Empty => "empty",
                };
                lines.push(format!("changed {path} {what}"));
                let mut version = VersionVector::new();
                version.bump(ShortId(1));
                let hash = match content {
                    Content::Replace { hash, .. } => Some(hash),
                    _ => prior.get(&path).and_then(|p| p.hash),
                };
                prior.insert(
                    path.clone(),
                    PriorItem {
                        path,
                        meta,
                        version,
                        sequence: 1,
                        hash,
                        deleted: false,
                        modified_by: None,
                    },
                );
            }
            Found::Deleted { prior: p } => {
                lines.push(format!("deleted {}", p.path));
                prior.remove(&p.path);
            }
            Found::Error { path, message } => lines.push(format!("error {path}: {message}")),
        }
    }
    lines.sort();
    (lines, sink.hashed)
}

#[test]
fn first_scan_reports_everything_and_second_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/file.txt"), b"hello").unwrap();
    fs::write(root.join("top"), b"").unwrap();
    symlink("a/b/file.txt", root.join("link")).unwrap();
    fs::create_dir(root.join(AGENT_DIR)).unwrap();
    fs::write(root.join(AGENT_DIR).join("x"), b"internal").unwrap();
    fs::write(root.join("a").join(format!("{TEMP_PREFIX}1")), b"temp").unwrap();

    let mut prior = HashMap::new();
    let (found, hashed) = check(root, Scope::Full, &mut prior);
    assert_eq!(
        found,
        [
            "changed a empty",
            "changed a/b empty",
            "changed a/b/file.txt content",
            "changed link empty",
            "changed top content",
        ]
    );
    assert_eq!(hashed, 5);
    assert_eq!(
        prior["link"].meta.symlink_target.as_deref(),
        Some("a/b/file.txt")
    );

    let (found, hashed) = check(root, Scope::Full, &mut prior);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(hashed, 0, "nothing is read again when stat matches");
}

#[test]
fn changes_deletions_and_renames_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("d/e")).unwrap();
    fs::write(root.join("d/e/f"), b"one").unwrap();
    fs::write(root.join("g"), b"two").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);

    fs::write(root.join("g"), b"three").unwrap();
    fs::rename(root.join("d"), root.join("d2")).unwrap();
    let (found, _) = check(root, Scope::Full, &mut prior);
    assert_eq!(
        found,
        [
            "changed d2 empty",
            "changed d2/e empty",
            "changed d2/e/f content",
            "changed g content",
            "deleted d",
            "deleted d/e",
            "deleted d/e/f",
        ]
    );

    // A partial scan of just the paths the watcher named sees the same.
    fs::remove_file(root.join("g")).unwrap();
    fs::set_permissions(
        root.join("d2/e/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (found, hashed) = check(
        root,
        Scope::Under(vec!["g".into(), "d2/e/f".into()]),
        &mut prior,
    );
    assert_eq!(found, ["changed d2/e/f meta", "deleted g"]);
    assert_eq!(hashed, 0, "a permission change does not rehash");
}

#[test]
fn deletions_come_children_first() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("x/y/z")).unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    fs::remove_dir_all(root.join("x")).unwrap();
    let mut sink = Collect::default();
    let req = ScanRequest {
        root: root.to_path_buf(),
        scope: Scope::Under(vec!["x".into()]),
        prior: prior.clone(),
        force_rehash: HashSet::new(),
        ignores: Default::default(),
    };
    scan(req, &mut sink).unwrap();
    let order: Vec<String> = sink
        .found
        .iter()
        .map(|f| match f {
            Found::Deleted { prior } => prior.path.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(order, ["x/y/z", "x/y", "x"]);
}

#[test]
fn an_item_that_cannot_be_synced_is_an_error_and_the_rest_still_scans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("ok"), b"fine").unwrap();
    let fifo = root.join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let mut prior = HashMap::new();
    let (found, _) = check(root, Scope::Full, &mut prior);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], "changed ok content");
    assert!(
        found[1].starts_with("error pipe: is a socket, fifo or device"),
        "{found:?}"
    );
}

#[test]
fn a_missing_root_stops_the_scan_without_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("f"), b"x").unwrap();
    let mut prior = HashMap::new();
    check(&root, Scope::Full, &mut prior);
    fs::remove_dir_all(&root).unwrap();
    let mut sink = Collect::default();
    let req = ScanRequest {
        root: root.clone(),
        scope: Scope::Full,
        prior,
        force_rehash: HashSet::new(),
        ignores: Default::default(),
    };
    let err = scan(req, &mut sink).unwrap_err();
    assert!(matches!(err, ScanError::RootMissing(_)), "{err}");
    assert!(err.to_string().contains("nothing is sent as deleted"));
    assert!(sink.found.is_empty());
}

#[test]
fn a_forced_rehash_of_unchanged_content_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("f"), b"same").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    let mut sink = Collect::default();
    let req = ScanRequest {
        root: root.to_path_buf(),
        scope: Scope::Under(vec!["f".into()]),
        prior: prior.clone(),
        force_rehash: HashSet::from(["f".to_owned()]),
        ignores: Default::default(),
    };
    let summary = scan(req, &mut sink).unwrap();
    assert!(sink.found.is_empty(), "{:?}", sink.found);
    assert_eq!(summary.hashed_bytes, 4);
}

#[test]
fn minimal_roots_drop_covered_paths() {
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        minimal_roots(&v(&["a/b", "a", "ab", "a/b/c", "ab"])),
        v(&["a", "ab"])
    );
    assert!(is_under("a/b", "a"));
    assert!(!is_under("ab", "a"));
    assert!(
        is_internal(".tandem/x") && is_internal("d/.tandem-tmp-1") && !is_internal("d/.tandemx")
    );
}

#[test]
fn a_root_that_suddenly_looks_empty_stops_the_scan_without_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("f"), b"x").unwrap();
    fs::create_dir(root.join("d")).unwrap();
    let mut prior = HashMap::new();
    check(&root, Scope::Full, &mut prior);
    fs::remove_dir_all(&root).unwrap();
    fs::create_dir(&root).unwrap();
    let mut sink = Collect::default();
    let req = ScanRequest {
        root: root.clone(),
        scope: Scope::Full,
        prior: prior.clone(),
        force_rehash: HashSet::new(),
        ignores: Default::default(),
    };
    let err = scan(req, &mut sink).unwrap_err();
    assert!(
        matches!(err, ScanError::LooksEmpty { recorded: 2, .. }),
        "{err}"
    );
    assert!(sink.found.is_empty());
    // Deleting items one at a time (as the watcher reports them) is still recorded.
    let (found, _) = check(
        &root,
        Scope::Under(vec!["f".into(), "d".into()]),
        &mut prior,
    );
    assert_eq!(found, ["deleted d", "deleted f"]);
}

#[test]
fn ignoring_a_recorded_item_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("a.log"), b"x").unwrap();
    fs::write(root.join("b.txt"), b"y").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    let (ignores, bad) =
        crate::ignores::Ignores::parse(root, &root.join(".tandemignore"), "*.log\n");
    assert!(bad.is_empty());
    fs::write(root.join("a.log"), b"changed").unwrap();
    fs::write(root.join("new.log"), b"new").unwrap();
    let mut sink = Collect::default();
    let req = ScanRequest {
        root: root.to_path_buf(),
        scope: Scope::Full,
        prior: prior.clone(),
        force_rehash: HashSet::new(),
        ignores,
    };
    scan(req, &mut sink).unwrap();
    assert!(
        sink.found.is_empty(),
        "ignored items are neither changed, added nor deleted: {:?}",
        sink.found
    );
}

#[test]
fn only_mtimes_within_the_window_around_now_are_racy() {
    let now = SystemTime::now();
    let ns = |t: SystemTime| {
        i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()).unwrap()
    };
    assert!(is_racy(ns(now), now));
    assert!(!is_racy(ns(now - Duration::from_secs(1)), now));
    assert!(
        !is_racy(ns(now + Duration::from_secs(3600)), now),
        "a file stamped in the future would otherwise be rehashed on every pass"
    );
}
