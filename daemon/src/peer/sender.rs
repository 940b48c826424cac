//! This device's index of one source, streamed to one peer from its cursor on, then live;
//! what came from that peer is not echoed back to it.

use std::collections::{BTreeMap, VecDeque};

use prost::Message;
use tandem_proto::peer::{self as pb, frame::Body};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::connection::Outbound;
use super::{Ctx, SharedSource, board_update, refuse};
use crate::apply;
use crate::chunker::Hash128;
use crate::item::{self, ItemKind};
use crate::moves;
use crate::store::{self, IndexEntry, IndexPage};
use crate::universal::{self, ItemPath, RemoteFile, RemoteItem};

/// Index updates are cut well below the frame limit.
const UPDATE_BUDGET: usize = 1 << 20;
/// Unacknowledged index updates in flight per source (flow control).
pub(super) const INDEX_WINDOW: usize = 8;

/// Files up to this size travel with their entry: for a small file the request round trip
/// would cost far more than its bytes.
pub(super) const INLINE_MAX: u64 = 64 * 1024;
const _: () = assert!(INLINE_MAX as usize <= universal::MAX_INLINE_BYTES);

/// Folder moves announced on this connection remembered for a peer that may ask for their
/// entries (it asks as soon as it takes the move in, well within the index window).
const MOVES_REMEMBERED: usize = 4096;

/// Streams this device's index of one source to the peer, from its cursor on, then live.
pub(super) struct Sender {
    pub(super) ctx: Ctx,
    pub(super) device: String,
    pub(super) src: SharedSource,
    pub(super) out: Outbound,
    pub(super) from: u64,
    pub(super) acked: watch::Receiver<u64>,
    /// The peer takes folder moves as one operation.
    pub(super) moves: bool,
    /// First sequences of moves the peer wants entry by entry.
    pub(super) expand: mpsc::Receiver<u64>,
}

/// What the loop is doing besides reading: moves sent, and expansions asked for.
#[derive(Default)]
struct Moves {
    /// Announced on this connection: first sequence → last.
    sent: BTreeMap<u64, u64>,
    /// Asked to be expanded, not yet answered.
    asked: Vec<u64>,
    /// Noted moves up to this first sequence go entry by entry (their range changed).
    declined: u64,
}

