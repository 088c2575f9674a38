//! Writing jobs to the SQLite queue: inserts in multi-row statements, claims (served from
//! the fresh jobs in memory where it can), progress in grouped UPDATEs, and the control
//! operations.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::types::ToSqlOutput;
use rusqlite::{OptionalExtension as _, params};

use super::SqliteBackend;
use super::codec::{FinishColumns, decode_claimed, from_millis, millis, state_of};
use super::sql::{
    INSERT_COLUMNS, NEXT_DUE, NULL, PLACED_COLUMNS, PROMOTE_DUE, RECORD_STARTED, blob, claim, finish_sql, insert_sql,
    integer, statement_rows, text,
};
use crate::job::{DEFAULT_PRIORITY, FinishedJob, Job, JobId, JobState, StartedJob};
use crate::queue::columns::{BANDS, band_of, priority_of, split_progress};
use crate::queue::{
    Admitted, ControlError, JobWriter, Lease, ReadyBatch, Refusal, RefusedStarts, StorageError, admit, claim_has_room,
};

impl SqliteBackend {
    /// Inserts new jobs, as few statements as possible: a statement of many rows pays the
    /// per-statement work (stepping, resetting, reading and writing the AUTOINCREMENT
    /// counter) once for all of them, which profiling showed to be a good part of an
    /// insert's cost.
    fn insert_all(&mut self, jobs: &[Job], now: DateTime<Utc>) -> Result<Vec<Option<i64>>, StorageError> {
        let mut ready_seqs = Vec::with_capacity(jobs.len());
        let mut rest = jobs;
        while !rest.is_empty() {
            let rows = statement_rows(rest.len());
            let (chunk, after) = rest.split_at(rows);
            let placed = chunk.iter().any(|job| job.priority != DEFAULT_PRIORITY || !job.queue.is_default());
            let mut values: Vec<ToSqlOutput<'_>> = Vec::with_capacity(rows * (INSERT_COLUMNS + PLACED_COLUMNS));
            for job in chunk {
                ready_seqs.push(self.push_insert_values(job, now, placed, &mut values));
            }
            self.connection.prepare_cached(insert_sql(rows, placed))?.execute(rusqlite::params_from_iter(values))?;
            rest = after;
        }
        Ok(ready_seqs)
    }

