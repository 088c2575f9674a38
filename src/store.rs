//! The object store jobs upload to: built from one URL (`file://`, `s3://`, `memory://`),
//! with the write path that keeps every object inside the store's root.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use url::Url;

use crate::job::{JobId, JobResult};

/// Why the store could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?} is not valid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create the local store directory {path}: {source}")]
    CreateRoot { path: PathBuf, source: std::io::Error },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("refusing to write through the symbolic link {0}: it could lead outside the store root")]
    Symlink(PathBuf),
    #[error("checking the key's directories for symbolic links failed: {0}")]
    SymlinkCheck(std::io::Error),
}

impl StoreError {
    /// Whether trying again later may succeed: network trouble, throttling and server
    /// errors may pass; a refused permission, a bad path or a symlink will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::ObjectStore(error) => !matches!(
                error,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            StoreError::SymlinkCheck(_) => true,
            StoreError::InvalidUrl { .. } | StoreError::CreateRoot { .. } | StoreError::Symlink(_) => false,
        }
    }
}

/// Which kind of store a URL named; stores differ in what they support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    S3,
    Memory,
}

/// The configured store plus what the upload path needs to know about it.
#[derive(Debug)]
pub struct JobStore {
    store: Arc<dyn ObjectStore>,
    kind: StoreKind,
    /// The canonical root directory of a `file://` store; symlink checks start here.
    local_root: Option<PathBuf>,
    /// The prefix of default keys, `<key_prefix>/<yyyy>/<mm>/<dd>/<id>.<ext>`.
    key_prefix: Path,
    /// The URL, for logs; it never contains credentials, which come from the environment.
    url: String,
}

impl JobStore {
    /// Builds the store a URL names. `file://` roots are created if missing.
    pub fn from_url(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl { url: url.to_owned(), reason };
        let parsed = Url::parse(url).map_err(|error| invalid(error.to_string()))?;
        let key_prefix = Path::parse(key_prefix).map_err(|error| invalid(format!("key_prefix: {error}")))?;
        let (store, kind, local_root): (Arc<dyn ObjectStore>, _, _) = match parsed.scheme() {
            "file" => {
                let root =
                    parsed.to_file_path().map_err(|()| invalid("a file:// URL needs an absolute path".to_owned()))?;
                std::fs::create_dir_all(&root)
                    .map_err(|source| StoreError::CreateRoot { path: root.clone(), source })?;
                let root =
                    root.canonicalize().map_err(|source| StoreError::CreateRoot { path: root.clone(), source })?;
                let store = LocalFileSystem::new_with_prefix(&root)?;
                (Arc::new(store), StoreKind::Local, Some(root))
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|host| !host.is_empty())
                    .ok_or_else(|| invalid("an s3:// URL needs a bucket: s3://bucket/prefix".to_owned()))?;
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                // Secrets from systemd's LoadCredential= win over the environment, so they
                // need never be in the environment at all.
                if let Some(key_id) = crate::systemd::credential("aws_access_key_id") {
                    builder = builder.with_access_key_id(key_id);
                }
                if let Some(secret) = crate::systemd::credential("aws_secret_access_key") {
                    builder = builder.with_secret_access_key(secret);
                }
                if let Some(token) = crate::systemd::credential("aws_session_token") {
                    builder = builder.with_token(token);
                }
                let store = builder.build()?;
                let prefix = Path::parse(parsed.path()).map_err(|error| invalid(error.to_string()))?;
                let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(PrefixStore::new(store, prefix))
                };
                (store, StoreKind::S3, None)
            }
            "memory" => (Arc::new(InMemory::new()) as Arc<dyn ObjectStore>, StoreKind::Memory, None),
            other => return Err(invalid(format!("unsupported scheme {other:?}; use file://, s3:// or memory://"))),
        };
        let mut shown = parsed.clone();
        // Credentials in a URL would be a mistake, but they must not reach the logs either.
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        Ok(Self { store, kind, local_root, key_prefix, url: shown.to_string() })
    }

    /// The URL, safe to log.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which kind of store this is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The default key of an upload job.
    pub fn default_key(&self, id: JobId, created_at: DateTime<Utc>, extension: &str) -> Path {
        let name = format!("{id}.{extension}");
        let mut key = self.key_prefix.clone();
        for part in [
            format!("{:04}", created_at.year()),
            format!("{:02}", created_at.month()),
            format!("{:02}", created_at.day()),
            name,
        ] {
            key = key.join(part.as_str());
        }
        key
    }

    /// Checks that the store answers: a listing of the key prefix, which fails on a
    /// missing bucket, bad credentials or an unreachable endpoint.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.store.list_with_delimiter(Some(&self.key_prefix)).await?;
        Ok(())
    }

    /// Writes `body` at `key`.
    pub async fn put(&self, key: &Path, body: Vec<u8>, content_type: &str) -> Result<JobResult, StoreError> {
        if let Some(root) = &self.local_root {
            let root = root.clone();
            let key_text = key.to_string();
            tokio::task::spawn_blocking(move || refuse_symlinks(&root, &key_text))
                .await
                .map_err(|error| StoreError::SymlinkCheck(std::io::Error::other(error)))??;
        }
        let size = body.len() as u64;
        let mut options = PutOptions::default();
        // The local store refuses attributes rather than ignoring them; a file has no
        // Content-Type to record.
        if self.kind != StoreKind::Local {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
            options.attributes = attributes;
        }
        let written = self.store.put_opts(key, PutPayload::from(body), options).await?;
        Ok(JobResult { key: Some(key.to_string()), size: Some(size), etag: written.e_tag })
    }

    /// Reads an object back; for tests and tools.
    pub async fn get(&self, key: &Path) -> Result<Vec<u8>, StoreError> {
        Ok(self.store.get(key).await?.bytes().await?.to_vec())
    }
}

