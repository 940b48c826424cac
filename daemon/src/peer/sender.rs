//! This device's index of one source, streamed to one peer from its cursor on, then live;
//! what came from that peer is not echoed back to it.

use std::collections::VecDeque;

use prost::Message;
use tandem_proto::peer::{self as pb, frame::Body};
use tokio::sync::watch;
use tracing::warn;

use super::connection::Outbound;
use super::{Ctx, SharedSource, board_update};
use crate::item;
use crate::universal::{self, ItemPath, RemoteFile, RemoteItem};

/// Index updates are cut well below the frame limit.
const UPDATE_BUDGET: usize = 4 << 20;
/// Unacknowledged index updates in flight per source (flow control).
pub(super) const INDEX_WINDOW: usize = 8;

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
            let items = match self
                .ctx
                .store
                .items_since(self.src.id.clone(), self.from, 1000)
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    warn!(error = %e, source = %self.src.id, "cannot read the index to send");
                    return;
                }
            };
            if items.is_empty() {
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
            for entry in items {
                let (prior, chunks) = (entry.item, entry.chunks);
                if prior.header.origin.as_deref() == Some(self.device.as_str()) {
                    // The peer sent us exactly this version: echoing it back is wasted bytes.
                    last = prior.header.sequence;
                    continue;
                }
                let Ok(path) = ItemPath::parse(&prior.key) else {
                    last = prior.header.sequence;
                    continue;
                };
                // An exchange of files carries files only (the receiver refuses a record).
                let Some(file) = prior.file() else {
                    last = prior.header.sequence;
                    continue;
                };
                let body = item::Body::File(RemoteFile {
                    meta: file.meta.clone(),
                    hash: file.hash,
                    chunks,
                });
                let item = RemoteItem {
                    path,
                    header: item::Header {
                        origin: None,
                        ..prior.header.clone()
                    },
                    body,
                };
                let msg = universal::item_to_pb(&item);
                let len = msg.encoded_len();
                if !batch.is_empty() && size + len > UPDATE_BUDGET {
                    break;
                }
                size += len;
                last = prior.header.sequence;
                batch.push(msg);
            }
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
