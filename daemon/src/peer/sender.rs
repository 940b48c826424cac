//! This device's index of one source, streamed to one peer from its cursor on, then live;
//! what came from that peer is not echoed back to it.

use std::collections::VecDeque;

use bytes::Bytes;
use prost::Message;
use tandem_proto::peer::{self as pb, frame::Body};
use tokio::sync::watch;
use tracing::warn;

use super::connection::Outbound;
use super::{Ctx, SharedSource, board_update};
use crate::apply;
use crate::chunker::Hash128;
use crate::item::{self, ItemKind};
use crate::store::{self, IndexPage};
use crate::universal::{self, ItemPath, RemoteFile, RemoteItem};

/// Index updates are cut well below the frame limit.
const UPDATE_BUDGET: usize = 1 << 20;
/// Unacknowledged index updates in flight per source (flow control).
pub(super) const INDEX_WINDOW: usize = 8;

/// Files up to this size travel with their entry: for a small file the request round trip
/// would cost far more than its bytes.
pub(super) const INLINE_MAX: u64 = 64 * 1024;
const _: () = assert!(INLINE_MAX as usize <= universal::MAX_INLINE_BYTES);

/// Streams this device's index of one source to the peer, from its cursor on, then live.
pub(super) struct Sender {
    pub(super) ctx: Ctx,
    pub(super) device: String,
    pub(super) src: SharedSource,
    pub(super) out: Outbound,
    pub(super) from: u64,
    pub(super) acked: watch::Receiver<u64>,
}

