//! The Ingest actor: turns validated submissions into jobs with ids and commits them to
//! the queue in groups, answering each submission only after its group is committed.

use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::oneshot;

use crate::job::{Job, JobId, JobSpec};
use crate::metrics::Metrics;
use crate::queue::{Admitted, QueueHandle, Refusal, StorageError, SubmissionAnswer};

/// A group holds at most this many jobs, so one commit stays short; a single
/// submission larger than this still forms a group of its own.
const MAX_GROUP_JOBS: usize = 16_384;
/// Room for this many submissions waiting in the mailbox; the HTTP handlers wait for
/// room beyond it, which bounds memory by the number of open connections.
const MAILBOX_CAPACITY: usize = 4_096;
/// Groups sent to the queue thread and not yet answered. With one, the queue thread
/// idled for the round trip through this actor after every commit (15k single-job
/// submissions/s on the benchmark machine); with a few, the next group is already
/// waiting when a commit ends (about 28k/s). A group is answered only after its fsync,
/// which runs on the sync thread while the queue thread commits the next groups, so
/// groups waiting for a slow fsync must not hold back the next commit: with 8, they did,
/// and a new job waited for the fsync before it could even be committed (submit-to-start
/// p99 2.8-3.2 ms at half the single-job rate; 1.5 ms with 64). The queue thread still
/// takes all waiting groups into one transaction, so more groups do not mean more commits.
const MAX_GROUPS_IN_FLIGHT: usize = 64;

/// A validated, all-or-nothing submission from an HTTP handler.
#[derive(Message)]
#[rtype(result = "Result<Vec<Admitted>, SubmitError>")]
pub struct Submit {
    pub jobs: Vec<JobSpec>,
    /// The name of the submitting token; `None` without authentication.
    pub submitted_by: Option<String>,
}

/// Why a submission was not accepted. Nothing of it was enqueued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "the disk is slow: {held_bytes} bytes of submissions already wait for it to commit the ones before \
         them, and this one would pass ingest_max_pending_bytes ({limit})"
    )]
    CommitsBehind { held_bytes: usize, limit: usize },
}

/// Where a submission's answer goes.
type Reply = oneshot::Sender<Result<Vec<Admitted>, SubmitError>>;

struct PendingSubmission {
    jobs: Vec<Job>,
    /// What the submission holds in memory, counted in [`Ingest::pending_bytes`].
    bytes: usize,
    reply: Reply,
}

/// The memory a submission holds while it waits: its jobs, and the bodies they carry.
fn held_bytes(jobs: &[Job]) -> usize {
    jobs.iter().map(Job::footprint).sum()
}

/// The metrics label of a job Ingest made: its kind's name, borrowed from the registry.
fn registered_kind(job: &Job) -> &'static str {
    match &job.kind {
        std::borrow::Cow::Borrowed(name) => name,
        // Ingest makes jobs only from validated specs, whose kind names are borrowed.
        std::borrow::Cow::Owned(_) => "unknown",
    }
}

/// Gathers submissions into groups and sends them to the queue thread, at most
/// [`MAX_GROUPS_IN_FLIGHT`] at a time.
///
/// While that many are out, new submissions wait in `pending`; when one returns they all
/// go out as the next group. The group grows with the load by itself, so a quiet daemon
/// commits each submission at once and a busy one amortises each commit over many
/// submissions, without a timer.
pub struct Ingest {
    queue: QueueHandle,
    metrics: Arc<Metrics>,
    pending: Vec<PendingSubmission>,
    /// The bytes `pending` holds.
    pending_bytes: usize,
    /// The bytes of the groups sent to the queue thread and not answered yet: they are
    /// held (in its channel, its transaction, or waiting for the fsync) until then.
    in_flight_bytes: usize,
    /// The most bytes `pending` and the groups in flight may hold together; a submission
    /// that would pass it is refused, unless nothing is held (see
    /// [`Ingest::with_max_pending_bytes`]).
    max_pending_bytes: usize,
    /// Groups sent to the queue thread and not yet answered.
    in_flight: usize,
    /// Whether submissions that arrive during a commit join the next one; off, each
    /// submission is committed alone (for comparison).
    group_commit: bool,
    /// `max_attempts` for jobs that do not give their own.
    default_max_attempts: u32,
}

impl Ingest {
    pub fn new(queue: QueueHandle, metrics: Arc<Metrics>, group_commit: bool, default_max_attempts: u32) -> Self {
        Self {
            queue,
            metrics,
            pending: Vec::new(),
            pending_bytes: 0,
            in_flight_bytes: 0,
            max_pending_bytes: crate::config::DEFAULT_INGEST_MAX_PENDING_BYTES,
            in_flight: 0,
            group_commit,
            default_max_attempts,
        }
    }

