//! Scan benchmark: prints a table, compares against a reference tool in the same run.
//!
//! 1. Hashing throughput of FastCDC chunking + xxh3-128 (`chunker::hash_reader`) against
//!    `sha256sum` on the same 1 GiB file, page-cached, best of 3.
//! 2. Rescan of 100,000 unchanged files (prior state streamed from SQLite + stat walk + compare)
//!    against `find -printf` printing the same stat fields, best of 3.
//!
//! `cargo bench -p tandem-daemon --bench scan`; `TANDEM_BENCH_QUICK=1` for small sizes;
//! `TANDEM_BENCH_DIR` picks where the data goes (default: the system temp dir).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem::chunker;
use tandem::index::{ShortId, VersionVector};
use tandem::item::{Body, Difference, FileChange, Header, PathRange, PriorItem};
use tandem::scanner::{self, Found, PriorCursor, PriorError, ScanRequest, Scope, Sink};
use tandem::store::{self, SourceRow, StoreHandle};

fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("TANDEM_BENCH_QUICK").is_some();
    let base = std::env::var_os("TANDEM_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::Builder::new()
        .prefix("tandem-bench-")
        .tempdir_in(base)?;
    let (file_mib, files) = if quick {
        (64u64, 5_000usize)
    } else {
        (1024, 100_000)
    };

    let mut rows = Vec::new();
    rows.extend(bench_hash(dir.path(), file_mib)?);
    rows.extend(bench_rescan(dir.path(), files)?);

    println!();
    println!("| measurement | tandem | reference | tandem / reference |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn best_of<T>(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Duration, T)> {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f()?;
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, v));
        }
    }
    best.ok_or_else(|| anyhow::anyhow!("no runs"))
}

fn bench_hash(dir: &Path, mib: u64) -> anyhow::Result<Vec<String>> {
    let path = dir.join("large.bin");
    eprintln!(
        "writing {mib} MiB of pseudo-random data to {}",
        path.display()
    );
    {
        let mut f = fs::File::create(&path)?;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for word in block.chunks_exact_mut(8) {
                // xorshift: cheap incompressible bytes, the same in every run.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let bytes = mib << 20;
    // Warm the page cache so both sides read from memory.
    let _ = Command::new("cat")
        .arg(&path)
        .stdout(Stdio::null())
        .status()?;
    let (ours, hashed) = best_of(3, || {
        let f = fs::File::open(&path)?;
        Ok(chunker::hash_reader(f, &mut |_| {})?)
    })?;
    let (sha, _) = best_of(3, || {
        let st = Command::new("sha256sum")
            .arg(&path)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "sha256sum failed");
        Ok(())
    })?;
    let gbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    eprintln!("{} chunks", hashed.chunks.len());
    Ok(vec![
        format!(
            "| hash {mib} MiB file (GB/s, higher is better) | {:.2} GB/s ({:.2} s) | sha256sum {:.2} GB/s ({:.2} s) | {:.2}× faster |",
            gbps(ours),
            ours.as_secs_f64(),
            gbps(sha),
            sha.as_secs_f64(),
            sha.as_secs_f64() / ours.as_secs_f64()
        ),
        format!(
            "| chunks of that file | {} (avg {} KiB) | | |",
            hashed.chunks.len(),
            bytes / 1024 / (hashed.chunks.len().max(1) as u64)
        ),
    ])
}

/// The store as the scanner's cursor, one page per trip (the agent also reads a page ahead).
struct StorePages {
    store: StoreHandle,
    source_id: String,
}

impl PriorCursor for StorePages {
    fn next_batch(
        &mut self,
        range: &PathRange,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PriorItem>, PriorError> {
        self.store
            .prior_batch(
                self.source_id.clone(),
                range.clone(),
                after.map(str::to_owned),
                limit,
            )
            .wait()
            .map_err(|e| PriorError {
                reason: e.to_string(),
            })
    }
}

struct Collect(Vec<Found>);

impl Sink for Collect {
    fn found(&mut self, found: Found) -> bool {
        self.0.push(found);
        true
    }
    fn hashed(&mut self, _: u64) {}
}

fn bench_rescan(dir: &Path, files: usize) -> anyhow::Result<Vec<String>> {
    let root = dir.join("tree");
    eprintln!("creating {files} files under {}", root.display());
    let per_dir = 100;
    for i in 0..files {
        let d = root
            .join(format!("d{:03}", i / per_dir / 10))
            .join(format!("s{}", (i / per_dir) % 10));
        if i % per_dir == 0 {
            fs::create_dir_all(&d)?;
        }
        fs::write(
            d.join(format!("f{i:06}.txt")),
            format!("file {i}\n").repeat(1 + i % 7),
        )?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (handle, thread) = store::open(&dir.join("bench.db"))?;
    let id = "bench".to_owned();
    rt.block_on(handle.add_source(SourceRow {
        id: id.clone(),
        path: root.display().to_string(),
        format: "files".into(),
        paused: false,
        sequence: 0,
        created_unix_ms: 0,
        peers: vec![],
    }))?;

    // Scans as the source task does: the prior state streams from the store a page at a time.
    let scan_once = |prior: Box<dyn PriorCursor>| -> anyhow::Result<Vec<Found>> {
        let mut sink = Collect(Vec::new());
        scanner::scan(
            ScanRequest {
                root: root.clone(),
                scope: Scope::Full,
                prior,
                force_rehash: HashSet::new(),
                ignores: Default::default(),
            },
            &mut sink,
        )?;
        Ok(sink.0)
    };
    let t = Instant::now();
    // First scan: record everything, as the source task would.
    let found = scan_once(Box::<scanner::PriorMap>::default())?;
    let diffs: Vec<Difference> = found
        .into_iter()
        .filter_map(|f| match f {
            Found::Changed {
                path,
                meta,
                content,
                ..
            } => {
                let mut version = VersionVector::new();
                version.bump(ShortId(1));
                Some(Difference {
                    key: path,
                    header: Header {
                        version,
                        sequence: 0,
                        deleted: false,
                        origin: None,
                        modified_by: None,
                    },
                    body: Body::File(FileChange { meta, content }),
                })
            }
            _ => None,
        })
        .collect();
    let n = diffs.len();
    for batch in diffs.chunks(1000) {
        rt.block_on(handle.commit(id.clone(), batch.to_vec(), tandem::store::Settles::Nothing))?;
    }
    let initial = t.elapsed();
    eprintln!(
        "initial scan + record of {n} items: {:.2} s",
        initial.as_secs_f64()
    );

    let (ours, changed) = best_of(3, || {
        let prior = Box::new(StorePages {
            store: handle.clone(),
            source_id: id.clone(),
        });
        let found = scan_once(prior)?;
        Ok(found.len())
    })?;
    anyhow::ensure!(
        changed == 0,
        "an unchanged tree produced {changed} differences"
    );
    let (find, _) = best_of(3, || {
        let st = Command::new("find")
            .arg(&root)
            .args(["-printf", "%P %s %T@ %i %m\\n"])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "find failed");
        Ok(())
    })?;
    drop(handle);
    thread.join();
    Ok(vec![
        format!(
            "| initial scan of {files} files (hash + record in SQLite) | {:.2} s | | |",
            initial.as_secs_f64()
        ),
        format!(
            "| rescan of {files} unchanged files (prior state streamed from SQLite + stat + compare) | {:.3} s | find -printf (stat walk only) {:.3} s | {:.2}× |",
            ours.as_secs_f64(),
            find.as_secs_f64(),
            ours.as_secs_f64() / find.as_secs_f64()
        ),
    ])
}
