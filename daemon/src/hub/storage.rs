//! The hub's object store: a folder under the hub's home by default, or an S3-compatible
//! store, through `object_store`. Everything the hub knows lives here, so any number of hub
//! processes can serve one store.
//!
//! Must not: check who may write what (`hub::names` and the service do), or read an object's
//! content (it is sealed).

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio_stream::StreamExt;

use crate::config::HubStorage;

/// A failure of the store, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the hub's storage: {0}")]
    Open(String),
    #[error("storage failed on {name}: {source}")]
    Store {
        name: String,
        #[source]
        source: object_store::Error,
    },
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name below the listed prefix's root (the whole name, as given to `put`).
    pub name: String,
    pub size: u64,
    /// Unix seconds of its last write.
    pub modified_s: i64,
}

/// The store, and a signer when it can hand out presigned URLs.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<AmazonS3>>,
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// An object of that name was there already; nothing was written.
    Existed,
}

impl Storage {
    /// Opens the store `config` names; a local store lives in `local_dir`.
    ///
    /// # Errors
    /// The folder cannot be made, or the S3 settings are not usable.
    pub fn open(local_dir: &FsPath, config: &HubStorage) -> Result<Storage, StorageError> {
        match config {
            HubStorage::Local => {
                std::fs::create_dir_all(local_dir)
                    .map_err(|e| StorageError::Open(format!("{}: {e}", local_dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(local_dir)
                    .map_err(|e| StorageError::Open(e.to_string()))?
                    .with_automatic_cleanup(true);
                Ok(Storage {
                    store: Arc::new(store),
                    signer: None,
                })
            }
            HubStorage::S3(s3) => {
                // reqwest's TLS takes the process's provider: ring, as everywhere else here
                // (an error only means one is installed already).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region);
                if !s3.endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&s3.endpoint)
                        .with_allow_http(s3.endpoint.starts_with("http://"));
                }
                if let Some(id) = &s3.access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                let store = Arc::new(
                    builder
                        .build()
                        .map_err(|e| StorageError::Open(e.to_string()))?,
                );
                Ok(Storage {
                    store: store.clone(),
                    signer: s3.presign.then_some(store),
                })
            }
        }
    }

    /// A store in memory, for tests of the layers above.
    #[must_use]
    pub fn in_memory() -> Storage {
        Storage {
            store: Arc::new(object_store::memory::InMemory::new()),
            signer: None,
        }
    }

    fn path(name: &str) -> Path {
        Path::from(name)
    }

    fn fail(name: &str) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
        move |source| StorageError::Store {
            name: name.to_owned(),
            source,
        }
    }

    /// Writes `data` under `name` unless an object of that name exists.
    ///
    /// # Errors
    /// The store fails.
    pub async fn create(&self, name: &str, data: Bytes) -> Result<Created, StorageError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&Self::path(name), PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Existed),
            Err(e) => Err(Self::fail(name)(e)),
        }
    }

    /// Writes `data` under `name`, replacing what is there.
    ///
    /// # Errors
    /// The store fails.
    pub async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Self::path(name), PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(Self::fail(name))
    }

    /// The object's bytes, `None` when there is none.
    ///
    /// # Errors
    /// The store fails.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>, StorageError> {
        match self.store.get(&Self::path(name)).await {
            Ok(got) => got.bytes().await.map(Some).map_err(Self::fail(name)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::fail(name)(e)),
        }
    }

    /// Whether an object of that name exists.
    ///
    /// # Errors
    /// The store fails.
    pub async fn exists(&self, name: &str) -> Result<bool, StorageError> {
        match self.store.head(&Self::path(name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::fail(name)(e)),
        }
    }

    /// Objects under `prefix` (a folder: `a/b/`), sorted by name, only those after `after`.
    ///
    /// # Errors
    /// The store fails.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<Listed>, StorageError> {
        let root = Self::path(prefix.trim_end_matches('/'));
        let mut stream = match after {
            Some(after) => self.store.list_with_offset(Some(&root), &Self::path(after)),
            None => self.store.list(Some(&root)),
        };
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(Self::fail(prefix))?;
            out.push(Listed {
                name: meta.location.to_string(),
                size: meta.size,
                modified_s: meta.last_modified.timestamp(),
            });
        }
        // Stores list in no promised order.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes the object; one already gone is no error.
    ///
    /// # Errors
    /// The store fails.
    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        match self.store.delete(&Self::path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::fail(name)(e)),
        }
    }

    /// A presigned URL for `method` (`GET` or `PUT`) on the object, when the store gives them.
    ///
    /// # Errors
    /// The store cannot sign.
    pub async fn presign(
        &self,
        put: bool,
        name: &str,
        expires: Duration,
    ) -> Result<Option<String>, StorageError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let method = if put {
            object_store::signer::Method::PUT
        } else {
            object_store::signer::Method::GET
        };
        signer
            .signed_url(method, &Self::path(name), expires)
            .await
            .map(|u| Some(u.to_string()))
            .map_err(Self::fail(name))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn exercise(s: &Storage) {
        assert_eq!(
            s.create("spaces/x/chunks/a", Bytes::from_static(b"1"))
                .await
                .unwrap(),
            Created::New
        );
        assert_eq!(
            s.create("spaces/x/chunks/a", Bytes::from_static(b"2"))
                .await
                .unwrap(),
            Created::Existed
        );
        assert_eq!(
            s.get("spaces/x/chunks/a").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert!(s.get("spaces/x/chunks/b").await.unwrap().is_none());
        for n in ["01", "02", "03"] {
            s.put(&format!("spaces/x/b/{n}"), Bytes::from_static(b"z"))
                .await
                .unwrap();
        }
        let names: Vec<String> = s
            .list("spaces/x/b/", Some("spaces/x/b/01"))
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["spaces/x/b/02", "spaces/x/b/03"]);
        s.delete("spaces/x/b/02").await.unwrap();
        s.delete("spaces/x/b/02").await.unwrap();
        assert_eq!(s.list("spaces/x/b/", None).await.unwrap().len(), 2);
        assert!(s.exists("spaces/x/b/03").await.unwrap());
    }

    #[tokio::test]
    async fn a_local_folder_store_creates_once_lists_in_order_and_deletes() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Storage::open(&tmp.path().join("storage"), &HubStorage::Local).unwrap();
        exercise(&s).await;
        assert!(
            s.presign(true, "a", Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_in_memory_store_behaves_the_same() {
        exercise(&Storage::in_memory()).await;
    }
}
