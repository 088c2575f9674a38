//! The `webhook` kind: delivers a JSON event to a configured destination as a Standard
//! Webhooks request (`webhook-id`, `webhook-timestamp`, `webhook-signature`), so that a
//! receiver's existing verifier accepts it unchanged. Destinations are configured, never
//! sent by clients, so a client cannot make jobd call an arbitrary address.

mod client;
mod deliver;
mod destination;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use self::destination::{
    DEFAULT_CIRCUIT_FAILURES, DEFAULT_CIRCUIT_OPEN_SECS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT_MS, Destination,
    DestinationSettings,
};
use super::{
    Admission, FieldProblem, JobError, Kind, KindSettings, Placement, Refusal, Registration, RequestFields, RunContext,
    RunsOn, SettingsTable, Starts, TokenLimit, Validated, field_problem,
};
use crate::auth::Principal;
use crate::job::{Body, Job, JobResult, JobSpec};

/// The kind's name.
pub const NAME: &str = "webhook";

/// The largest event delivered beside the actors; larger ones are delivered from the
/// bodies runtime. HMAC-SHA256 runs at about 1 GB/s here, so signing this much takes about
/// 64 µs per secret.
const MAX_BESIDE_ACTORS_BYTES: usize = 64 * 1024;
/// The longest `event_type` accepted.
const MAX_EVENT_TYPE_BYTES: usize = 256;

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    test_only: false,
    build: |settings: &KindSettings,
            registry: &prometheus::Registry|
     -> Result<Arc<dyn Kind>, crate::kinds::BuildError> {
        let destinations = settings
            .tables
            .get(SETTINGS_KEY)
            .map(destinations_of)
            .transpose()
            .map_err(crate::kinds::BuildError::Settings)?
            .unwrap_or_default();
        Ok(Arc::new(Webhook::new(&destinations, &destination::Families::register(registry)?)))
    },
    request_schema: || <WebhookFields as utoipa::PartialSchema>::schema(),
    settings: Some(SettingsTable {
        key: SETTINGS_KEY,
        check: |table| check_destinations(&destinations_of(table)?),
        // Secrets never reach the output: `DestinationSettings` serializes without them.
        describe: |table| {
            let described = destinations_of(table).and_then(|destinations| {
                let effective: BTreeMap<String, DestinationSettings> =
                    destinations.into_iter().map(|(name, destination)| (name, destination.with_defaults())).collect();
                toml::Value::try_from(effective).map_err(|error| format!("[webhooks] {error}"))
            });
            described.unwrap_or_else(toml::Value::String)
        },
    }),
    token_limit: Some(TokenLimit {
        option: TOKEN_OPTION,
        parse_item: |destination| {
            if !destination.is_empty()
                && destination.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                Ok(destination.to_owned())
            } else {
                Err("a destination name holds only letters, digits, '-', '_' and '.'".to_owned())
            }
        },
        problem_slug: "destination-not-allowed",
        problem_title: "Destination Not Allowed",
        rejection_reason: "destination_not_allowed",
        auth_failure_reason: "allowed_destinations",
    }),
};

/// The token-file option that confines a token to some destinations.
const TOKEN_OPTION: &str = "allowed_destinations";

/// The kind's table of the configuration file: `[webhooks.<name>]`, one per destination.
const SETTINGS_KEY: &str = "webhooks";

/// The destinations a `[webhooks]` table configures, by name.
fn destinations_of(table: &toml::Value) -> Result<BTreeMap<String, DestinationSettings>, String> {
    table.clone().try_into().map_err(|error: toml::de::Error| format!("[webhooks] {}", error.message()))
}

/// A webhook's request fields, as the API description shows them.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct WebhookFields {
    /// For `webhook`: the name of a configured destination (`[webhooks.<name>]`).
    destination: Option<String>,
    /// For `webhook`: the event, delivered byte for byte as the request body.
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// For `webhook`: the event's type, sent as `webhook-event-type` and kept on the record.
    event_type: Option<String>,
}

/// A webhook's arguments, as the queue stores them; the payload is the body.
#[derive(Debug, Serialize, Deserialize)]
struct WebhookArgs {
    destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
}

/// Checks every configured destination, for `check-config` and start-up: the first
/// problem, naming its destination.
pub fn check_destinations(destinations: &BTreeMap<String, DestinationSettings>) -> Result<(), String> {
    for (name, settings) in destinations {
        settings.resolve(name).map_err(|problem| format!("[webhooks.{name}] {problem}"))?;
    }
    Ok(())
}

#[derive(Debug)]
struct Webhook {
    destinations: BTreeMap<String, Arc<Destination>>,
}

impl Webhook {
    /// The configured destinations, each with its series of `families`.
    fn new(settings: &BTreeMap<String, DestinationSettings>, families: &destination::Families) -> Self {
        let mut destinations = BTreeMap::new();
        for (name, destination) in settings {
            // The configuration was checked at start (`check_destinations`); a destination
            // that fails now (a credential gone meanwhile) is left out, and its jobs fail.
            match destination.resolve(name) {
                Ok(mut resolved) => {
                    resolved.series = Some(families.series(name));
                    destinations.insert(name.clone(), Arc::new(resolved));
                }
                Err(problem) => tracing::error!(destination = name, problem, "webhook destination left out"),
            }
        }
        Webhook { destinations }
    }

    fn args(job: &Job) -> Result<WebhookArgs, JobError> {
        let text = job.args.as_ref().map_or("{}", |args| args.get());
        serde_json::from_str(text).map_err(|error| JobError::Failed {
            message: format!("the job's stored arguments do not decode: {error}"),
            retryable: false,
        })
    }

