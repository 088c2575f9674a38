//! The SQLite backend's tests: round trips, recovery, migrations from every earlier
//! schema version, and the statements' plans.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde_json::value::RawValue;

use super::schema::{SCHEMA, SCHEMA_VERSION};
use super::sql::{NEXT_DUE, PROMOTE_DUE, RECORD_STARTED, claim, finish_sql, insert_sql};
use super::*;
use crate::job::{Body, FinishedJob, Job, JobId, JobResult, JobState, Outcome, StartedJob};
use crate::queue::{CLAIM_MAX_BODY_BYTES, ControlError, JobReader as _, JobWriter as _, Lease, ListFilter};

impl SqliteBackend {
    /// Caps the file below its current need, to provoke a failing commit.
    pub(crate) fn page_count_for_test(&self) -> i64 {
        self.connection.query_row("PRAGMA page_count", [], |row| row.get(0)).expect("page_count")
    }

    pub(crate) fn set_max_page_count_for_test(&self, pages: i64) {
        let _: i64 = self
            .connection
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| row.get(0))
            .expect("max_page_count");
    }
}

mod basics {
    use super::*;

    fn job(kind: &'static str, key: Option<&str>) -> Job {
        Job { idempotency_key: key.map(str::to_owned), ..Job::for_test(kind) }
    }

    fn open(path: &Path, capacity: usize) -> SqliteBackend {
        SqliteBackend::open(path, capacity, Synchronous::Full, None).expect("open").0
    }

