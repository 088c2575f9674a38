//! The test kinds `sleep`, `fail` and `panic`, registered only with `test_kinds`: they let
//! tests and operators make a job block, fail or panic on purpose.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    FieldProblem, JobError, Kind, KindSettings, Placement, Registration, RequestFields, RunContext, RunsOn, Validated,
};
use super::{field_problem, fields::strip_position};
use crate::job::{Job, JobResult, Outcome};

/// The longest `sleep` a test job may ask for; keeps a typo from parking a worker for days.
const MAX_SLEEP_MILLIS: u64 = 3_600_000;

pub const SLEEP: Registration = Registration {
    name: "sleep",
    test_only: true,
    build: |_: &KindSettings, _: &prometheus::Registry| -> Result<Arc<dyn Kind>, super::BuildError> {
        Ok(Arc::new(Sleep))
    },
    request_schema: payload_schema,
    settings: None,
    token_limit: None,
};

pub const FAIL: Registration = Registration {
    name: "fail",
    test_only: true,
    build: |_: &KindSettings, _: &prometheus::Registry| -> Result<Arc<dyn Kind>, super::BuildError> {
        Ok(Arc::new(Requested { panics: false }))
    },
    request_schema: payload_schema,
    settings: None,
    token_limit: None,
};

pub const PANIC: Registration = Registration {
    name: "panic",
    test_only: true,
    build: |_: &KindSettings, _: &prometheus::Registry| -> Result<Arc<dyn Kind>, super::BuildError> {
        Ok(Arc::new(Requested { panics: true }))
    },
    request_schema: payload_schema,
    settings: None,
    token_limit: None,
};

/// The test kinds' one field, `payload`, holds their options.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct TestKindFields {
    /// For `upload`: the JSON to store, byte for byte. For test kinds: their options.
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
}

fn payload_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    <TestKindFields as utoipa::PartialSchema>::schema()
}

/// A `sleep` job's arguments, as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    ms: u64,
    /// Block the body's thread instead of yielding, as careless job code would.
    #[serde(default)]
    blocking: bool,
    /// Block the Worker actor's own thread, which wedges the Dispatcher's loop (to test the
    /// watchdog).
    #[serde(default)]
    in_worker: bool,
    /// Run the body beside the actors, as a webhook's runs (`RunsOn::BesideActors`).
    #[serde(default)]
    beside_actors: bool,
}

/// A `fail` or `panic` job's arguments, as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedArgs {
    #[serde(default)]
    message: Option<String>,
    /// `fail` only: whether the error is worth retrying.
    #[serde(default = "default_true")]
    retryable: bool,
    /// `panic` only: panic in the Worker actor rather than in the job body.
    #[serde(default)]
    in_worker: bool,
    /// Run the body beside the actors, as a webhook's runs (`RunsOn::BesideActors`).
    #[serde(default)]
    beside_actors: bool,
}

fn default_true() -> bool {
    true
}

/// Reads stored arguments; the kind wrote them, so a failure means a damaged row, and
/// the job fails for good rather than run with made-up options.
fn stored_args<T: for<'de> Deserialize<'de>>(job: &Job) -> Result<T, JobError> {
    let text = job.args.as_ref().map_or("{}", |args| args.get());
    serde_json::from_str(text).map_err(|error| JobError::Failed {
        message: format!("the job's stored arguments do not decode: {error}"),
        retryable: false,
    })
}

/// Parses the `payload` field into `T`, and stores it back as the job's arguments.
fn payload_args<T: Serialize + for<'de> Deserialize<'de>>(
    fields: &mut RequestFields<'_>,
    required: bool,
) -> Result<Option<T>, FieldProblem> {
    match fields.take_raw("payload") {
        None if required => Err(field_problem("payload", "is required for this kind")),
        None => Ok(None),
        Some(raw) => {
            serde_json::from_str(raw.get()).map(Some).map_err(|error| field_problem("payload", strip_position(&error)))
        }
    }
}

fn to_args<T: Serialize>(args: &T) -> Result<Option<Box<RawValue>>, FieldProblem> {
    serde_json::value::to_raw_value(args).map(Some).map_err(|error| field_problem("payload", error.to_string()))
}

#[derive(Debug)]
struct Sleep;

