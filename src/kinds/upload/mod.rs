//! The `upload` kind: writes a job's body to the object store, at a key the client gives
//! or under the default prefix, with a content type, optional gzip and user metadata.

mod metadata;
mod store_health;

use std::sync::Arc;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use self::store_health::StoreHealth;

use self::metadata::{Metadata, check_metadata};
use super::field_problem;
use super::{
    Admission, FieldProblem, GateKey, JobError, Kind, KindSettings, Refusal, Registration, RequestFields, RunContext,
    TokenLimit, Validated,
};
use crate::auth::Principal;
use crate::job::{Body, Job, JobResult, JobSpec};
use crate::keys::ObjectKey;
use crate::store::UploadOptions;

/// The kind's name.
pub const NAME: &str = "upload";

/// The gate uploads wait at while the store cannot be reached. The colon keeps it apart
/// from every webhook destination's gate, which is the destination's name.
pub const STORE_GATE: &str = "upload:store";

/// The longest Content-Type accepted; S3 headers are limited and no real type is longer.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    test_only: false,
    build: |settings: &KindSettings, _: &prometheus::Registry| -> Result<Arc<dyn Kind>, crate::kinds::BuildError> {
        Ok(Arc::new(Upload {
            metadata_supported: settings.metadata_supported,
            default_key_prefix: settings.default_key_prefix.clone(),
            store_health: settings.store_health.clone(),
            gate: GateKey::from(STORE_GATE),
        }))
    },
    request_schema: || <UploadFields as utoipa::PartialSchema>::schema(),
    settings: None,
    token_limit: Some(TokenLimit {
        option: TOKEN_OPTION,
        // Kept without a trailing `/`: a prefix is a whole number of key segments.
        parse_item: |prefix| {
            let trimmed = prefix.trim_end_matches('/');
            // The problem, never the item: a line with its columns swapped holds its token here.
            crate::keys::ObjectKey::parse(trimmed).map_err(|error| format!("the allowed key prefix {error}"))?;
            Ok(trimmed.to_owned())
        },
        problem_slug: "key-not-allowed",
        problem_title: "Key Not Allowed",
        rejection_reason: "key_not_allowed",
        auth_failure_reason: "key_prefix",
    }),
};

/// The token-file option that confines a token's uploads to keys under some prefixes.
const TOKEN_OPTION: &str = "allowed_key_prefixes";

