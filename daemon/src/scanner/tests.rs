#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::*;
use crate::index::{ShortId, VersionVector};
use crate::item::{Body, Header, PriorFile};
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

/// The in-memory cursor over a copy of `prior`.
fn cursor(prior: &HashMap<String, PriorItem>) -> Box<dyn PriorCursor> {
    Box::new(prior.values().cloned().collect::<PriorMap>())
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
        prior: Box::new(in_scope.into_values().collect::<PriorMap>()),
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
                    _ => prior.get(&path).and_then(|p| p.file()?.hash),
                };
                prior.insert(
                    path.clone(),
                    PriorItem {
                        key: path,
                        header: Header {
                            version,
                            sequence: 1,
                            deleted: false,
                            origin: None,
                            modified_by: None,
                        },
                        body: Body::File(PriorFile { meta, hash }),
                    },
                );
            }
            Found::Deleted { prior: p } => {
                lines.push(format!("deleted {}", p.key));
                prior.remove(&p.key);
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
        prior["link"].file().unwrap().meta.symlink_target.as_deref(),
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
        prior: cursor(&prior),
        force_rehash: HashSet::new(),
        ignores: Default::default(),
    };
    scan(req, &mut sink).unwrap();
    let order: Vec<String> = sink
        .found
        .iter()
        .map(|f| match f {
            Found::Deleted { prior } => prior.key.clone(),
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
        prior: cursor(&prior),
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
        prior: cursor(&prior),
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
        prior: cursor(&prior),
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
        prior: cursor(&prior),
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

/// Collects results in the order the scan reports them, and can act on the disk when it sees
/// one (to change the tree in the middle of a walk, at a known point).
struct InOrder<F: FnMut(&Found)> {
    found: Vec<Found>,
    on_found: F,
}

impl<F: FnMut(&Found)> Sink for InOrder<F> {
    fn found(&mut self, found: Found) -> bool {
        (self.on_found)(&found);
        self.found.push(found);
        true
    }
    fn hashed(&mut self, _: u64) {}
}

fn request(root: &Path, scope: Scope, prior: Box<dyn PriorCursor>) -> ScanRequest {
    ScanRequest {
        root: root.to_path_buf(),
        scope,
        prior,
        force_rehash: HashSet::new(),
        ignores: Default::default(),
    }
}

/// "changed PATH" / "deleted PATH" / "error PATH", in the order reported.
fn in_order(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .map(|f| match f {
            Found::Changed { path, .. } => format!("changed {path}"),
            Found::Deleted { prior } => format!("deleted {}", prior.key),
            Found::Error { path, .. } => format!("error {path}"),
        })
        .collect()
}

#[test]
fn the_walk_visits_items_in_the_stores_bytewise_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // '/' is 0x2F: a folder's subtree sorts after its siblings "a b", "a-b", "a.txt" and
    // before "a0"; upper case before lower case; UTF-8 multibyte names last.
    for file in ["a.txt", "a0", "a-b", "Z", "é", "日本", "ab"] {
        fs::write(root.join(file), b"x").unwrap();
    }
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/c"), b"x").unwrap();
    fs::write(root.join("a/b.txt"), b"x").unwrap();
    fs::create_dir(root.join("a b")).unwrap();
    fs::write(root.join("a b/x"), b"x").unwrap();
    let mut sink = InOrder {
        found: Vec::new(),
        on_found: |_: &Found| {},
    };
    scan(
        request(root, Scope::Full, Box::<PriorMap>::default()),
        &mut sink,
    )
    .unwrap();
    let order = in_order(&sink.found);
    assert_eq!(
        order,
        [
            "changed Z",
            "changed a",
            "changed a b",
            "changed a b/x",
            "changed a-b",
            "changed a.txt",
            "changed a/b",
            "changed a/b.txt",
            "changed a/b/c",
            "changed a0",
            "changed ab",
            "changed é",
            "changed 日本",
        ]
    );
    // The same order as Rust's (and SQLite's BINARY) string comparison.
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

/// A cursor over a map that remembers which ranges the scan asked for.
struct Recording {
    map: PriorMap,
    asked: std::sync::Arc<std::sync::Mutex<Vec<PathRange>>>,
}

impl PriorCursor for Recording {
    fn next_batch(
        &mut self,
        range: &PathRange,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PriorItem>, PriorError> {
        if after.is_none() {
            self.asked.lock().unwrap().push(range.clone());
        }
        self.map.next_batch(range, after, limit)
    }
}

#[test]
fn the_merge_finds_additions_changes_and_deletions_among_interleaved_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("a")).unwrap();
    fs::write(root.join("a/b"), b"b").unwrap();
    fs::write(root.join("a.txt"), b"t").unwrap();
    fs::write(root.join("a0"), b"0").unwrap();
    fs::write(root.join("a-b"), b"-").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);

    fs::remove_file(root.join("a.txt")).unwrap();
    fs::remove_file(root.join("a/b")).unwrap();
    fs::write(root.join("a/c"), b"c").unwrap();
    fs::write(root.join("a b"), b" ").unwrap();
    fs::write(root.join("a0"), b"zero").unwrap();
    let mut sink = InOrder {
        found: Vec::new(),
        on_found: |_: &Found| {},
    };
    scan(request(root, Scope::Full, cursor(&prior)), &mut sink).unwrap();
    assert_eq!(
        in_order(&sink.found),
        [
            "changed a b",
            "changed a/c",
            "changed a0",
            // At the end, children before parents: descending bytewise ('/' > '.').
            "deleted a/b",
            "deleted a.txt",
        ]
    );
}