impl Sender {
    pub(super) async fn run(mut self) {
        let mut status = self.src.status.clone();
        let mut unacked: VecDeque<u64> = VecDeque::new();
        let mut told_caught_up = false;
        let mut moves = Moves::default();
        loop {
            // The peer holds its acknowledgements back until these are answered.
            while let Ok(first) = self.expand.try_recv() {
                moves.asked.push(first);
            }
            for first in std::mem::take(&mut moves.asked) {
                if !self
                    .expand_move(&moves, first, told_caught_up, &mut unacked)
                    .await
                {
                    return;
                }
                moves.sent.remove(&first);
            }
            let acked = *self.acked.borrow_and_update();
            while unacked.front().is_some_and(|s| *s <= acked) {
                unacked.pop_front();
            }
            if unacked.len() >= INDEX_WINDOW {
                tokio::select! {
                    changed = self.acked.changed() => if changed.is_err() {
                        return;
                    },
                    Some(first) = self.expand.recv() => moves.asked.push(first),
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
                        moves_after: self.moves.then_some(moves.declined),
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
            if let Some(at) = read.at_move {
                let first = at.note.first_sequence;
                let Some(mv) = moves::announce(&at.note, &at.entries, &self.device) else {
                    // Something in it changed again since: its entries go one by one.
                    moves.declined = first;
                    continue;
                };
                let last = mv.last_sequence;
                let update = pb::IndexUpdate {
                    source: self.src.id.clone(),
                    items: Vec::new(),
                    caught_up: false,
                    through_sequence: last,
                    moves: vec![universal::move_to_pb(&mv)],
                    expands: 0,
                };
                if !self.out.send(Body::Index(update)).await {
                    return;
                }
                moves.sent.insert(first, last);
                while moves.sent.len() > MOVES_REMEMBERED {
                    moves.sent.pop_first();
                }
                self.from = last;
                told_caught_up = false;
                unacked.push_back(last);
                let n = at.entries.len() as u64;
                board_update(&self.ctx, &self.device, &self.src.id, |s| {
                    s.sent_items += n;
                    s.sent_sequence = last;
                });
                continue;
            }
            if read.entries.is_empty() && read.through <= self.from {
                // "Caught up" promises the receiver there is nothing more to come: not while
                // this device is still scanning, which would number more changes.
                if !self.src.status.borrow().settled() {
                    let from = self.from;
                    tokio::select! {
                        waited = status.wait_for(|s| s.totals.sequence > from || s.settled()) => {
                            if waited.is_err() {
                                return;
                            }
                        }
                        Some(first) = self.expand.recv() => moves.asked.push(first),
                    }
                    continue;
                }
                if !told_caught_up {
                    let update = pb::IndexUpdate {
                        source: self.src.id.clone(),
                        items: Vec::new(),
                        caught_up: true,
                        through_sequence: self.from,
                        moves: Vec::new(),
                        expands: 0,
                    };
                    if !self.out.send(Body::Index(update)).await {
                        return;
                    }
                    told_caught_up = true;
                    unacked.push_back(self.from);
                }
                // Sleep until this device numbers something new.
                let from = self.from;
                tokio::select! {
                    waited = status.wait_for(|s| s.totals.sequence > from) => {
                        if waited.is_err() {
                            return;
                        }
                    }
                    Some(first) = self.expand.recv() => moves.asked.push(first),
                }
                continue;
            }
            let mut batch = Vec::new();
            let mut size = 0usize;
            let mut last = self.from;
            let mut cut = false;
            for entry in read.entries {
                let seq = entry.item.header.sequence;
                // A key no peer would take is left out.
                let Some(item) = remote_item(entry) else {
                    last = seq;
                    continue;
                };
                // Counted with its content, which a small file will most likely carry.
                let len = wire_len(&item);
                if !batch.is_empty() && size + len > UPDATE_BUDGET {
                    cut = true;
                    break;
                }
                size += len;
                last = seq;
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
                moves: Vec::new(),
                expands: 0,
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

    /// Sends the current entries of a move announced on this connection, one by one, in
    /// updates of the usual size; the last says which move it expands. A move this connection
    /// did not announce is refused. False once the connection is closed.
    async fn expand_move(
        &mut self,
        moves: &Moves,
        first: u64,
        caught_up: bool,
        unacked: &mut VecDeque<u64>,
    ) -> bool {
        let Some(&last) = moves.sent.get(&first) else {
            refuse(
                &self.ctx,
                &self.device,
                &format!("asked for the entries of a folder move at {first} it was not sent"),
            );
            return true;
        };
        let entries = match self
            .ctx
            .store
            .entries_in(self.src.id.clone(), first, last)
            .await
        {
            Ok(entries) => entries,
            Err(e) => {
                // Without its answer the peer never acknowledges past the move; a new
                // connection announces it again.
                warn!(error = %e, source = %self.src.id, "cannot read a folder move's entries");
                return false;
            }
        };
        let mut parts: Vec<Vec<RemoteItem>> = vec![Vec::new()];
        let mut size = 0usize;
        for item in entries.into_iter().filter_map(remote_item) {
            let len = wire_len(&item);
            let full = parts
                .last()
                .is_some_and(|p| !p.is_empty() && (size + len > UPDATE_BUDGET || p.len() >= 1000));
            if full {
                parts.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(part) = parts.last_mut() {
                part.push(item);
            }
        }
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let part = with_inline_content(&self.ctx, &self.src, part).await;
            let update = pb::IndexUpdate {
                source: self.src.id.clone(),
                items: part.iter().map(universal::item_to_pb).collect(),
                // Sending these changes nothing of what the peer was told of the rest.
                caught_up: caught_up && i + 1 == count,
                through_sequence: self.from,
                moves: Vec::new(),
                expands: if i + 1 == count { first } else { 0 },
            };
            if !self.out.send(Body::Index(update)).await {
                return false;
            }
            unacked.push_back(self.from);
        }
        true
    }
}

/// An entry of the index as a peer is sent it; `None` for a key no peer would take (a path
/// that is no item path, a record key that is no UID).
pub(crate) fn remote_item(entry: IndexEntry) -> Option<RemoteItem> {
    let (prior, chunks) = (entry.item, entry.chunks);
    if let Some(record) = prior.body.record() {
        return Some(RemoteItem {
            path: ItemPath::record_key(&prior.key).ok()?,
            header: item::Header {
                origin: None,
                ..prior.header.clone()
            },
            body: item::Body::Record(record.to_vec()),
        });
    }
    let path = ItemPath::parse(&prior.key).ok()?;
    let file = prior.file()?;
    Some(RemoteItem {
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
    })
}

/// An item's size on the wire, with the content a small file will most likely carry.
fn wire_len(item: &RemoteItem) -> usize {
    universal::item_to_pb(item).encoded_len()
        + usize::try_from(inline_len(item).unwrap_or(0)).unwrap_or(0)
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
    let wanted = wanted
        .into_iter()
        .filter_map(|(i, path, len, hash)| Some((i, path, len, hash?)))
        .collect();
    let read = tokio::task::spawn_blocking(move || apply::read_whole_files(&root, wanted)).await;
    // A failed read loses only the inline content, which the receiver then asks for.
    for (i, data) in read.unwrap_or_default() {
        if let Some(item::Body::File(file)) = batch.get_mut(i).map(|item| &mut item.body) {
            file.inline = Some(data);
        }
    }
    batch
}
