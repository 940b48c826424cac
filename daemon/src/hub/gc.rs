//! Collection of what every member has passed. A member's bundle goes once every other
//! member whose cursor moved within the retention has applied it, and a snapshot of that
//! member covers it (a newcomer, or a member away longer, starts from the snapshot). Older
//! snapshots go once a newer one is there. Chunks go in two phases: those no bundle or newest
//! snapshot names are marked; a mark older than the grace period deletes what is still
//! unnamed then, so an upload that counted on a chunk meanwhile (it names it in its bundle's
//! refs, written before the bundle) keeps it.
//!
//! Must not: open a sealed object (cursors and refs are plaintext sequence numbers and opaque
//! chunk names); delete anything a live member still needs.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use prost::Message;
use tandem_proto::hub as pb;
use tracing::{debug, info, warn};

use super::names::{Object, space_prefix};
use super::space::{SpaceError, Spaces};
use super::storage::Listed;
use crate::config::HubConfig;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub bundles: usize,
    pub snapshots: usize,
    pub chunks: usize,
    pub bytes: u64,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Collects in every space of the store, every `config.gc_interval`, until `cancel`.
pub async fn run(
    spaces: std::sync::Arc<Spaces>,
    config: HubConfig,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(config.gc_interval) => {}
        }
        match collect_all(&spaces, &config).await {
            Ok(c) if c != Collected::default() => info!(
                bundles = c.bundles,
                snapshots = c.snapshots,
                chunks = c.chunks,
                bytes = c.bytes,
                "collected"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "collection failed; tried again later"),
        }
    }
}

/// One pass over every space.
///
/// # Errors
/// Storage fails.
pub async fn collect_all(spaces: &Spaces, config: &HubConfig) -> Result<Collected, SpaceError> {
    let listed = spaces.storage().list("spaces/", None).await?;
    let mut by_space: BTreeMap<String, Vec<(Object, Listed)>> = BTreeMap::new();
    for l in listed {
        let Some(rest) = l.name.strip_prefix("spaces/") else {
            continue;
        };
        let Some((space, name)) = rest.split_once('/') else {
            continue;
        };
        if let Ok(object) = Object::parse(name) {
            by_space
                .entry(space.to_owned())
                .or_default()
                .push((object, l.clone()));
        }
    }
    let mut total = Collected::default();
    for (space, objects) in by_space {
        let c = collect_space(spaces, &space, &objects, config).await?;
        total.bundles += c.bundles;
        total.snapshots += c.snapshots;
        total.chunks += c.chunks;
        total.bytes += c.bytes;
    }
    Ok(total)
}

