//! Story: three devices share a folder while a seeded generator creates, modifies, renames and
//! deletes files and folders on all of them, with devices going down and coming back between
//! rounds (so edits happen both while connected and while apart). After every round the three
//! trees are identical, and every file version that was current on any device when the round's
//! edits ended still exists somewhere: in the trees (possibly as a conflict copy) or in a
//! versions folder. Versions a user overwrote or deleted on their own device are theirs to lose;
//! nothing that sync replaced may be lost.
//!
//! A failure prints the seed and the operation log; `TANDEM_RANDOM_SEEDS=7,8,9` reruns or
//! widens the search.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::tree::{self, Kind, PseudoRandom};
use tandem_tests::{Agent, pair};

const SYNC: Duration = Duration::from_secs(90);
const ROUNDS: u64 = 5;
const OPS_PER_ROUND: u64 = 12;
/// Seeds run in CI; each is a different history.
const DEFAULT_SEEDS: &[u64] = &[1, 2];
/// Settling passes before the trees must be identical: a conflict copy made while settling is
/// a new local file that takes one more pass to travel.
const MAX_PASSES: usize = 6;

/// "x" and "e" are in both lists: a file on one device and a folder on another under one name.
const FILE_NAMES: &[&str] = &["a.txt", "b.txt", "c.bin", "notes.md", "x", "e"];
const DIR_NAMES: &[&str] = &["d1", "d2", "deep", "e", "x"];

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

struct Device {
    agent: Agent,
    root: PathBuf,
    up: bool,
    name: char,
}

/// The seeded world: three devices and the log of what was done to them.
struct World {
    devices: Vec<Device>,
    rng: PseudoRandom,
    log: Vec<String>,
    seed: u64,
    round: u64,
    op: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let devices: Vec<Device> = ['A', 'B', 'C']
            .into_iter()
            .map(|name| {
                let agent = Agent::start();
                let root = agent.data_dir("docs");
                Device {
                    agent,
                    root,
                    up: true,
                    name,
                }
            })
            .collect();
        for i in 0..devices.len() {
            for j in i + 1..devices.len() {
                pair(&devices[i].agent, &devices[j].agent);
            }
        }
        for (i, d) in devices.iter().enumerate() {
            let others: Vec<&Agent> = devices
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| &o.agent)
                .collect();
            d.agent.share("docs", &d.root, &others);
        }
        World {
            devices,
            rng: PseudoRandom::new(seed),
            log: Vec::new(),
            seed,
            round: 0,
            op: 0,
        }
    }

    fn note(&mut self, line: String) {
        let line = format!("seed {} r{} {}", self.seed, self.round, line);
        // Also on stderr, which a failing test prints, whichever assertion fails.
        eprintln!("{line}");
        self.log.push(line);
    }

    /// Unique content for the next write: a header naming it, then seeded bytes.
    fn content(&mut self, device: char) -> Vec<u8> {
        self.op += 1;
        let mut bytes = format!(
            "seed {} round {} op {} on {device}\n",
            self.seed, self.round, self.op
        )
        .into_bytes();
        // Mostly small files; now and then one of several chunks.
        let len = if self.rng.below(10) == 0 {
            150_000 + self.rng.below(200_000)
        } else {
            self.rng.below(4_000)
        };
        bytes.extend(self.rng.bytes(usize::try_from(len).expect("small")));
        bytes
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> Option<&'a T> {
        if from.is_empty() {
            return None;
        }
        let i = usize::try_from(self.rng.below(from.len() as u64)).expect("small");
        from.get(i)
    }

    fn listed(root: &Path, kind: Kind) -> Vec<String> {
        tree::snapshot(root)
            .into_iter()
            .filter(|(p, e)| e.kind == kind && !p.contains(".tandem-tmp-"))
            .map(|(p, _)| p)
            .collect()
    }

    /// A folder to put something in: the root ("") or an existing folder.
    fn some_folder(&mut self, root: &Path) -> String {
        let mut dirs = World::listed(root, Kind::Directory);
        dirs.push(String::new());
        self.pick(&dirs).cloned().unwrap_or_default()
    }

    fn join(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    }

    /// One random edit on one random device, as its user would make it. Edits racing the
    /// agent (which may be writing the same folder) can fail; those are logged and skipped.
    fn random_op(&mut self) {
        let d = usize::try_from(self.rng.below(self.devices.len() as u64)).expect("small");
        let (root, name) = (self.devices[d].root.clone(), self.devices[d].name);
        let files = World::listed(&root, Kind::File);
        let result = match self.rng.below(10) {
            0..=2 => {
                let dir = self.some_folder(&root);
                let file = *self.pick(FILE_NAMES).expect("names");
                let path = World::join(&dir, file);
                let bytes = self.content(name);
                self.note(format!("{name}: write {path}"));
                fs::write(root.join(&path), bytes)
            }
            3..=4 => match self.pick(&files).cloned() {
                Some(path) => {
                    let bytes = self.content(name);
                    self.note(format!("{name}: modify {path}"));
                    fs::write(root.join(&path), bytes)
                }
                None => Ok(()),
            },
            5 => match self.pick(&files).cloned() {
                Some(from) => {
                    let dir = self.some_folder(&root);
                    let to = World::join(&dir, self.pick(FILE_NAMES).expect("names"));
                    if root.join(&to).exists() {
                        Ok(())
                    } else {
                        self.note(format!("{name}: rename {from} -> {to}"));
                        fs::rename(root.join(&from), root.join(&to))
                    }
                }
                None => Ok(()),
            },
            6 => match self.pick(&files).cloned() {
                Some(path) => {
                    self.note(format!("{name}: delete {path}"));
                    fs::remove_file(root.join(&path))
                }
                None => Ok(()),
            },
            7 => {
                let parent = self.some_folder(&root);
                let dir = World::join(&parent, self.pick(DIR_NAMES).expect("names"));
                self.note(format!("{name}: mkdir {dir}"));
                fs::create_dir_all(root.join(&dir))
            }
            8 => {
                let dirs = World::listed(&root, Kind::Directory);
                match self.pick(&dirs).cloned() {
                    Some(from) => {
                        let to = self.pick(DIR_NAMES).expect("names").to_string();
                        if root.join(&to).exists() || to == from {
                            Ok(())
                        } else {
                            self.note(format!("{name}: rename folder {from} -> {to}"));
                            fs::rename(root.join(&from), root.join(&to))
                        }
                    }
                    None => Ok(()),
                }
            }
            _ => {
                let dirs = World::listed(&root, Kind::Directory);
                match self.pick(&dirs).cloned() {
                    Some(dir) => {
                        self.note(format!("{name}: delete folder {dir}"));
                        fs::remove_dir_all(root.join(&dir))
                    }
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            self.note(format!("{name}:   (skipped: {e})"));
        }
    }

    /// Digests of every whole file version on every device now.
    fn current_versions(&self) -> BTreeMap<u64, String> {
        let mut out = BTreeMap::new();
        for d in &self.devices {
            for path in World::listed(&d.root, Kind::File) {
                // The agent may replace or remove it while we look; what it replaced is kept.
                if let Ok(bytes) = fs::read(d.root.join(&path)) {
                    out.entry(digest(&bytes))
                        .or_insert_with(|| format!("{}:{path}", d.name));
                }
            }
        }
        out
    }

    /// Digests of everything that survives: files in the trees and in versions folders.
    fn surviving_versions(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for d in &self.devices {
            for entry in walk_files(&d.root) {
                if let Ok(bytes) = fs::read(&entry) {
                    out.insert(digest(&bytes));
                }
            }
        }
        out
    }

    fn take_down_some(&mut self) {
        for i in 0..self.devices.len() {
            if self.rng.below(3) == 0 {
                self.devices[i].agent.kill();
                self.devices[i].up = false;
                let name = self.devices[i].name;
                self.note(format!("{name} goes down"));
            }
        }
    }

    fn bring_all_up(&mut self) {
        let mut restarted = Vec::new();
        for (i, d) in self.devices.iter_mut().enumerate() {
            if !d.up {
                d.agent.start_again();
                d.up = true;
                restarted.push(i);
            }
        }
        // A restarted agent listens on a new port: tell every other device.
        for &i in &restarted {
            for j in 0..self.devices.len() {
                if i != j {
                    self.devices[j].agent.add_peer(&self.devices[i].agent);
                    self.devices[i].agent.add_peer(&self.devices[j].agent);
                }
            }
        }
    }

    fn settle(&self) {
        let agents: Vec<&Agent> = self.devices.iter().map(|d| &d.agent).collect();
        for pass in 0..MAX_PASSES {
            for (i, a) in agents.iter().enumerate() {
                let others: Vec<&Agent> = agents
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, o)| *o)
                    .collect();
                a.sync_with(&others, SYNC);
            }
            let shapes: Vec<_> = self.devices.iter().map(|d| contents(&d.root)).collect();
            if pass > 0 && shapes.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
        }
    }

    fn context(&self) -> String {
        format!(
            "seed {} (rerun with TANDEM_RANDOM_SEEDS={}); operations:\n{}",
            self.seed,
            self.seed,
            self.log.join("\n")
        )
    }
}

