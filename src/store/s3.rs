//! The S3 store's own concerns: building the client from the environment, jobd's settings
//! and systemd credentials, and reading S3 error codes to tell permanent errors from an
//! unavailable service.

use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, RetryConfig};

use super::StoreOptions;

/// S3 error codes after which another attempt cannot succeed: the job goes dead at once.
pub(super) const PERMANENT_S3_CODES: [&str; 12] = [
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "InvalidArgument",
    "InvalidRequest",
    "InvalidClientTokenId",
    "MalformedXML",
    "NoSuchBucket",
    "SignatureDoesNotMatch",
    "EntityTooLarge",
];

/// S3 error codes that say the service, not the request, is in trouble: throttling and
/// server-side failures, which hit every job alike while they last.
pub(super) const UNAVAILABLE_S3_CODES: [&str; 4] =
    ["SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"];

/// The `<Code>` of an S3 error response quoted in an error's text, if any.
pub(super) fn s3_error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(text[start..end].to_owned()).filter(|code| !code.is_empty() && code.len() < 64)
}

/// The S3 client: the standard AWS environment, then jobd's settings, then systemd
/// credentials, which win so that secrets need never be in the environment.
pub(super) fn s3_builder(bucket: &str, options: &StoreOptions) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.s3_endpoint {
        builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &options.s3_region {
        builder = builder.with_region(region);
    }
    if options.s3_allow_http {
        builder = builder.with_allow_http(true);
    }
    if let Some(key_id) = crate::systemd::credential("aws_access_key_id") {
        builder = builder.with_access_key_id(key_id);
    }
    if let Some(secret) = crate::systemd::credential("aws_secret_access_key") {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = crate::systemd::credential("aws_session_token") {
        builder = builder.with_token(token);
    }
    // object_store retries a request a little on its own; jobd's job retries (with their
    // backoff) do the rest, so the two bound each other instead of multiplying.
    let retry =
        RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(15), backoff: BackoffConfig::default() };
    // Set as keys, not as a new `ClientOptions`, which would drop what the environment
    // and `with_allow_http` put there.
    builder
        .with_retry(retry)
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s")
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s")
}