/// Reads an object of the space as lines of chunk names.
async fn names_in(spaces: &Spaces, full: &str) -> Result<Vec<String>, SpaceError> {
    let bytes = spaces.storage().get(full).await?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

async fn collect_space(
    spaces: &Spaces,
    space: &str,
    objects: &[(Object, Listed)],
    config: &HubConfig,
) -> Result<Collected, SpaceError> {
    let prefix = space_prefix(space)?;
    let full = |o: &Object| format!("{prefix}/{}", o.name());
    let storage = spaces.storage();
    let members = spaces.members(space).await?;
    let now = now_s();
    let retention = i64::try_from(config.retention.as_secs()).unwrap_or(i64::MAX);

    // Members whose cursor moved within the retention hold collection back; the others
    // catch up from a snapshot when they come back.
    let mut cursors: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (o, l) in objects {
        let Object::Cursor { device } = o else {
            continue;
        };
        if !members.members.contains(device) || now.saturating_sub(l.modified_s) > retention {
            continue;
        }
        let bytes = storage.get(&l.name).await?.unwrap_or_default();
        match pb::Cursor::decode(bytes) {
            Ok(c) => {
                cursors.insert(device.clone(), c.applied.into_iter().collect());
            }
            Err(e) => warn!(space, device = %device, error = %e, "a cursor does not decode"),
        }
    }
    // A member that wrote objects but no cursor yet (it is joining right now) has not said
    // what it applied: nothing of the others goes until it does. A member that never wrote
    // anything is a newcomer, who starts from snapshots and holds nothing back.
    let silent = members.members.iter().any(|m| {
        let wrote = objects.iter().any(|(o, _)| o.owner() == Some(m.as_str()));
        let cursor = objects
            .iter()
            .any(|(o, _)| matches!(o, Object::Cursor { device } if device == m));
        wrote && !cursor
    });

    let mut bundles: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut snapshots: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (o, l) in objects {
        match o {
            Object::Bundle { device, through } => {
                bundles
                    .entry(device.clone())
                    .or_default()
                    .push((*through, l.size));
            }
            Object::Snapshot { device, through } => {
                snapshots
                    .entry(device.clone())
                    .or_default()
                    .push((*through, l.size));
            }
            _ => {}
        }
    }
    let mut c = Collected::default();
    let writers: BTreeSet<&String> = bundles.keys().chain(snapshots.keys()).collect();
    for device in writers {
        let newest = snapshots
            .get(device)
            .and_then(|s| s.iter().map(|(t, _)| *t).max())
            .unwrap_or(0);
        let passed = cursors
            .iter()
            .filter(|(m, _)| *m != device)
            .map(|(_, applied)| applied.get(device).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX);
        let limit = if silent { 0 } else { passed.min(newest) };
        for (through, size) in bundles.get(device).into_iter().flatten() {
            if *through > limit {
                continue;
            }
            let device = device.clone();
            storage
                .delete(&full(&Object::BundleRefs {
                    device: device.clone(),
                    through: *through,
                }))
                .await?;
            storage
                .delete(&full(&Object::Bundle {
                    device,
                    through: *through,
                }))
                .await?;
            c.bundles += 1;
            c.bytes += size;
        }
        for (through, size) in snapshots.get(device).into_iter().flatten() {
            if *through >= newest {
                continue;
            }
            let device = device.clone();
            storage
                .delete(&full(&Object::SnapshotRefs {
                    device: device.clone(),
                    through: *through,
                }))
                .await?;
            storage
                .delete(&full(&Object::Snapshot {
                    device,
                    through: *through,
                }))
                .await?;
            c.snapshots += 1;
            c.bytes += size;
        }
    }

    // Chunks: live when a remaining bundle's refs or a newest snapshot's refs name them (and
    // refs whose bundle is still being uploaded count: they are written first).
    let mut live: BTreeSet<String> = BTreeSet::new();
    for (o, l) in objects {
        let keep = match o {
            Object::BundleRefs { device, through } => {
                let newest = snapshots
                    .get(device)
                    .and_then(|s| s.iter().map(|(t, _)| *t).max())
                    .unwrap_or(0);
                let passed = !silent
                    && *through <= newest
                    && cursors
                        .iter()
                        .filter(|(m, _)| *m != device)
                        .all(|(_, a)| a.get(device).copied().unwrap_or(0) >= *through);
                !passed
            }
            Object::SnapshotRefs { device, through } => {
                let newest = snapshots
                    .get(device)
                    .and_then(|s| s.iter().map(|(t, _)| *t).max())
                    .unwrap_or(0);
                *through >= newest
            }
            _ => false,
        };
        if keep {
            live.extend(names_in(spaces, &l.name).await?);
        }
    }
    let chunks: BTreeMap<&str, u64> = objects
        .iter()
        .filter_map(|(o, l)| match o {
            Object::Chunk(name) => Some((name.as_str(), l.size)),
            _ => None,
        })
        .collect();
    let mut marked: BTreeSet<String> = BTreeSet::new();
    let grace = i64::try_from(config.chunk_grace.as_secs()).unwrap_or(i64::MAX);
    for (o, l) in objects {
        let Object::GcMark(at) = o else {
            continue;
        };
        let names = names_in(spaces, &l.name).await?;
        let at = i64::try_from(*at).unwrap_or(i64::MAX);
        if now.saturating_sub(at) < grace {
            marked.extend(names);
            continue;
        }
        // The second phase: what the mark named and is still unnamed goes.
        for name in names {
            if live.contains(&name) {
                continue;
            }
            if let Some(size) = chunks.get(name.as_str()) {
                storage.delete(&full(&Object::Chunk(name.clone()))).await?;
                c.chunks += 1;
                c.bytes += size;
            }
        }
        storage.delete(&l.name).await?;
    }
    let unmarked: Vec<&str> = chunks
        .keys()
        .copied()
        .filter(|n| !live.contains(*n) && !marked.contains(*n))
        .collect();
    if !unmarked.is_empty() {
        let at = u64::try_from(now).unwrap_or(0);
        // Create-only: another hub marking in the same second wrote the same kind of list.
        storage
            .create(
                &full(&Object::GcMark(at)),
                Bytes::from(unmarked.join("\n").into_bytes()),
            )
            .await?;
        debug!(space, chunks = unmarked.len(), "marked unreferenced chunks");
    }
    Ok(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::hub::storage::Storage;

    async fn put(spaces: &Spaces, object: &Object, data: &[u8]) {
        spaces
            .storage()
            .put(
                &format!("spaces/s/{}", object.name()),
                Bytes::copy_from_slice(data),
            )
            .await
            .unwrap();
    }

    async fn names(spaces: &Spaces) -> Vec<String> {
        spaces
            .storage()
            .list("spaces/s/", None)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name.trim_start_matches("spaces/s/").to_owned())
            .collect()
    }

    fn cursor(applied: &[(&str, u64)]) -> Vec<u8> {
        pb::Cursor {
            applied: applied.iter().map(|(d, s)| ((*d).to_owned(), *s)).collect(),
            at_unix_s: 0,
        }
        .encode_to_vec()
    }

    /// A space with members A, B and C; A wrote bundles 1..=3 (each naming chunk `c<n>`) and
    /// a snapshot at 3 (naming `c3`); B applied A through 3.
    async fn space() -> (Spaces, HubConfig) {
        let spaces = Spaces::new(Storage::in_memory());
        spaces.change("s", |m| m.join("A")).await.unwrap();
        spaces.change("s", |m| m.add("A", "B")).await.unwrap();
        spaces.change("s", |m| m.add("A", "C")).await.unwrap();
        for n in 1..=3u64 {
            let device = "A".to_owned();
            put(
                &spaces,
                &Object::Bundle {
                    device: device.clone(),
                    through: n,
                },
                b"x",
            )
            .await;
            put(
                &spaces,
                &Object::BundleRefs { device, through: n },
                format!("c{n}").as_bytes(),
            )
            .await;
            put(&spaces, &Object::Chunk(format!("c{n}")), b"chunk").await;
        }
        put(
            &spaces,
            &Object::Snapshot {
                device: "A".into(),
                through: 3,
            },
            b"s",
        )
        .await;
        put(
            &spaces,
            &Object::SnapshotRefs {
                device: "A".into(),
                through: 3,
            },
            b"c3",
        )
        .await;
        put(
            &spaces,
            &Object::Cursor { device: "A".into() },
            &cursor(&[("B", 0)]),
        )
        .await;
        put(
            &spaces,
            &Object::Cursor { device: "B".into() },
            &cursor(&[("A", 3)]),
        )
        .await;
        let config = HubConfig {
            chunk_grace: std::time::Duration::ZERO,
            ..HubConfig::default()
        };
        (spaces, config)
    }

    #[tokio::test]
    async fn a_member_that_never_wrote_anything_holds_nothing_back() {
        let (spaces, config) = space().await;
        // C never joined: A's bundles go (B has them, the snapshot covers them), and the
        // chunks only they named are marked, then deleted in the next pass.
        let first = collect_all(&spaces, &config).await.unwrap();
        assert_eq!(first.bundles, 3);
        let left = names(&spaces).await;
        assert!(!left.iter().any(|n| n.contains("/bundles/")), "{left:?}");
        let second = collect_all(&spaces, &config).await.unwrap();
        assert_eq!(
            second.chunks, 2,
            "c1 and c2 go, c3 is named by the snapshot"
        );
        let left = names(&spaces).await;
        assert!(left.contains(&"chunks/c3".to_owned()), "{left:?}");
        assert!(!left.contains(&"chunks/c1".to_owned()), "{left:?}");
    }

    #[tokio::test]
    async fn a_member_joining_right_now_holds_everything_back() {
        let (spaces, config) = space().await;
        // C has written its certificate but no cursor yet: it has not said what it applied.
        put(&spaces, &Object::Cert { device: "C".into() }, b"cert").await;
        let pass = collect_all(&spaces, &config).await.unwrap();
        assert_eq!(pass.bundles, 0);
        let again = collect_all(&spaces, &config).await.unwrap();
        assert_eq!(again.chunks, 0, "chunks bundles still name stay");
    }
}