/// Every file under `root`, the agent's versions folder included, but not its temp files.
fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(m) = fs::symlink_metadata(&path) else {
                continue;
            };
            if m.is_dir() {
                stack.push(path);
            } else if m.is_file()
                && !entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tandem-tmp-")
            {
                out.push(path);
            }
        }
    }
    out
}

/// Item paths with each file's digest (folders as `None`): what "identical" compares.
fn contents(root: &Path) -> BTreeMap<String, Option<u64>> {
    tree::snapshot(root)
        .into_iter()
        .map(|(p, e)| {
            let d = (e.kind == Kind::File)
                .then(|| fs::read(root.join(&p)).map(|b| digest(&b)).ok())
                .flatten();
            (p, d)
        })
        .collect()
}

fn seeds() -> Vec<u64> {
    match std::env::var("TANDEM_RANDOM_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("TANDEM_RANDOM_SEEDS: {s:?} is not a number"))
            })
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

fn run(seed: u64) {
    let mut world = World::new(seed);
    world.settle();
    for round in 1..=ROUNDS {
        world.round = round;
        world.take_down_some();
        for _ in 0..OPS_PER_ROUND {
            world.random_op();
        }
        let current = world.current_versions();
        world.bring_all_up();
        world.settle();
        let [a, b, c] = [0, 1, 2].map(|i| &world.devices[i].root);
        let (ca, cb, cc) = (contents(a), contents(b), contents(c));
        assert!(
            ca == cb && cb == cc,
            "round {round}: the trees differ\nA: {ca:?}\nB: {cb:?}\nC: {cc:?}\n{}",
            world.context()
        );
        tree::assert_same_trees(a, b);
        tree::assert_same_trees(a, c);
        let surviving = world.surviving_versions();
        let lost: Vec<&String> = current
            .iter()
            .filter(|(d, _)| !surviving.contains(d))
            .map(|(_, where_)| where_)
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: versions lost (device:path when the round's edits ended): {lost:?}\n{}",
            world.context()
        );
    }
}

#[test]
fn random_edits_on_three_devices_going_up_and_down_converge_and_lose_no_version() {
    for seed in seeds() {
        run(seed);
    }
}
