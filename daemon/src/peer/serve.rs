//! Serving chunks a peer asks for: only from inside a source shared with it, never through
//! a symlink, and only bytes that hash to what was asked.

use tandem_proto::peer as pb;

use super::{Ctx, SharedSource};
use crate::apply;
use crate::chunker::{Hash128, MAX_CHUNK_SIZE};
use crate::universal::ItemPath;

/// Reads the chunks a peer asked for in one frame: each from its named item (all of them in
/// one trip to the blocking pool), or else from any local copy in the same source.
pub(super) async fn read_chunks(
    ctx: &Ctx,
    src: &SharedSource,
    reqs: &[pb::ChunkRequest],
) -> Vec<Result<Vec<u8>, String>> {
    let checked: Vec<Result<(ItemPath, Hash128), String>> = reqs.iter().map(check).collect();
    let jobs: Vec<Option<(ItemPath, u64, u32, Hash128)>> = reqs
        .iter()
        .zip(&checked)
        .map(|(req, c)| {
            c.as_ref()
                .ok()
                .map(|(path, hash)| (path.clone(), req.offset, req.len, *hash))
        })
        .collect();
    let root = src.root.clone();
    let n = reqs.len();
    let read = tokio::task::spawn_blocking(move || {
        let mut folders = apply::RealFolders::default();
        jobs.into_iter()
            .map(|job| {
                job.and_then(|(p, off, len, hash)| {
                    apply::read_range_in(&root, &p, off, len, &mut folders)
                        .ok()
                        .filter(|data| Hash128::of(data) == hash)
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|_| vec![None; n]);
    let mut answers = Vec::with_capacity(n);
    for ((req, checked), found) in reqs.iter().zip(checked).zip(read) {
        answers.push(match (checked, found) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(data)) => Ok(data),
            // The named item no longer has it: other local copies are looked up (a trip to
            // the store), which is rare.
            (Ok((_, hash)), None) => elsewhere(ctx, src, hash)
                .await
                .ok_or_else(|| format!("chunk {hash} of {} is no longer here", req.path)),
        });
    }
    answers
}

/// A request's item path and hash, if the request is well formed.
fn check(req: &pb::ChunkRequest) -> Result<(ItemPath, Hash128), String> {
    let hash = Hash128::from_slice(&req.hash).ok_or("chunk hash is not 16 bytes")?;
    if req.len == 0 || req.len > MAX_CHUNK_SIZE {
        return Err(format!("chunk length {} is out of range", req.len));
    }
    let path = ItemPath::parse(&req.path).map_err(|e| e.to_string())?;
    Ok((path, hash))
}

/// The chunk from any other copy of it in the same source.
async fn elsewhere(ctx: &Ctx, src: &SharedSource, hash: Hash128) -> Option<Vec<u8>> {
    let root_text = src.root.to_string_lossy().into_owned();
    let others = ctx.store.chunk_sources(hash).await.ok()?;
    for o in others.into_iter().filter(|o| o.root == root_text) {
        let Ok(p) = ItemPath::parse(&o.path) else {
            continue;
        };
        let root = src.root.clone();
        let read =
            tokio::task::spawn_blocking(move || read_verified(&root, &p, o.offset, o.len, hash))
                .await;
        if let Ok(Some(data)) = read {
            return Some(data);
        }
    }
    None
}

/// A range of an item's file, if it is there and hashes to `hash`. Never through a symlink:
/// the peer may have made links here itself, and an answer (even only "found" for a hash it
/// guessed) would tell it what lies outside.
fn read_verified(
    root: &std::path::Path,
    item: &ItemPath,
    offset: u64,
    len: u32,
    hash: Hash128,
) -> Option<Vec<u8>> {
    apply::read_range(root, item, offset, len)
        .ok()
        .filter(|data| Hash128::of(data) == hash)
}
