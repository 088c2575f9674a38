//! The object store jobs upload to: built from one URL (`file://`, `s3://`, `memory://`),
//! with the write path that keeps every object inside the store's root, sends large bodies
//! as multipart uploads, bounds concurrent uploads, and classifies failures for retries.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    Attribute, Attributes, MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
};
use tokio::sync::{Semaphore, watch};
use url::Url;

use crate::job::JobId;

mod local;
mod s3;

pub use local::StorePlan;
use local::{create_durable_dir, io_error_kind, local_reason, local_root, may_write, refuse_symlinks};
use s3::{PERMANENT_S3_CODES, UNAVAILABLE_S3_CODES, s3_builder, s3_error_code};

/// The size of each part of a multipart upload. S3 wants at least 5 MiB per part but the
/// last; 8 MiB parts keep the number of requests low without holding much per request.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Why the store could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {url:?} is not valid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create the local store directory {path}: {source}")]
    CreateRoot { path: PathBuf, source: std::io::Error },
    #[error("{}", describe(.code.as_deref(), .source))]
    ObjectStore { code: Option<String>, source: object_store::Error },
    #[error("refusing to write through the symbolic link {0}: it could lead outside the store root")]
    Symlink(PathBuf),
    #[error("checking the key's directories for symbolic links failed: {0}")]
    SymlinkCheck(std::io::Error),
    #[error("jobd is shutting down: the multipart upload was aborted and the job will run again")]
    ShuttingDown,
    /// A `file://` store refused a write. The message names the key, never the server's
    /// path, which a client has no business seeing.
    #[error("cannot write key {key}: {}", local_reason(*.kind))]
    Local { key: String, kind: std::io::ErrorKind },
}

fn describe(code: Option<&str>, source: &object_store::Error) -> String {
    match code {
        Some(code) => format!("S3 {code}: {source}"),
        None => source.to_string(),
    }
}

impl From<object_store::Error> for StoreError {
    fn from(source: object_store::Error) -> Self {
        StoreError::ObjectStore { code: s3_error_code(&source.to_string()), source }
    }
}

impl StoreError {
    /// Whether trying again later may succeed: network trouble, throttling (`SlowDown`) and
    /// server errors may pass; a refused permission, a missing bucket or a bad path will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::ObjectStore { code: Some(code), .. } => !PERMANENT_S3_CODES.contains(&code.as_str()),
            StoreError::ObjectStore { code: None, source } => !matches!(
                source,
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            StoreError::SymlinkCheck(_) | StoreError::ShuttingDown => true,
            // The key itself cannot be written; another attempt meets the same file system.
            StoreError::Local { kind, .. } => !matches!(
                kind,
                std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidFilename
            ),
            StoreError::InvalidUrl { .. } | StoreError::CreateRoot { .. } | StoreError::Symlink(_) => false,
        }
    }
}

impl StoreError {
    /// Whether the error says the store cannot be reached or cannot serve anyone now: a
    /// connection refused or reset, a DNS failure, a timeout, a 5xx answer or `SlowDown`.
    /// A permission, a missing bucket or a bad key is the job's own problem, not this.
    pub fn is_unreachable(&self) -> bool {
        let StoreError::ObjectStore { code, source } = self else { return false };
        if let Some(code) = code {
            return UNAVAILABLE_S3_CODES.contains(&code.as_str());
        }
        // object_store reports a transport failure as an `HttpError` somewhere in the
        // error's source chain, and a 5xx answer as a status in its text.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(error) = cause {
            if let Some(http) = error.downcast_ref::<object_store::client::HttpError>() {
                use object_store::client::HttpErrorKind;
                return matches!(
                    http.kind(),
                    HttpErrorKind::Connect
                        | HttpErrorKind::Request
                        | HttpErrorKind::Timeout
                        | HttpErrorKind::Interrupted
                );
            }
            cause = error.source();
        }
        source.to_string().contains("non-2xx status code: 5")
    }
}

/// Which kind of store a URL named; stores differ in what they support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    S3,
    Memory,
}

impl StoreKind {
    /// Whether objects carry attributes (Content-Type, Content-Encoding, user metadata).
    /// A file has none, and the local store refuses them rather than drop them.
    pub fn supports_attributes(self) -> bool {
        self != StoreKind::Local
    }
}

