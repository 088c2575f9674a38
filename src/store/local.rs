//! The `file://` store's own concerns: creating its root durably, refusing symbolic links
//! on a key's way, checking (without writing) that the root could be created, and turning
//! file system errors into messages that name the key rather than the server's paths.

use std::path::{Path as FsPath, PathBuf};

use url::Url;

use super::StoreError;

/// What a file system error means for a key.
pub(super) fn local_reason(kind: std::io::ErrorKind) -> String {
    match kind {
        std::io::ErrorKind::NotADirectory => "a key above it is an object, so it cannot be a directory".to_owned(),
        std::io::ErrorKind::IsADirectory => "other keys lie below it, so it is a directory".to_owned(),
        other => other.to_string(),
    }
}

/// The file system error in an object_store error's source chain, if there is one.
pub(super) fn io_error_kind(error: &object_store::Error) -> Option<std::io::ErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = error.source();
    }
    None
}

/// What `check-config` finds about a store, without creating or writing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePlan {
    /// Nothing to create: a remote or in-memory store, or a `file://` root that exists and
    /// this user may write.
    Ready,
    /// The `file://` root does not exist; `serve` creates it, which this user may do.
    WouldCreate(PathBuf),
    /// This user could not write the `file://` root, or create it; the service may run as
    /// another user (systemd's `DynamicUser=` and `StateDirectory=`).
    NotWritable { root: PathBuf, reason: String },
}

/// The `file://` root a URL names, if it names one.
pub(super) fn local_root(parsed: &Url, url: &str) -> Result<Option<PathBuf>, StoreError> {
    if parsed.scheme() != "file" {
        return Ok(None);
    }
    // Collected from its components, so that a trailing slash does not show in messages.
    parsed.to_file_path().map(|path| Some(path.components().collect())).map_err(|()| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: "a file:// URL needs an absolute path".to_owned(),
    })
}

/// Whether this process may create entries in `dir`, asked of the kernel (`access(2)`)
/// rather than tried, so that a check writes nothing.
pub(super) fn may_write(dir: &FsPath) -> Result<(), String> {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).map_err(|errno| {
        format!("{} is not writable by this user (uid {}): {errno}", dir.display(), nix::unistd::geteuid())
    })
}

/// Creates `dir` and any missing parents, then syncs each directory whose entries changed
/// (every new one and the first that existed already), so that the store root survives a
/// power loss as the objects synced into it do. An existing `dir` costs no sync.
pub(super) fn create_durable_dir(dir: &FsPath) -> std::io::Result<()> {
    let mut first_existing = dir;
    while !first_existing.exists() {
        match first_existing.parent() {
            Some(parent) => first_existing = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    if first_existing == dir {
        return Ok(());
    }
    let mut changed = dir;
    loop {
        std::fs::File::open(changed)?.sync_all()?;
        match changed.parent() {
            Some(parent) if changed != first_existing => changed = parent,
            _ => return Ok(()),
        }
    }
}

/// Refuses a key if any existing directory on its way is a symbolic link.
/// `LocalFileSystem` would follow such a link when it creates the object's directories,
/// and an operator's stray link to `/etc` must not turn a job into a write outside the root.
///
/// The object itself is not looked up: `LocalFileSystem` writes a new file beside it and
/// renames it into place, which replaces a link there instead of following it (a test
/// checks this). Looking up a name that does not exist yet also takes the directory's
/// lock, which every upload into the same directory contends for.
pub(super) fn refuse_symlinks(root: &FsPath, key: &str) -> Result<(), StoreError> {
    let mut current = root.to_path_buf();
    let directories = key.rsplit_once('/').map_or("", |(directories, _object)| directories);
    for part in directories.split('/').filter(|part| !part.is_empty()) {
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
