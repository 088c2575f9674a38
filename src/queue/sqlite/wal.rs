//! The SQLite backend's durability parts: the WAL file that jobd fsyncs itself (the
//! [`WalSyncer`] the queue's sync thread runs), and the [`Checkpointer`] thread that copies
//! committed WAL pages into the database file off the queue thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use crate::queue::{StorageError, Syncer};

/// The WAL file, fsynced by jobd rather than by SQLite.
///
/// Once the queue thread takes the [`WalSyncer`] (with group commit), SQLite runs with
/// `synchronous = NORMAL`, so that a commit only writes its frames to the WAL, and the
/// queue's sync thread fsyncs the file. The split lets
/// the queue thread hand committed jobs to the Dispatcher, and commit the next group,
/// while the fsync runs; the submitters are answered after it. A 202 still means "on
/// disk", but neither a job's start nor the next commit waits for the disk. SQLite still
/// syncs the WAL before each checkpoint, and the database file after it, so a checkpoint
/// never copies pages that are not durable, and the WAL restarts only after one.
///
/// An fsync on another descriptor of the same file covers every write to it that
/// returned before the fsync began, which is what a sync promises.
pub(super) struct WalFile {
    path: PathBuf,
    /// Opened at the first sync; reopened should the path ever name another file, so
    /// that a sync can never go to a file SQLite no longer writes.
    open: Option<(std::fs::File, u64)>,
}

/// The SQLite backend's [`Syncer`]: fsyncs the WAL, unless a checkpoint already found
/// the storage failing.
pub(super) struct WalSyncer {
    pub(super) wal: WalFile,
    pub(super) storage_lost: Arc<AtomicBool>,
    /// Syncs left before every sync fails (`test_fail_sync_after`), if set.
    pub(super) syncs_before_failing: Option<u64>,
    /// How long each sync waits first (`test_sync_delay_ms`), as a stalled disk would.
    pub(super) delay: Option<std::time::Duration>,
}

impl Syncer for WalSyncer {
    fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        if self.storage_lost.load(Ordering::Acquire) {
            return Err(StorageError::new("a WAL checkpoint failed with an I/O error"));
        }
        match &mut self.syncs_before_failing {
            Some(0) => return Err(StorageError::new("fsync of the WAL failed (injected by test_fail_sync_after)")),
            Some(left) => *left -= 1,
            None => {}
        }
        self.wal.sync()
    }
}

impl WalFile {
    pub(super) fn new(database: &Path) -> Self {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        Self { path: PathBuf::from(path), open: None }
    }

    pub(super) fn sync(&mut self) -> Result<(), StorageError> {
        use std::os::unix::fs::MetadataExt as _;
        let failed =
            |what: &str, error: std::io::Error| StorageError::new(format!("{what} {}: {error}", self.path.display()));
        let inode = std::fs::metadata(&self.path).map_err(|error| failed("cannot find the WAL", error))?.ino();
        let file = match self.open.take() {
            Some((file, opened_inode)) if opened_inode == inode => file,
            _ => {
                let file = std::fs::File::open(&self.path).map_err(|error| failed("cannot open the WAL", error))?;
                // A WAL file this process created is durable only once its directory entry is.
                let directory = match self.path.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => Path::new("."),
                };
                std::fs::File::open(directory)
                    .and_then(|directory| directory.sync_all())
                    .map_err(|error| failed("cannot sync the directory of the WAL", error))?;
                file
            }
        };
        file.sync_data().map_err(|error| failed("cannot fsync the WAL", error))?;
        self.open = Some((file, inode));
        Ok(())
    }
}

/// WAL pages after a commit at which the [`Checkpointer`] is woken: SQLite's own default
/// for checkpointing.
const WAL_BACKGROUND_CHECKPOINT_PAGES: i32 = 1_000;
/// WAL pages at which the queue thread checkpoints by itself, in case the checkpointer
/// cannot keep up: about 64 MiB with 4 KiB pages, the most the WAL grows.
const WAL_FOREGROUND_CHECKPOINT_PAGES: i32 = 16_000;

/// Copies committed pages from the WAL back into the database file on a thread of its own,
/// with a connection of its own.
///
/// SQLite would otherwise do it inside a commit of the queue thread once the WAL holds a
/// thousand pages: a write of up to a thousand pages and an fsync of the database file, in
/// the middle of the commit path, which profiles showed as a few percent of the queue
/// thread and as the slowest commits. Here the queue thread's commit hook only wakes this
/// thread, which checkpoints in PASSIVE mode, never blocking the writer. The backend owns
/// the thread: dropping it closes the channel, and the thread ends and is joined.
///
/// A checkpoint fsyncs the WAL before it copies anything. If that fsync fails with an I/O
/// error, the kernel may have dropped WAL pages that a later fsync would then not write,
/// so the checkpointer marks the storage as lost, and the next sync (see [`WalSyncer`])
/// fails for it.
pub(super) struct Checkpointer {
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(super) storage_lost: Arc<AtomicBool>,
}

/// Marks the storage as lost when a checkpoint's error is the storage failing (as opposed
/// to, say, being busy).
fn mark_lost_on_io_failure(error: &rusqlite::Error, storage_lost: &AtomicBool) {
    if error.sqlite_error_code() == Some(rusqlite::ErrorCode::SystemIoFailure) {
        storage_lost.store(true, Ordering::Release);
    }
}

impl Checkpointer {
    /// Starts the thread and hooks it to `connection`'s commits.
    pub(super) fn start(path: &Path, connection: &mut Connection) -> Result<Self, StorageError> {
        let own = Connection::open(path)?;
        own.pragma_update(None, "busy_timeout", 5_000)?;
        // One wake-up waiting is enough: a checkpoint copies everything committed so far.
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let storage_lost = Arc::new(AtomicBool::new(false));
        let thread_lost = storage_lost.clone();
        let thread = std::thread::Builder::new()
            .name("jobd-checkpoint".to_owned())
            .spawn(move || {
                while woken.recv().is_ok() {
                    if let Err(error) = own.wal_checkpoint_v2(rusqlite::DEFAULT_NAME, CheckpointMode::PASSIVE) {
                        tracing::warn!(%error, "background WAL checkpoint failed; the WAL keeps the pages");
                        mark_lost_on_io_failure(&error, &thread_lost);
                    }
                }
            })
            .map_err(|error| StorageError::new(format!("cannot start the checkpoint thread: {error}")))?;
        let hook_wake = wake.clone();
        let hook_lost = storage_lost.clone();
        connection.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            if pages >= WAL_BACKGROUND_CHECKPOINT_PAGES {
                let _ = hook_wake.try_send(());
            }
            if pages >= WAL_FOREGROUND_CHECKPOINT_PAGES
                && let Err(error) = wal.checkpoint_v2(CheckpointMode::PASSIVE)
            {
                tracing::warn!(%error, pages, "WAL checkpoint on the queue thread failed");
                mark_lost_on_io_failure(&error, &hook_lost);
            }
            Ok(())
        }))?;
        Ok(Self { wake: Some(wake), thread: Some(thread), storage_lost })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}