/// How the store is built, beyond its URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// First segments of default keys.
    pub key_prefix: String,
    /// A custom S3 endpoint (MinIO, Ceph, R2, ...); it implies path-style requests.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Allow plain HTTP to the endpoint; only when set explicitly.
    pub s3_allow_http: bool,
    /// Bodies at least this large go up as multipart uploads.
    pub multipart_threshold: usize,
    /// The most uploads in flight at once.
    pub upload_concurrency: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            key_prefix: "payloads".to_owned(),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            multipart_threshold: 8 * 1024 * 1024,
            upload_concurrency: 16,
        }
    }
}

/// What to record with an object, where the store supports it.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    pub content_type: String,
    pub content_encoding: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// What a write left in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The bytes written, after any compression.
    pub size: u64,
    /// The ETag the store returned, if any.
    pub etag: Option<String>,
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
    /// The URL, for logs; it never contains credentials, which come from elsewhere.
    url: String,
    multipart_threshold: usize,
    /// Bounds uploads in flight, apart from `max_workers`: the store's connection pool and
    /// memory for bodies in flight are the store's concern, not the worker pool's.
    upload_slots: Semaphore,
    upload_concurrency: usize,
    uploads_in_flight: AtomicUsize,
    /// Set once at shutdown: multipart uploads still running abort themselves, while the
    /// bodies runtime is still there to send the abort.
    closing: watch::Sender<bool>,
    /// Multipart uploads begun and neither completed nor aborted yet, including aborts
    /// still on their way; shutdown waits for this to reach zero.
    open_multipart_uploads: Arc<watch::Sender<usize>>,
}

/// The default key of an upload job under `prefix`: `<prefix>/<yyyy>/<mm>/<dd>/<id>.<ext>`,
/// by its creation date. One function, so that the key a run writes and the key a record
/// names (`Kind::target`) cannot differ.
pub fn default_key(prefix: &Path, id: JobId, created_at: DateTime<Utc>, extension: &str) -> Path {
    let mut key = prefix.clone();
    for part in [
        format!("{:04}", created_at.year()),
        format!("{:02}", created_at.month()),
        format!("{:02}", created_at.day()),
        format!("{id}.{extension}"),
    ] {
        key = key.join(part.as_str());
    }
    key
}