/// Whether a caller confined to `prefixes` may write `key`: always without prefixes, else
/// when the key lies under one of them segment by segment, so `tenant-a` does not admit
/// `tenant-ab/x`.
fn may_write(prefixes: &[String], key: &str) -> bool {
    prefixes.is_empty()
        || prefixes.iter().any(|prefix| {
            key.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// An upload's request fields, as the API description shows them.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "only its schema is used")]
struct UploadFields {
    /// For `upload`: the JSON to store, byte for byte. For test kinds: their options.
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    /// For `upload`: raw bytes to store, base64-encoded, instead of `payload`.
    body_base64: Option<String>,
    /// For `upload`: the object key; by default `<key_prefix>/<yyyy>/<mm>/<dd>/<id>.<ext>`.
    key: Option<String>,
    /// For `upload`: the Content-Type to record.
    content_type: Option<String>,
    /// For `upload`: `gzip` compresses the body before it is written.
    content_encoding: Option<String>,
    /// For `upload`: user metadata to record with the object (not on `file://` stores).
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// An upload's arguments, as the queue stores them; the body is stored apart.
#[derive(Debug, Default, Serialize, Deserialize)]
struct UploadArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    metadata: std::collections::BTreeMap<String, String>,
}

impl UploadArgs {
    fn is_empty(&self) -> bool {
        self.key.is_none() && self.content_type.is_none() && self.content_encoding.is_none() && self.metadata.is_empty()
    }
}

/// One `POST /v1/payloads` payload: an upload of exactly these bytes under a default key.
pub fn payload_job(payload: &RawValue) -> JobSpec {
    JobSpec::new(NAME, None, Some(Body::json(payload.to_owned())))
}

/// The key a job gave, if any; `None` also when the stored arguments do not decode, which
/// then fails the job when it runs.
pub fn requested_key(job: &JobSpec) -> Option<String> {
    job.args.as_ref().and_then(|args| serde_json::from_str::<UploadArgs>(args.get()).ok()).and_then(|args| args.key)
}

#[derive(Debug)]
struct Upload {
    metadata_supported: bool,
    default_key_prefix: String,
    /// While the store cannot be reached, uploads wait at [`STORE_GATE`] instead of
    /// spending their attempts; an outage costs each upload that was running when it began
    /// one attempt.
    store_health: Option<Arc<StoreHealth>>,
    gate: GateKey,
}

impl Kind for Upload {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, fields: &mut RequestFields<'_>) -> Result<Validated, FieldProblem> {
        let payload = fields.take_raw("payload").filter(|raw| raw.get() != "null");
        let encoded: Option<String> = fields.take("body_base64")?;
        let body = match (payload, encoded) {
            (Some(_), Some(_)) => {
                return Err(field_problem("body_base64", "give either payload or body_base64, not both"));
            }
            (None, None) => return Err(field_problem("payload", "an upload needs payload or body_base64")),
            (Some(payload), None) => Body::json(payload.to_owned()),
            (None, Some(encoded)) => Body::bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.as_bytes())
                    .map_err(|error| field_problem("body_base64", format!("is not valid base64: {error}")))?,
            ),
        };
        let key: Option<String> = fields.take("key")?;
        if let Some(key) = &key {
            ObjectKey::parse(key).map_err(|error| field_problem("key", error.to_string()))?;
        }
        let content_type: Option<String> = fields.take("content_type")?;
        if let Some(content_type) = &content_type {
            let valid = !content_type.is_empty()
                && content_type.len() <= MAX_CONTENT_TYPE_BYTES
                && content_type.bytes().all(|byte| (0x20..0x7f).contains(&byte))
                && content_type.contains('/');
            if !valid {
                return Err(field_problem(
                    "content_type",
                    "must be a printable ASCII media type such as \"text/plain\", at most 256 bytes",
                ));
            }
        }
        let content_encoding: Option<String> = fields.take("content_encoding")?;
        if let Some(encoding) = &content_encoding
            && encoding != "gzip"
        {
            return Err(field_problem("content_encoding", "must be \"gzip\" (the only encoding jobd applies)"));
        }
        let metadata = fields.take::<Metadata>("metadata")?.unwrap_or_default().0;
        if !metadata.is_empty() && !self.metadata_supported {
            return Err(field_problem(
                "metadata",
                "needs a store that records metadata (s3:// or memory://), not file://",
            ));
        }
        check_metadata(&metadata)?;
        let args = UploadArgs { key, content_type, content_encoding, metadata };
        let args = if args.is_empty() {
            None
        } else {
            Some(serde_json::value::to_raw_value(&args).map_err(|error| field_problem("", error.to_string()))?)
        };
        Ok(Validated { args, body: Some(body) })
    }

    /// The object key the job writes: its own, or the default one, which follows from its
    /// id, its creation date and whether its body is JSON, as the run computes it.
    fn target(&self, record: &crate::job::JobRecord) -> Option<String> {
        let args = record.args.as_ref().and_then(|args| serde_json::from_str::<UploadArgs>(args.get()).ok());
        if let Some(key) = args.and_then(|args| args.key) {
            return Some(key);
        }
        // The prefix as the store reads it: without a leading or trailing `/`.
        let prefix = object_store::path::Path::parse(&self.default_key_prefix).ok()?;
        let extension = if record.body_is_json { "json" } else { "bin" };
        Some(crate::store::default_key(&prefix, record.id, record.created_at, extension).to_string())
    }

    /// Refuses a key outside the caller's `allowed_key_prefixes`; a job without a key
    /// writes under the default key prefix, which must then be allowed too.
    fn authorize(&self, job: &JobSpec, caller: &Principal) -> Result<(), Refusal> {
        let key = requested_key(job);
        let allowed = caller.limit(TOKEN_OPTION);
        // A token confined another way (to webhook destinations alone) may not upload at all.
        if caller.is_confined() && allowed.is_empty() {
            let message =
                format!("token {} is confined by {} and has no {TOKEN_OPTION}", caller.name, caller.confinements());
            return Err(Refusal { field: "key".to_owned(), message, confinement: TOKEN_OPTION });
        }
        let target = key.as_deref().unwrap_or(&self.default_key_prefix);
        if may_write(allowed, target) {
            return Ok(());
        }
        let prefixes = allowed.join(", ");
        let message = match key {
            Some(_) => format!("lies outside token {}'s allowed_key_prefixes ({prefixes})", caller.name),
            None => format!(
                "is required: the default key prefix {:?} lies outside token {}'s allowed_key_prefixes ({prefixes})",
                self.default_key_prefix, caller.name
            ),
        };
        Err(Refusal { field: "key".to_owned(), message, confinement: TOKEN_OPTION })
    }

    /// Closed while the store cannot be reached: no node could run the job either, so a
    /// shared queue's node does not count it against its claims, and the jobs of other
    /// kinds run meanwhile.
    fn admit(&self, _job: &Job) -> Admission {
        match &self.store_health {
            Some(health) if !health.is_reachable() => Admission::Closed(self.gate.clone()),
            _ => Admission::Now(None),
        }
    }

    fn run(&self, job: Job, context: &RunContext) -> BoxFuture<'static, Result<JobResult, JobError>> {
        let store = context.store.clone();
        let store_health = self.store_health.clone();
        Box::pin(async move {
            let permanent = |message: String| JobError::Failed { message, retryable: false };
            let args: UploadArgs = match &job.args {
                Some(args) => serde_json::from_str(args.get())
                    .map_err(|error| permanent(format!("the job's stored arguments do not decode: {error}")))?,
                None => UploadArgs::default(),
            };
            let Some(body) = job.body else {
                return Err(permanent("the upload has no body".to_owned()));
            };
            let key = match &args.key {
                Some(key) => ObjectKey::parse(key)
                    .map_err(|error| permanent(format!("the stored key {key:?} {error}")))?
                    .path()
                    .clone(),
                None => store.default_key(job.id, job.created_at, if body.is_json { "json" } else { "bin" }),
            };
            let default_type = if body.is_json { "application/json" } else { "application/octet-stream" };
            let content_type = args.content_type.unwrap_or_else(|| default_type.to_owned());
            let mut bytes = body.bytes;
            if args.content_encoding.as_deref() == Some("gzip") {
                bytes = gzip(&bytes).map_err(|error| permanent(format!("gzip failed: {error}")))?;
            }
            let options = UploadOptions {
                content_type,
                content_encoding: args.content_encoding,
                metadata: args.metadata.into_iter().collect(),
            };
            tracing::debug!(key = %key, bytes = bytes.len(), "uploading");
            let written = store.put(&key, bytes, &options).await.inspect_err(|error| {
                if error.is_unreachable()
                    && let Some(health) = &store_health
                {
                    health.found_unreachable(&error.to_string());
                }
            })?;
            Ok(JobResult::with([
                ("key", Some(key.to_string().into())),
                ("size", Some(written.size.into())),
                ("etag", written.etag.map(Into::into)),
            ]))
        })
    }
}