    /// Appends one job's row to `values` in [`INSERT_COLUMNS`] order and counts it.
    /// Returns the job's `ready_seq` if it is queued now.
    /// Values borrow from the job where they can: copying every body into the statement's
    /// parameters showed in profiles of batch ingest.
    fn push_insert_values<'a>(
        &mut self,
        job: &'a Job,
        now: DateTime<Utc>,
        placed: bool,
        values: &mut Vec<ToSqlOutput<'a>>,
    ) -> Option<i64> {
        let delayed = job.run_at.filter(|at| *at > now);
        let (state, ready_seq) = match delayed {
            Some(_) => (JobState::Scheduled, None),
            None => (JobState::Queued, Some(self.books.take_ready_seq(job.priority))),
        };
        values.extend([
            blob(job.id.as_bytes()),
            text(&job.kind),
            text(state.name()),
            integer(ready_seq),
            integer(job.run_at.map(millis)),
            integer(Some(i64::from(job.max_attempts))),
            integer(job.timeout_ms.map(|ms| ms.min(i64::MAX as u64) as i64)),
            integer(Some(millis(job.created_at))),
            job.idempotency_key.as_deref().map_or(NULL, text),
            text(job.submitted_by.as_deref().unwrap_or_default()),
            job.body.as_ref().map_or(NULL, |body| blob(&body.bytes)),
            integer(Some(i64::from(job.body.as_ref().is_some_and(|body| body.is_json)))),
            job.args.as_ref().map_or(NULL, |args| text(args.get())),
        ]);
        if placed {
            values.extend([text(&job.queue), integer(Some(i64::from(job.priority)))]);
        }
        if let Some(counter) = self.books.count(state) {
            *counter += 1;
        }
        ready_seq
    }

    fn find_by_idempotency_key(
        &self,
        submitted_by: Option<&str>,
        key: &str,
    ) -> Result<Option<(JobId, JobState)>, StorageError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT id, state FROM jobs WHERE submitted_by = ?1 AND idempotency_key = ?2")?;
        let found = statement
            .query_row(params![submitted_by.unwrap_or_default(), key], |row| {
                Ok((row.get::<_, [u8; 16]>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        Ok(found.map(|(id, state)| (JobId::from_bytes(id), state_of(&state))))
    }

    fn state_of_job(&self, id: JobId) -> Result<Option<JobState>, StorageError> {
        let mut statement = self.connection.prepare_cached("SELECT state FROM jobs WHERE id = ?1")?;
        let state: Option<String> = statement.query_row([id.to_bytes().as_slice()], |row| row.get(0)).optional()?;
        Ok(state.map(|state| state_of(&state)))
    }

    /// Bytes in use: the database's pages less the free ones.
    pub(super) fn used_bytes(&self) -> Result<u64, StorageError> {
        let pages: i64 = self.connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let free: i64 = self.connection.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
        Ok(pages.saturating_sub(free).unsigned_abs() * self.page_size)
    }

    /// Claims the queued jobs of one priority band after its cursor, into `jobs`, until the
    /// claim holds `max` (with `undecodable`) or its byte bound; returns whether it stopped at
    /// the byte bound. The default priority's jobs just inserted come from memory
    /// ([`super::fresh::FreshJobs`]); the rest, and every other band, from the table.
    fn claim_band(
        &mut self,
        band: usize,
        max: usize,
        jobs: &mut Vec<Job>,
        bytes: &mut usize,
        undecodable: &mut Vec<(i64, String)>,
    ) -> Result<bool, StorageError> {
        let paused = &self.paused;
        let passed_over = |job: &Job| !paused.is_empty() && paused.contains_key(&*job.queue);
        if band == band_of(DEFAULT_PRIORITY)
            && self.fresh.claim(&mut self.books.claimed_up_to[band], max, jobs, bytes, passed_over)
        {
            return Ok(true);
        }
        // The table holds more only if some `ready_seq` of the band was handed out and not
        // claimed.
        let (cursor, last) = (self.books.claimed_up_to[band], self.books.last_ready_seq[band]);
        if jobs.len() + undecodable.len() >= max || cursor >= last {
            return Ok(false);
        }
        let mut statement = self.connection.prepare_cached(claim::SQL)?;
        let mut rows = statement.query(params![cursor, last])?;
        while jobs.len() + undecodable.len() < max
            && let Some(row) = rows.next()?
        {
            let ready_seq: i64 = row.get(claim::READY_SEQ)?;
            // A paused queue's job is passed over undecoded: a pause of a large backlog
            // costs one walk of its index entries, not a decode of each job.
            if !self.paused.is_empty()
                && self.paused.contains_key(row.get_ref(claim::QUEUE)?.as_str().map_err(rusqlite::Error::from)?)
            {
                self.books.claimed_up_to[band] = ready_seq;
                continue;
            }
            match decode_claimed(row) {
                Ok(job) => {
                    let size = job.body_len();
                    if !claim_has_room(jobs.len(), *bytes, size) {
                        return Ok(true);
                    }
                    *bytes += size;
                    self.books.claimed_up_to[band] = ready_seq;
                    jobs.push(job);
                }
                Err(error) => {
                    self.books.claimed_up_to[band] = ready_seq;
                    undecodable.push((row.get::<_, i64>(claim::SEQ)?, error));
                }
            }
        }
        Ok(false)
    }

    /// Moves due scheduled and failed jobs to the queue, earliest first, at most `max`.
    fn promote_due(&mut self, max: usize, now: DateTime<Utc>) -> Result<(), StorageError> {
        let due: Vec<(i64, String, i64)> = {
            let mut statement = self.connection.prepare_cached(PROMOTE_DUE)?;
            let rows = statement.query_map(params![millis(now)], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            rows.take(max).collect::<Result<_, _>>()?
        };
        for (seq, state, priority) in due {
            let ready_seq = self.books.take_ready_seq(priority_of(priority));
            self.connection
                .prepare_cached("UPDATE jobs SET state = 'queued', ready_seq = ?2 WHERE seq = ?1")?
                .execute(params![seq, ready_seq])?;
            self.books.moved(state_of(&state), JobState::Queued, 1);
        }
        Ok(())
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError> {
        let mut statement = self.connection.prepare_cached(NEXT_DUE)?;
        let next: Option<i64> = statement.query_row([], |row| row.get(0))?;
        Ok(next.map(from_millis))
    }

    /// Records how attempts ended. An end with a start time also records that start: the
    /// job goes straight from `queued`, and its attempt is counted here.
    fn write_finishes<'a>(
        &mut self,
        ends: impl Iterator<Item = (&'a FinishedJob, Option<DateTime<Utc>>)>,
    ) -> Result<(), StorageError> {
        // Ends that write the same values (a burst of short jobs that started and finished
        // in the same milliseconds) are written by one statement naming all their ids. Each
        // statement's count of changed rows is exact for the bookkeeping of its group.
        let mut groups: HashMap<(JobState, Option<i64>, FinishColumns), Vec<ToSqlOutput<'a>>> = HashMap::new();
        for (end, started_at) in ends {
            let columns = FinishColumns::of(end);
            let from = if started_at.is_some() { JobState::Queued } else { JobState::Running };
            groups.entry((from, started_at.map(millis), columns)).or_default().push(blob(end.id.as_bytes()));
        }
        for ((from, started_at, columns), ids) in groups {
            let shared = [
                text(columns.state.name()),
                integer(started_at),
                integer(Some(i64::from(started_at.is_some()))),
                integer(columns.finished_at),
                columns.error.as_deref().map_or(NULL, text),
                columns.result.as_deref().map_or(NULL, text),
                integer(columns.retry_at),
            ];
            let mut changed = 0;
            let mut rest = ids.as_slice();
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(statement_rows(rest.len()));
                changed += self
                    .connection
                    .prepare_cached(finish_sql(from, chunk.len()))?
                    .execute(rusqlite::params_from_iter(shared.iter().chain(chunk)))?;
                rest = after;
            }
            self.books.moved(from, columns.state, changed);
        }
        Ok(())
    }

    /// Marks a job that cannot be decoded as dead, so one bad row cannot wedge the queue.
    fn bury_undecodable(&mut self, seq: i64, error: &str) -> Result<(), StorageError> {
        tracing::error!(seq, %error, "a stored job cannot be decoded; it is marked dead");
        self.connection.execute(
            "UPDATE jobs SET state = 'dead', last_error = ?2, finished_at = ?3 WHERE seq = ?1",
            params![seq, format!("stored job cannot be decoded: {error}"), millis(Utc::now())],
        )?;
        self.books.moved(JobState::Queued, JobState::Dead, 1);
        Ok(())
    }

    /// Marks queued jobs as running, counting their attempt.
    pub(crate) fn record_started(&mut self, started: &[StartedJob]) -> Result<(), StorageError> {
        let mut statement = self.connection.prepare_cached(RECORD_STARTED)?;
        let mut changed = 0;
        for start in started {
            changed += statement.execute(params![start.id.to_bytes().as_slice(), millis(start.started_at)])?;
        }
        drop(statement);
        self.books.moved(JobState::Queued, JobState::Running, changed);
        Ok(())
    }

    /// Records how attempts of running jobs ended.
    #[cfg(test)]
    pub(crate) fn record_finished(&mut self, finished: &[FinishedJob]) -> Result<(), StorageError> {
        self.write_finishes(finished.iter().map(|end| (end, None)))
    }
}

impl JobWriter for SqliteBackend {
    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError> {
        let submitted_by = submission.first().and_then(|job| job.submitted_by.clone());
        let (mut admitted, is_new) =
            admit(&submission, |key| self.find_by_idempotency_key(submitted_by.as_deref(), key))?;
        let new_jobs = is_new.iter().filter(|&&new| new).count();
        if let Some(limit_bytes) = self.size_limit {
            // A row costs its body plus about two hundred bytes of columns and index entries.
            let estimate: u64 = submission
                .iter()
                .zip(&is_new)
                .filter(|(_, new)| **new)
                .map(|(job, _)| 200 + job.body_len() as u64)
                .sum();
            let used_bytes = self.used_bytes()?;
            if used_bytes + estimate > limit_bytes {
                return Ok(Err(Refusal::StorageFull { used_bytes, limit_bytes }));
            }
        }
        if self.books.unfinished() + new_jobs > self.capacity {
            return Ok(Err(Refusal::QueueFull {
                unfinished: self.books.unfinished(),
                capacity: self.capacity,
                requested: new_jobs,
            }));
        }
        let now = Utc::now();
        let mut new_jobs = Vec::with_capacity(submission.len());
        for ((job, new), answer) in submission.into_iter().zip(is_new).zip(admitted.iter_mut()) {
            if new {
                if job.run_at.is_some_and(|at| at > now) {
                    answer.state = JobState::Scheduled;
                }
                new_jobs.push(job);
            }
        }
        let ready_seqs = self.insert_all(&new_jobs, now)?;
        for (job, ready_seq) in new_jobs.into_iter().zip(ready_seqs) {
            // Only the default priority's jobs are kept in memory: one band's buffer keeps
            // its bound, and the other bands are read from the table.
            if let Some(ready_seq) = ready_seq
                && job.priority == DEFAULT_PRIORITY
            {
                self.fresh.add(ready_seq, job);
            }
        }
        Ok(Ok(admitted))
    }

    fn set_queue_paused(
        &mut self,
        name: &str,
        paused: bool,
        if_unset: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        self.write_queue_paused(name, paused, if_unset, now)
    }

    /// Every claim is this process's for its life: the lease has no expiry, and the next
    /// process requeues whatever this one left running (see [`SqliteBackend::open`]).
    fn claim(&mut self, max: usize, now: DateTime<Utc>, _lease: &Lease) -> Result<ReadyBatch, StorageError> {
        // With no scheduled or failed job, nothing can fall due: the two index reads for
        // delayed jobs are skipped.
        let has_delayed = self.books.scheduled + self.books.failed > 0;
        if has_delayed {
            self.promote_due(max, now)?;
        }
        let mut jobs = Vec::with_capacity(max);
        let mut bytes = 0;
        let mut undecodable = Vec::new();
        let mut stopped_at_byte_limit = false;
        // Highest priority first: each band in its order, until the claim is full.
        for band in 0..BANDS {
            if stopped_at_byte_limit || jobs.len() + undecodable.len() >= max {
                break;
            }
            stopped_at_byte_limit = self.claim_band(band, max, &mut jobs, &mut bytes, &mut undecodable)?;
        }
        for (seq, error) in undecodable {
            self.bury_undecodable(seq, &error)?;
        }
        let next_due = if has_delayed { self.next_due()? } else { None };
        Ok(ReadyBatch { jobs, stopped_at_byte_limit, next_due })
    }

    /// A job that starts and finishes within one flush (most short jobs) costs one UPDATE
    /// instead of two: the finish also records the start.
    /// Only this process writes the file, so no start is ever refused.
    fn record_progress(
        &mut self,
        started: &[StartedJob],
        finished: &[FinishedJob],
    ) -> Result<RefusedStarts, StorageError> {
        let (started_at, started_only) = split_progress(started, finished);
        self.record_started(&started_only)?;
        self.write_finishes(finished.iter().map(|end| (end, started_at.get(&end.id).copied())))?;
        Ok(RefusedStarts::new())
    }

    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        let mut statement = self.connection.prepare_cached(
            "DELETE FROM jobs WHERE seq IN (
                 SELECT seq FROM jobs INDEXED BY jobs_done
                 WHERE (state = 'succeeded' OR state = 'dead' OR state = 'cancelled') AND finished_at < ?1 LIMIT ?2)
             RETURNING state",
        )?;
        let states = statement
            .query_map(params![millis(cutoff), limit as i64], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(statement);
        let dead = states.iter().filter(|state| state.as_str() == "dead").count();
        self.books.dead = self.books.dead.saturating_sub(dead);
        Ok(states.len())
    }

    fn retry_dead(&mut self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        match self.state_of_job(id)? {
            None => return Ok(Err(ControlError::NotFound)),
            Some(JobState::Dead) => {}
            Some(other) => return Ok(Err(ControlError::Conflict(other))),
        }
        if self.books.unfinished() + 1 > self.capacity {
            let refusal =
                Refusal::QueueFull { unfinished: self.books.unfinished(), capacity: self.capacity, requested: 1 };
            return Ok(Err(ControlError::Refused(refusal)));
        }
        let priority: i64 = self
            .connection
            .prepare_cached("SELECT priority FROM jobs WHERE id = ?1")?
            .query_row([id.to_bytes().as_slice()], |row| row.get(0))?;
        let ready_seq = self.books.take_ready_seq(priority_of(priority));
        self.connection
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', attempts = 0, ready_seq = ?2, run_at = NULL, finished_at = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id.to_bytes().as_slice(), ready_seq])?;
        self.books.moved(JobState::Dead, JobState::Queued, 1);
        Ok(Ok(()))
    }

    fn cancel(&mut self, id: JobId, now: DateTime<Utc>) -> Result<Result<(), ControlError>, StorageError> {
        let state = match self.state_of_job(id)? {
            None => return Ok(Err(ControlError::NotFound)),
            Some(state @ (JobState::Queued | JobState::Scheduled | JobState::Failed)) => state,
            Some(other) => return Ok(Err(ControlError::Conflict(other))),
        };
        // The job may wait in the buffer of fresh jobs, which must not hand it out now.
        // Cancels are rare: the buffer starts anew and claims read the table meanwhile.
        self.fresh.clear();
        self.connection
            .prepare_cached("UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1")?
            .execute(params![id.to_bytes().as_slice(), millis(now)])?;
        self.books.moved(state, JobState::Cancelled, 1);
        Ok(Ok(()))
    }
}
