//! What an AWS call's failure means for us, whatever the service.
//!
//! Every backend (DynamoDB, KMS, Secrets Manager) sorts its SDK errors through
//! [`classify`] and turns the [`AwsFailure`] into its own domain error, naming the
//! action and resource an operator has to look at. Every call is counted here too.

use std::error::Error as StdError;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::series::Label;

/// The kinds of failure callers act on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum FailureKind {
    /// The identity may not do this (IAM, key policy, bad or expired credentials).
    AccessDenied,
    /// The table, key or secret does not exist (in this region).
    NotFound,
    /// The service asked us to slow down, and the SDK's retries did not get through.
    Throttled,
    /// No answer in time.
    Timeout,
    /// The service failed (5xx) or could not be reached.
    Unavailable,
    /// A conditional write's condition did not hold.
    ConditionFailed,
    /// Anything else: a request the service rejected (validation and the like).
    Rejected,
}

/// One failed AWS call, sorted.
#[derive(Debug, Clone)]
pub(crate) struct AwsFailure {
    pub(crate) kind: FailureKind,
    /// The service's error code, when it sent one.
    pub(crate) code: Option<String>,
    /// The SDK's full error chain. AWS error messages carry names and ids, not the
    /// values we send (no item attribute, plaintext or secret string).
    pub(crate) detail: String,
}

impl AwsFailure {
    /// `code: detail`, or just the detail.
    pub(crate) fn describe(&self) -> String {
        match &self.code {
            Some(code) if !self.detail.contains(code.as_str()) => {
                format!("{code}: {}", self.detail)
            }
            _ => self.detail.clone(),
        }
    }
}

const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];

const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "NotAuthorized",
];

const NOT_FOUND_CODES: &[&str] = &["ResourceNotFoundException", "NotFoundException"];

const UNAVAILABLE_CODES: &[&str] = &[
    "InternalServerError",
    "InternalFailure",
    "InternalServiceError",
    "InternalServiceErrorException",
    "ServiceUnavailable",
    "KMSInternalException",
    "DependencyTimeoutException",
];

/// Sorts an SDK error.
///
/// A 403 answer is access denied whatever its code: moto (and some proxies) answer a
/// denial with a 403 whose XML body the SDK cannot read, leaving `code()` empty.
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>) -> AwsFailure
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let code = err.code().map(str::to_string);
    let status = err.raw_response().map(|r| r.status().as_u16());
    let kind = match err {
        SdkError::TimeoutError(_) => FailureKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => FailureKind::Timeout,
        SdkError::DispatchFailure(_) => FailureKind::Unavailable,
        SdkError::ConstructionFailure(_) => FailureKind::Rejected,
        _ => match code.as_deref() {
            Some("ConditionalCheckFailedException") => FailureKind::ConditionFailed,
            Some(c) if THROTTLING_CODES.contains(&c) => FailureKind::Throttled,
            Some(c) if ACCESS_DENIED_CODES.contains(&c) => FailureKind::AccessDenied,
            Some(c) if NOT_FOUND_CODES.contains(&c) => FailureKind::NotFound,
            Some(c) if UNAVAILABLE_CODES.contains(&c) => FailureKind::Unavailable,
            _ if status == Some(403) => FailureKind::AccessDenied,
            _ if status == Some(429) => FailureKind::Throttled,
            _ if status.is_some_and(|s| s >= 500) => FailureKind::Unavailable,
            _ => FailureKind::Rejected,
        },
    };
    let mut detail = DisplayErrorContext(err).to_string();
    if kind == FailureKind::AccessDenied && code.is_none() {
        detail = format!("HTTP 403 without an error code (access denied): {detail}");
    }
    AwsFailure { kind, code, detail }
}

/// [`AWS_CALLS_TOTAL`](crate::series::AWS_CALLS_TOTAL)'s `outcome` for a call that succeeded; a failed one is
/// labelled by its [`FailureKind`].
pub(crate) const CALL_OK: &str = "ok";

/// Counts one AWS call: [`AWS_CALLS_TOTAL`](crate::series::AWS_CALLS_TOTAL)`{service, operation, outcome}`, and
/// [`AWS_THROTTLES_TOTAL`](crate::series::AWS_THROTTLES_TOTAL)`{service, operation}` for a call that stayed throttled
/// after the SDK's retries. Labels are fixed names, never a value from a request.
pub(crate) fn count_call(
    service: &'static str,
    operation: &'static str,
    failure: Option<&AwsFailure>,
) {
    let outcome = failure.map_or(CALL_OK, |f| f.kind.label());
    metrics::counter!(crate::series::AWS_CALLS_TOTAL, "service" => service, "operation" => operation, "outcome" => outcome)
        .increment(1);
    if failure.is_some_and(|f| f.kind == FailureKind::Throttled) {
        metrics::counter!(crate::series::AWS_THROTTLES_TOTAL, "service" => service, "operation" => operation)
            .increment(1);
    }
}

/// Counts a finished call and sorts its error, if any.
pub(crate) fn observe<T, E>(
    service: &'static str,
    operation: &'static str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Result<T, AwsFailure>
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match result {
        Ok(v) => {
            count_call(service, operation, None);
            Ok(v)
        }
        Err(e) => {
            let failure = classify(&e);
            count_call(service, operation, Some(&failure));
            Err(failure)
        }
    }
}
