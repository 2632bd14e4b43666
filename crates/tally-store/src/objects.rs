//! Where segment files live: any `object_store` backend, addressed by URL.
//!
//! The local filesystem (`file://...`, the default) gets one extra step
//! object stores do not need: after a put, the file and its directory are
//! fsynced, because the write-ahead log file behind a segment is deleted once
//! the segment is cataloged, and a power cut must not leave neither.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The URL is not usable.
    #[error("raw store URL '{url}' is not usable: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The store refused an operation.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Local fsync failed.
    #[error("cannot sync {path}: {source}")]
    Sync {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The raw store's objects.
#[derive(Clone, Debug)]
pub struct RawObjects {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    local_root: Option<PathBuf>,
}

impl RawObjects {
    /// Opens the store at `url` (`file:///abs/dir` or a bare directory path;
    /// other schemes as the `object_store` crate parses them).
    pub fn open(url: &str) -> Result<RawObjects, ObjectsError> {
        let url_err = |message: String| ObjectsError::Url {
            url: url.to_string(),
            message,
        };
        let local = match url.strip_prefix("file://") {
            Some(p) => Some(PathBuf::from(p)),
            None if !url.contains("://") => Some(PathBuf::from(url)),
            None => None,
        };
        if let Some(dir) = local {
            std::fs::create_dir_all(&dir).map_err(|e| url_err(e.to_string()))?;
            let dir = dir.canonicalize().map_err(|e| url_err(e.to_string()))?;
            let store = LocalFileSystem::new_with_prefix(&dir)?;
            return Ok(RawObjects {
                store: Arc::new(store),
                prefix: ObjectPath::default(),
                local_root: Some(dir),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| url_err(e.to_string()))?;
        let (store, prefix) = object_store::parse_url(&parsed).map_err(|e| {
            url_err(format!(
                "{e} (this build of tally supports file:// URLs; S3 support is a build feature)"
            ))
        })?;
        Ok(RawObjects {
            store: Arc::from(store),
            prefix,
            local_root: None,
        })
    }

    fn full(&self, path: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in path.split('/') {
            p = p.join(part);
        }
        p
    }

    /// The object store behind it, for engines that read segments directly
    /// (the rating job registers it with DataFusion).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The location of `path` inside the object store (prefix included).
    pub fn location(&self, path: &str) -> ObjectPath {
        self.full(path)
    }

    /// Stores `data` at `path` durably.
    pub async fn put(&self, path: &str, data: Vec<u8>) -> Result<(), ObjectsError> {
        self.store
            .put(&self.full(path), PutPayload::from(Bytes::from(data)))
            .await?;
        self.sync_local(path)
    }

    /// Makes an object written by other means (a streaming upload) durable:
    /// on a local store, fsyncs the file and its directory; object stores
    /// are durable once an upload completes.
    pub fn sync_local(&self, path: &str) -> Result<(), ObjectsError> {
        if let Some(root) = &self.local_root {
            let file = root.join(path);
            let sync =
                |p: &std::path::Path| -> std::io::Result<()> { std::fs::File::open(p)?.sync_all() };
            sync(&file).map_err(|source| ObjectsError::Sync {
                path: file.clone(),
                source,
            })?;
            if let Some(dir) = file.parent() {
                sync(dir).map_err(|source| ObjectsError::Sync {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Reads the object at `path`.
    pub async fn get(&self, path: &str) -> Result<Bytes, ObjectsError> {
        Ok(self.store.get(&self.full(path)).await?.bytes().await?)
    }

    /// Deletes the object at `path`; a missing object is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), ObjectsError> {
        match self.store.delete(&self.full(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists the paths of all objects under `dir`, relative to the store.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, ObjectsError> {
        use futures::TryStreamExt;
        let base = self.full(dir);
        let prefix_len = self.prefix.as_ref().len();
        let metas: Vec<_> = self.store.list(Some(&base)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let s = m.location.as_ref();
                s[prefix_len..].trim_start_matches('/').to_string()
            })
            .collect())
    }

    /// The local directory behind the store, when it is local.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }
}
