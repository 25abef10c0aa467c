//! What a connect flow can end with: the link, the state and the binding the browser
//! brings, the provider's answer, the account and scope rules, and the token service's
//! failures beneath. Each carries its problem code, which the flow log, the flow
//! metrics and the answer name it by; the HTTP status is chosen in `error`.

use crate::oauth::flow::SealError;
use crate::oauth::provider::{IdTokenProblem, ProviderError};
use crate::store::FlowFailure;
use crate::tokens::TokenError;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("the connect link is invalid")]
    InvalidSession,
    #[error("the connect link has expired")]
    SessionExpired,
    /// Connect links are single-use: this one was opened before.
    #[error("the connect link was already used; ask the application for a new one")]
    SessionUsed,
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
    /// The verified account is not the one the connect session asked for
    /// (`expectedEmail`, `hostedDomain`).
    #[error("this account is not the one the application asked to connect")]
    AccountNotAllowed,
    /// The user granted fewer scopes than the flow asked for, and the flow does not
    /// accept a partial grant (`partialGrant: reject`).
    #[error("the user did not grant every scope asked for: {}", missing.join(" "))]
    ScopesNotGranted { missing: Vec<String> },
    /// A session named an OAuth client the provider does not have.
    #[error("provider {provider} has no client {client}")]
    UnknownClient { provider: String, client: String },
    /// A link that cannot be made, or a callback without the parts it must carry.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Token(TokenError),
    #[error(transparent)]
    Provider(ProviderError),
    #[error("{0}")]
    Internal(String),
}

impl From<TokenError> for ConnectError {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

impl From<ProviderError> for ConnectError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::IdToken(problem) => Self::IdTokenInvalid(problem),
            other => Self::Provider(other),
        }
    }
}

impl From<SealError> for ConnectError {
    fn from(_: SealError) -> Self {
        Self::InvalidState
    }
}

/// What the flow log's `failed` item keeps of a failure: its code, the ID token's
/// problem when that was the cause, and the message.
impl From<&ConnectError> for FlowFailure {
    fn from(e: &ConnectError) -> Self {
        Self {
            code: e.code(),
            reason: match e {
                ConnectError::IdTokenInvalid(problem) => Some((*problem).into()),
                _ => None,
            },
            message: e.to_string(),
        }
    }
}

impl ConnectError {
    /// The stable, documented code clients branch on (and flows fail under).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::InvalidSession => "invalid_session",
            Self::SessionExpired => "session_expired",
            Self::SessionUsed => "session_already_used",
            Self::InvalidState => "invalid_state",
            Self::StateExpired => "state_expired",
            Self::BrowserMismatch => "browser_mismatch",
            Self::AuthorizationDenied(e) if e == "access_denied" => "access_denied",
            Self::AuthorizationDenied(_) => "authorization_failed",
            Self::IdTokenInvalid(_) => "id_token_invalid",
            Self::CodeRejected => "code_rejected",
            Self::AccountNotAllowed => "account_not_allowed",
            Self::ScopesNotGranted { .. } => "scopes_not_granted",
            Self::InvalidRequest(_) => "invalid_request",
            Self::UnknownClient { .. } => "unknown_client",
            Self::Token(e) => e.code(),
            Self::Provider(e) => e.code(),
            Self::Internal(_) => "internal",
        }
    }

    /// What the client is told. Failures of ours or the provider's say what failed,
    /// not how (the how is in our log).
    pub(crate) fn public_detail(&self) -> String {
        match self {
            Self::Token(e) => e.public_detail(),
            Self::Provider(e) => e.public_detail(),
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// Why the grant cannot be used now, as a stable code (`cause`).
    pub(crate) fn cause(&self) -> Option<&str> {
        match self {
            Self::Token(e) => e.cause(),
            Self::Provider(e) => e.cause(),
            _ => None,
        }
    }

    /// What the application and its user should do about [`cause`](Self::cause).
    pub(crate) fn remedy(&self) -> Option<&'static str> {
        match self {
            Self::Token(e) => e.remedy(),
            Self::Provider(e) => e.remedy(),
            _ => None,
        }
    }
}