    #[test]
    fn with_full_sync_commits_only_write_and_sync_fsyncs_the_wal_sqlite_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let mut backend = open(&path, 10);
        let level = |backend: &SqliteBackend| -> i64 {
            backend.connection.query_row("PRAGMA synchronous", [], |row| row.get(0)).expect("pragma")
        };
        assert_eq!(level(&backend), 2, "FULL: SQLite syncs in each commit until the syncer is taken");
        let mut syncer = backend.syncer().expect("a syncer, with synchronous = full");
        assert_eq!(level(&backend), 1, "NORMAL: the syncer's fsync makes commits durable");
        backend.begin().expect("begin");
        assert!(backend.enqueue(vec![Job::for_test("noop")]).expect("enqueue").is_ok());
        backend.commit().expect("commit");
        syncer.sync().expect("sync");
        assert!(backend.syncer().is_none(), "handed over once");
        // A sync must never succeed without the file SQLite writes: with the WAL gone from
        // its path, it fails instead of syncing a file nobody will read.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::rename(&wal, dir.path().join("elsewhere")).expect("move the WAL away");
        let error = syncer.sync().expect_err("no WAL at its path");
        assert!(error.message().contains("queue.db-wal"), "{error}");
        std::fs::rename(dir.path().join("elsewhere"), &wal).expect("put it back");
        syncer.sync().expect("sync");
        let mut unsynced =
            SqliteBackend::open(&dir.path().join("other.db"), 10, Synchronous::Normal, None).expect("open").0;
        assert!(unsynced.syncer().is_none(), "with synchronous = normal nothing syncs at commit");
    }

    /// Column `column` of every row of an EXPLAIN statement, with its parameters unbound.
    fn explain(backend: &SqliteBackend, sql: &str, column: usize) -> Vec<String> {
        let mut explain = backend.connection.prepare(sql).expect("explain");
        let unbound = std::iter::repeat_n(rusqlite::types::Null, explain.parameter_count());
        explain
            .query_map(rusqlite::params_from_iter(unbound), |row| row.get::<_, String>(column))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn version_2_indexes_are_replaced_and_writes_build_no_temporary_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let mut backend = open(&path, 10);
        backend.begin().expect("begin");
        let accepted = backend.enqueue(vec![job("noop", None)]).expect("enqueue");
        assert!(accepted.is_ok());
        backend.commit().expect("commit");
        // What a version 2 file holds: the listing index and IN-list partial indexes.
        backend
            .connection
            .execute_batch(
                "CREATE INDEX jobs_state ON jobs(state, seq);
                 CREATE INDEX jobs_due ON jobs(run_at, seq) WHERE state IN ('scheduled', 'failed');",
            )
            .expect("old indexes");
        drop(backend);
        let mut backend = open(&path, 10);
        let indexes: Vec<String> = backend
            .connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'jobs_%' ORDER BY name")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("names");
        assert_eq!(
            indexes,
            [
                "jobs_cancelled",
                "jobs_dead",
                "jobs_done",
                "jobs_idempotency",
                "jobs_kind",
                "jobs_ready",
                "jobs_running",
                "jobs_tenant",
                "jobs_waiting"
            ]
        );
        assert_eq!(backend.depth().expect("depth").queued, 1, "the job survived");
        // An IN list in a partial index's condition makes SQLite build a temporary table
        // for every row written; none of the writes on the hot path may do that.
        for write in [
            insert_sql(1, false),
            insert_sql(64, false),
            insert_sql(64, true),
            "UPDATE jobs SET state = 'running', started_at = 1, attempts = attempts + 1 WHERE id = x'01'",
            "UPDATE jobs SET state = 'succeeded', finished_at = 2 WHERE seq = 1",
            "UPDATE jobs SET state = 'failed', run_at = 3 WHERE seq = 1",
        ] {
            let plan = explain(&backend, &format!("EXPLAIN {write}"), 1);
            assert!(!plan.iter().any(|opcode| opcode == "OpenEphemeral"), "{write} builds a temporary table");
        }
        // Recording ends finds the jobs by the unique index on id, never by a scan.
        for sql in [finish_sql(JobState::Queued, 64), finish_sql(JobState::Running, 1)] {
            let plan = explain(&backend, &format!("EXPLAIN QUERY PLAN {sql}"), 3);
            assert_eq!(plan, ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"]);
        }
    }

    /// Every filter of the listing API has an index (the statements name theirs, and a
    /// statement whose index cannot serve it fails to prepare): only `queued`, `succeeded`
    /// and no filter at all, which most jobs match, walk the table from the newest job.
    #[test]
    fn every_listing_filter_has_an_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = open(&dir.path().join("queue.db"), 10);
        let mut checked = 0;
        for state in std::iter::once(None).chain(JobState::ALL.into_iter().map(Some)) {
            for by_tenant in [false, true] {
                for by_kind in [false, true] {
                    let sql = super::super::reader::listing_sql(state, by_tenant, by_kind);
                    let plan = explain(&backend, &format!("EXPLAIN QUERY PLAN {sql}"), 3).join("; ");
                    let walks =
                        !by_tenant && !by_kind && matches!(state, None | Some(JobState::Queued | JobState::Succeeded));
                    let searches =
                        plan.starts_with("SEARCH jobs USING INDEX") || plan.starts_with("SCAN jobs USING INDEX");
                    assert!(walks || searches, "{state:?} tenant={by_tenant} kind={by_kind}: {plan}");
                    assert!(
                        !plan.contains("SCAN jobs;") && plan != "SCAN jobs",
                        "{state:?} {by_tenant} {by_kind}: {plan}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 32);
    }

    #[test]
    fn jobs_round_trip_and_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let payload = RawValue::from_string(r#"{"b": 1,  "a": [2]}"#.to_owned()).expect("json");
        let upload_args =
            r#"{"key":"x/y.json","content_type":"text/plain","content_encoding":"gzip","metadata":{"team":"ingest"}}"#;
        let upload = Job {
            args: Some(RawValue::from_string(upload_args.to_owned()).expect("json")),
            body: Some(Body::json(payload)),
            ..job("upload", None)
        };
        let sleep_args = r#"{"ms":7,"blocking":false,"in_worker":false}"#;
        let sleep =
            Job { args: Some(RawValue::from_string(sleep_args.to_owned()).expect("json")), ..job("sleep", None) };
        let jobs = vec![upload, sleep, job("noop", None)];
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        {
            let mut backend = open(&path, 10);
            backend.begin().expect("begin");
            backend.enqueue(jobs).expect("enqueue").expect("fits");
            backend.commit().expect("commit");
            backend.begin().expect("begin");
            let claimed = backend.claim(1, Utc::now(), &Lease::for_test()).expect("take").jobs;
            backend
                .record_started(&[StartedJob {
                    claim: 0,
                    id: claimed[0].id,
                    attempt: claimed[0].attempt,
                    started_at: Utc::now(),
                }])
                .expect("start");
            backend.commit().expect("commit");
            assert_eq!((backend.depth().expect("depth").queued, backend.depth().expect("depth").running), (2, 1));
        }
        // The process "died" with one job running: it is queued again, attempt counted.
        let (mut backend, recovery) = SqliteBackend::open(&path, 10, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.requeued, recovery.queued), (1, 3));
        let claimed = backend.claim(10, Utc::now(), &Lease::for_test()).expect("take").jobs;
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids, "submission order");
        assert_eq!(claimed[0].attempt, 2);
        // The envelope comes back as it went in: kind, arguments and body, byte for byte.
        assert_eq!(claimed[0].kind, "upload");
        let body = claimed[0].body.as_ref().expect("a body");
        assert_eq!((body.bytes.as_slice(), body.is_json), (br#"{"b": 1,  "a": [2]}"#.as_slice(), true));
        assert_eq!(claimed[0].args.as_ref().map(|args| args.get()), Some(upload_args));
        assert_eq!(
            (claimed[1].kind.as_ref(), claimed[1].args.as_ref().map(|args| args.get())),
            ("sleep", Some(sleep_args))
        );
        assert!(claimed[2].args.is_none() && claimed[2].body.is_none());
        assert!(
            backend.claim(10, Utc::now(), &Lease::for_test()).expect("take").jobs.is_empty(),
            "claimed jobs are not handed out twice"
        );
    }

    #[test]
    fn a_rolled_back_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 10);
        backend.begin().expect("begin");
        backend.enqueue(vec![job("noop", None)]).expect("enqueue").expect("fits");
        assert_eq!(backend.claim(10, Utc::now(), &Lease::for_test()).expect("take").jobs.len(), 1);
        backend.rollback();
        assert_eq!(backend.depth().expect("depth").queued, 0);
        assert!(backend.claim(10, Utc::now(), &Lease::for_test()).expect("take").jobs.is_empty());
    }

    #[test]
    fn idempotency_keys_answer_with_the_first_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 10);
        let first = backend.enqueue(vec![job("noop", Some("k1"))]).expect("enqueue").expect("fits");
        let again = backend
            .enqueue(vec![job("noop", Some("k1")), job("noop", Some("k2")), job("noop", Some("k2"))])
            .expect("enqueue")
            .expect("fits");
        assert!(first[0].created);
        assert_eq!((again[0].id, again[0].created), (first[0].id, false));
        assert!(again[1].created);
        assert_eq!((again[2].id, again[2].created), (again[1].id, false));
        assert_eq!(backend.depth().expect("depth").queued, 2);
    }

    #[test]
    fn capacity_counts_unfinished_jobs_and_purge_deletes_old_finished_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 2);
        backend.enqueue(vec![job("noop", None), job("noop", None)]).expect("enqueue").expect("fits");
        assert!(backend.enqueue(vec![job("noop", None)]).expect("enqueue").is_err());
        let claimed = backend.claim(2, Utc::now(), &Lease::for_test()).expect("take").jobs;
        let now = Utc::now();
        let started: Vec<_> = claimed
            .iter()
            .map(|job| StartedJob { claim: 0, id: job.id, attempt: job.attempt, started_at: now })
            .collect();
        backend.record_started(&started).expect("start");
        let finished: Vec<_> =
            claimed.iter().map(|job| FinishedJob::succeeded(job.id, job.attempt, "noop", now)).collect();
        backend.record_finished(&finished).expect("finish");
        assert!(backend.enqueue(vec![job("noop", None)]).expect("enqueue").is_ok());
        let record = backend.get(claimed[0].id, false).expect("get").expect("exists");
        assert_eq!((record.state, record.attempts), (JobState::Succeeded, 1));
        assert_eq!(backend.purge_finished(now, 10).expect("purge"), 0, "not older than the cutoff");
        assert_eq!(backend.purge_finished(now + chrono::Duration::seconds(1), 1).expect("purge"), 1, "limit");
        assert_eq!(backend.purge_finished(now + chrono::Duration::seconds(1), 10).expect("purge"), 1);
        assert!(backend.get(claimed[0].id, false).expect("get").is_none());
    }
}

