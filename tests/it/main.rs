//! Every integration suite of jobd, in one test binary: each module below was a binary of
//! its own, and they all linked the same crates, so one binary cuts the build's links from
//! 24 to 1 and its disk from gigabytes to one file. `cargo nextest run` still runs each test
//! in a process of its own; `cargo test --test it -- <module>::` runs one suite.

mod common;

mod backpressure;
mod bad_input;
mod cli;
mod client;
mod cluster_checker;
mod cluster_safety;
mod concurrency;
mod console;
mod defaults;
mod documents;
mod durability;
mod failures;
mod fuzz;
mod logs;
mod metrics;
mod postgres;
mod queues;
mod readme;
mod s3;
mod security;
mod shutdown;
mod systemd;
mod tenants;
mod tidy;
mod uploads;
mod webhooks;