    /// Bounds the bytes of submissions held until their commit is answered: those waiting
    /// in `pending` for a commit slot and those in the groups out at the queue thread.
    ///
    /// Submissions are held for long only while the disk is slow; their clients may time
    /// out meanwhile, but their bodies stay until their commit. Past the bound a
    /// submission is refused at once. One that finds nothing held is always taken,
    /// whatever its size, so that `max_body_bytes` alone limits a single request.
    pub fn with_max_pending_bytes(mut self, max_pending_bytes: usize) -> Self {
        self.max_pending_bytes = max_pending_bytes;
        self
    }

    fn commit_next_group(&mut self, ctx: &mut Context<Self>) {
        if self.pending.is_empty() || (self.in_flight >= MAX_GROUPS_IN_FLIGHT && self.group_commit) {
            return;
        }
        let mut size = 0;
        let take = self
            .pending
            .iter()
            .take_while(|submission| {
                size += submission.jobs.len();
                size <= MAX_GROUP_JOBS
            })
            .count()
            .clamp(1, if self.group_commit { usize::MAX } else { 1 });
        let group: Vec<PendingSubmission> = self.pending.drain(..take).collect();
        let mut replies = Vec::with_capacity(group.len());
        let mut batches = Vec::with_capacity(group.len());
        let group_bytes: usize = group.iter().map(|submission| submission.bytes).sum();
        self.in_flight_bytes += group_bytes;
        for submission in group {
            self.pending_bytes -= submission.bytes;
            let kinds: Vec<&'static str> = submission.jobs.iter().map(registered_kind).collect();
            replies.push((submission.reply, kinds));
            batches.push(submission.jobs);
        }
        self.in_flight += 1;
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.enqueue_group(batches).await }.into_actor(self).map(
            move |result, ingest, ctx| {
                ingest.in_flight -= 1;
                ingest.in_flight_bytes -= group_bytes;
                ingest.answer(result, replies);
                ingest.commit_next_group(ctx);
            },
        ));
    }

    fn answer(
        &mut self,
        result: Result<Vec<SubmissionAnswer>, StorageError>,
        replies: Vec<(Reply, Vec<&'static str>)>,
    ) {
        match result {
            Ok(answers) => {
                for ((reply, kinds), answer) in replies.into_iter().zip(answers) {
                    if let Ok(admitted) = &answer {
                        for (job, kind) in admitted.iter().zip(kinds) {
                            if job.created {
                                self.metrics.jobs_submitted.with_label_values(&[kind]).inc();
                            }
                        }
                    }
                    // A client that went away still had its jobs committed; they run.
                    let _ = reply.send(answer.map_err(SubmitError::from));
                }
            }
            Err(error) => {
                if error.is_outcome_unknown() {
                    tracing::error!(%error, submissions = replies.len(), "the group may or may not have been enqueued");
                } else {
                    tracing::error!(%error, submissions = replies.len(), "commit failed; nothing of the group was enqueued");
                }
                for (reply, _) in replies {
                    let _ = reply.send(Err(SubmitError::Storage(error.clone())));
                }
            }
        }
    }
}

impl Actor for Ingest {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<Submit> for Ingest {
    type Result = ResponseFuture<Result<Vec<Admitted>, SubmitError>>;

    fn handle(&mut self, submit: Submit, ctx: &mut Self::Context) -> Self::Result {
        let created_at = Utc::now();
        let jobs: Vec<Job> = submit
            .jobs
            .into_iter()
            .map(|spec| Job {
                id: JobId::generate(),
                created_at,
                attempt: 0,
                claim: 0,
                max_attempts: spec.max_attempts.unwrap_or(self.default_max_attempts),
                timeout_ms: spec.timeout_ms,
                run_at: spec.run_at,
                idempotency_key: spec.idempotency_key,
                submitted_by: submit.submitted_by.clone(),
                kind: std::borrow::Cow::Borrowed(spec.kind),
                queue: spec.queue.unwrap_or_else(crate::job::default_queue),
                priority: spec.priority.unwrap_or(crate::job::DEFAULT_PRIORITY),
                args: spec.args,
                body: spec.body,
            })
            .collect();
        let bytes = held_bytes(&jobs);
        let held = self.pending_bytes + self.in_flight_bytes;
        if held > 0 && held.saturating_add(bytes) > self.max_pending_bytes {
            let refusal = SubmitError::CommitsBehind { held_bytes: held, limit: self.max_pending_bytes };
            tracing::debug!(
                held_bytes = held,
                submission_bytes = bytes,
                limit = self.max_pending_bytes,
                "submission refused: the disk is behind"
            );
            return Box::pin(std::future::ready(Err(refusal)));
        }
        let (reply, answer) = oneshot::channel();
        self.pending_bytes += bytes;
        self.pending.push(PendingSubmission { jobs, bytes, reply });
        self.commit_next_group(ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| Err(SubmitError::Storage(StorageError::new("the Ingest actor stopped"))))
        })
    }
}
