//! The receiving pipeline: differences of one source from a feed (a peer's stream today, a
//! hub's bundles later) are decided against the prior state, their missing content is fetched
//! by hash through a chain of chunk providers (local copies first), they go to the source task
//! in the sender's order, and how far they were applied goes back through the feed.
//!
//! Adding a transport means implementing [`Feed`] (and a [`ChunkProvider`] if it can serve
//! content); nothing in here changes. Must not: name a gRPC or prost type (a feed converts
//! its wire messages through `universal` first), or write into a source itself (the source
//! task and its format do).

mod fetch;
mod providers;
mod receive;

use std::future::Future;
use std::pin::Pin;

pub use fetch::{BuildKey, Claims};
pub use providers::{ChunkChain, ChunkProvider, ChunkWanted, LocalChunks};
pub use receive::Receiver;

use crate::universal::{FolderMove, Refused, RemoteItem};

/// A boxed future, for the object-safe traits of this module.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A numbered run of differences of one source, in the sender's sequence order, each item
/// already checked by `universal` (a refused one says why).
#[derive(Debug, Default)]
pub struct Update {
    pub items: Vec<Result<RemoteItem, Refused>>,
    /// Folders renamed whole, each standing for its entries, numbered after the items: the
    /// receiver derives those from its prior state, or asks for them ([`Feed::expand`]).
    pub moves: Vec<FolderMove>,
    /// On the last update that answers [`Feed::expand`]: the first sequence of that move.
    pub expands: Option<u64>,
    /// The sender's index is complete up to this sequence (items it left out included).
    pub through: u64,
    /// The sender says it has sent everything it numbered and has nothing left to scan.
    pub caught_up: bool,
}

/// Who the differences of a feed come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Full device ID: the cursor's key, and the device not to echo these items back to.
    pub device: String,
    /// Short device name, for events and conflict copy names.
    pub short: String,
}

/// What a receiver tells its feed as it goes, for `status` and `wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Items just received, now to be dealt with; the receiver is busy.
    Needed { items: u64, bytes: u64 },
    /// Items dealt with (applied, skipped, refused or set aside for a retry).
    Dealt { items: u64, bytes: u64 },
    /// Items applied or found present.
    Done(u64),
    /// Chunk bytes copied from files already on this device instead of fetched.
    Reused(u64),
    /// How far the feed's index is applied here and gone through; idle when nothing waits.
    Acknowledged { applied: u64, seen: u64, idle: bool },
    /// The sender's last update said whether it had sent everything.
    CaughtUp(bool),
    /// A folder move was taken as one operation (true), or asked for entry by entry.
    Moved(bool),
    /// The last thing that went wrong, naming the item.
    Error(String),
}

/// Where differences come from and where acknowledgements go.
pub trait Feed: Send + Sync + 'static {
    /// The device whose index this feed delivers.
    fn origin(&self) -> &Origin;
    /// Tells the sender how far its index is applied here (`applied`: everything up to it,
    /// nothing held back for a retry) and how far the receiver has gone through it.
    fn acknowledge(&self, applied: u64, received: u64) -> BoxFuture<'_, ()>;
    /// Reports progress.
    fn progress(&self, progress: Progress);
    /// Something the feed delivered breaks a rule: counted and logged against it.
    fn refused(&self, what: &str);
    /// Asks the sender for the entries of the folder move numbered from `first_sequence`,
    /// one by one: this device's prior state of the folder is not the sender's.
    fn expand(&self, first_sequence: u64) -> BoxFuture<'_, ()>;
}

#[cfg(test)]
mod tests;
