//! Chunks by hash from wherever they are: a chain of providers, tried in order (local copies
//! first, then connected peers, later the hub). Every answer is checked against its hash here,
//! whatever the provider promised.

use std::sync::Arc;

use super::BoxFuture;
use crate::apply;
use crate::chunker::{ChunkRef, Hash128};
use crate::store::StoreHandle;
use crate::universal::ItemPath;

/// One chunk wanted for an item of a source.
#[derive(Debug, Clone)]
pub struct ChunkWanted {
    pub source: String,
    /// The item that held it when it was announced (a provider may serve any copy).
    pub item: String,
    pub chunk: ChunkRef,
}

/// Something that may have chunks: this device's files, a peer, a hub.
pub trait ChunkProvider: Send + Sync + 'static {
    /// True for copies already on this device (counted as reused, not fetched).
    fn is_local(&self) -> bool;
    /// The chunk's bytes, or why this provider cannot give them.
    fn get<'a>(&'a self, want: &'a ChunkWanted) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// A chunk as a chain served it.
#[derive(Debug)]
pub struct Served {
    pub data: Vec<u8>,
    /// It came from this device's own files.
    pub local: bool,
}

/// Providers in the order they are asked.
#[derive(Clone, Default)]
pub struct ChunkChain {
    providers: Vec<Arc<dyn ChunkProvider>>,
}

impl ChunkChain {
    /// A chain asking `providers` in this order.
    pub fn new(providers: Vec<Arc<dyn ChunkProvider>>) -> ChunkChain {
        ChunkChain { providers }
    }

    /// The first verified answer; the last provider's error when none had it.
    pub async fn get(&self, want: &ChunkWanted) -> Result<Served, String> {
        let mut last = "no chunk provider is available".to_owned();
        for provider in &self.providers {
            match provider.get(want).await {
                Ok(data) if matches(&data, want.chunk) => {
                    return Ok(Served {
                        data,
                        local: provider.is_local(),
                    });
                }
                // A provider that verifies its own answers never gets here; one that does not
                // must not have its bytes written.
                Ok(_) => last = format!("a chunk of {} did not match its hash", want.item),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn matches(data: &[u8], chunk: ChunkRef) -> bool {
    usize::try_from(chunk.len).is_ok_and(|len| data.len() == len) && Hash128::of(data) == chunk.hash
}

/// Chunks already on this device, in any source: the store says where each hash lies, and
/// the file range is read (never through a symlink) and checked.
#[derive(Clone)]
pub struct LocalChunks {
    store: StoreHandle,
}

impl LocalChunks {
    /// Local copies as the store knows them.
    pub fn new(store: StoreHandle) -> LocalChunks {
        LocalChunks { store }
    }
}

impl ChunkProvider for LocalChunks {
    fn is_local(&self) -> bool {
        true
    }

    fn get<'a>(&'a self, want: &'a ChunkWanted) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let hash = want.chunk.hash;
            let locals = self
                .store
                .chunk_sources(hash)
                .await
                .map_err(|e| e.to_string())?;
            for loc in locals {
                let Ok(path) = ItemPath::parse(&loc.path) else {
                    continue;
                };
                let root = std::path::PathBuf::from(&loc.root);
                let read = tokio::task::spawn_blocking(move || {
                    apply::read_range(&root, &path, loc.offset, loc.len)
                })
                .await;
                if let Ok(Ok(data)) = read
                    && Hash128::of(&data) == hash
                {
                    return Ok(data);
                }
            }
            Err(format!("chunk {hash} is not on this device"))
        })
    }
}