mod delayed {
    use super::*;

    #[test]
    fn a_start_and_finish_in_one_flush_is_recorded_like_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 10, Synchronous::Full, None).expect("open");
        let jobs: Vec<Job> = (0..3).map(|_| job_at(None)).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        backend.enqueue(jobs).expect("enqueue").expect("fits");
        let now = Utc::now();
        backend.claim(10, now, &Lease::for_test()).expect("take");
        let started: Vec<StartedJob> =
            ids.iter().map(|&id| StartedJob { claim: 0, id, attempt: 1, started_at: now }).collect();
        let done = |id, outcome, retry_at| FinishedJob {
            claim: 0,
            id,
            attempt: 1,
            kind: "noop",
            outcome,
            finished_at: now,
            retry_at,
        };
        let finished = vec![
            done(ids[0], Outcome::Succeeded(JobResult::default()), None),
            done(ids[1], Outcome::TimedOut { after_ms: 5 }, Some(now + chrono::Duration::seconds(60))),
        ];
        backend.record_progress(&started, &finished).expect("progress");
        let states: Vec<(JobState, u32, bool)> = ids
            .iter()
            .map(|&id| backend.get(id, false).expect("get").expect("exists"))
            .map(|record| (record.state, record.attempts, record.started_at.is_some()))
            .collect();
        assert_eq!(states, [(JobState::Succeeded, 1, true), (JobState::Failed, 1, true), (JobState::Running, 1, true)]);
        let depth = backend.depth().expect("depth");
        assert_eq!((depth.queued, depth.running, depth.failed), (0, 1, 1));
    }

    /// Runs `work` in a transaction and commits it, as the queue thread does.
    fn committed<T>(backend: &mut SqliteBackend, work: impl FnOnce(&mut SqliteBackend) -> T) -> T {
        backend.begin().expect("begin");
        let result = work(backend);
        backend.commit().expect("commit");
        result
    }

    fn claim_ids(backend: &mut SqliteBackend, max: usize, now: DateTime<Utc>) -> Vec<JobId> {
        committed(backend, |backend| {
            backend.claim(max, now, &Lease::for_test()).expect("take").jobs.iter().map(|job| job.id).collect()
        })
    }

    /// A queue.db written by the previous release (schema version 2: no `submitted_by`,
    /// idempotency keys unique over the whole table) opens, keeps its jobs, and from then
    /// on scopes keys by submitter.
    #[test]
    fn a_version_2_file_is_upgraded_in_place_with_its_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        // Version 2 had version 3's kind columns, and no `submitted_by`.
        let version_2_schema = SCHEMA
            .replace(
                "    args TEXT,\n    queue TEXT NOT NULL DEFAULT 'default',\n    priority INTEGER NOT NULL DEFAULT 5\n",
                "    object_key TEXT,\n    content_type TEXT,\n    arg TEXT\n",
            )
            .replace("    submitted_by TEXT NOT NULL DEFAULT '',\n", "")
            .replace(
                "jobs_idempotency ON jobs(submitted_by, idempotency_key)",
                "jobs_idempotency_key ON jobs(idempotency_key)",
            )
            .replace("DROP INDEX IF EXISTS jobs_idempotency_key;", "")
            .replace(
                "CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(submitted_by, seq) WHERE submitted_by <> '';\n",
                "",
            );
        assert!(!version_2_schema.contains("submitted_by"));
        let queued = JobId::generate();
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch(&version_2_schema).expect("version 2 schema");
            connection.pragma_update(None, "user_version", 2).expect("version");
            connection
                .execute(
                    "INSERT INTO jobs (id, kind, state, ready_seq, max_attempts, created_at, idempotency_key, arg)
                     VALUES (?1, 'noop', 'queued', 1, 3, 0, 'order-1', NULL)",
                    params![queued.to_bytes().as_slice()],
                )
                .expect("a queued job");
        }
        let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("upgrade").0;
        let version: i64 = backend.connection.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let record = backend.get(queued, false).expect("get").expect("the old job");
        assert_eq!((record.state, record.submitted_by), (JobState::Queued, None));
        // The old key still answers a submission without a token, and not one with a token.
        let again = Job { idempotency_key: Some("order-1".to_owned()), ..Job::for_test("noop") };
        let answer = committed(&mut backend, |backend| backend.enqueue(vec![again]).expect("enqueue").expect("fits"));
        assert_eq!((answer[0].id, answer[0].created), (queued, false));
        let tenant = Job {
            idempotency_key: Some("order-1".to_owned()),
            submitted_by: Some("tenant-b".to_owned()),
            ..Job::for_test("noop")
        };
        let answer = committed(&mut backend, |backend| backend.enqueue(vec![tenant]).expect("enqueue").expect("fits"));
        assert!(answer[0].created, "another submitter's key is another job");
        assert_eq!(claim_ids(&mut backend, 10, Utc::now()).first(), Some(&queued));
    }

    #[test]
    fn rows_that_do_not_decode_are_dead_lettered_and_the_rest_are_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let jobs: Vec<Job> = (0..4).map(|_| Job::for_test("noop")).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        {
            let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open").0;
            committed(&mut backend, |backend| backend.enqueue(jobs).expect("enqueue").expect("fits"));
            // A bad id and a negative count, as a damaged file or a hand edit would leave.
            let corrupt = |sql: &str, id: JobId| {
                backend.connection.execute(sql, params![id.to_bytes().as_slice()]).expect("corrupt a row")
            };
            corrupt("UPDATE jobs SET id = x'0102' WHERE id = ?1", ids[1]);
            corrupt("UPDATE jobs SET attempts = -1 WHERE id = ?1", ids[2]);
        }
        // Reopened, so that the claim reads the table rather than the buffer of fresh jobs.
        let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open").0;
        assert_eq!(claim_ids(&mut backend, 10, Utc::now()), vec![ids[0], ids[3]]);
        assert_eq!(backend.depth().expect("depth").dead, 2);
        let errors: Vec<String> = backend
            .connection
            .prepare("SELECT last_error FROM jobs WHERE state = 'dead' ORDER BY seq")
            .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
            .expect("dead rows");
        assert!(errors[0].contains("column id"), "{errors:?}");
        assert!(errors[1].contains("column attempts"), "{errors:?}");
        assert_eq!(claim_ids(&mut backend, 10, Utc::now()), Vec::<JobId>::new(), "and the queue goes on");
    }

    #[test]
    fn recovery_buries_jobs_that_died_in_their_last_attempt_and_requeues_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let last = Job { max_attempts: 1, ..Job::for_test("noop") };
        let not_last = Job { max_attempts: 2, ..Job::for_test("noop") };
        let (last_id, not_last_id) = (last.id, not_last.id);
        {
            let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open").0;
            committed(&mut backend, |backend| backend.enqueue(vec![last, not_last]).expect("enqueue").expect("fits"));
            assert_eq!(claim_ids(&mut backend, 10, Utc::now()).len(), 2);
            let started: Vec<StartedJob> = [last_id, not_last_id]
                .map(|id| StartedJob { claim: 0, id, attempt: 1, started_at: Utc::now() })
                .to_vec();
            committed(&mut backend, |backend| backend.record_started(&started).expect("started"));
        }
        let (mut backend, recovery) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.buried, recovery.requeued), (1, 1));
        let record = backend.get(last_id, false).expect("get").expect("record");
        assert_eq!((record.state, record.attempts), (JobState::Dead, 1));
        let error = record.last_error.unwrap_or_default();
        assert!(error.contains("the process died during attempt 1 of 1"), "{error}");
        let record = backend.get(not_last_id, false).expect("get").expect("record");
        assert_eq!((record.state, record.attempts), (JobState::Queued, 1));
        assert_eq!((backend.depth().expect("depth").dead, backend.depth().expect("depth").queued), (1, 1));
    }

    #[test]
    fn claims_serve_fresh_jobs_in_ready_order_and_never_a_cancelled_or_rolled_back_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 100_000, Synchronous::Full, None).expect("open");
        let now = Utc::now();
        let enqueue = |backend: &mut SqliteBackend, jobs: Vec<Job>| -> Vec<JobId> {
            let ids = jobs.iter().map(|job| job.id).collect();
            committed(backend, |backend| backend.enqueue(jobs).expect("enqueue").expect("fits"));
            ids
        };

        // Fresh jobs come out in order, as a read of the table would give them, and with
        // the fields the table would give.
        let first = enqueue(&mut backend, vec![job_at(None), job_at(None)]);
        let claimed = committed(&mut backend, |backend| backend.claim(1, now, &Lease::for_test()).expect("take").jobs);
        assert_eq!((claimed[0].id, claimed[0].attempt, claimed[0].timeout_ms), (first[0], 1, Some(250)));

        // A delayed job that falls due takes the next ready number between fresh jobs: the
        // claim serves the buffer up to it and reads it from the table, in ready order.
        let delayed = enqueue(&mut backend, vec![job_at(Some(now + chrono::Duration::seconds(10)))]);
        let after = enqueue(&mut backend, vec![job_at(None)]);
        let later = now + chrono::Duration::seconds(11);
        assert_eq!(claim_ids(&mut backend, 10, later), vec![first[1], after[0], delayed[0]]);
        let behind_the_due_one = enqueue(&mut backend, vec![job_at(None)]);
        assert_eq!(claim_ids(&mut backend, 10, later), behind_the_due_one);

        // A cancelled job is not handed out, and those around it are.
        let around = enqueue(&mut backend, vec![job_at(None), job_at(None), job_at(None)]);
        let cancelled = committed(&mut backend, |backend| backend.cancel(around[1], now).expect("cancel"));
        assert_eq!(cancelled, Ok(()));
        assert_eq!(claim_ids(&mut backend, 10, later), vec![around[0], around[2]]);

        // A rolled-back submission is gone from memory as from the table.
        backend.begin().expect("begin");
        let lost = job_at(None);
        let lost_id = lost.id;
        assert!(backend.enqueue(vec![lost]).expect("enqueue").is_ok());
        backend.rollback();
        assert!(backend.get(lost_id, false).expect("get").is_none());
        let next = enqueue(&mut backend, vec![job_at(None)]);
        assert_eq!(claim_ids(&mut backend, 10, later), next);

        // More than the buffer holds: every job still comes out once, in order.
        let many = enqueue(&mut backend, (0..FRESH_MAX_JOBS + 100).map(|_| job_at(None)).collect());
        let mut claimed = Vec::new();
        while claimed.len() < many.len() {
            let batch = claim_ids(&mut backend, 1000, later);
            assert!(!batch.is_empty(), "claims stalled after {} jobs", claimed.len());
            claimed.extend(batch);
        }
        assert_eq!(claimed, many);
        assert!(claim_ids(&mut backend, 10, later).is_empty());
        // Claimed jobs count as queued until they start; the cancelled one does not.
        assert_eq!(backend.depth().expect("depth").queued, many.len() + 8);
    }

    /// Inserts run `OR ROLLBACK` (see `insert_sql`): a failing statement must then leave
    /// nothing of the group behind, in the table or in memory.
    #[test]
    fn a_write_that_fails_midway_undoes_the_whole_transaction_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 1_000, Synchronous::Full, None).expect("open");
        let existing = job_at(None);
        let existing_id = existing.id;
        committed(&mut backend, |backend| backend.enqueue(vec![existing]).expect("enqueue").expect("fits"));
        let depth_before = backend.depth().expect("depth");

        backend.begin().expect("begin");
        let earlier = job_at(None);
        let earlier_id = earlier.id;
        assert!(backend.enqueue(vec![earlier]).expect("enqueue").is_ok());
        // A job whose id is taken fails the id's UNIQUE constraint, after a first row.
        let clash = vec![job_at(None), Job { id: existing_id, ..job_at(None) }];
        let error = backend.enqueue(clash).expect_err("the taken id fails the insert");
        assert!(error.message().contains("UNIQUE"), "{error}");
        assert!(backend.connection.is_autocommit(), "OR ROLLBACK ended the transaction");
        backend.rollback();

        assert!(backend.get(earlier_id, false).expect("get").is_none(), "the earlier submission was undone");
        assert_eq!(backend.depth().expect("depth"), depth_before);
        let next = job_at(None);
        let next_id = next.id;
        committed(&mut backend, |backend| backend.enqueue(vec![next]).expect("enqueue").expect("fits"));
        let claimed = claim_ids(&mut backend, 10, Utc::now());
        assert_eq!(claimed, vec![existing_id, next_id]);
    }

    #[test]
    fn hot_statements_are_prepared_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 1000, Synchronous::Full, None).expect("open");
        // A delayed job far off, so that every fetch also looks for due jobs.
        let far_off = job_at(Some(Utc::now() + chrono::Duration::hours(1)));
        assert!(backend.enqueue(vec![far_off]).expect("enqueue").is_ok());
        // Each hot path twice with other values, through the table and not the buffer.
        for round in 0..3 {
            let jobs: Vec<Job> = (0..round + 1).map(|_| job_at(None)).collect();
            assert!(backend.enqueue(jobs).expect("enqueue").is_ok());
            let claimed = backend.claim(10 + round, Utc::now(), &Lease::for_test()).expect("take").jobs;
            let now = Utc::now() + chrono::Duration::milliseconds(round as i64);
            let (first, rest) = claimed.split_first().expect("claimed");
            backend
                .record_started(&[StartedJob { claim: 0, id: first.id, attempt: first.attempt, started_at: now }])
                .expect("start");
            let ends: Vec<FinishedJob> =
                claimed.iter().map(|job| FinishedJob::succeeded(job.id, job.attempt, "noop", now)).collect();
            let started: Vec<StartedJob> = rest
                .iter()
                .map(|job| StartedJob { claim: 0, id: job.id, attempt: job.attempt, started_at: now })
                .collect();
            backend.record_progress(&started, &ends).expect("progress");
        }
        let hot = [
            PROMOTE_DUE,
            NEXT_DUE,
            claim::SQL,
            RECORD_STARTED,
            insert_sql(1, false),
            insert_sql(2, false),
            finish_sql(JobState::Queued, 1),
            finish_sql(JobState::Queued, 2),
            finish_sql(JobState::Running, 1),
        ];
        for sql in hot {
            let statement = backend.connection.prepare_cached(sql).expect("cached");
            assert!(statement.get_status(rusqlite::StatementStatus::Run) >= 1, "not run: {sql}");
            assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0, "re-prepared: {sql}");
        }
    }

    #[test]
    fn a_claim_stops_at_its_byte_limit_but_always_takes_one_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 100, Synchronous::Full, None).expect("open");
        let large = || Job::upload_for_test(CLAIM_MAX_BODY_BYTES * 5 / 8);
        // Three from the table (enqueued outside a transaction, so never in the buffer of
        // fresh jobs), then three from the buffer: each claim holds one large job, says it
        // stopped at the limit while more wait, and the last says it did not.
        let from_table: Vec<Job> = (0..3).map(|_| large()).collect();
        let from_buffer: Vec<Job> = (0..3).map(|_| large()).collect();
        let order: Vec<JobId> = from_table.iter().chain(&from_buffer).map(|job| job.id).collect();
        assert!(backend.enqueue(from_table).expect("enqueue").is_ok());
        let mut claimed = Vec::new();
        for _ in 0..3 {
            let batch = backend.claim(10, Utc::now(), &Lease::for_test()).expect("take");
            assert_eq!(batch.jobs.len(), 1);
            claimed.push((batch.jobs[0].id, batch.stopped_at_byte_limit));
        }
        committed(&mut backend, |backend| backend.enqueue(from_buffer).expect("enqueue").expect("fits"));
        for _ in 0..3 {
            let batch =
                committed(&mut backend, |backend| backend.claim(10, Utc::now(), &Lease::for_test()).expect("take"));
            assert_eq!(batch.jobs.len(), 1);
            claimed.push((batch.jobs[0].id, batch.stopped_at_byte_limit));
        }
        let expected: Vec<(JobId, bool)> = order.iter().enumerate().map(|(n, id)| (*id, n != 2 && n != 5)).collect();
        assert_eq!(claimed, expected);
        // Small jobs fill a claim up to `max`.
        let small: Vec<Job> = (0..20).map(|_| job_at(None)).collect();
        committed(&mut backend, |backend| backend.enqueue(small).expect("enqueue").expect("fits"));
        let batch = committed(&mut backend, |backend| backend.claim(15, Utc::now(), &Lease::for_test()).expect("take"));
        assert_eq!((batch.jobs.len(), batch.stopped_at_byte_limit), (15, false));
    }

    fn job_at(run_at: Option<DateTime<Utc>>) -> Job {
        Job { timeout_ms: Some(250), run_at, ..Job::for_test("noop") }
    }

    #[test]
    fn a_fetch_transaction_takes_no_lock_until_it_must_and_its_promotions_are_committed() {
        use rusqlite::TransactionState;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let (mut backend, _) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open");
        let state = |backend: &SqliteBackend| backend.connection.transaction_state(Some("main")).expect("state");
        let now = Utc::now();
        let fresh = |backend: &mut SqliteBackend, jobs: Vec<Job>| {
            backend.begin().expect("begin");
            assert!(backend.enqueue(jobs).expect("enqueue").is_ok());
            backend.commit().expect("commit");
        };

        // A fresh job and nothing delayed: the fetch never touches the database.
        fresh(&mut backend, vec![job_at(None)]);
        backend.begin_fetch().expect("begin");
        assert_eq!(backend.claim(10, now, &Lease::for_test()).expect("take").jobs.len(), 1);
        assert_eq!(state(&backend), TransactionState::None);
        backend.commit().expect("commit");

        // With a delayed job waiting, it reads the table for it but writes nothing.
        let delayed = job_at(Some(now + chrono::Duration::seconds(10)));
        let delayed_id = delayed.id;
        fresh(&mut backend, vec![delayed, job_at(None)]);
        backend.begin_fetch().expect("begin");
        let batch = backend.claim(10, now, &Lease::for_test()).expect("take");
        assert_eq!(batch.jobs.len(), 1);
        assert!(batch.next_due.is_some());
        assert_eq!(state(&backend), TransactionState::Read);
        backend.commit().expect("commit");

        // Once it is due, the fetch promotes it: the transaction becomes a write, and the
        // promotion is on disk after its commit.
        backend.begin_fetch().expect("begin");
        let batch = backend.claim(10, now + chrono::Duration::seconds(11), &Lease::for_test()).expect("take");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![delayed_id]);
        assert_eq!(batch.next_due, None, "nothing else is delayed");
        assert_eq!(state(&backend), TransactionState::Write);
        backend.commit().expect("commit");
        drop(backend);
        let (mut reopened, recovery) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.queued, recovery.delayed), (3, 0), "the promotion was committed");
        assert_eq!(reopened.get(delayed_id, false).expect("get").expect("exists").state, JobState::Queued);
    }

    #[test]
    fn delayed_jobs_wait_for_their_time_then_run_in_due_order_and_retries_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let (mut backend, _) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open");
        let now = Utc::now();
        let later = |secs| now + chrono::Duration::seconds(secs);
        let (late, early, at_once) = (job_at(Some(later(20))), job_at(Some(later(10))), job_at(None));
        let ids = (late.id, early.id, at_once.id);
        let admitted = backend.enqueue(vec![late, early, at_once]).expect("enqueue").expect("fits");
        let states: Vec<JobState> = admitted.iter().map(|job| job.state).collect();
        assert_eq!(states, [JobState::Scheduled, JobState::Scheduled, JobState::Queued]);

        let batch = backend.claim(10, now, &Lease::for_test()).expect("take");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![ids.2]);
        assert_eq!(batch.next_due.map(|at| at.timestamp_millis()), Some(later(10).timestamp_millis()));
        assert_eq!(batch.jobs[0].timeout_ms, Some(250));

        let batch = backend.claim(10, later(30), &Lease::for_test()).expect("take");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![ids.1, ids.0], "due order");
        assert_eq!(batch.next_due, None);

        // A failed attempt with a retry time is `failed` until then, then queued again.
        backend
            .record_started(&[StartedJob { claim: 0, id: ids.1, attempt: 1, started_at: later(30) }])
            .expect("start");
        let retry_at = later(40);
        let failed = FinishedJob {
            claim: 0,
            id: ids.1,
            attempt: 1,
            kind: "noop",
            outcome: Outcome::TimedOut { after_ms: 250 },
            finished_at: later(31),
            retry_at: Some(retry_at),
        };
        backend.record_finished(&[failed]).expect("finish");
        let record = backend.get(ids.1, false).expect("get").expect("exists");
        assert_eq!((record.state, record.attempts), (JobState::Failed, 1));
        assert_eq!(record.last_error.as_deref(), Some("timed out after 250 ms"));
        assert_eq!(backend.depth().expect("depth").failed, 1);
        assert!(backend.claim(10, later(39), &Lease::for_test()).expect("take").jobs.is_empty(), "not early");
        let retried = backend.claim(10, later(41), &Lease::for_test()).expect("take").jobs;
        assert_eq!((retried[0].id, retried[0].attempt), (ids.1, 2));
    }

    #[test]
    fn cancel_retry_and_list_follow_the_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 100, Synchronous::Full, None).expect("open");
        let jobs: Vec<Job> = (0..3).map(|_| job_at(None)).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        backend.enqueue(jobs).expect("enqueue").expect("fits");
        let now = Utc::now();
        assert_eq!(backend.cancel(ids[0], now).expect("cancel"), Ok(()));
        assert_eq!(backend.cancel(ids[0], now).expect("cancel"), Err(ControlError::Conflict(JobState::Cancelled)));
        assert_eq!(backend.cancel(JobId::generate(), now).expect("cancel"), Err(ControlError::NotFound));
        let claimed = backend.claim(10, now, &Lease::for_test()).expect("take").jobs;
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids[1..].to_vec(), "cancelled never runs");
        backend.record_started(&[StartedJob { claim: 0, id: ids[1], attempt: 1, started_at: now }]).expect("start");
        assert_eq!(backend.cancel(ids[1], now).expect("cancel"), Err(ControlError::Conflict(JobState::Running)));
        let dead = FinishedJob {
            claim: 0,
            id: ids[1],
            attempt: 1,
            kind: "noop",
            outcome: Outcome::Failed { error: "bad input".into(), retryable: false },
            finished_at: now,
            retry_at: None,
        };
        backend.record_finished(&[dead]).expect("finish");
        assert_eq!(backend.retry_dead(ids[2]).expect("retry"), Err(ControlError::Conflict(JobState::Queued)));

        let page = backend
            .list(&ListFilter { state: Some(JobState::Dead), submitted_by: None, kind: None }, None, 10)
            .expect("list");
        assert_eq!(page.records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[1]]);
        let all = backend.list(&ListFilter::default(), None, 2).expect("list");
        assert_eq!(all.records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[2], ids[1]], "newest first");
        let rest = backend.list(&ListFilter::default(), all.next_before, 2).expect("list");
        assert_eq!((rest.records.len(), rest.next_before), (1, None));

        assert_eq!(backend.retry_dead(ids[1]).expect("retry"), Ok(()));
        let record = backend.get(ids[1], false).expect("get").expect("exists");
        assert_eq!((record.state, record.attempts), (JobState::Queued, 0));
        let again = backend.claim(10, now, &Lease::for_test()).expect("take").jobs;
        assert_eq!(again.iter().map(|job| (job.id, job.attempt)).collect::<Vec<_>>(), vec![(ids[1], 1)]);
    }
}

