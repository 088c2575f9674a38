//! The actor system: [`Ingest`] takes submissions, the [`Dispatcher`] routes ready jobs
//! to idle [`Worker`]s, and workers run job bodies under supervision.

mod claim_size;
pub mod dispatcher;
pub mod ingest;
mod progress;
pub mod scheduler;
pub mod window;
pub mod worker;

pub use dispatcher::{Dispatcher, QueuesPaused};
pub use ingest::Ingest;
