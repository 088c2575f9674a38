//! Reading the PostgreSQL queue: records and listings from the jobs table, the depth from
//! the nodes' count rows.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::PostgresBackend;
use super::codec::{RECORD_COLUMNS, record_from_row, uuid_of};
use super::schema::DEPTH;
use crate::job::{JobId, JobRecord, JobState};
use crate::queue::columns::{from_millis, listing_statement, state_of};
use crate::queue::{Cursor, JobPage, JobReader, ListFilter, QueueDepth, StorageError};

/// How long one reading of the oldest queued job's due time answers status reads. The
/// figure is an age gauge in seconds, so a second-old reading is as good as a fresh one.
const OLDEST_QUEUED_REUSE: Duration = Duration::from_secs(1);

/// The due time and ready number of the next queued job no node holds, from ready number
/// `$1` on, beside the last ready number handed out. It starts behind the head the last
/// reading found ([`super::pick::pick_floor`], as claims do) rather than at the index's
/// start: the index holds a dead entry for every job claimed since the table's last
/// vacuum, and over a half-hour soak the read from the start grew from 0.3 to 1.5 ms.
const OLDEST_QUEUED: &str = "SELECT s.last_value, head.due, head.ready_seq FROM jobd_ready_seq s
     LEFT JOIN LATERAL (
         SELECT COALESCE(run_at, created_at) AS due, ready_seq FROM jobd_jobs
         WHERE state = 'queued' AND lease_owner IS NULL AND ready_seq >= $1 ORDER BY ready_seq LIMIT 1) head ON true";

/// How far behind the head it last found the read starts. Far less than a claim's slack
/// (250,000), which walked up to that many dead entries a read (2.5 to
/// 5 ms a read after a stall in a soak): a job committed late, below it, or put back in its
/// old place (released from a departed node's window), is missed by the gauge only until a
/// claim takes it into a window, whose oldest job counts, or until the next read from the
/// start ([`FULL_READ_EVERY`]).
const OLDEST_SLACK: i64 = 1_000;

/// How often the oldest queued job is looked for from the index's start.
const FULL_READ_EVERY: Duration = Duration::from_secs(60);

fn get_sql(with_payload: bool) -> &'static str {
    static SQL: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let statements = SQL.get_or_init(|| {
        [
            format!("SELECT {RECORD_COLUMNS} FROM jobd_jobs WHERE id = $1"),
            format!("SELECT {RECORD_COLUMNS}, body FROM jobd_jobs WHERE id = $1"),
        ]
    });
    &statements[usize::from(with_payload)]
}

/// The listing statement for a filter: by `state` (inlined, so that a partial index on
/// it applies), by tenant (`submitted_by`), by kind, or any of them together, newest first
/// before a cursor (`$1`, or from the newest when NULL), `$2` rows. Each shape is its own
/// statement, so that each gets a plan of its own (the rare states' index of schema
/// version 3, the kind's and the tenant's of version 4) rather than one generic plan for
/// every filter; the tests `EXPLAIN` them.
#[doc(hidden)]
pub fn listing_sql(state: Option<JobState>, by_tenant: bool, by_kind: bool) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    listing_statement(&SQL, (state, by_tenant, by_kind), |state, by_tenant, by_kind| {
        let mut conditions = vec!["id < COALESCE($1::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')".to_owned()];
        if let Some(state) = state {
            conditions.push(format!("state = '{}'", state.name()));
        }
        let mut next = 3;
        if by_tenant {
            conditions.push(format!("submitted_by = ${next} AND submitted_by <> ''"));
            next += 1;
        }
        if by_kind {
            conditions.push(format!("kind = ${next}"));
        }
        format!("SELECT {RECORD_COLUMNS} FROM jobd_jobs WHERE {} ORDER BY id DESC LIMIT $2", conditions.join(" AND "))
    })
}

