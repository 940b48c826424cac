//! This device's index of one source, sealed into bundles at one hub: the entries after what
//! the hub has, small files' content inline, larger files' chunks uploaded first (only those
//! the hub lacks), then the names of the chunks the bundle needs, then the bundle, then the
//! mark of how far the hub has it. From time to time a snapshot of the whole index, so a
//! newcomer (or a member away past the hub's retention) starts from it; and this device's
//! cursor, so the hub can collect what every member has passed.

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

/// Files up to this size are read whole for their one chunk (larger ones chunk by chunk
/// from the store's index of local copies).
const SMALL_FILE: u64 = 64 * 1024;
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
                    with_content_up_to: 0,
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
        let mut bytes = upload_chunks(ctx, client, link, row, &items).await?;
        // The chunks it needs, before the bundle: the hub keeps a chunk a bundle names.
        let refs = Object::BundleRefs {
            device: me.to_owned(),
            through,
        };
        link.objects
            .put(&refs.name(), refs_of(link, &items), true)
            .await?;
        let sealed = link
            .sealer
            .seal(
                &Binding::bundle(me, through),
                &bundle_bytes(&items, from, through),
            )
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
        link.own.since_snapshot += bytes;
        ctx.update_source(hub, &row.id, |s| {
            s.uploaded = through;
            s.uploaded_bundles += 1;
            s.uploaded_bytes += bytes;
        });
    }
    Ok(())
}

/// What a bundle or snapshot holds before it is sealed: the entries as one index update
/// through `through`, following what came up to `after`. The update names no source: its
/// space stands for it.
fn bundle_bytes(items: &[RemoteItem], after: u64, through: u64) -> Vec<u8> {
    let update = peer_pb::IndexUpdate {
        source: String::new(),
        items: items.iter().map(universal::item_to_pb).collect(),
        caught_up: false,
        through_sequence: through,
        moves: Vec::new(),
        expands: 0,
    };
    pb::Bundle {
        after,
        update: update.encode_to_vec(),
    }
    .encode_to_vec()
}

/// The names of the chunks live larger files of `items` need, one a line.
fn refs_of(link: &SourceLink, items: &[RemoteItem]) -> Vec<u8> {
    let mut names: Vec<String> = items
        .iter()
        .filter(|i| !i.header.deleted)
        .filter_map(|i| i.file().filter(|f| f.inline.is_none()))
        .flat_map(|f| f.chunks.iter().map(|c| link.sealer.chunk_name(&c.hash.0)))
        .collect();
    names.sort();
    names.dedup();
    names.join("\n").into_bytes()
}

/// A snapshot is made once the bundles since the last one outweigh it (so what a newcomer
/// reads stays within about twice the index), and at least this much of them; or once the
/// last one is older than an eighth of the hub's retention while bundles came after it (the
/// hub collects a member's bundles only as far as its newest snapshot, and a member that
/// relays others' changes sends many small bundles that each name chunks).
const SNAPSHOT_AFTER_BYTES: u64 = 64 * 1024;

/// This device's own standing objects at one hub.
pub(super) struct Own {
    /// Its newest snapshot there (`None`: not looked up yet; `Some(0)`: none).
    snapshot: Option<u64>,
    snapshot_bytes: u64,
    /// Bundle bytes uploaded since that snapshot, and when it was made (or looked up).
    pub since_snapshot: u64,
    snapshot_at: std::time::Instant,
    /// A snapshot older than this is renewed when bundles came after it.
    snapshot_age: std::time::Duration,
    /// The cursor last written, and when.
    cursor: Option<(std::collections::BTreeMap<String, u64>, std::time::Instant)>,
    /// How often the cursor is written even unchanged: well within the hub's retention.
    refresh: std::time::Duration,
}

