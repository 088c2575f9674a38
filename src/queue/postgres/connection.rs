//! One connection of a node to PostgreSQL that comes back: it connects on demand, waits a
//! doubling backoff after a failure, forgets a connection that broke, keeps its prepared
//! statements, and tells a commit whose answer was lost from one the server refused.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ConnectionConfig;
use crate::queue::StorageError;

/// The first wait after a failed connection attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Turns a client error into a storage error that says what failed.
pub(super) fn storage_error(context: &str, error: &postgres::Error) -> StorageError {
    let detail = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        // The client's own message leaves out its cause (a TLS handshake's says only that
        // it failed), which is the part an operator needs.
        None => crate::error_text::with_causes(error),
    };
    StorageError::new(format!("PostgreSQL {context}: {detail}"))
}

/// Why a connection could not be made, saying whether the server answered. A server that
/// refuses (a wrong password, a role or database that does not exist, pg_hba.conf) will
/// refuse again: that is a configuration to fix, not an outage, and its message says what
/// to do.
pub(super) fn connect_error(error: &postgres::Error) -> StorageError {
    let Some(db) = error.as_db_error() else {
        return storage_error("unreachable", error);
    };
    let hint = match db.code().code() {
        "28P01" => "; check the user and password of postgres_url",
        "28000" => {
            "; the role may not exist, or pg_hba.conf refuses it: create it (createuser jobd, or CREATE ROLE jobd \
             LOGIN) or fix postgres_url (docs/several-nodes.md)"
        }
        "3D000" => "; create the database, owned by jobd's role (createdb -O jobd jobd), or fix postgres_url",
        _ => "",
    };
    StorageError::new(format!("PostgreSQL refused the connection: {}: {}{hint}", db.code().code(), db.message()))
}

/// A connection that comes back: connects on demand, and after a failure waits a
/// doubling backoff before it tries again, answering with the last error meanwhile, so
/// that submissions during an outage get a quick 503 instead of a connect timeout each.
pub(super) struct Connection {
    pub(super) config: ConnectionConfig,
    pub(super) client: Option<postgres::Client>,
    /// Prepared statements of the current client, by their text.
    pub(super) statements: HashMap<&'static str, postgres::Statement>,
    pub(super) next_attempt: Instant,
    pub(super) backoff: Duration,
    pub(super) last_error: Option<StorageError>,
}

impl Connection {
    pub(super) fn new(config: ConnectionConfig) -> Self {
        Connection {
            config,
            client: None,
            statements: HashMap::new(),
            next_attempt: Instant::now(),
            backoff: FIRST_BACKOFF,
            last_error: None,
        }
    }

    /// The client, connecting first if there is none and the backoff allows.
    pub(super) fn client(&mut self) -> Result<&mut postgres::Client, StorageError> {
        if self.client.as_ref().is_some_and(postgres::Client::is_closed) {
            self.lost();
        }
        if self.client.is_none() {
            if Instant::now() < self.next_attempt {
                return Err(self.last_error.clone().unwrap_or_else(|| StorageError::new("PostgreSQL is unreachable")));
            }
            match self.config.client.connect(self.config.tls.clone()) {
                Ok(client) => {
                    if self.last_error.take().is_some() {
                        tracing::info!("PostgreSQL connection restored");
                    }
                    self.backoff = FIRST_BACKOFF;
                    self.client = Some(client);
                }
                Err(error) => {
                    let refused = error.as_db_error().is_some();
                    let error = connect_error(&error);
                    if self.last_error.is_none() && refused {
                        tracing::warn!(error = error.message(), "PostgreSQL refused the connection; trying again");
                    } else if self.last_error.is_none() {
                        tracing::warn!(error = error.message(), "PostgreSQL unreachable; reconnecting with backoff");
                    }
                    self.next_attempt = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.last_error = Some(error.clone());
                    return Err(error);
                }
            }
        }
        self.client.as_mut().ok_or_else(|| StorageError::new("PostgreSQL is unreachable"))
    }

    /// Connects now, for a node's start: a failure is returned at once, neither logged nor
    /// retried, since the node does not start without its database.
    pub(super) fn connect_at_start(&mut self) -> Result<&mut postgres::Client, StorageError> {
        let client = self.config.client.connect(self.config.tls.clone()).map_err(|error| connect_error(&error))?;
        Ok(self.client.insert(client))
    }

    /// Forgets a client whose connection broke; the next call reconnects.
    pub(super) fn lost(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    /// The prepared statement for `sql`, preparing it on first use.
    pub(super) fn prepare(&mut self, sql: &'static str) -> Result<postgres::Statement, StorageError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let client = self.client()?;
        let statement = client.prepare(sql).map_err(|error| storage_error("prepare failed", &error))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Runs a prepared query and returns its rows; a broken connection is forgotten.
    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StorageError> {
        let statement = self.prepare(sql)?;
        let client = self.client()?;
        let result = client.query(&statement, params);
        result.map_err(|error| self.failed("query failed", &error))
    }

    /// Runs a prepared statement and returns how many rows it changed.
    pub(super) fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let statement = self.prepare(sql)?;
        let client = self.client()?;
        let result = client.execute(&statement, params);
        result.map_err(|error| self.failed("statement failed", &error))
    }

    /// Runs statements without parameters (BEGIN, COMMIT, ...).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), StorageError> {
        let client = self.client()?;
        let result = client.batch_execute(sql);
        result.map_err(|error| self.failed("statement failed", &error))
    }

    /// Commits the open transaction. A commit the server refused undid the transaction;
    /// one whose answer never came (the connection broke on the way) may or may not have
    /// taken effect, and says so.
    pub(super) fn commit(&mut self) -> Result<(), StorageError> {
        let client = self.client()?;
        let result = client.batch_execute("COMMIT");
        result.map_err(|error| {
            let refused = error.as_db_error().is_some();
            let failure = self.failed("commit failed", &error);
            if refused {
                failure
            } else {
                StorageError::outcome_unknown(format!(
                    "{}; the transaction may or may not have committed",
                    failure.message()
                ))
            }
        })
    }

    /// Whether a call that just failed found its connection broken: there was a client
    /// before it (`had_client`) and there is none now. If so, the next call connects at
    /// once, without the backoff meant for a server that is down, so that the caller may
    /// try once more.
    pub(super) fn broke_just_now(&mut self, had_client: bool) -> bool {
        let broke = had_client && self.client.is_none();
        if broke {
            self.next_attempt = Instant::now();
        }
        broke
    }

    pub(super) fn failed(&mut self, context: &str, error: &postgres::Error) -> StorageError {
        // An I/O error (a timeout of TCP's, a reset) leaves the connection unusable even
        // before the client marks it closed: forget it now, so the next call reconnects.
        let broken = std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>());
        if broken || error.is_closed() || self.client.as_ref().is_some_and(postgres::Client::is_closed) {
            self.lost();
        }
        storage_error(context, error)
    }
}
