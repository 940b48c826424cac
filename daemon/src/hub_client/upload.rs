//! This device's index of one source, sealed into bundles at one hub: the entries after what
//! the hub has, small files' content inline, larger files' chunks uploaded first (only those
//! the hub lacks), then the bundle, then the mark of how far the hub has it.

use prost::Message;
use tandem_proto::hub as pb;
use tandem_proto::hub::hub_client::HubClient;
use tandem_proto::peer as peer_pb;
use tonic::transport::Channel;
use tracing::debug;

use super::Ctx;
use super::link::SourceLink;
use crate::feed::{ChunkProvider, ChunkWanted, LocalChunks};
use crate::hub::names::Object;
use crate::item::ItemKind;
use crate::sealed::Binding;
use crate::store::{IndexPage, SourceRow};
use crate::universal::{self, RemoteItem};

/// Files up to this size travel inside the bundle.
const INLINE_MAX: u64 = 64 * 1024;
/// A bundle is cut after about this many bytes of entries and inline content.
const BUNDLE_BUDGET: usize = 4 << 20;
/// Bundles uploaded per round, so downloads get their turn.
const BUNDLES_PER_ROUND: usize = 8;
/// Chunk names asked about in one `Has`.
const HAS_BATCH: usize = 1000;

fn internal(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(e.to_string())
}

/// Uploads what the hub does not have of this device's index of `row`.
pub(super) async fn step(
    ctx: &Ctx,
    hub: &str,
    client: &mut HubClient<Channel>,
    link: &mut SourceLink,
    row: &SourceRow,
    me: &str,
) -> Result<(), tonic::Status> {
    for _ in 0..BUNDLES_PER_ROUND {
        let local = ctx
            .store
            .totals(row.id.clone())
            .await
            .map_err(internal)?
            .sequence;
        let from = ctx
            .store
            .hub_uploaded(hub.to_owned(), row.id.clone())
            .await
            .map_err(internal)?;
        ctx.update_source(hub, &row.id, |s| s.uploaded = from);
        if local <= from {
            return Ok(());
        }
        let read = ctx
            .store
            .items_since(
                row.id.clone(),
                from,
                IndexPage {
                    items: 1000,
                    bytes: BUNDLE_BUDGET,
                    with_content_up_to: INLINE_MAX,
                    // Every member reads the bundle: nothing is left out for one of them.
                    except_from: None,
                    moves_after: None,
                },
            )
            .await
            .map_err(internal)?;
        let mut through = read.through.max(from);
        let mut items = Vec::with_capacity(read.entries.len());
        for entry in read.entries {
            through = through.max(entry.item.header.sequence);
            if let Some(item) = crate::peer::remote_item(entry) {
                items.push(item);
            }
        }
        if through <= from {
            return Ok(());
        }
        let items = with_inline(row, items).await;
        let mut bytes = upload_chunks(ctx, client, link, row, &items).await?;
        let update = peer_pb::IndexUpdate {
            // The bundle is sealed, and its space stands for the source.
            source: String::new(),
            items: items.iter().map(universal::item_to_pb).collect(),
            caught_up: false,
            through_sequence: through,
            moves: Vec::new(),
            expands: 0,
        };
        let bundle = pb::Bundle {
            after: from,
            update: update.encode_to_vec(),
        };
        let sealed = link
            .sealer
            .seal(&Binding::bundle(me, through), &bundle.encode_to_vec())
            .map_err(internal)?;
        bytes += sealed.len() as u64;
        let name = Object::Bundle {
            device: me.to_owned(),
            through,
        }
        .name();
        // Already there: an earlier upload got it in and this device did not record it.
        link.objects.put(&name, sealed, true).await?;
        ctx.store
            .set_hub_uploaded(hub.to_owned(), row.id.clone(), through)
            .await
            .map_err(internal)?;
        debug!(source = %row.id, through, items = items.len(), bytes, "bundle uploaded");
        ctx.update_source(hub, &row.id, |s| {
            s.uploaded = through;
            s.uploaded_bundles += 1;
            s.uploaded_bytes += bytes;
        });
    }
    Ok(())
}

/// Puts the content of small live files into their entries (a file changed since its scan
/// goes without: a later bundle has its new entry).
async fn with_inline(row: &SourceRow, mut items: Vec<RemoteItem>) -> Vec<RemoteItem> {
    let wanted: Vec<_> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let file = item.file()?;
            let small = file.meta.kind == ItemKind::File
                && file.meta.size > 0
                && file.meta.size <= INLINE_MAX;
            if !small || item.header.deleted {
                return None;
            }
            Some((
                i,
                item.path.clone(),
                u32::try_from(file.meta.size).ok()?,
                file.hash?,
            ))
        })
        .collect();
    if wanted.is_empty() {
        return items;
    }
    let root = std::path::PathBuf::from(&row.path);
    let read =
        tokio::task::spawn_blocking(move || crate::apply::read_whole_files(&root, wanted)).await;
    for (i, data) in read.unwrap_or_default() {
        if let Some(crate::item::Body::File(file)) = items.get_mut(i).map(|item| &mut item.body) {
            file.inline = Some(data);
        }
    }
    items
}

/// Uploads the chunks of the items' larger files that the hub does not have; returns the
/// sealed bytes sent. A chunk no longer on this device (its file changed since the scan) is
/// left out: a later bundle carries the file's new entry.
async fn upload_chunks(
    ctx: &Ctx,
    client: &mut HubClient<Channel>,
    link: &mut SourceLink,
    row: &SourceRow,
    items: &[RemoteItem],
) -> Result<u64, tonic::Status> {
    let mut wanted: Vec<(String, ChunkWanted)> = Vec::new();
    for item in items.iter().filter(|i| !i.header.deleted) {
        let Some(file) = item.file().filter(|f| f.inline.is_none()) else {
            continue;
        };
        for chunk in &file.chunks {
            let name = link.sealer.chunk_name(&chunk.hash.0);
            if link.chunks_there.contains(&name) || wanted.iter().any(|(n, _)| *n == name) {
                continue;
            }
            wanted.push((
                name,
                ChunkWanted {
                    source: row.id.clone(),
                    item: item.path.to_string(),
                    chunk: *chunk,
                },
            ));
        }
    }
    let space = link.sealer.space().to_owned();
    let local = LocalChunks::new(ctx.store.clone());
    let mut sent = 0u64;
    for batch in wanted.chunks(HAS_BATCH) {
        let present = client
            .has(pb::HasRequest {
                space: space.clone(),
                names: batch
                    .iter()
                    .map(|(n, _)| Object::Chunk(n.clone()).name())
                    .collect(),
            })
            .await?
            .into_inner()
            .present;
        for ((name, want), there) in batch
            .iter()
            .zip(present.into_iter().chain(std::iter::repeat(false)))
        {
            if there {
                link.chunks_there.insert(name.clone());
                continue;
            }
            let Ok(data) = local.get(want).await else {
                continue;
            };
            let sealed = link
                .sealer
                .seal(&Binding::chunk(name), &data)
                .map_err(internal)?;
            sent += sealed.len() as u64;
            link.objects
                .put(&Object::Chunk(name.clone()).name(), sealed, true)
                .await?;
            link.chunks_there.insert(name.clone());
        }
    }
    Ok(sent)
}
