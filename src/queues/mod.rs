//! Named queues: what the configuration declares (`[queues.<name>]`), the names a job may
//! give, and each queue's limits on one node. Whether a queue is paused is the queue
//! storage's to keep (it outlives restarts and reaches every node); this module holds what
//! a node starts with, and the queues' series (`metrics.rs`).

mod metrics;

pub use metrics::{QueueMetrics, UNFINISHED_STATES};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{DEFAULT_QUEUE, QueueName, default_queue, queue_name};

/// The longest name a queue may have, in bytes.
pub const MAX_QUEUE_NAME_BYTES: usize = 64;

/// The most jobs of one queue that may run at once on one node; a larger `concurrency` is a
/// mistake (no node has that many workers).
const MAX_CONCURRENCY: usize = 100_000;

/// One `[queues.<name>]` table of the configuration file. Every limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueTable {
    /// The most jobs of this queue that run at once on one node; unset, as many as the
    /// node has workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Whether the queue starts paused when the queue storage has never been told
    /// otherwise: a pause or resume through the API is stored and wins over it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Checks a queue's name: 1 to [`MAX_QUEUE_NAME_BYTES`] bytes of ASCII letters, digits,
/// `-`, `_` and `.`, so that it is safe in a URL path, a metric label and a log line.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME_BYTES {
        return Err(format!("must be 1 to {MAX_QUEUE_NAME_BYTES} bytes long"));
    }
    if !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) {
        return Err("may hold only ASCII letters, digits, '-', '_' and '.'".to_owned());
    }
    Ok(())
}

/// Checks the `[queues]` tables of the configuration file; the error names the queue and
/// the setting.
pub fn check_tables(tables: &BTreeMap<String, QueueTable>) -> Result<(), String> {
    for (name, table) in tables {
        check_queue_name(name).map_err(|problem| format!("[queues.{name}]: the name {problem}"))?;
        if let Some(concurrency) = table.concurrency
            && !(1..=MAX_CONCURRENCY).contains(&concurrency)
        {
            return Err(format!(
                "[queues.{name}] concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
            ));
        }
    }
    Ok(())
}

/// A declared queue: its shared name and its settings.
#[derive(Debug, Clone)]
pub struct DeclaredQueue {
    pub name: QueueName,
    pub settings: QueueTable,
}

/// The queues this node knows: those the configuration declares, and `default`, which
/// always exists. A job may name only one of them.
#[derive(Debug, Clone)]
pub struct Queues {
    by_name: BTreeMap<String, DeclaredQueue>,
}

impl Default for Queues {
    fn default() -> Self {
        Queues::from_tables(&BTreeMap::new())
    }
}

impl Queues {
    /// The queues of checked `[queues]` tables ([`check_tables`]), plus `default`.
    pub fn from_tables(tables: &BTreeMap<String, QueueTable>) -> Self {
        let mut by_name: BTreeMap<String, DeclaredQueue> = tables
            .iter()
            .map(|(name, settings)| {
                (name.clone(), DeclaredQueue { name: queue_name(name), settings: settings.clone() })
            })
            .collect();
        by_name
            .entry(DEFAULT_QUEUE.to_owned())
            .or_insert_with(|| DeclaredQueue { name: default_queue(), settings: QueueTable::default() });
        Queues { by_name }
    }

    /// The shared name of a declared queue, or why a job may not name it.
    pub fn resolve(&self, name: &str) -> Result<QueueName, String> {
        check_queue_name(name)?;
        match self.by_name.get(name) {
            Some(queue) => Ok(queue.name.clone()),
            None => Err(format!("unknown queue {name:?}; declared queues: {}", self.names_text())),
        }
    }

    /// The declared queue `name`, if it is one.
    pub fn get(&self, name: &str) -> Option<&DeclaredQueue> {
        self.by_name.get(name)
    }

    /// Every declared queue, by name.
    pub fn iter(&self) -> impl Iterator<Item = &DeclaredQueue> {
        self.by_name.values()
    }

    /// The queues' names, comma-separated, for error messages.
    pub fn names_text(&self) -> String {
        self.by_name.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }

    /// Each queue's limit on its jobs running at once on one node, where it has one.
    pub fn concurrency_limits(&self) -> Vec<(QueueName, usize)> {
        self.iter().filter_map(|queue| Some((queue.name.clone(), queue.settings.concurrency?))).collect()
    }

    /// The queues that start paused unless the queue storage says otherwise.
    pub fn paused_at_start(&self) -> Vec<QueueName> {
        self.iter().filter(|queue| queue.settings.paused).map(|queue| queue.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_queue_always_exists_and_unknown_names_are_refused_with_the_declared_ones() {
        let tables = BTreeMap::from([("partner-api".to_owned(), QueueTable { concurrency: Some(2), paused: false })]);
        let queues = Queues::from_tables(&tables);
        assert_eq!(&*queues.resolve("default").expect("default"), "default");
        assert_eq!(&*queues.resolve("partner-api").expect("declared"), "partner-api");
        let refused = queues.resolve("bulk").expect_err("undeclared");
        assert!(refused.contains("\"bulk\"") && refused.contains("default, partner-api"), "{refused}");
        assert!(queues.resolve("a/b").expect_err("a slash").contains("ASCII letters"));
        assert!(queues.resolve(&"q".repeat(65)).expect_err("too long").contains("1 to 64 bytes"));
    }

    #[test]
    fn bad_queue_tables_name_the_queue_and_the_setting() {
        let zero = BTreeMap::from([("bulk".to_owned(), QueueTable { concurrency: Some(0), paused: false })]);
        let problem = check_tables(&zero).expect_err("zero concurrency");
        assert!(problem.contains("[queues.bulk] concurrency"), "{problem}");
        let bad_name = BTreeMap::from([("bad name".to_owned(), QueueTable::default())]);
        assert!(check_tables(&bad_name).expect_err("a space").contains("[queues.bad name]"));
        let fine = BTreeMap::from([("bulk".to_owned(), QueueTable { concurrency: Some(4), paused: true })]);
        assert_eq!(check_tables(&fine), Ok(()));
        assert_eq!(Queues::from_tables(&fine).paused_at_start().len(), 1);
    }
}
