//! What the token service can fail with. Each failure carries its problem code, and
//! for a grant that cannot be used its cause and remedy, which the flow log and the
//! lifecycle events record as the answer does; the HTTP status is chosen in `error`.

use crate::crypto::CryptoError;
use crate::oauth::grant::Cause;
use crate::oauth::provider::{PROVIDER_FAILING, ProviderError};
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    /// A caller limited to other providers asked for this one's grant.
    #[error("this caller may not use {0} connections (its providers are limited)")]
    ProviderNotAllowed(String),
    #[error("no connection for this user and provider")]
    NotConnected,
    #[error("the user must connect the account again ({cause})")]
    ReauthorizationRequired { cause: String },
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
    /// Another instance's refresh lease lapsed before it stored a result or gave the
    /// lease back (it lost the store): that refresh may have succeeded and be stored
    /// yet, so nothing is refreshed until its hold ends.
    #[error(
        "another instance's refresh of this token has an unknown outcome (its result may still be stored); retry in {retry_after_secs} s"
    )]
    RefreshOutcomePending { retry_after_secs: u64 },
    /// No grant awaits confirmation for this flow (never, already confirmed, or
    /// discarded).
    #[error("no grant awaits confirmation for this flow")]
    ConfirmationNotFound,
    /// The grant awaited confirmation longer than `AXNT_CONFIRMATION_TTL_SECS`.
    #[error("the grant was not confirmed in time; the user must connect again")]
    ConfirmationExpired,
    #[error(transparent)]
    Provider(ProviderError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Crypto(CryptoError),
    /// An import named a connection that exists, and was not asked to replace it.
    #[error("a connection exists for this user and provider; import with replace to replace it")]
    AlreadyConnected,
    /// Input the token service refused: a field and what is wrong with it.
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            other => Self::Store(other),
        }
    }
}

impl From<CryptoError> for TokenError {
    fn from(e: CryptoError) -> Self {
        Self::Crypto(e)
    }
}

impl From<ProviderError> for TokenError {
    fn from(e: ProviderError) -> Self {
        Self::Provider(e)
    }
}

impl TokenError {
    /// The stable, documented code clients branch on.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::UnknownProvider(_) => "unknown_provider",
            Self::ProviderNotAllowed(_) => "caller_not_allowed",
            Self::NotConnected => "not_connected",
            Self::ReauthorizationRequired { .. } => "reauthorization_required",
            Self::RefreshSuppressed { .. } => "provider_unavailable",
            Self::Conflict => "concurrent_update",
            Self::RefreshBusy | Self::RefreshOutcomePending { .. } => "refresh_in_progress",
            Self::ConfirmationNotFound => "confirmation_not_found",
            Self::ConfirmationExpired => "confirmation_expired",
            Self::Provider(e) => e.code(),
            Self::Store(e) => e.code(),
            Self::Crypto(e) => e.code(),
            Self::AlreadyConnected => "already_connected",
            Self::InvalidInput(_) => "invalid_request",
            Self::Internal(_) => "internal",
        }
    }

    /// What the client is told. Failures of ours or the provider's say what failed,
    /// not how (the how is in our log).
    pub(crate) fn public_detail(&self) -> String {
        match self {
            Self::Provider(e) => e.public_detail(),
            Self::Store(e) => e.public_detail().into(),
            Self::Crypto(e) => e.public_detail().into(),
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// Why a grant is dead or a refresh failed, as a stable code (`cause`).
    pub(crate) fn cause(&self) -> Option<&str> {
        match self {
            Self::ReauthorizationRequired { cause } => Some(cause),
            Self::RefreshSuppressed { reason, .. } => Some(reason),
            Self::RefreshOutcomePending { .. } => Some(Cause::RefreshOutcomeUnknown.code()),
            Self::Provider(e) => e.cause(),
            _ => None,
        }
    }

    /// What the application and its user should do about [`cause`](Self::cause).
    pub(crate) fn remedy(&self) -> Option<&'static str> {
        match self {
            Self::ReauthorizationRequired { cause } => Some(
                Cause::from_code(cause)
                    .unwrap_or(Cause::UnknownInvalidGrant)
                    .remedy(),
            ),
            Self::RefreshSuppressed { .. } => Some(PROVIDER_FAILING),
            Self::RefreshOutcomePending { .. } => Some(
                "Another instance refreshed this token but could not store the result yet (the token store was unreachable); nothing is refreshed until it does or Retry-After seconds pass. The grant stays active: retry after Retry-After seconds.",
            ),
            Self::Provider(e) => e.remedy(),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, when the failure says so.
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RefreshSuppressed {
                retry_after_secs, ..
            }
            | Self::RefreshOutcomePending { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}