/// Refuses a key if any existing directory on its way, or the object itself, is a
/// symbolic link. `LocalFileSystem` would follow such a link, and an operator's stray
/// link to `/etc` must not turn a job into a write outside the root.
fn refuse_symlinks(root: &FsPath, key: &str) -> Result<(), StoreError> {
    let mut current = root.to_path_buf();
    for part in key.split('/') {
        current.push(part);
        match std::fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => return Err(StoreError::Symlink(current)),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(StoreError::SymlinkCheck(error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_land_under_the_root_and_symlinks_are_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        let root = tempfile::tempdir().expect("tempdir");
        let url = Url::from_directory_path(root.path()).expect("url").to_string();
        let store = JobStore::from_url(&url, "payloads").expect("store");

        let key = Path::parse("a/b.json").expect("key");
        store.put(&key, b"{}".to_vec(), "application/json").await.expect("put");
        assert_eq!(std::fs::read(root.path().join("a/b.json")).expect("read"), b"{}");

        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).expect("symlink");
        let escape = Path::parse("evil/x.json").expect("key");
        let error = store.put(&escape, b"{}".to_vec(), "application/json").await;
        assert!(matches!(error, Err(StoreError::Symlink(_))), "{error:?}");
        assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);
    }

    #[test]
    fn default_keys_use_the_prefix_and_utc_date() {
        let store = JobStore::from_url("memory://", "payloads").expect("store");
        let id = JobId::generate();
        let at = DateTime::parse_from_rfc3339("2026-03-04T23:59:59Z").expect("time").with_timezone(&Utc);
        assert_eq!(store.default_key(id, at, "json").to_string(), format!("payloads/2026/03/04/{id}.json"));
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(matches!(JobStore::from_url("ftp://x/y", "p"), Err(StoreError::InvalidUrl { .. })));
        assert!(matches!(JobStore::from_url("s3:///nobucket", "p"), Err(StoreError::InvalidUrl { .. })));
    }
}