#[test]
fn prior_state_streams_in_pages_and_only_for_the_scope() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // More than two pages of recorded items, so the merge crosses page boundaries.
    let n = 2 * PRIOR_PAGE + 10;
    for d in 0..3 {
        fs::create_dir(root.join(format!("d{d}"))).unwrap();
    }
    for i in 0..n {
        fs::write(root.join(format!("d{}/f{i:05}", i % 3)), b"x").unwrap();
    }
    let mut prior = HashMap::new();
    let (found, _) = check(root, Scope::Full, &mut prior);
    assert_eq!(found.len(), n + 3);
    for i in [0, PRIOR_PAGE - 1, PRIOR_PAGE, PRIOR_PAGE + 1, n - 1] {
        fs::remove_file(root.join(format!("d{}/f{i:05}", i % 3))).unwrap();
    }
    let (found, _) = check(root, Scope::Full, &mut prior);
    assert_eq!(found.len(), 5, "{found:?}");
    assert!(found.iter().all(|f| f.starts_with("deleted ")), "{found:?}");

    // A scan of some paths asks only for their ranges: the item and its subtree.
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let cursor = Recording {
        map: prior.values().cloned().collect(),
        asked: asked.clone(),
    };
    let mut sink = Collect::default();
    let scope = Scope::Under(vec!["d1".into(), "d1/f00001".into(), "d2/f00002".into()]);
    scan(request(root, scope, Box::new(cursor)), &mut sink).unwrap();
    assert!(sink.found.is_empty(), "{:?}", sink.found);
    assert_eq!(
        *asked.lock().unwrap(),
        [
            PathRange::Item("d1".into()),
            PathRange::Under("d1".into()),
            PathRange::Item("d2/f00002".into()),
            PathRange::Under("d2/f00002".into()),
        ]
    );
}

#[test]
fn a_scan_under_a_path_leaves_its_siblings_with_longer_names_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("a")).unwrap();
    fs::write(root.join("a/x"), b"x").unwrap();
    fs::write(root.join("a.txt"), b"t").unwrap();
    fs::write(root.join("a b"), b" ").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    // Recorded but gone from the disk: only a scan of their own paths may say so.
    fs::remove_file(root.join("a.txt")).unwrap();
    fs::remove_file(root.join("a b")).unwrap();
    fs::remove_file(root.join("a/x")).unwrap();
    let mut sink = InOrder {
        found: Vec::new(),
        on_found: |_: &Found| {},
    };
    let all = prior.values().cloned().collect::<PriorMap>();
    scan(
        request(root, Scope::Under(vec!["a".into()]), Box::new(all)),
        &mut sink,
    )
    .unwrap();
    assert_eq!(in_order(&sink.found), ["deleted a/x"]);
}

