//! Serving chunks a peer asks for: only from inside a source shared with it, never through
//! a symlink, and only bytes that hash to what was asked.

use tandem_proto::peer as pb;

use super::{Ctx, SharedSource};
use crate::apply;
use crate::chunker::{Hash128, MAX_CHUNK_SIZE};
use crate::universal::ItemPath;

/// Reads a chunk a peer asked for from the named item, or any local copy in the same source.
pub(super) async fn read_chunk(
    ctx: &Ctx,
    src: &SharedSource,
    req: &pb::ChunkRequest,
) -> Result<Vec<u8>, String> {
    let hash = Hash128::from_slice(&req.hash).ok_or("chunk hash is not 16 bytes")?;
    if req.len == 0 || req.len > MAX_CHUNK_SIZE {
        return Err(format!("chunk length {} is out of range", req.len));
    }
    let path = ItemPath::parse(&req.path).map_err(|e| e.to_string())?;
    // The named item almost always still has it; other local copies are looked up (a trip to
    // the store) only when it does not.
    if let Some(data) = read_verified(&src.root, path, req.offset, req.len, hash).await {
        return Ok(data);
    }
    let root_text = src.root.to_string_lossy().into_owned();
    if let Ok(others) = ctx.store.chunk_sources(hash).await {
        for o in others.into_iter().filter(|o| o.root == root_text) {
            if let Ok(p) = ItemPath::parse(&o.path)
                && let Some(data) = read_verified(&src.root, p, o.offset, o.len, hash).await
            {
                return Ok(data);
            }
        }
    }
    Err(format!("chunk {hash} of {} is no longer here", req.path))
}

/// A range of an item's file, if it is there and hashes to `hash`. Never through a symlink:
/// the peer may have made links here itself, and an answer (even only "found" for a hash it
/// guessed) would tell it what lies outside.
async fn read_verified(
    root: &std::path::Path,
    item: ItemPath,
    offset: u64,
    len: u32,
    hash: Hash128,
) -> Option<Vec<u8>> {
    let root = root.to_path_buf();
    let read =
        tokio::task::spawn_blocking(move || apply::read_range(&root, &item, offset, len)).await;
    match read {
        Ok(Ok(data)) if Hash128::of(&data) == hash => Some(data),
        _ => None,
    }
}