impl JobReader for PostgresBackend {
    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        let rows = self.connection.query(get_sql(with_payload), &[&uuid_of(id)])?;
        rows.first()
            .map(|row| record_from_row(row, with_payload))
            .transpose()
            .map_err(|problem| StorageError::new(format!("job {id} does not decode: {problem}")))
    }

    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError> {
        let before = match before {
            None => None,
            Some(Cursor::Id(id)) => Some(uuid_of(id)),
            Some(Cursor::Seq(_)) => return Err(StorageError::new("the PostgreSQL queue lists by id, not by sequence")),
        };
        let limit_column = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&before, &limit_column];
        if let Some(tenant) = &filter.submitted_by {
            params.push(tenant);
        }
        if let Some(kind) = &filter.kind {
            params.push(kind);
        }
        let sql = listing_sql(filter.state, filter.submitted_by.is_some(), filter.kind.is_some());
        let rows = self.connection.query(sql, &params)?;
        let mut page = JobPage::default();
        for row in &rows {
            page.records.push(record_from_row(row, false).map_err(StorageError::new)?);
        }
        page.next_before =
            if page.records.len() == limit { page.records.last().map(|record| Cursor::Id(record.id)) } else { None };
        Ok(page)
    }

    fn queues(&mut self, with_depths: bool) -> Result<crate::queue::QueuesView, StorageError> {
        super::queues::view(&mut self.connection, with_depths)
    }

    /// Sums every node's count rows: a handful of rows per node, whatever the backlog.
    fn depth(&mut self) -> Result<QueueDepth, StorageError> {
        let rows = self.connection.query(DEPTH, &[])?;
        let mut depth = QueueDepth { capacity: self.capacity, ..QueueDepth::default() };
        for row in &rows {
            let count = usize::try_from(row.get::<_, i64>(1)).unwrap_or(0);
            match state_of(row.get(0)) {
                JobState::Queued => depth.queued = count,
                JobState::Scheduled => depth.scheduled = count,
                JobState::Running => depth.running = count,
                JobState::Failed => depth.failed = count,
                JobState::Dead => depth.dead = count,
                JobState::Succeeded | JobState::Cancelled => {}
            }
        }
        self.last_queued = Some(depth.queued);
        Ok(depth)
    }

    /// The due time of the next job no node holds. The jobs in nodes' windows are left to
    /// their nodes ([`crate::queue::QueueStatus::oldest_queued_at`]): finding them here
    /// walked the index of leased jobs, which holds a dead entry for every job finished
    /// since the table's last vacuum, and took 40 to 160 ms at 33,000 jobs/s.
    fn oldest_queued(&mut self) -> Result<Option<DateTime<Utc>>, StorageError> {
        // A reading is reused only while it agrees with the latest depth on whether any
        // job waits: jobs queued since "none" (or a queue emptied since) read afresh.
        let anything_queued = self.last_queued.is_none_or(|queued| queued > 0);
        if let Some((read_at, oldest)) = self.oldest_queued
            && read_at.elapsed() < OLDEST_QUEUED_REUSE
            && oldest.is_some() == anything_queued
        {
            return Ok(oldest);
        }
        let floor = super::pick::pick_floor(
            self.oldest_queued_head,
            &mut self.last_full_oldest_read,
            OLDEST_SLACK,
            FULL_READ_EVERY,
        );
        let rows = self.connection.query(OLDEST_QUEUED, &[&floor])?;
        let row = rows.first();
        let oldest = row.and_then(|row| row.get::<_, Option<i64>>(1)).map(from_millis);
        // The next read starts behind the head found, or behind the last ready number handed
        // out when nothing waits: the jobs claimed since lie below either.
        let head = row.and_then(|row| row.get::<_, Option<i64>>(2)).or_else(|| row.map(|row| row.get::<_, i64>(0)));
        self.oldest_queued_head = head.unwrap_or(self.oldest_queued_head);
        self.oldest_queued = Some((Instant::now(), oldest));
        Ok(oldest)
    }
}