#[test]
fn a_folder_that_cannot_be_listed_keeps_its_recorded_items() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("a")).unwrap();
    fs::write(root.join("a/kept"), b"k").unwrap();
    fs::write(root.join("gone"), b"g").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    fs::remove_file(root.join("gone")).unwrap();
    // "a b" sorts between the visit of "a" and the step into "a/": when the scan reports it,
    // "a" is swapped for a file, so listing "a" fails. (Permissions cannot do this when the
    // tests run as root.)
    fs::write(root.join("a b"), b"new").unwrap();
    let swap = root.to_path_buf();
    let mut sink = InOrder {
        found: Vec::new(),
        on_found: move |f: &Found| {
            if matches!(f, Found::Changed { path, .. } if path == "a b") {
                fs::rename(swap.join("a"), swap.join("moved")).unwrap();
                fs::write(swap.join("a"), b"now a file").unwrap();
            }
        },
    };
    scan(request(root, Scope::Full, cursor(&prior)), &mut sink).unwrap();
    let order = in_order(&sink.found);
    assert_eq!(
        order,
        ["changed a b", "error a", "deleted gone"],
        "{order:?}"
    );
    let message = sink
        .found
        .iter()
        .find_map(|f| match f {
            Found::Error { message, .. } => Some(message.clone()),
            _ => None,
        })
        .unwrap();
    assert!(message.starts_with("cannot read: "), "{message}");
}

#[test]
fn a_recorded_folder_replaced_by_something_unsyncable_keeps_its_subtree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("p")).unwrap();
    fs::write(root.join("p/child"), b"c").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    fs::remove_dir_all(root.join("p")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("p"))
        .status()
        .unwrap();
    assert!(status.success());
    let (found, _) = check(root, Scope::Full, &mut prior);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("error p: is a socket, fifo or device"),
        "{found:?}"
    );
}

#[test]
fn an_ignored_folder_keeps_its_recorded_subtree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("build/out")).unwrap();
    fs::write(root.join("build/out/x.o"), b"o").unwrap();
    fs::write(root.join("build.txt"), b"t").unwrap();
    fs::write(root.join("keep"), b"k").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    let (ignores, bad) =
        crate::ignores::Ignores::parse(root, &root.join(".tandemignore"), "build/\n");
    assert!(bad.is_empty());
    fs::remove_dir_all(root.join("build")).unwrap();
    fs::remove_file(root.join("build.txt")).unwrap();
    let mut sink = InOrder {
        found: Vec::new(),
        on_found: |_: &Found| {},
    };
    let mut req = request(root, Scope::Full, cursor(&prior));
    req.ignores = ignores;
    scan(req, &mut sink).unwrap();
    assert_eq!(in_order(&sink.found), ["deleted build.txt"]);
}

/// A cursor that hands items back out of order.
struct Shuffled(Vec<PriorItem>);

impl PriorCursor for Shuffled {
    fn next_batch(
        &mut self,
        _: &PathRange,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<PriorItem>, PriorError> {
        Ok(std::mem::take(&mut self.0))
    }
}

#[test]
fn a_cursor_out_of_order_stops_the_scan_instead_of_deleting() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("a"), b"a").unwrap();
    fs::write(root.join("b"), b"b").unwrap();
    let mut prior = HashMap::new();
    check(root, Scope::Full, &mut prior);
    let mut items: Vec<PriorItem> = prior.values().cloned().collect();
    items.sort_by(|x, y| y.key.cmp(&x.key));
    let mut sink = Collect::default();
    let err = scan(
        request(root, Scope::Full, Box::new(Shuffled(items))),
        &mut sink,
    )
    .unwrap_err();
    assert!(matches!(err, ScanError::Prior(_)), "{err}");
    assert!(
        err.to_string().contains("nothing is sent as deleted"),
        "{err}"
    );
    assert!(
        !sink
            .found
            .iter()
            .any(|f| matches!(f, Found::Deleted { .. })),
        "{:?}",
        sink.found
    );
}
