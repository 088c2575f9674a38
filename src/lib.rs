//! jobd: a job-processing daemon.
//!
//! An HTTP handler (`http`) validates a submission (`submission`, with each job's own
//! fields checked by its kind, `kinds`) and hands it to the Ingest actor (`actors::ingest`),
//! which commits it to the queue (`queue`) in groups and answers with job ids. The
//! Dispatcher (`actors::dispatcher`) claims ready jobs from the queue in a bounded window
//! and hands each to an idle Worker (`actors::worker`), which runs the job's kind
//! (`runner`), for `upload` a write to the object store (`store`). `server` wires it
//! together and owns shutdown; `config` reads the settings; `auth` and `tls` guard the
//! listener. See ARCHITECTURE.md for the map and its invariants.
//!
//! Only what the binary, the tests and the benchmarks use is public: the configuration,
//! the server's entry points, the job envelope, the kinds and their request parser, and
//! the queue backends.

#![forbid(unsafe_code)]

mod actors;
mod auth;
pub mod client;
pub mod config;
mod error_text;
mod http;
pub mod job;
pub mod keys;
pub mod kinds;
mod metrics;
pub mod queue;
pub mod queues;
mod retry;
mod runner;
pub mod server;
mod stats;
mod store;
pub mod submission;
mod systemd;
pub mod telemetry;
mod tls;
