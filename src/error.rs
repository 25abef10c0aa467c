//! The one error type of the request path, and the only place an HTTP status is
//! chosen.
//!
//! API errors are RFC 9457 `application/problem+json` with a stable `code`. Browser
//! endpoints wrap the same error in `http::browser::BrowserError`, which answers a
//! short HTML page, or a redirect to the flow's (already allow-listed) return URL with
//! `status=error&error=<code>`. Server-side details are logged once by
//! [`log_errors`], inside the request's span, and never sent to clients.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;

use crate::crypto::CryptoError;
use crate::oauth::flow::SealError;
use crate::oauth::grant::Cause;
use crate::oauth::provider::{IdTokenProblem, ProviderError};
use crate::series::Label;
use crate::store::{FlowFailure, StoreError};

mod response;

pub(crate) use response::{ErrorReport, Problem, log_errors};

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Error {
    #[error("missing or wrong API key")]
    Unauthorized,
    /// The key is valid but limited: not to this operation, or not to this provider.
    #[error("this API key may not {0}")]
    CallerNotAllowed(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is not JSON: {0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than this service accepts")]
    PayloadTooLarge,
    #[error("no such route")]
    RouteNotFound,
    #[error("this route does not answer that method")]
    MethodNotAllowed,
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    #[error("returnTo is not in AXNT_ALLOWED_RETURN_URLS")]
    ReturnUrlNotAllowed,
    #[error("the connect link is invalid")]
    InvalidSession,
    #[error("the connect link has expired")]
    SessionExpired,
    /// Connect links are single-use: this one was opened before.
    #[error("the connect link was already used; ask the application for a new one")]
    SessionUsed,
    /// The verified account is not the one the connect session asked for
    /// (`expectedEmail`, `hostedDomain`).
    #[error("this account is not the one the application asked to connect")]
    AccountNotAllowed,
    /// No grant awaits confirmation for this flow (never, already confirmed, or
    /// discarded).
    #[error("no grant awaits confirmation for this flow")]
    ConfirmationNotFound,
    /// The grant awaited confirmation longer than `AXNT_CONFIRMATION_TTL_SECS`.
    #[error("the grant was not confirmed in time; the user must connect again")]
    ConfirmationExpired,
    #[error("the state parameter is invalid or missing")]
    InvalidState,
    #[error("the sign-in took too long and has expired")]
    StateExpired,
    #[error("the sign-in was started in another browser (binding cookie missing or different)")]
    BrowserMismatch,
    #[error("the provider reported {0}")]
    AuthorizationDenied(String),
    #[error("the ID token is invalid: {0}")]
    IdTokenInvalid(IdTokenProblem),
    #[error("the provider rejected the authorization code")]
    CodeRejected,
    #[error("no connection for this user and provider")]
    NotConnected,
    /// `POST /risc/google` got a token that is not a valid security event token for
    /// this client (signature, issuer, audience, shape).
    #[error("not a valid security event token: {0}")]
    InvalidSecurityEvent(String),
    #[error("the user must connect the account again ({cause})")]
    ReauthorizationRequired { cause: String },
    /// The grant lacks scopes the caller requires (`requiredScopes`): the user must
    /// grant them, through `step_up_url`.
    #[error("the grant lacks scopes the caller requires: {}", missing.join(" "))]
    InsufficientScope {
        missing: Vec<String>,
        step_up_url: String,
    },
    /// The user granted fewer scopes than the flow asked for, and the flow does not
    /// accept a partial grant (`partialGrant: reject`).
    #[error("the user did not grant every scope asked for: {}", missing.join(" "))]
    ScopesNotGranted { missing: Vec<String> },
    /// No refresh was attempted: the connection is cooling down after a failed refresh,
    /// or the provider's circuit is open.
    #[error("the OAuth provider is unavailable ({reason}); retry in {retry_after_secs} s")]
    RefreshSuppressed {
        reason: &'static str,
        retry_after_secs: u64,
    },
    #[error("the row was changed concurrently; retry")]
    Conflict,
    #[error("another request is refreshing this token and did not finish in time; retry")]
    RefreshBusy,
    /// The audit trail could not take the read's record in time (its queue stayed
    /// full, `AXNT_AUDIT_BUFFER`): the token is not handed out unrecorded.
    #[error("the audit trail cannot record this read now; retry")]
    AuditUnavailable,
    /// Start-up waits for a dependency (`/readyz` names it): only probes are served.
    #[error("the service is starting (waiting for a dependency, see /readyz); retry shortly")]
    Starting,
    /// Another instance's refresh lease lapsed before it stored a result or gave the
    /// lease back (it lost the store): that refresh may have succeeded and be stored
    /// yet, so nothing is refreshed until its hold ends.
    #[error(
        "another instance's refresh of this token has an unknown outcome (its result may still be stored); retry in {retry_after_secs} s"
    )]
    RefreshOutcomePending { retry_after_secs: u64 },
    #[error(transparent)]
    Provider(ProviderError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Crypto(CryptoError),
    /// The request was not answered within `AXNT_REQUEST_TIMEOUT_SECS` (most often: its
    /// body arrived too slowly).
    #[error("the request took too long")]
    RequestTimeout,
    /// Too many requests (or failed authentications) from one client address.
    #[error("too many requests from this client; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            other => Self::Store(other),
        }
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

impl From<ProviderError> for Error {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::IdToken(problem) => Self::IdTokenInvalid(problem),
            other => Self::Provider(other),
        }
    }
}