/// A queue.db written by the release before the job envelope (schema version 3, commit
/// a23eaca, `tests/fixtures/make-queue-v3.sh`) opens, keeps every job in its state, and
/// runs: its kind columns become the same arguments a new submission would carry.
mod migration_from_version_3 {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/queue-v3.db");

    fn args_of(job: &Job) -> Option<serde_json::Value> {
        job.args.as_ref().map(|args| serde_json::from_str(args.get()).expect("args are JSON"))
    }

    #[test]
    fn a_version_3_file_opens_with_every_job_and_its_arguments_and_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        std::fs::write(&path, FIXTURE).expect("copy the fixture");
        let (mut backend, recovery) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("upgrade");
        let version: i64 = backend.connection.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        // The sleeping job was running when the fixture's process was killed.
        assert_eq!((recovery.requeued, recovery.buried), (1, 0));
        let depth = backend.depth().expect("depth");
        assert_eq!(
            (depth.queued, depth.scheduled, depth.running, depth.failed, depth.dead),
            (9, 2, 0, 1, 1),
            "every unfinished and dead job is counted in its state"
        );
        // Finished and waiting jobs keep their records.
        let page = backend.list(&ListFilter::default(), None, 100).expect("list");
        let states: Vec<(String, JobState)> =
            page.records.iter().rev().map(|record| (record.kind.clone(), record.state)).collect();
        assert_eq!(states.len(), 16);
        for (kind, state) in [
            ("noop", JobState::Succeeded),
            ("upload", JobState::Succeeded),
            ("fail", JobState::Dead),
            ("fail", JobState::Failed),
            ("upload", JobState::Scheduled),
            ("noop", JobState::Scheduled),
            ("noop", JobState::Cancelled),
        ] {
            assert!(states.contains(&(kind.to_owned(), state)), "{kind} {state:?} in {states:?}");
        }
        let succeeded =
            page.records.iter().find(|record| record.kind == "upload" && record.state == JobState::Succeeded);
        let result = &succeeded.expect("the finished upload").result.as_ref().expect("its result").0;
        assert_eq!(result.get("key").and_then(|key| key.as_str()), Some("fixture/done.json"));
        let failed = page.records.iter().find(|record| record.state == JobState::Failed).expect("the failed job");
        assert_eq!((failed.attempts, failed.last_error.as_deref()), (1, Some("try later")));
        assert!(failed.run_at.is_some(), "it waits for its retry");
        assert_eq!(page.records.iter().filter(|record| record.submitted_by.as_deref() == Some("fixture")).count(), 16);