impl JobStore {
    /// Checks what [`from_url`](Self::from_url) would build, without side effects: the URL
    /// and the store's settings parse, and a `file://` root exists and is writable, or the
    /// nearest directory above it that exists is, so that it can be created.
    pub fn check_url(url: &str, options: &StoreOptions) -> Result<StorePlan, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl { url: url.to_owned(), reason };
        let parsed = Url::parse(url).map_err(|error| invalid(error.to_string()))?;
        Path::parse(&options.key_prefix).map_err(|error| invalid(format!("key_prefix: {error}")))?;
        match parsed.scheme() {
            "file" => {
                let root = local_root(&parsed, url)?.unwrap_or_default();
                if root.is_dir() {
                    return Ok(may_write(&root).map_or_else(
                        |reason| StorePlan::NotWritable { root: root.clone(), reason },
                        |()| StorePlan::Ready,
                    ));
                }
                let existing = root.ancestors().find(|dir| dir.exists()).unwrap_or(FsPath::new("/"));
                if !existing.is_dir() {
                    let reason = format!("{} exists and is not a directory", existing.display());
                    return Ok(StorePlan::NotWritable { root, reason });
                }
                Ok(match may_write(existing) {
                    Ok(()) => StorePlan::WouldCreate(root),
                    Err(reason) => StorePlan::NotWritable { root, reason },
                })
            }
            // Building the S3 client checks its settings and connects to nothing.
            "s3" | "memory" => Self::from_url(url, options).map(|_| StorePlan::Ready),
            other => Err(invalid(format!("unsupported scheme {other:?}; use file://, s3:// or memory://"))),
        }
    }

    /// Builds the store a URL names. `file://` roots are created if missing.
    pub fn from_url(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl { url: url.to_owned(), reason };
        let parsed = Url::parse(url).map_err(|error| invalid(error.to_string()))?;
        let key_prefix = Path::parse(&options.key_prefix).map_err(|error| invalid(format!("key_prefix: {error}")))?;
        let (store, kind, local_root): (Arc<dyn ObjectStore>, _, _) = match parsed.scheme() {
            "file" => {
                let root = local_root(&parsed, url)?.unwrap_or_default();
                create_durable_dir(&root).map_err(|source| StoreError::CreateRoot { path: root.clone(), source })?;
                let root =
                    root.canonicalize().map_err(|source| StoreError::CreateRoot { path: root.clone(), source })?;
                // A job's `succeeded` is durable in queue.db, so its object must be too:
                // with `fsync`, `put` syncs the file before renaming it into place, then
                // its directory and every directory it created, before it returns, so a
                // power loss cannot leave a succeeded job with its object missing or empty.
                let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
                (Arc::new(store), StoreKind::Local, Some(root))
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|host| !host.is_empty())
                    .ok_or_else(|| invalid("an s3:// URL needs a bucket: s3://bucket/prefix".to_owned()))?;
                let store = s3_builder(bucket, options).build()?;
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
        let upload_concurrency = options.upload_concurrency.max(1);
        Ok(Self {
            store,
            kind,
            local_root,
            key_prefix,
            url: shown.to_string(),
            multipart_threshold: options.multipart_threshold,
            upload_slots: Semaphore::new(upload_concurrency),
            upload_concurrency,
            uploads_in_flight: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            open_multipart_uploads: Arc::new(watch::Sender::new(0)),
        })
    }

    /// The URL, safe to log.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which kind of store this is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Uploads in flight now, and the most allowed.
    pub fn uploads(&self) -> (usize, usize) {
        (self.uploads_in_flight.load(Ordering::Relaxed), self.upload_concurrency)
    }

    /// The default key of an upload job.
    pub fn default_key(&self, id: JobId, created_at: DateTime<Utc>, extension: &str) -> Path {
        default_key(&self.key_prefix, id, created_at, extension)
    }

    /// Checks that the store answers: a listing of the key prefix, which fails on a
    /// missing bucket, bad credentials or an unreachable endpoint.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.store.list_with_delimiter(Some(&self.key_prefix)).await?;
        Ok(())
    }

    /// Writes `body` at `key`, as a multipart upload when it is large.
    pub async fn put(&self, key: &Path, body: Vec<u8>, options: &UploadOptions) -> Result<Written, StoreError> {
        if let Some(root) = &self.local_root {
            // A few `lstat` calls on directories the kernel has cached, run in place: job
            // bodies have a runtime of their own, one thread per worker, so this blocks
            // nothing else. Handing it to the blocking pool cost two thread crossings per
            // upload, more than the check itself.
            refuse_symlinks(root, key.as_ref())?;
        }
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.upload_slots.acquire().await.ok();
        self.uploads_in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.uploads_in_flight);
        let size = body.len() as u64;
        let attributes = self.attributes(options);
        let written = if body.len() >= self.multipart_threshold {
            self.put_multipart(key, body, attributes).await
        } else {
            let options = PutOptions { attributes, ..PutOptions::default() };
            self.store.put_opts(key, PutPayload::from(body), options).await.map_err(StoreError::from)
        };
        let written = written.map_err(|error| self.without_local_paths(key, error))?;
        Ok(Written { size, etag: written.e_tag })
    }

    /// A `file://` store's error as [`StoreError::Local`]: object_store's own text carries
    /// the absolute path of its temporary file, which a job's record must not show.
    fn without_local_paths(&self, key: &Path, error: StoreError) -> StoreError {
        match (&self.local_root, &error) {
            (Some(_), StoreError::ObjectStore { source, .. }) => match io_error_kind(source) {
                Some(kind) => {
                    tracing::debug!(key = %key, error = %error, "the file store refused a write");
                    StoreError::Local { key: key.to_string(), kind }
                }
                None => error,
            },
            _ => error,
        }
    }

    fn attributes(&self, options: &UploadOptions) -> Attributes {
        let mut attributes = Attributes::new();
        if self.kind.supports_attributes() {
            attributes.insert(Attribute::ContentType, options.content_type.clone().into());
            if let Some(encoding) = &options.content_encoding {
                attributes.insert(Attribute::ContentEncoding, encoding.clone().into());
            }
            for (name, value) in &options.metadata {
                attributes.insert(Attribute::Metadata(name.clone().into()), value.clone().into());
            }
        }
        attributes
    }

    /// Uploads in parts. An upload that does not complete is aborted, so no orphaned parts
    /// stay behind to be billed: on a failure here, when the job's task is dropped (its
    /// timeout aborts it), and at shutdown (see [`JobStore::abandon_uploads`]).
    async fn put_multipart(
        &self,
        key: &Path,
        body: Vec<u8>,
        attributes: Attributes,
    ) -> Result<object_store::PutResult, StoreError> {
        let mut closing = self.closing.subscribe();
        tokio::select! {
            written = self.put_parts(key, body, attributes) => written,
            // Dropping `put_parts` drops its `UnfinishedUpload`, which sends the abort.
            _ = closing.wait_for(|closed| *closed) => Err(StoreError::ShuttingDown),
        }
    }

    async fn put_parts(
        &self,
        key: &Path,
        body: Vec<u8>,
        attributes: Attributes,
    ) -> Result<object_store::PutResult, StoreError> {
        let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
        // An upload whose creation is still in flight when the task is dropped has no id
        // yet, so nothing can abort it; a bucket lifecycle rule removes such rare leftovers.
        let upload = self.store.put_multipart_opts(key, options).await?;
        let mut upload = UnfinishedUpload::new(upload, key.clone(), self.open_multipart_uploads.clone());
        let body = bytes::Bytes::from(body);
        let parts: Vec<_> = (0..body.len())
            .step_by(PART_SIZE)
            .map(|start| body.slice(start..(start + PART_SIZE).min(body.len())))
            .collect();
        let mut uploaded = Ok(());
        for part in parts {
            // Parts go up one at a time: the upload slot bounds concurrency already.
            if let Err(error) = upload.put_part(part).await {
                uploaded = Err(error);
                break;
            }
        }
        let completed = match uploaded {
            Ok(()) => upload.complete().await,
            Err(error) => Err(error),
        };
        match completed {
            Ok(result) => Ok(result),
            Err(error) => {
                upload.abort().await;
                Err(error.into())
            }
        }
    }

    /// At shutdown, after the drain: makes every multipart upload still running abort
    /// itself, and waits up to `within` for those aborts to reach the store. Returns how
    /// many uploads were still open when the wait ended.
    ///
    /// Without this, the bodies runtime would drop the abandoned uploads as it shuts down,
    /// when it can no longer run the abort that their guards send.
    pub async fn abandon_uploads(&self, within: Duration) -> usize {
        self.closing.send_replace(true);
        let mut open = self.open_multipart_uploads.subscribe();
        let open_at_start = *open.borrow_and_update();
        if open_at_start > 0 {
            tracing::info!(open_uploads = open_at_start, "aborting the multipart uploads of abandoned jobs");
        }
        // The sender lives in `self`, so the wait ends only by the count or the timeout.
        let _ = tokio::time::timeout(within, open.wait_for(|open| *open == 0)).await;
        *open.borrow()
    }

    /// Reads an object back; for tests and tools.
    pub async fn get(&self, key: &Path) -> Result<Vec<u8>, StoreError> {
        Ok(self.store.get(key).await?.bytes().await?.to_vec())
    }
}