    /// The job's destination, and its event type, from one read of its arguments.
    fn destination(&self, job: &Job) -> Result<(Arc<Destination>, Option<String>), JobError> {
        let args = Self::args(job)?;
        let destination = self.destinations.get(&args.destination).cloned().ok_or_else(|| JobError::Failed {
            message: format!("no webhook destination {:?} is configured", args.destination),
            retryable: false,
        })?;
        Ok((destination, args.event_type))
    }
}

impl Kind for Webhook {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, fields: &mut RequestFields<'_>) -> Result<Validated, FieldProblem> {
        let destination: String =
            fields.take("destination")?.ok_or_else(|| field_problem("destination", "is required for a webhook"))?;
        // The configured names are not listed: a confined token has no business learning
        // the others.
        if !self.destinations.contains_key(&destination) {
            return Err(field_problem("destination", format!("no destination {destination:?} is configured")));
        }
        let payload = fields
            .take_raw("payload")
            .filter(|raw| raw.get() != "null")
            .ok_or_else(|| field_problem("payload", "a webhook needs a payload: the event to deliver"))?;
        let event_type: Option<String> = fields.take("event_type")?;
        if let Some(event_type) = &event_type {
            let valid = !event_type.is_empty()
                && event_type.len() <= MAX_EVENT_TYPE_BYTES
                && event_type.bytes().all(|byte| (0x21..0x7f).contains(&byte));
            if !valid {
                return Err(field_problem("event_type", "must be 1-256 printable ASCII characters without spaces"));
            }
        }
        let args = WebhookArgs { destination, event_type };
        let args = serde_json::value::to_raw_value(&args).map_err(|error| field_problem("", error.to_string()))?;
        Ok(Validated { args: Some(args), body: Some(Body::json(payload.to_owned())) })
    }

    /// The destination the job is delivered to.
    fn target(&self, record: &crate::job::JobRecord) -> Option<String> {
        let args = record.args.as_ref()?;
        serde_json::from_str::<WebhookArgs>(args.get()).ok().map(|args| args.destination)
    }

    /// A token with `allowed_destinations` may send only to those; a token confined in
    /// another way (by `allowed_key_prefixes` alone) may send to none, so that adding
    /// webhooks gives no tenant token a new power.
    fn authorize(&self, job: &JobSpec, caller: &Principal) -> Result<(), Refusal> {
        if !caller.is_confined() {
            return Ok(());
        }
        let destination = job
            .args
            .as_ref()
            .and_then(|args| serde_json::from_str::<WebhookArgs>(args.get()).ok())
            .map(|args| args.destination)
            .unwrap_or_default();
        let allowed = caller.limit(TOKEN_OPTION);
        if allowed.contains(&destination) {
            return Ok(());
        }
        Err(Refusal {
            field: "destination".to_owned(),
            message: if allowed.is_empty() {
                format!("token {} is confined by {} and has no {TOKEN_OPTION}", caller.name, caller.confinements())
            } else {
                format!("{destination:?} is not among token {}'s {TOKEN_OPTION} ({})", caller.name, allowed.join(", "))
            },
            confinement: TOKEN_OPTION,
        })
    }

    fn admit(&self, job: &Job) -> Admission {
        match self.destination(job) {
            Ok((destination, _)) => destination.admit(),
            // The run fails it for good, with the reason.
            Err(_) => Admission::Now(None),
        }
    }

    fn run(&self, job: Job, _context: &RunContext) -> BoxFuture<'static, Result<JobResult, JobError>> {
        let destination = self.destination(&job);
        Box::pin(async move {
            let (destination, event_type) = destination?;
            deliver::deliver(&destination, job, event_type.as_deref()).await
        })
    }

    /// A delivery of a small event is non-blocking network I/O with a few microseconds of
    /// CPU between its awaits (signing, parsing the answer), so it runs beside the actors:
    /// a hop to the bodies runtime and back would cost it more than the request itself. A
    /// large one takes milliseconds to sign and encrypt, which would hold up the actors, so
    /// it pays for the hop.
    ///
    /// A delivery is an HTTP request in a task of its own: it cannot take the process down,
    /// so it starts without waiting for its start to be recorded, which would hold its
    /// destination's slot for a commit. Its start is recorded in the next flush; should the
    /// process die first, the delivery runs again with the same `webhook-id` (at least once).
    fn placement(&self, job: &Job) -> Placement {
        let small = job.body.as_ref().is_none_or(|body| body.bytes.len() <= MAX_BESIDE_ACTORS_BYTES);
        Placement { runs_on: if small { RunsOn::BesideActors } else { RunsOn::Bodies }, starts: Starts::AtOnce }
    }

    /// Long enough for the slowest destination's own timeout to decide first, so that a
    /// timeout is counted and recorded as the destination's, not cut short by the job's.
    fn default_timeout(&self) -> Option<std::time::Duration> {
        let slowest = self.destinations.values().map(|destination| destination.timeout).max()?;
        Some(slowest + std::time::Duration::from_secs(5))
    }

    fn readiness(&self) -> Option<serde_json::Value> {
        if self.destinations.is_empty() {
            return None;
        }
        let destinations: serde_json::Map<String, serde_json::Value> =
            self.destinations.iter().map(|(name, destination)| (name.clone(), destination.readiness())).collect();
        Some(serde_json::json!({"destinations": destinations}))
    }
}
