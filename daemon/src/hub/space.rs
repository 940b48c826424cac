//! A space's membership as the hubs keep it in storage: the log read and folded, and an event
//! appended. Two hubs that append at once both try the same next number with a create-only
//! write; one wins, the other reads the log again and decides anew on what is now there.
//!
//! Must not: decide who may do what (`hub::members` does), or keep state that storage does
//! not also hold (the cache is only a shortcut, re-read before any refusal).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tandem_proto::hub as pb;

use super::members::{Event, Members, Refusal};
use super::names::{BadName, Object, space_prefix};
use super::storage::{Created, Storage, StorageError};

/// How long a hub trusts its cached fold of a log before reading it again. A member removed
/// through another hub is refused here at most this much later.
const CACHE_FOR: Duration = Duration::from_secs(2);
/// Appends tried before giving up (each lost race means another hub appended meanwhile).
const APPEND_TRIES: usize = 32;

/// Why a membership request fails.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Name(#[from] BadName),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("membership event {name} cannot be read: {why}")]
    Corrupt { name: String, why: String },
    #[error("membership of the space keeps changing under this hub; try again")]
    Busy,
}

#[derive(Debug, Clone)]
struct Folded {
    members: Members,
    /// The number the next event takes.
    next: u64,
    read_at: Instant,
}

/// The membership of every space this hub serves, read from storage.
#[derive(Debug)]
pub struct Spaces {
    storage: Storage,
    cache: Mutex<HashMap<String, Folded>>,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Spaces {
    /// Spaces kept in `storage`.
    #[must_use]
    pub fn new(storage: Storage) -> Spaces {
        Spaces {
            storage,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The storage the spaces live in.
    #[must_use]
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Reads a space's log from storage and folds it.
    async fn read(&self, space: &str) -> Result<Folded, SpaceError> {
        let prefix = space_prefix(space)?;
        let listed = self.storage.list(&format!("{prefix}/log/"), None).await?;
        let mut events = Vec::with_capacity(listed.len());
        let mut next = 0;
        for l in listed {
            let rel = l
                .name
                .strip_prefix(&format!("{prefix}/"))
                .unwrap_or(&l.name);
            let Ok(Object::Log(n)) = Object::parse(rel) else {
                continue;
            };
            let Some(bytes) = self.storage.get(&l.name).await? else {
                continue;
            };
            let e = pb::MembershipEvent::decode(bytes).map_err(|e| SpaceError::Corrupt {
                name: l.name.clone(),
                why: e.to_string(),
            })?;
            events.push(Event {
                device: e.device,
                removed: e.removed,
                by: e.by,
            });
            next = next.max(n + 1);
        }
        let folded = Folded {
            members: Members::fold(&events),
            next,
            read_at: Instant::now(),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(space.to_owned(), folded.clone());
        }
        Ok(folded)
    }

    /// The members of a space, from a recent read or a new one.
    ///
    /// # Errors
    /// Storage fails or holds an unreadable event.
    pub async fn members(&self, space: &str) -> Result<Members, SpaceError> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(space).cloned())
            .filter(|f| f.read_at.elapsed() < CACHE_FOR);
        match cached {
            Some(f) => Ok(f.members),
            None => Ok(self.read(space).await?.members),
        }
    }

    /// Checks that `device` is a member now; a refusal is always confirmed by a fresh read.
    ///
    /// # Errors
    /// Not a member (or removed), or storage fails.
    pub async fn check(&self, space: &str, device: &str) -> Result<(), SpaceError> {
        if self.members(space).await?.check(device).is_ok() {
            return Ok(());
        }
        Ok(self.read(space).await?.members.check(device)?)
    }

    /// Decides on the current log with `decide` and appends the event it gives, again on a
    /// fresh read whenever another hub appended first. Returns the members after it.
    ///
    /// # Errors
    /// `decide` refuses, storage fails, or the log keeps changing.
    pub async fn change(
        &self,
        space: &str,
        decide: impl Fn(&Members) -> Result<Option<Event>, Refusal>,
    ) -> Result<Members, SpaceError> {
        let prefix = space_prefix(space)?;
        for _ in 0..APPEND_TRIES {
            let folded = self.read(space).await?;
            let Some(event) = decide(&folded.members)? else {
                return Ok(folded.members);
            };
            let bytes = pb::MembershipEvent {
                device: event.device.clone(),
                removed: event.removed,
                by: event.by.clone(),
                at_unix_s: now_s(),
            }
            .encode_to_vec();
            let name = format!("{prefix}/{}", Object::Log(folded.next).name());
            if self.storage.create(&name, Bytes::from(bytes)).await? == Created::New {
                return Ok(self.read(space).await?.members);
            }
        }
        Err(SpaceError::Busy)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_hubs_over_one_store_agree_on_members() {
        let storage = Storage::in_memory();
        let one = Spaces::new(storage.clone());
        let two = Spaces::new(storage.clone());
        one.change("s", |m| m.join("A")).await.unwrap();
        // The second hub sees A as the founder: B cannot found the space again.
        assert!(matches!(
            two.change("s", |m| m.join("B")).await,
            Err(SpaceError::Refused(Refusal::NotMember(_)))
        ));
        // Both add a member at once: both events land, one after the other.
        let (a, b) = tokio::join!(
            one.change("s", |m| m.add("A", "B")),
            two.change("s", |m| m.add("A", "C"))
        );
        a.unwrap();
        b.unwrap();
        let m = one.read("s").await.unwrap().members;
        assert_eq!(m.members.len(), 3, "{m:?}");
        // A removal through one hub is seen by the other's check (a refusal is re-read; an
        // acceptance may be up to CACHE_FOR old).
        two.check("s", "C").await.unwrap();
        one.change("s", |m| m.remove("A", "C")).await.unwrap();
        two.read("s").await.unwrap();
        assert!(matches!(
            two.check("s", "C").await,
            Err(SpaceError::Refused(Refusal::Removed(_)))
        ));
        assert!(matches!(
            two.check("s", "Z").await,
            Err(SpaceError::Refused(Refusal::NotMember(_)))
        ));
    }
}