/// Counts an upload in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A multipart upload that is aborted unless it completed or was aborted already, on
/// every path that abandons it: a failed part, a failed completion, and the future that
/// holds it being dropped, which is what a job timeout (the worker aborts the job's task)
/// and shutdown do. S3 keeps the parts of an upload that was never aborted, and bills them.
struct UnfinishedUpload {
    /// `None` once the upload completed or was aborted.
    upload: Option<Box<dyn MultipartUpload>>,
    key: Path,
    /// Counts this upload as open until it completes or its abort has finished.
    open: OpenUpload,
}

impl UnfinishedUpload {
    fn new(upload: Box<dyn MultipartUpload>, key: Path, open: Arc<watch::Sender<usize>>) -> Self {
        Self { upload: Some(upload), key, open: OpenUpload::new(open) }
    }

    fn upload(&mut self) -> Result<&mut Box<dyn MultipartUpload>, object_store::Error> {
        self.upload.as_mut().ok_or_else(|| object_store::Error::Generic {
            store: "jobd",
            source: "the multipart upload has already ended".into(),
        })
    }

    async fn put_part(&mut self, part: bytes::Bytes) -> Result<(), object_store::Error> {
        self.upload()?.put_part(PutPayload::from(part)).await
    }

    async fn complete(&mut self) -> Result<object_store::PutResult, object_store::Error> {
        // If this future is dropped while the completion is in flight, the guard still
        // aborts: aborting a completed upload changes nothing, so that is safe either way.
        let result = self.upload()?.complete().await?;
        self.upload = None;
        Ok(result)
    }