        // The queued jobs are claimed in their order, as envelopes the kinds can read.
        // Claimed as of the moment the fixture was written, so that the result does not
        // depend on today's date: by now its failed job's retry (within the hour after)
        // and, in a year, its scheduled jobs would be due as well.
        let written_at =
            page.records.iter().map(|record| record.created_at).max().expect("records") + chrono::Duration::seconds(5);
        let claimed = backend.claim(100, written_at, &Lease::for_test()).expect("claim").jobs;
        let kinds: Vec<&str> = claimed.iter().map(|job| job.kind.as_ref()).collect();
        assert_eq!(kinds, ["sleep", "upload", "upload", "upload", "noop", "sleep", "fail", "panic", "upload"]);
        assert_eq!(claimed[0].attempt, 2, "the interrupted attempt counted");
        assert_eq!(
            args_of(&claimed[0]),
            Some(serde_json::json!({"ms": 3_600_000, "blocking": false, "in_worker": false}))
        );
        assert_eq!(
            args_of(&claimed[1]),
            Some(serde_json::json!({
                "key": "fixture/queued.json",
                "content_type": "application/vnd.test+json",
                "content_encoding": "gzip",
                "metadata": {"n": "1", "origin": "fixture"},
            }))
        );
        let body = claimed[1].body.as_ref().expect("the payload");
        assert_eq!((body.bytes.as_slice(), body.is_json), (br#"{"b":2,  "a":1.50}"#.as_slice(), true));
        assert_eq!(claimed[1].idempotency_key.as_deref(), Some("queued-upload"));
        assert_eq!(args_of(&claimed[2]), Some(serde_json::json!({"content_type": "application/octet-stream"})));
        let bytes = claimed[2].body.as_ref().expect("the bytes");
        assert_eq!((bytes.bytes.as_slice(), bytes.is_json), ([0u8, 1, 2, 3, 4, 5].as_slice(), false));
        assert_eq!(
            (args_of(&claimed[3]), claimed[3].body.as_ref().map(|body| body.bytes.as_slice())),
            (None, Some(b"[1,2,3]".as_slice()))
        );
        assert_eq!((args_of(&claimed[4]), claimed[4].max_attempts, claimed[4].timeout_ms), (None, 7, Some(1234)));
        assert_eq!(args_of(&claimed[5]), Some(serde_json::json!({"ms": 5, "blocking": true, "in_worker": false})));
        assert_eq!(args_of(&claimed[6]), Some(serde_json::json!({"message": "queued failure", "retryable": true})));
        assert_eq!(args_of(&claimed[7]), Some(serde_json::json!({"message": "queued panic", "in_worker": true})));

        // And the queue runs on: progress is recorded, and new jobs go behind the old ones.
        let now = written_at;
        let started: Vec<StartedJob> = claimed
            .iter()
            .map(|job| StartedJob { claim: 0, id: job.id, attempt: job.attempt, started_at: now })
            .collect();
        let finished: Vec<FinishedJob> = claimed
            .iter()
            .map(|job| FinishedJob {
                claim: 0,
                id: job.id,
                attempt: 1,
                kind: "noop",
                outcome: Outcome::Succeeded(JobResult::default()),
                finished_at: now,
                retry_at: None,
            })
            .collect();
        backend.begin().expect("begin");
        backend.record_progress(&started, &finished).expect("progress");
        let fresh = Job::for_test("noop");
        let fresh_id = fresh.id;
        backend.enqueue(vec![fresh]).expect("enqueue").expect("fits");
        backend.commit().expect("commit");
        assert_eq!(backend.depth().expect("depth").queued, 1);
        assert_eq!(
            backend
                .claim(10, now, &Lease::for_test())
                .expect("claim")
                .jobs
                .iter()
                .map(|job| job.id)
                .collect::<Vec<_>>(),
            vec![fresh_id]
        );
    }
}