impl From<SealError> for Error {
    fn from(_: SealError) -> Self {
        Self::InvalidState
    }
}

/// What the flow log's `failed` item keeps of an error: its code, the ID token's
/// problem when that was the cause, and the message.
impl From<&Error> for FlowFailure {
    fn from(e: &Error) -> Self {
        Self {
            code: e.code(),
            reason: match e {
                Error::IdTokenInvalid(problem) => Some(problem.label()),
                _ => None,
            },
            message: e.to_string(),
        }
    }
}

/// A JSON body the API's extractor refused: 415 without the JSON content type, 413
/// past the body limit, else 400.
impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("send Content-Type: application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            other => Self::InvalidRequest(format!("malformed JSON body: {}", other.body_text())),
        }
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidRequest(format!("bad path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidRequest(format!("bad query: {}", rejection.body_text()))
    }
}

impl Error {
    /// A limited key refused another provider's connections.
    pub(crate) fn provider_not_allowed(provider: &str) -> Self {
        Self::CallerNotAllowed(format!(
            "use {provider} connections (its providers are limited)"
        ))
    }

    /// The HTTP status: chosen here and nowhere else.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidRequest(_)
            | Self::ReturnUrlNotAllowed
            | Self::InvalidSession
            | Self::SessionExpired
            | Self::InvalidState
            | Self::StateExpired
            | Self::BrowserMismatch
            | Self::AuthorizationDenied(_)
            | Self::IdTokenInvalid(_)
            | Self::InvalidSecurityEvent(_)
            | Self::CodeRejected => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RouteNotFound | Self::UnknownProvider(_) | Self::NotConnected => {
                StatusCode::NOT_FOUND
            }
            Self::ReauthorizationRequired { .. } | Self::Conflict | Self::SessionUsed => {
                StatusCode::CONFLICT
            }
            Self::AccountNotAllowed
            | Self::InsufficientScope { .. }
            | Self::CallerNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::ScopesNotGranted { .. } => StatusCode::FORBIDDEN,
            Self::ConfirmationNotFound => StatusCode::NOT_FOUND,
            Self::ConfirmationExpired => StatusCode::GONE,
            Self::Provider(p) => match p {
                ProviderError::NotConfigured(_)
                | ProviderError::Unavailable(_)
                | ProviderError::OutcomeUnknown(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            },
            Self::Store(_)
            | Self::RefreshBusy
            | Self::RefreshOutcomePending { .. }
            | Self::RefreshSuppressed { .. }
            | Self::AuditUnavailable
            | Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
            Self::Crypto(CryptoError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Crypto(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, documented code clients branch on.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::CallerNotAllowed(_) => "caller_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RouteNotFound => "not_found",
            Self::UnknownProvider(_) => "unknown_provider",
            Self::ReturnUrlNotAllowed => "return_url_not_allowed",
            Self::InvalidSession => "invalid_session",
            Self::SessionExpired => "session_expired",
            Self::SessionUsed => "session_already_used",
            Self::AccountNotAllowed => "account_not_allowed",
            Self::ConfirmationNotFound => "confirmation_not_found",
            Self::ConfirmationExpired => "confirmation_expired",
            Self::InvalidState => "invalid_state",
            Self::StateExpired => "state_expired",
            Self::BrowserMismatch => "browser_mismatch",
            Self::AuthorizationDenied(e) if e == "access_denied" => "access_denied",
            Self::AuthorizationDenied(_) => "authorization_failed",
            Self::IdTokenInvalid(_) => "id_token_invalid",
            Self::CodeRejected => "code_rejected",
            Self::NotConnected => "not_connected",
            Self::InvalidSecurityEvent(_) => "invalid_security_event",
            Self::ReauthorizationRequired { .. } => "reauthorization_required",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::ScopesNotGranted { .. } => "scopes_not_granted",
            Self::RefreshSuppressed { .. } => "provider_unavailable",
            Self::Conflict => "concurrent_update",
            Self::RefreshBusy | Self::RefreshOutcomePending { .. } => "refresh_in_progress",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Starting => "starting",
            Self::Provider(ProviderError::NotConfigured(_)) => "provider_not_configured",
            Self::Provider(ProviderError::Unavailable(_) | ProviderError::OutcomeUnknown(_)) => {
                "provider_unavailable"
            }
            Self::Provider(_) => "provider_error",
            Self::Store(StoreError::Throttled(_)) => "store_throttled",
            Self::Store(_) => "store_unavailable",
            Self::Crypto(CryptoError::Unavailable(_)) => "keys_unavailable",
            Self::Crypto(_) => "stored_tokens_unreadable",
            Self::Internal(_) => "internal",
        }
    }

    /// What the client is told. Client errors explain themselves; server errors say
    /// what failed, not how (the how is in our log).
    pub(crate) fn public_detail(&self) -> String {
        match self {
            Self::Provider(ProviderError::NotConfigured(_)) => self.to_string(),
            Self::Provider(ProviderError::InvalidClient) => {
                "the provider rejected this service's client credentials".into()
            }
            Self::Provider(ProviderError::Unavailable(_)) => {
                "the OAuth provider is unavailable; retry later".into()
            }
            Self::Provider(ProviderError::OutcomeUnknown(_)) => {
                "the OAuth provider did not answer in time; retry later".into()
            }
            Self::Provider(_) => "the OAuth provider answered an error".into(),
            Self::Store(_) => "the token store is unavailable; retry later".into(),
            Self::Crypto(CryptoError::Unavailable(_)) => {
                "the key service is unavailable; retry later".into()
            }
            Self::Crypto(_) => "the stored tokens cannot be decrypted".into(),
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// Why a grant is dead or a refresh failed, as a stable code (`cause` in the body).
    pub(crate) fn cause(&self) -> Option<&str> {
        match self {
            Self::ReauthorizationRequired { cause } => Some(cause),
            Self::RefreshSuppressed { reason, .. } => Some(reason),
            Self::Provider(ProviderError::OutcomeUnknown(_))
            | Self::RefreshOutcomePending { .. } => Some(Cause::RefreshOutcomeUnknown.code()),
            Self::Provider(ProviderError::InvalidClient) => {
                Some(Cause::ClientCredentialsInvalid.code())
            }
            Self::Provider(ProviderError::Unavailable(_)) => Some("provider_unavailable"),
            _ => None,
        }
    }

    /// What the application and its user should do about [`cause`](Self::cause)
    /// (`remedy` in the body).
    pub(crate) fn remedy(&self) -> Option<&'static str> {
        match self {
            Self::ReauthorizationRequired { cause } => Some(
                Cause::from_code(cause)
                    .unwrap_or(Cause::UnknownInvalidGrant)
                    .remedy(),
            ),
            Self::Provider(ProviderError::InvalidClient) => {
                Some(Cause::ClientCredentialsInvalid.remedy())
            }
            Self::Provider(ProviderError::Unavailable(_) | ProviderError::OutcomeUnknown(_))
            | Self::RefreshSuppressed { .. } => Some(
                "The provider is failing, not the grant: it stays active. Retry after Retry-After seconds.",
            ),
            Self::RefreshOutcomePending { .. } => Some(
                "Another instance refreshed this token but could not store the result yet (the token store was unreachable); nothing is refreshed until it does or Retry-After seconds pass. The grant stays active: retry after Retry-After seconds.",
            ),
            Self::InsufficientScope { .. } => Some(
                "Send the user to stepUpUrl: Google asks them for the missing scopes only, and the connection then holds the old and the new ones.",
            ),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, for the answers that say so (503
    /// and 429, in `Retry-After`).
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RefreshSuppressed {
                retry_after_secs, ..
            }
            | Self::RefreshOutcomePending { retry_after_secs }
            | Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        }
    }

    pub(crate) fn title(&self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    pub(crate) fn report(&self) -> ErrorReport {
        ErrorReport {
            status: self.status(),
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// One error of every kind this type can be, for tests that check what is documented
/// about codes and statuses (the OpenAPI document's per-route codes) against
/// [`Error::status`] and [`Error::code`].
#[cfg(test)]
pub(crate) fn one_of_each() -> Vec<Error> {
    use crate::oauth::provider::IdTokenProblem;
    // A new variant does not compile here until it is listed below too.
    fn listed(e: &Error) {
        match e {
            Error::Unauthorized
            | Error::CallerNotAllowed(_)
            | Error::InvalidRequest(_)
            | Error::UnsupportedMediaType(_)
            | Error::PayloadTooLarge
            | Error::RouteNotFound
            | Error::MethodNotAllowed
            | Error::UnknownProvider(_)
            | Error::ReturnUrlNotAllowed
            | Error::InvalidSession
            | Error::SessionExpired
            | Error::SessionUsed
            | Error::AccountNotAllowed
            | Error::ConfirmationNotFound
            | Error::ConfirmationExpired
            | Error::InvalidState
            | Error::StateExpired
            | Error::BrowserMismatch
            | Error::AuthorizationDenied(_)
            | Error::IdTokenInvalid(_)
            | Error::CodeRejected
            | Error::NotConnected
            | Error::InvalidSecurityEvent(_)
            | Error::ReauthorizationRequired { .. }
            | Error::InsufficientScope { .. }
            | Error::ScopesNotGranted { .. }
            | Error::RefreshSuppressed { .. }
            | Error::Conflict
            | Error::RefreshBusy
            | Error::AuditUnavailable
            | Error::Starting
            | Error::RefreshOutcomePending { .. }
            | Error::Provider(_)
            | Error::Store(_)
            | Error::Crypto(_)
            | Error::RequestTimeout
            | Error::RateLimited { .. }
            | Error::Internal(_) => {}
        }
    }
    let s = String::new;
    let all = vec![
        Error::Unauthorized,
        Error::CallerNotAllowed(s()),
        Error::InvalidRequest(s()),
        Error::UnsupportedMediaType(s()),
        Error::PayloadTooLarge,
        Error::SessionUsed,
        Error::AccountNotAllowed,
        Error::ConfirmationNotFound,
        Error::ConfirmationExpired,
        Error::RouteNotFound,
        Error::MethodNotAllowed,
        Error::UnknownProvider(s()),
        Error::ReturnUrlNotAllowed,
        Error::InvalidSession,
        Error::SessionExpired,
        Error::InvalidState,
        Error::StateExpired,
        Error::BrowserMismatch,
        Error::AuthorizationDenied("access_denied".into()),
        Error::AuthorizationDenied("server_error".into()),
        Error::IdTokenInvalid(IdTokenProblem::Expired),
        Error::CodeRejected,
        Error::NotConnected,
        Error::InvalidSecurityEvent(s()),
        Error::ReauthorizationRequired {
            cause: Cause::UnknownInvalidGrant.code().into(),
        },
        Error::InsufficientScope {
            missing: vec!["https://www.googleapis.com/auth/drive".into()],
            step_up_url: "http://127.0.0.1/oauth/google/start?session=x".into(),
        },
        Error::ScopesNotGranted {
            missing: vec!["https://www.googleapis.com/auth/drive".into()],
        },
        Error::RefreshSuppressed {
            reason: "circuit_open",
            retry_after_secs: 1,
        },
        Error::Conflict,
        Error::RefreshBusy,
        Error::AuditUnavailable,
        Error::Starting,
        Error::RefreshOutcomePending {
            retry_after_secs: 1,
        },
        Error::Provider(ProviderError::NotConfigured(s())),
        Error::Provider(ProviderError::InvalidGrant(
            crate::oauth::provider::GrantRefusal::Unspecified,
        )),
        Error::Provider(ProviderError::InvalidClient),
        Error::Provider(ProviderError::Rejected { error: s() }),
        Error::Provider(ProviderError::Unavailable(s())),
        Error::Provider(ProviderError::OutcomeUnknown(s())),
        Error::Provider(ProviderError::Malformed(s())),
        Error::Store(StoreError::MissingTable(s())),
        Error::Store(StoreError::AccessDenied(s())),
        Error::Store(StoreError::Throttled(s())),
        Error::Store(StoreError::Unavailable(s())),
        Error::Store(StoreError::Corrupt(s())),
        Error::Crypto(CryptoError::Integrity),
        Error::Crypto(CryptoError::InvalidKey(s())),
        Error::Crypto(CryptoError::Unavailable(s())),
        Error::Crypto(CryptoError::Rejected(s())),
        Error::RequestTimeout,
        Error::RateLimited {
            retry_after_secs: 1,
        },
        Error::Internal(s()),
    ];
    all.iter().for_each(listed);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_do_not_leak_detail() {
        let e = Error::Store(StoreError::Unavailable("sqlite at /secret/path".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.public_detail().contains("/secret/path"));
    }

    #[test]
    fn a_lost_provider_answer_is_a_retryable_503_without_detail() {
        let e = Error::from(ProviderError::OutcomeUnknown(
            "timed out waiting for the answer from http://10.0.0.1/token".into(),
        ));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), "provider_unavailable");
        assert_eq!(
            e.public_detail(),
            "the OAuth provider did not answer in time; retry later"
        );
    }
}