    async fn abort(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            abort_upload(upload.as_mut(), &self.key).await;
        }
    }
}

impl Drop for UnfinishedUpload {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else { return };
        let key = self.key.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The upload stays counted as open until its abort has finished.
                let open = OpenUpload::new(self.open.0.clone());
                runtime.spawn(async move {
                    tracing::info!(key = %key, "aborting the multipart upload of an abandoned job");
                    abort_upload(upload.as_mut(), &key).await;
                    drop(open);
                });
            }
            Err(_) => tracing::warn!(
                key = %key,
                "a multipart upload was abandoned outside a runtime, so it cannot be aborted; its parts stay until a bucket lifecycle rule removes them"
            ),
        }
    }
}

async fn abort_upload(upload: &mut dyn MultipartUpload, key: &Path) {
    if let Err(error) = upload.abort().await {
        tracing::warn!(%error, key = %key, "aborting a multipart upload failed; its parts stay in the bucket");
    }
}

/// Counts one multipart upload in [`JobStore::open_multipart_uploads`] until dropped.
struct OpenUpload(Arc<watch::Sender<usize>>);

impl OpenUpload {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|count| *count += 1);
        Self(open)
    }
}

impl Drop for OpenUpload {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_land_under_the_root_and_symlinks_are_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        let root = tempfile::tempdir().expect("tempdir");
        let url = Url::from_directory_path(root.path()).expect("url").to_string();
        let store = JobStore::from_url(&url, &StoreOptions::default()).expect("store");