impl Sender {
    pub(super) async fn run(mut self) {
        let mut status = self.src.status.clone();
        let mut unacked: VecDeque<u64> = VecDeque::new();
        let mut told_caught_up = false;
        loop {
            let acked = *self.acked.borrow_and_update();
            while unacked.front().is_some_and(|s| *s <= acked) {
                unacked.pop_front();
            }
            if unacked.len() >= INDEX_WINDOW {
                if self.acked.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let read = match self
                .ctx
                .store
                .items_since(
                    self.src.id.clone(),
                    self.from,
                    IndexPage {
                        items: 1000,
                        bytes: UPDATE_BUDGET,
                        with_content_up_to: INLINE_MAX,
                        // The peer sent us exactly those versions: echoing them back is
                        // wasted bytes (and reading them, wasted work).
                        except_from: Some(self.device.clone()),
                    },
                )
                .await
            {
                Ok(read) => read,
                Err(e) => {
                    warn!(error = %e, source = %self.src.id, "cannot read the index to send");
                    return;
                }
            };
            if read.entries.is_empty() && read.through <= self.from {
                // "Caught up" promises the receiver there is nothing more to come: not while
                // this device is still scanning, which would number more changes.
                if !self.src.status.borrow().settled() {
                    let from = self.from;
                    if status
                        .wait_for(|s| s.totals.sequence > from || s.settled())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                if !told_caught_up {
                    let update = pb::IndexUpdate {
                        source: self.src.id.clone(),
                        items: Vec::new(),
                        caught_up: true,
                        through_sequence: self.from,
                    };
                    if !self.out.send(Body::Index(update)).await {
                        return;
                    }
                    told_caught_up = true;
                    unacked.push_back(self.from);
                }
                // Sleep until this device numbers something new.
                let from = self.from;
                if status.wait_for(|s| s.totals.sequence > from).await.is_err() {
                    return;
                }
                continue;
            }
            let mut batch = Vec::new();
            let mut size = 0usize;
            let mut last = self.from;
            let mut cut = false;
            for entry in read.entries {
                let (prior, chunks) = (entry.item, entry.chunks);
                let Ok(path) = ItemPath::parse(&prior.key) else {
                    last = prior.header.sequence;
                    continue;
                };
                // An exchange of files carries files only (the receiver refuses a record).
                let Some(file) = prior.file() else {
                    last = prior.header.sequence;
                    continue;
                };
                let item = RemoteItem {
                    path,
                    header: item::Header {
                        origin: None,
                        ..prior.header.clone()
                    },
                    body: item::Body::File(RemoteFile {
                        meta: file.meta.clone(),
                        hash: file.hash,
                        chunks,
                        inline: None,
                    }),
                };
                // Counted with its content, which a small file will most likely carry.
                let len = universal::item_to_pb(&item).encoded_len()
                    + usize::try_from(inline_len(&item).unwrap_or(0)).unwrap_or(0);
                if !batch.is_empty() && size + len > UPDATE_BUDGET {
                    cut = true;
                    break;
                }
                size += len;
                last = prior.header.sequence;
                batch.push(item);
            }
            if !cut {
                // Past what was read, up to where the read reached: the peer's own versions.
                last = last.max(read.through);
            }
            let batch = with_inline_content(&self.ctx, &self.src, batch).await;
            let batch: Vec<pb::Item> = batch.iter().map(universal::item_to_pb).collect();
            let n = batch.len() as u64;
            let update = pb::IndexUpdate {
                source: self.src.id.clone(),
                items: batch,
                caught_up: false,
                through_sequence: last,
            };
            if !self.out.send(Body::Index(update)).await {
                return;
            }
            self.from = last;
            told_caught_up = false;
            unacked.push_back(last);
            board_update(&self.ctx, &self.device, &self.src.id, |s| {
                s.sent_items += n;
                s.sent_sequence = last;
            });
        }
    }
}

/// The content size of an item that may travel inline: a live regular file no larger than
/// [`INLINE_MAX`].
fn inline_len(item: &RemoteItem) -> Option<u64> {
    let file = item.file()?;
    let small = file.meta.kind == ItemKind::File && file.meta.size <= INLINE_MAX;
    (small && !item.header.deleted && file.hash.is_some()).then_some(file.meta.size)
}

/// Reads the content of the update's small files in one trip to the blocking pool. A file that
/// no longer holds what its entry says (changed since its scan, which will announce it anew)
/// goes without: the receiver asks for its chunks and retries until the new entry comes.
async fn with_inline_content(
    ctx: &Ctx,
    src: &SharedSource,
    mut batch: Vec<RemoteItem>,
) -> Vec<RemoteItem> {
    let wanted: Vec<(usize, ItemPath, u32, Option<Hash128>)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let len = u32::try_from(inline_len(item)?).ok().filter(|n| *n > 0)?;
            Some((i, item.path.clone(), len, item.file()?.hash))
        })
        .collect();
    if wanted.is_empty() {
        return batch;
    }
    // Content this device holds under another name too (a moved or copied file) is most
    // likely on the peer already: it goes by chunk, for the peer to copy locally. Content too
    // small to be indexed by chunk always travels: the peer could not find a copy of it.
    let (mut wanted, tiny): (Vec<_>, Vec<_>) = wanted
        .into_iter()
        .partition(|(_, _, len, _)| store::indexed_by_chunk(u64::from(*len)));
    let asked: Vec<(String, Vec<[u8; 16]>)> = wanted
        .iter()
        .map(|(i, path, _, _)| {
            let hashes = batch[*i]
                .file()
                .map(|f| f.chunks.iter().map(|c| c.hash.0).collect())
                .unwrap_or_default();
            (path.to_string(), hashes)
        })
        .collect();
    if !asked.is_empty()
        && let Ok(held) = ctx.store.held_elsewhere(src.id.clone(), asked).await
    {
        let mut held = held.into_iter();
        wanted.retain(|_| !held.next().unwrap_or(false));
    }
    // Content found gone in the same scan (a folder renamed, say) is held by the peer under
    // the old name until the deletion reaches it.
    wanted.retain(|(_, _, _, hash)| !hash.is_some_and(|h| src.gone.contains(&h)));
    wanted.extend(tiny);
    let root = src.root.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut folders = apply::RealFolders::default();
        wanted
            .into_iter()
            .filter_map(|(i, path, len, hash)| {
                let data = apply::read_range_in(&root, &path, 0, len, &mut folders).ok()?;
                (Some(Hash128::of(&data)) == hash).then(|| (i, Bytes::from(data)))
            })
            .collect::<Vec<(usize, Bytes)>>()
    })
    .await;
    // A failed read loses only the inline content, which the receiver then asks for.
    for (i, data) in read.unwrap_or_default() {
        if let Some(item::Body::File(file)) = batch.get_mut(i).map(|item| &mut item.body) {
            file.inline = Some(data);
        }
    }
    batch
}