/// Compresses a body for `content_encoding: "gzip"`. It runs on the bodies runtime, whose
/// threads are the job bodies' own, so the CPU it takes delays no actor.
fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::default());
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_admits_the_keys_under_it_segment_by_segment() {
        let prefixes = ["tenant-a".to_owned(), "shared".to_owned()];
        assert!(may_write(&prefixes, "tenant-a/x.json") && may_write(&prefixes, "shared/y"));
        assert!(may_write(&prefixes, "tenant-a"), "the prefix itself is a key under it");
        assert!(!may_write(&prefixes, "tenant-ab/x.json") && !may_write(&prefixes, "other/tenant-a/x"));
        assert!(may_write(&[], "anything/at/all"), "no prefixes confine nothing");
    }

    #[test]
    fn the_token_option_keeps_prefixes_without_their_trailing_slash() {
        let limit = REGISTRATION.token_limit.as_ref().expect("upload has a token limit");
        assert_eq!((limit.parse_item)("tenant-a/"), Ok("tenant-a".to_owned()));
        let refused = (limit.parse_item)("../secret-looking-text").expect_err("a bad prefix");
        assert!(refused.contains("allowed key prefix") && !refused.contains("secret-looking"), "{refused}");
    }

    #[test]
    fn the_target_of_an_upload_is_the_key_the_store_would_write() {
        let record = |args: Option<&str>| crate::job::JobRecord {
            id: crate::job::JobId::parse("01a216d3-b082-737a-89d5-c6d7616e096d").expect("an id"),
            kind: NAME.to_owned(),
            queue: crate::job::DEFAULT_QUEUE.to_owned(),
            priority: crate::job::DEFAULT_PRIORITY,
            state: crate::job::JobState::Dead,
            attempts: 1,
            max_attempts: 1,
            timeout_ms: None,
            created_at: chrono::DateTime::parse_from_rfc3339("2026-11-26T08:03:35Z").expect("a time").into(),
            run_at: None,
            started_at: None,
            finished_at: None,
            last_error: None,
            result: None,
            idempotency_key: None,
            submitted_by: None,
            payload: None,
            target: None,
            args: args.map(|args| serde_json::value::RawValue::from_string(args.to_owned()).expect("json")),
            body_is_json: true,
        };
        let upload = |prefix: &str| Upload {
            metadata_supported: true,
            default_key_prefix: prefix.to_owned(),
            store_health: None,
            gate: GateKey::from(STORE_GATE),
        };
        let default = "2026/11/26/01a216d3-b082-737a-89d5-c6d7616e096d.json";
        assert_eq!(upload("payloads").target(&record(None)), Some(format!("payloads/{default}")));
        assert_eq!(
            upload("payloads/").target(&record(None)),
            Some(format!("payloads/{default}")),
            "as the store reads it"
        );
        assert_eq!(upload("").target(&record(None)), Some(default.to_owned()));
        assert_eq!(upload("payloads").target(&record(Some(r#"{"key": "a/b.json"}"#))), Some("a/b.json".to_owned()));
        let options = crate::store::StoreOptions {
            key_prefix: "payloads/".to_owned(),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            multipart_threshold: 1 << 20,
            upload_concurrency: 1,
        };
        let store = crate::store::JobStore::from_url("memory://", &options).expect("a memory store");
        let written = store.default_key(record(None).id, record(None).created_at, "json").to_string();
        assert_eq!(Some(written), upload("payloads/").target(&record(None)), "the store writes the same key");
    }
}
