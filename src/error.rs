//! The error of the request path, and the only place an HTTP status is chosen. Each
//! service fails with its own type, which carries its problem code (and a grant's
//! cause and remedy) as the flow log, metrics and events record them: the connect flow
//! with [`ConnectError`], the token service with [`TokenError`]. Here each becomes an
//! answer.
//!
//! API errors are RFC 9457 `application/problem+json` with a stable `code`. Browser
//! endpoints wrap the same error in `http::browser::BrowserError`, which answers a
//! short HTML page, or a redirect to the flow's (already allow-listed) return URL with
//! `status=error&error=<code>`. Server-side details are logged once by
//! [`log_errors`], inside the request's span, and never sent to clients.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;

use crate::connect::ConnectError;
use crate::crypto::CryptoError;
use crate::oauth::provider::ProviderError;
use crate::store::StoreError;
use crate::tokens::TokenError;

mod response;

pub(crate) use response::{ErrorReport, Problem, log_errors};

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Error {
    #[error("missing or wrong API key")]
    Unauthorized,
    /// An `AWS-IAM` credential or a workload token proved no caller: the rule it broke
    /// (never a value of it, nor another caller).
    #[error("{0}")]
    CredentialRefused(String),
    /// STS or a workload token's issuer could not be asked; the reason is logged.
    #[error("the caller's identity cannot be checked now: {0}")]
    IdentityUnavailable(String),
    /// The key is valid but limited: not to this operation, or not to this provider.
    #[error("this caller may not {0}")]
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
    #[error("returnTo is not in AXNT_ALLOWED_RETURN_URLS")]
    ReturnUrlNotAllowed,
    /// `POST /risc/google` got a token that is not a valid security event token for
    /// this client (signature, issuer, audience, shape).
    #[error("not a valid security event token: {0}")]
    InvalidSecurityEvent(String),
    /// The grant lacks scopes the caller requires (`requiredScopes`): the user must
    /// grant them, through `step_up_url`.
    #[error("the grant lacks scopes the caller requires: {}", missing.join(" "))]
    InsufficientScope {
        missing: Vec<String>,
        step_up_url: String,
    },
    /// The audit trail could not take the read's record in time (its queue stayed
    /// full, `AXNT_AUDIT_BUFFER`): the token is not handed out unrecorded.
    #[error("the audit trail cannot record this read now; retry")]
    AuditUnavailable,
    /// Start-up waits for a dependency (`/readyz` names it): only probes are served.
    #[error("the service is starting (waiting for a dependency, see /readyz); retry shortly")]
    Starting,
    /// A connect flow's failure (its link, state, binding, the provider's answer, the
    /// account and scope rules).
    #[error(transparent)]
    Connect(ConnectError),
    /// A failure of the token service (reads, grants, confirmations, connections).
    #[error(transparent)]
    Token(TokenError),
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
        Self::Store(e)
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

impl From<ProviderError> for Error {
    fn from(e: ProviderError) -> Self {
        Self::Provider(e)
    }
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        Self::Connect(e)
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

impl From<BytesRejection> for Error {
    /// A body read as bytes (parsed by the handler, whose errors never quote it).
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::InvalidRequest("the body could not be read".into())
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
    pub(crate) fn client_not_allowed(client: Option<&str>) -> Self {
        Self::CallerNotAllowed(format!(
            "use connections of client {} (its clients are limited)",
            client.unwrap_or("(not recorded)")
        ))
    }

    /// A key limited to some users refused another's connections (the user is not
    /// named: the caller chose it).
    pub(crate) fn user_not_allowed() -> Self {
        Self::CallerNotAllowed("use this user's connections (its userIds are limited)".into())
    }

    pub(crate) fn provider_not_allowed(provider: &str) -> Self {
        Self::CallerNotAllowed(format!(
            "use {provider} connections (its providers are limited)"
        ))
    }

    /// The HTTP status: chosen here and nowhere else.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::CredentialRefused(_) => StatusCode::UNAUTHORIZED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidRequest(_) | Self::ReturnUrlNotAllowed | Self::InvalidSecurityEvent(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::InsufficientScope { .. } | Self::CallerNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::Connect(e) => connect_status(e),
            Self::Token(e) => token_status(e),
            Self::Provider(e) => provider_status(e),
            Self::Store(e) => store_status(e),
            Self::AuditUnavailable | Self::Starting | Self::IdentityUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Crypto(e) => crypto_status(e),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, documented code clients branch on.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized | Self::CredentialRefused(_) => "unauthorized",
            Self::IdentityUnavailable(_) => "identity_unavailable",
            Self::CallerNotAllowed(_) => "caller_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RouteNotFound => "not_found",
            Self::ReturnUrlNotAllowed => "return_url_not_allowed",
            Self::InvalidSecurityEvent(_) => "invalid_security_event",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Starting => "starting",
            Self::Connect(e) => e.code(),
            Self::Token(e) => e.code(),
            Self::Provider(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::Crypto(e) => e.code(),
            Self::Internal(_) => "internal",
        }
    }

    /// What the client is told. Client errors explain themselves; server errors say
    /// what failed, not how (the how is in our log).
    pub(crate) fn public_detail(&self) -> String {
        match self {
            Self::Connect(e) => e.public_detail(),
            Self::Token(e) => e.public_detail(),
            Self::Provider(e) => e.public_detail(),
            Self::Store(e) => e.public_detail().into(),
            Self::Crypto(e) => e.public_detail().into(),
            Self::Internal(_) => "internal error".into(),
            Self::IdentityUnavailable(_) => {
                "the caller's identity cannot be checked now (STS or the token's issuer did not answer); retry".into()
            }
            other => other.to_string(),
        }
    }

    /// Why a grant is dead or a refresh failed, as a stable code (`cause` in the body).
    pub(crate) fn cause(&self) -> Option<&str> {
        match self {
            Self::Connect(e) => e.cause(),
            Self::Token(e) => e.cause(),
            Self::Provider(e) => e.cause(),
            _ => None,
        }
    }

    /// What the application and its user should do about [`cause`](Self::cause)
    /// (`remedy` in the body).
    pub(crate) fn remedy(&self) -> Option<&'static str> {
        match self {
            Self::Connect(e) => e.remedy(),
            Self::Token(e) => e.remedy(),
            Self::Provider(e) => e.remedy(),
            Self::InsufficientScope { .. } => Some(
                "Send the user to stepUpUrl: Google asks them for the missing scopes only, and the connection then holds the old and the new ones.",
            ),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, for the answers that say so (503
    /// and 429, in `Retry-After`).
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        let token = match self {
            Self::Token(e) | Self::Connect(ConnectError::Token(e)) => Some(e),
            _ => None,
        };
        if let Some(secs) = token.and_then(TokenError::retry_after_secs) {
            return Some(secs);
        }
        match self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
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

/// A connect flow's failure's status.
fn connect_status(e: &ConnectError) -> StatusCode {
    match e {
        ConnectError::InvalidSession
        | ConnectError::SessionExpired
        | ConnectError::InvalidState
        | ConnectError::StateExpired
        | ConnectError::BrowserMismatch
        | ConnectError::AuthorizationDenied(_)
        | ConnectError::IdTokenInvalid(_)
        | ConnectError::CodeRejected
        | ConnectError::UnknownClient { .. }
        | ConnectError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        ConnectError::SessionUsed => StatusCode::CONFLICT,
        ConnectError::AccountNotAllowed | ConnectError::ScopesNotGranted { .. } => {
            StatusCode::FORBIDDEN
        }
        ConnectError::Token(e) => token_status(e),
        ConnectError::Provider(e) => provider_status(e),
        ConnectError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A token service failure's status.
fn token_status(e: &TokenError) -> StatusCode {
    match e {
        TokenError::UnknownProvider(_)
        | TokenError::NotConnected
        | TokenError::ConfirmationNotFound => StatusCode::NOT_FOUND,
        TokenError::ProviderNotAllowed(_) => StatusCode::FORBIDDEN,
        TokenError::ReauthorizationRequired { .. }
        | TokenError::Conflict
        | TokenError::AlreadyConnected => StatusCode::CONFLICT,
        TokenError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        TokenError::ConfirmationExpired => StatusCode::GONE,
        TokenError::RefreshSuppressed { .. }
        | TokenError::RefreshBusy
        | TokenError::RefreshOutcomePending { .. } => StatusCode::SERVICE_UNAVAILABLE,
        TokenError::Provider(e) => provider_status(e),
        TokenError::Store(e) => store_status(e),
        TokenError::Crypto(e) => crypto_status(e),
        TokenError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn provider_status(e: &ProviderError) -> StatusCode {
    match e {
        ProviderError::NotConfigured(_)
        | ProviderError::Unavailable(_)
        | ProviderError::OutcomeUnknown(_) => StatusCode::SERVICE_UNAVAILABLE,
        ProviderError::IdToken(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Conflict => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn crypto_status(e: &CryptoError) -> StatusCode {
    match e {
        CryptoError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One error of every kind this type can be, for tests that check what is documented
/// about codes and statuses (the OpenAPI document's per-route codes) against
/// [`Error::status`] and [`Error::code`].
#[cfg(test)]
pub(crate) fn one_of_each() -> Vec<Error> {
    use crate::oauth::grant::Cause;
    use crate::oauth::provider::IdTokenProblem;
    // A new variant does not compile here until it is listed below too.
    fn listed(e: &Error) {
        match e {
            Error::Unauthorized
            | Error::CredentialRefused(_)
            | Error::IdentityUnavailable(_)
            | Error::CallerNotAllowed(_)
            | Error::InvalidRequest(_)
            | Error::UnsupportedMediaType(_)
            | Error::PayloadTooLarge
            | Error::RouteNotFound
            | Error::MethodNotAllowed
            | Error::ReturnUrlNotAllowed
            | Error::InvalidSecurityEvent(_)
            | Error::InsufficientScope { .. }
            | Error::AuditUnavailable
            | Error::Starting
            | Error::Connect(_)
            | Error::Token(_)
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
        Error::CredentialRefused(s()),
        Error::IdentityUnavailable(s()),
        Error::CallerNotAllowed(s()),
        Error::InvalidRequest(s()),
        Error::UnsupportedMediaType(s()),
        Error::PayloadTooLarge,
        Error::RouteNotFound,
        Error::MethodNotAllowed,
        Error::ReturnUrlNotAllowed,
        Error::Connect(ConnectError::InvalidSession),
        Error::Connect(ConnectError::SessionExpired),
        Error::Connect(ConnectError::SessionUsed),
        Error::Connect(ConnectError::InvalidState),
        Error::Connect(ConnectError::StateExpired),
        Error::Connect(ConnectError::BrowserMismatch),
        Error::Connect(ConnectError::AuthorizationDenied("access_denied".into())),
        Error::Connect(ConnectError::AuthorizationDenied("server_error".into())),
        Error::Connect(ConnectError::IdTokenInvalid(IdTokenProblem::Expired)),
        Error::Connect(ConnectError::CodeRejected),
        Error::Connect(ConnectError::AccountNotAllowed),
        Error::Connect(ConnectError::ScopesNotGranted {
            missing: vec!["https://www.googleapis.com/auth/drive".into()],
        }),
        Error::Connect(ConnectError::InvalidRequest(s())),
        Error::Connect(ConnectError::UnknownClient {
            provider: s(),
            client: s(),
        }),
        Error::Connect(ConnectError::Token(TokenError::RefreshBusy)),
        Error::Connect(ConnectError::Provider(ProviderError::Unavailable(s()))),
        Error::Connect(ConnectError::Internal(s())),
        Error::Provider(ProviderError::IdToken(IdTokenProblem::Missing)),
        Error::InvalidSecurityEvent(s()),
        Error::InsufficientScope {
            missing: vec!["https://www.googleapis.com/auth/drive".into()],
            step_up_url: "http://127.0.0.1/oauth/google/start?session=x".into(),
        },
        Error::AuditUnavailable,
        Error::Starting,
        Error::Token(TokenError::UnknownProvider(s())),
        Error::Token(TokenError::ProviderNotAllowed(s())),
        Error::Token(TokenError::NotConnected),
        Error::Token(TokenError::ReauthorizationRequired {
            cause: Cause::UnknownInvalidGrant.code().into(),
        }),
        Error::Token(TokenError::RefreshSuppressed {
            reason: "circuit_open",
            retry_after_secs: 1,
        }),
        Error::Token(TokenError::Conflict),
        Error::Token(TokenError::RefreshBusy),
        Error::Token(TokenError::RefreshOutcomePending {
            retry_after_secs: 1,
        }),
        Error::Token(TokenError::ConfirmationNotFound),
        Error::Token(TokenError::ConfirmationExpired),
        Error::Token(TokenError::Provider(ProviderError::Unavailable(s()))),
        Error::Token(TokenError::Store(StoreError::Throttled(s()))),
        Error::Token(TokenError::Crypto(CryptoError::Integrity)),
        Error::Token(TokenError::AlreadyConnected),
        Error::Token(TokenError::InvalidInput(s())),
        Error::Token(TokenError::Internal(s())),
        Error::Store(StoreError::Conflict),
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