impl Kind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }

    fn validate(&self, fields: &mut RequestFields<'_>) -> Result<Validated, FieldProblem> {
        let args: SleepArgs =
            payload_args(fields, true)?.ok_or_else(|| field_problem("payload", "must be {\"ms\": N}"))?;
        if args.ms > MAX_SLEEP_MILLIS {
            return Err(field_problem("payload.ms", format!("must be at most {MAX_SLEEP_MILLIS}")));
        }
        Ok(Validated { args: to_args(&args)?, body: None })
    }

    fn run(&self, job: Job, _context: &RunContext) -> BoxFuture<'static, Result<JobResult, JobError>> {
        Box::pin(async move {
            let args: SleepArgs = stored_args(&job)?;
            if args.blocking {
                // Deliberately blocks the thread, as careless job code would.
                std::thread::sleep(Duration::from_millis(args.ms));
            } else {
                tokio::time::sleep(Duration::from_millis(args.ms)).await;
            }
            Ok(JobResult::default())
        })
    }

    /// With `in_worker`, on the worker's thread, which the Dispatcher shares. A blocking
    /// sleep beside the actors would stall them: it stays on the bodies runtime.
    fn placement(&self, job: &Job) -> Placement {
        let runs_on = match stored_args::<SleepArgs>(job) {
            Ok(args) if args.in_worker => RunsOn::WorkerThread,
            Ok(args) if args.beside_actors && !args.blocking => RunsOn::BesideActors,
            _ => RunsOn::Bodies,
        };
        Placement { runs_on, ..Placement::GUARDED }
    }

    /// Blocks this actor's thread: the Dispatcher's loop stops, and so do the watchdog
    /// pings.
    fn run_on_worker_thread(&self, job: &Job) -> Outcome {
        let ms = stored_args::<SleepArgs>(job).map_or(0, |args| args.ms);
        std::thread::sleep(Duration::from_millis(ms));
        Outcome::Succeeded(JobResult::default())
    }
}

/// `fail` returns an error, retryable or not; `panic` panics in the job body, or with
/// `in_worker` in the Worker actor itself, outside the body's containment (to exercise
/// worker replacement).
#[derive(Debug)]
struct Requested {
    panics: bool,
}

impl Requested {
    fn message(&self, args: &RequestedArgs) -> String {
        let name = if self.panics { "panic" } else { "fail" };
        args.message.clone().unwrap_or_else(|| format!("{name} requested by the job"))
    }
}

impl Kind for Requested {
    fn name(&self) -> &'static str {
        if self.panics { "panic" } else { "fail" }
    }

    fn validate(&self, fields: &mut RequestFields<'_>) -> Result<Validated, FieldProblem> {
        let given: Option<RequestedArgs> = payload_args(fields, false)?;
        let given =
            given.unwrap_or(RequestedArgs { message: None, retryable: true, in_worker: false, beside_actors: false });
        // Stored in full, with the message resolved, so that running needs no defaults.
        let args = RequestedArgs {
            message: Some(self.message(&given)),
            retryable: self.panics || given.retryable,
            in_worker: self.panics && given.in_worker,
            beside_actors: given.beside_actors,
        };
        let args = if self.panics {
            serde_json::json!({"message": args.message, "in_worker": args.in_worker, "beside_actors": args.beside_actors})
        } else {
            serde_json::json!({"message": args.message, "retryable": args.retryable, "beside_actors": args.beside_actors})
        };
        Ok(Validated { args: to_args(&args)?, body: None })
    }

    fn run(&self, job: Job, _context: &RunContext) -> BoxFuture<'static, Result<JobResult, JobError>> {
        let args = stored_args::<RequestedArgs>(&job);
        let panics = self.panics;
        let message = args.as_ref().map(|args| self.message(args)).unwrap_or_default();
        Box::pin(async move {
            let args = args?;
            if panics {
                panic!("{message}");
            }
            Err(JobError::Failed { message, retryable: args.retryable })
        })
    }

    /// A `panic` with `in_worker` runs on the worker's thread.
    fn placement(&self, job: &Job) -> Placement {
        let runs_on = match stored_args::<RequestedArgs>(job) {
            Ok(args) if self.panics && args.in_worker => RunsOn::WorkerThread,
            Ok(args) if args.beside_actors => RunsOn::BesideActors,
            _ => RunsOn::Bodies,
        };
        Placement { runs_on, ..Placement::GUARDED }
    }

    /// Panics in the actor itself, outside the body's containment, as a bug in jobd would:
    /// the Dispatcher's health check must replace the worker.
    fn run_on_worker_thread(&self, job: &Job) -> Outcome {
        let message = stored_args::<RequestedArgs>(job).map(|args| self.message(&args)).unwrap_or_default();
        panic!("{message}");
    }
}