impl Own {
    pub(super) fn new(retention: std::time::Duration) -> Own {
        Own {
            snapshot: None,
            snapshot_bytes: 0,
            since_snapshot: 0,
            snapshot_at: std::time::Instant::now(),
            snapshot_age: (retention / 8).clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(3600),
            ),
            cursor: None,
            refresh: (retention / 4).clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(3600),
            ),
        }
    }
}

/// Uploads a snapshot when one is due, and this device's cursor when it changed or is
/// getting old.
pub(super) async fn snapshot_and_cursor(
    ctx: &Ctx,
    hub: &str,
    client: &mut HubClient<Channel>,
    link: &mut SourceLink,
    row: &SourceRow,
    me: &str,
) -> Result<(), tonic::Status> {
    let applied = cursor_of(ctx, row).await?;
    let stale = link
        .own
        .cursor
        .as_ref()
        .is_none_or(|(sent, at)| *sent != applied || at.elapsed() >= link.own.refresh);
    if stale {
        let cursor = pb::Cursor {
            applied: applied.clone().into_iter().collect(),
            at_unix_s: unix_now(),
        };
        link.objects
            .put(
                &Object::Cursor {
                    device: me.to_owned(),
                }
                .name(),
                cursor.encode_to_vec(),
                false,
            )
            .await?;
        link.own.cursor = Some((applied, std::time::Instant::now()));
    }
    let uploaded = ctx
        .store
        .hub_uploaded(hub.to_owned(), row.id.clone())
        .await
        .map_err(internal)?;
    let local = ctx
        .store
        .totals(row.id.clone())
        .await
        .map_err(internal)?
        .sequence;
    if uploaded == 0 || uploaded < local {
        return Ok(());
    }
    let newest = match link.own.snapshot {
        Some(t) => t,
        None => {
            let listed = client
                .list(pb::ListRequest {
                    space: link.sealer.space().to_owned(),
                    prefix: crate::hub::names::snapshots_of(me),
                    after: String::new(),
                    limit: 0,
                })
                .await?
                .into_inner();
            let t = listed
                .objects
                .iter()
                .filter_map(|o| match Object::parse(&o.name) {
                    Ok(Object::Snapshot { through, .. }) => Some(through),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            link.own.snapshot = Some(t);
            t
        }
    };
    let heavy = link.own.since_snapshot >= link.own.snapshot_bytes.max(SNAPSHOT_AFTER_BYTES);
    let old = link.own.snapshot_at.elapsed() >= link.own.snapshot_age;
    let due = newest == 0 || (newest < uploaded && (heavy || old));
    if due {
        snapshot(ctx, client, link, row, me).await?;
    }
    Ok(())
}

/// How far this device has applied each member it shares the source with.
async fn cursor_of(
    ctx: &Ctx,
    row: &SourceRow,
) -> Result<std::collections::BTreeMap<String, u64>, tonic::Status> {
    let mut applied = std::collections::BTreeMap::new();
    for peer in &row.peers {
        let at = ctx
            .store
            .cursor(peer.clone(), row.id.clone())
            .await
            .map_err(internal)?;
        applied.insert(peer.clone(), at);
    }
    Ok(applied)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Uploads a snapshot of this device's whole index of the source: every entry (tombstones
/// too), small files inline, the chunks of larger ones checked to be on the hub.
async fn snapshot(
    ctx: &Ctx,
    client: &mut HubClient<Channel>,
    link: &mut SourceLink,
    row: &SourceRow,
    me: &str,
) -> Result<(), tonic::Status> {
    let mut items = Vec::new();
    let mut after = 0;
    let mut size = 0usize;
    loop {
        let read = ctx
            .store
            .items_since(
                row.id.clone(),
                after,
                IndexPage {
                    items: 5000,
                    bytes: BUNDLE_BUDGET,
                    with_content_up_to: 0,
                    except_from: None,
                    moves_after: None,
                },
            )
            .await
            .map_err(internal)?;
        let through = read
            .entries
            .iter()
            .map(|e| e.item.header.sequence)
            .max()
            .unwrap_or(0)
            .max(read.through);
        size += read.entries.len() * 64;
        items.extend(
            read.entries
                .into_iter()
                .filter_map(crate::peer::remote_item),
        );
        if through <= after {
            break;
        }
        after = through;
        if size > crate::hub::service::MAX_OBJECT_BYTES / 2 {
            tracing::warn!(source = %row.id, "the index is too large for one snapshot; the hub keeps every bundle of this device");
            return Ok(());
        }
    }
    // Chunks the hub collected since they were sent once are sent again.
    link.chunks_there.clear();
    upload_chunks(ctx, client, link, row, &items).await?;
    let plain = bundle_bytes(&items, 0, after);
    if plain.len() > crate::hub::service::MAX_OBJECT_BYTES - 1024 {
        tracing::warn!(source = %row.id, bytes = plain.len(), "the index is too large for one snapshot; the hub keeps every bundle of this device");
        return Ok(());
    }
    let sealed = link
        .sealer
        .seal(&Binding::snapshot(me, after), &plain)
        .map_err(internal)?;
    let refs = Object::SnapshotRefs {
        device: me.to_owned(),
        through: after,
    };
    link.objects
        .put(&refs.name(), refs_of(link, &items), true)
        .await?;
    let bytes = sealed.len() as u64;
    link.objects
        .put(
            &Object::Snapshot {
                device: me.to_owned(),
                through: after,
            }
            .name(),
            sealed,
            true,
        )
        .await?;
    debug!(source = %row.id, through = after, items = items.len(), bytes, "snapshot uploaded");
    link.own.snapshot = Some(after);
    link.own.snapshot_bytes = bytes;
    link.own.since_snapshot = 0;
    link.own.snapshot_at = std::time::Instant::now();
    Ok(())
}

/// The content of the items' small live files, by hash, read whole in one trip (a file
/// changed since its scan is left out: a later bundle has its new entry). A small file is one
/// chunk, whose hash is the file's.
async fn small_contents(
    row: &SourceRow,
    items: &[RemoteItem],
) -> std::collections::HashMap<crate::chunker::Hash128, bytes::Bytes> {
    let wanted: Vec<_> = items
        .iter()
        .filter_map(|item| {
            let file = item.file()?;
            let small = file.meta.kind == ItemKind::File
                && file.meta.size > 0
                && file.meta.size <= SMALL_FILE
                && file.chunks.len() == 1;
            if !small || item.header.deleted {
                return None;
            }
            let hash = file.hash?;
            Some((
                hash,
                item.path.clone(),
                u32::try_from(file.meta.size).ok()?,
                hash,
            ))
        })
        .collect();
    if wanted.is_empty() {
        return std::collections::HashMap::new();
    }
    let root = std::path::PathBuf::from(&row.path);
    tokio::task::spawn_blocking(move || crate::apply::read_whole_files(&root, wanted))
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Uploads the chunks of the items' files that the hub does not have (content always goes
/// as chunks, named by a keyed hash of their content, so every member's bundles and
/// snapshots share one copy); returns the sealed bytes sent. A chunk no longer on this device
/// (its file changed since the scan) is left out: a later bundle carries the file's new
/// entry.
async fn upload_chunks(
    ctx: &Ctx,
    client: &mut HubClient<Channel>,
    link: &mut SourceLink,
    row: &SourceRow,
    items: &[RemoteItem],
) -> Result<u64, tonic::Status> {
    if link.chunks_seen.elapsed() >= std::time::Duration::from_secs(60) {
        link.chunks_there.clear();
        link.chunks_seen = std::time::Instant::now();
    }
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
    let small = small_contents(row, items).await;
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
            let data = match small.get(&want.chunk.hash) {
                Some(data) => data.to_vec(),
                None => match local.get(want).await {
                    Ok(data) => data,
                    Err(_) => continue,
                },
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
