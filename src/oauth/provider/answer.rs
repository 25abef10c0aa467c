//! What an answer failing with a provider error tells the client: its problem code,
//! what it may be told, and the cause and remedy when the grant is concerned. The HTTP
//! status is chosen in `error`.

use super::ProviderError;
use crate::oauth::grant::Cause;

/// The remedy when the provider fails and the grant does not.
pub(crate) const PROVIDER_FAILING: &str =
    "The provider is failing, not the grant: it stays active. Retry after Retry-After seconds.";

impl ProviderError {
    /// The problem code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NotConfigured(_) => "provider_not_configured",
            Self::Unavailable(_) | Self::OutcomeUnknown(_) => "provider_unavailable",
            Self::IdToken(_) => "id_token_invalid",
            _ => "provider_error",
        }
    }

    /// What the client is told: what failed, not how (the how is in our log).
    pub(crate) fn public_detail(&self) -> String {
        match self {
            Self::NotConfigured(_) | Self::IdToken(_) => self.to_string(),
            Self::InvalidClient => "the provider rejected this service's client credentials".into(),
            Self::Unavailable(_) => "the OAuth provider is unavailable; retry later".into(),
            Self::OutcomeUnknown(_) => {
                "the OAuth provider did not answer in time; retry later".into()
            }
            _ => "the OAuth provider answered an error".into(),
        }
    }

    /// Why the grant cannot be used now, as a stable code (`cause`).
    pub(crate) fn cause(&self) -> Option<&'static str> {
        match self {
            Self::OutcomeUnknown(_) => Some(Cause::RefreshOutcomeUnknown.code()),
            Self::InvalidClient => Some(Cause::ClientCredentialsInvalid.code()),
            Self::Unavailable(_) => Some("provider_unavailable"),
            _ => None,
        }
    }

    /// What the application and its user should do about [`cause`](Self::cause).
    pub(crate) fn remedy(&self) -> Option<&'static str> {
        match self {
            Self::InvalidClient => Some(Cause::ClientCredentialsInvalid.remedy()),
            Self::Unavailable(_) | Self::OutcomeUnknown(_) => Some(PROVIDER_FAILING),
            _ => None,
        }
    }
}
