//! jobd: a job-processing daemon.
//!
//! An HTTP handler ([`http`]) validates a submission ([`submission`]) and hands it to the
//! Ingest actor ([`actors::ingest`]), which commits it to the queue ([`queue`]) in groups
//! and answers with job ids. The Dispatcher ([`actors::dispatcher`]) claims ready jobs
//! from the queue in a bounded window and hands each to an idle Worker
//! ([`actors::worker`]), which runs the job body ([`runner`]), for `upload` a write to the
//! object store ([`store`]). [`server`] wires it together and owns shutdown; [`config`]
//! reads the settings; [`auth`] and [`tls`] guard the listener. See ARCHITECTURE.md for the map and its invariants.

#![forbid(unsafe_code)]

pub mod actors;
pub mod auth;
pub mod config;
pub mod http;
pub mod job;
pub mod keys;
pub mod kinds;
pub mod metrics;
pub mod queue;
pub mod retry;
pub mod runner;
pub mod server;
pub mod stats;
pub mod store;
pub mod store_health;
pub mod submission;
pub mod systemd;
pub mod telemetry;
pub mod tls;
