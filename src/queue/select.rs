//! Which backend holds the jobs, and opening it: the one place that names every backend.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::postgres::PostgresBackend;
use super::sqlite::{SqliteBackend, Synchronous};
use super::{ClusterMetrics, ClusterSettings, NodeId, QueueBackend, StorageError};

/// Which queue backend holds the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// The embedded durable queue.
    Sqlite,
    /// A PostgreSQL database that several nodes share.
    Postgres,
}

/// What opening a backend needs from the configuration.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub kind: QueueKind,
    /// This process, as the holder of the jobs it claims.
    pub node: NodeId,
    /// The shared backend's settings; set when `kind` is `Postgres`.
    pub cluster: Option<ClusterSettings>,
    /// Where an embedded backend keeps its file.
    pub data_dir: PathBuf,
    /// The most unfinished jobs (`max_queue`).
    pub capacity: usize,
    pub sqlite_synchronous: Synchronous,
    /// `queue_db_max_bytes`, if set.
    pub max_bytes: Option<u64>,
    /// The test hooks of an embedded backend's fsyncs; never set in production.
    pub test_hooks: super::TestHooks,
}

/// Why the queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("queue = \"postgres\" needs postgres_url")]
    NoPostgresUrl,
    #[error("cannot open the queue: {0}")]
    Storage(#[from] StorageError),
}

/// Opens the configured backend and recovers what a previous process left in it.
pub fn open(settings: &QueueSettings, metrics: ClusterMetrics) -> Result<Box<dyn QueueBackend>, OpenError> {
    match settings.kind {
        QueueKind::Postgres => {
            let cluster = settings.cluster.as_ref().ok_or(OpenError::NoPostgresUrl)?;
            let backend = PostgresBackend::open(cluster, settings.node, settings.capacity, metrics)?;
            Ok(Box::new(backend))
        }
        QueueKind::Sqlite => {
            std::fs::create_dir_all(&settings.data_dir)
                .map_err(|source| OpenError::DataDir { path: settings.data_dir.clone(), source })?;
            let path = settings.data_dir.join("queue.db");
            let (mut backend, recovery) =
                SqliteBackend::open(&path, settings.capacity, settings.sqlite_synchronous, settings.max_bytes)?;
            if let Some(count) = settings.test_hooks.test_fail_sync_after {
                tracing::warn!(count, "test_fail_sync_after: the queue's fsyncs fail after this many");
                backend.fail_syncs_after(count);
            }
            if let Some(delay) = settings.test_hooks.sync_delay() {
                tracing::warn!(
                    millis = delay.as_millis(),
                    "test_sync_delay_ms: every fsync of the queue waits this long first"
                );
                backend.delay_syncs_by(delay);
            }
            tracing::info!(
                path = %path.display(),
                requeued_running = recovery.requeued,
                dead_after_dying_mid_attempt = recovery.buried,
                queued = recovery.queued,
                delayed = recovery.delayed,
                "queue opened and recovered"
            );
            Ok(Box::new(backend))
        }
    }
}