        let key = Path::parse("a/b.json").expect("key");
        let json = UploadOptions { content_type: "application/json".into(), ..UploadOptions::default() };
        store.put(&key, b"{}".to_vec(), &json).await.expect("put");
        assert_eq!(std::fs::read(root.path().join("a/b.json")).expect("read"), b"{}");

        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).expect("symlink");
        let escape = Path::parse("evil/x.json").expect("key");
        let error = store.put(&escape, b"{}".to_vec(), &json).await;
        assert!(matches!(error, Err(StoreError::Symlink(_))), "{error:?}");
        assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);

        // A link where the object goes is replaced by the object, not followed.
        let target = outside.path().join("target.json");
        std::fs::write(&target, b"outside").expect("write");
        std::os::unix::fs::symlink(&target, root.path().join("a/linked.json")).expect("symlink");
        let linked = Path::parse("a/linked.json").expect("key");
        store.put(&linked, b"{}".to_vec(), &json).await.expect("put over a link");
        assert_eq!(std::fs::read(&target).expect("read"), b"outside", "the link's target is untouched");
        let written = root.path().join("a/linked.json");
        assert!(!std::fs::symlink_metadata(&written).expect("lstat").file_type().is_symlink());
        assert_eq!(std::fs::read(&written).expect("read"), b"{}");

        // The same for a large object, which goes up in parts.
        let big = vec![b'x'; 1 << 20];
        let small_parts =
            JobStore::from_url(&url, &StoreOptions { multipart_threshold: 1024, ..StoreOptions::default() })
                .expect("store");
        std::os::unix::fs::symlink(&target, root.path().join("a/big.json")).expect("symlink");
        let big_key = Path::parse("a/big.json").expect("key");
        small_parts.put(&big_key, big.clone(), &json).await.expect("multipart put over a link");
        assert_eq!(std::fs::read(&target).expect("read"), b"outside", "the link's target is untouched");
        assert_eq!(std::fs::read(root.path().join("a/big.json")).expect("read"), big);
    }

    #[tokio::test]
    async fn file_objects_and_their_directories_are_synced_before_put_returns() {
        // A power loss cannot be staged in a test. What decides durability is whether the
        // store jobd writes through syncs: object_store's `LocalFileSystem` with `fsync`
        // on syncs the staged file before its rename and every directory a write created
        // or changed before `put` returns; its Debug output is where that setting shows.
        let parent = tempfile::tempdir().expect("tempdir");
        let root = parent.path().join("new/objects");
        let url = Url::from_directory_path(&root).expect("url").to_string();
        let store = JobStore::from_url(&url, &StoreOptions::default()).expect("store");
        let described = format!("{:?}", store.store);
        assert!(described.contains("fsync: true"), "the local store does not sync: {described}");

        // The root was created, with its missing parent, and writes still land in it.
        let key = Path::parse("payloads/2026/01/01/x.json").expect("key");
        let json = UploadOptions { content_type: "application/json".into(), ..UploadOptions::default() };
        store.put(&key, b"{}".to_vec(), &json).await.expect("put");
        assert_eq!(std::fs::read(root.join("payloads/2026/01/01/x.json")).expect("read"), b"{}");
        let big = vec![b'x'; 1 << 20];
        let small_parts =
            JobStore::from_url(&url, &StoreOptions { multipart_threshold: 1024, ..StoreOptions::default() })
                .expect("store over the existing root");
        let big_key = Path::parse("big/x.bin").expect("key");
        small_parts.put(&big_key, big.clone(), &json).await.expect("multipart put");
        assert_eq!(std::fs::read(root.join("big/x.bin")).expect("read"), big);
    }

    #[test]
    fn default_keys_use_the_prefix_and_utc_date() {
        let store = JobStore::from_url("memory://", &StoreOptions::default()).expect("store");
        let id = JobId::generate();
        let at = DateTime::parse_from_rfc3339("2026-03-04T23:59:59Z").expect("time").with_timezone(&Utc);
        assert_eq!(store.default_key(id, at, "json").to_string(), format!("payloads/2026/03/04/{id}.json"));
    }

    #[test]
    fn s3_error_codes_decide_retries() {
        let text = "Client error with status 404 Not Found: <?xml?><Error><Code>NoSuchBucket</Code></Error>";
        assert_eq!(s3_error_code(text).as_deref(), Some("NoSuchBucket"));
        assert_eq!(s3_error_code("connection refused"), None);
        let permanent = StoreError::ObjectStore {
            code: Some("NoSuchBucket".into()),
            source: object_store::Error::Generic { store: "S3", source: "x".into() },
        };
        assert!(!permanent.is_retryable());
        assert!(permanent.to_string().starts_with("S3 NoSuchBucket: "));
        let throttled = StoreError::ObjectStore {
            code: Some("SlowDown".into()),
            source: object_store::Error::Generic { store: "S3", source: "x".into() },
        };
        assert!(throttled.is_retryable());
        let network =
            StoreError::from(object_store::Error::Generic { store: "S3", source: "connection refused".into() });
        assert!(network.is_retryable());
    }

    #[tokio::test]
    async fn large_bodies_go_up_in_parts_with_their_attributes() {
        let options = StoreOptions { multipart_threshold: 1024, ..StoreOptions::default() };
        let store = JobStore::from_url("memory://", &options).expect("store");
        let key = Path::parse("big.bin").expect("key");
        let body: Vec<u8> = (0..20 * 1024 * 1024).map(|n| (n % 251) as u8).collect();
        let upload = UploadOptions {
            content_type: "application/octet-stream".into(),
            content_encoding: Some("gzip".into()),
            metadata: vec![("team".into(), "ingest".into())],
        };
        store.put(&key, body.clone(), &upload).await.expect("put");
        let got = store.store.get(&key).await.expect("get");
        assert_eq!(got.attributes.get(&Attribute::ContentEncoding).map(|v| v.as_ref()), Some("gzip"));
        assert_eq!(got.attributes.get(&Attribute::Metadata("team".into())).map(|v| v.as_ref()), Some("ingest"));
        assert_eq!(got.bytes().await.expect("bytes").to_vec(), body);
        assert_eq!(store.uploads(), (0, 16));
    }

    #[test]
    fn unknown_schemes_are_refused() {
        assert!(matches!(
            JobStore::from_url("ftp://x/y", &StoreOptions::default()),
            Err(StoreError::InvalidUrl { .. })
        ));
        assert!(matches!(
            JobStore::from_url("s3:///nobucket", &StoreOptions::default()),
            Err(StoreError::InvalidUrl { .. })
        ));
    }
}
