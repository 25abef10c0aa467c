//! Microsoft Entra ID (`microsoft`), v2.0 endpoints.
//!
//! - The issuer names a tenant, or `organizations`/`common` for multi-tenant apps, whose
//!   discovery document gives the issuer as a template
//!   (`https://login.microsoftonline.com/{tenantid}/v2.0`): an ID token is held to the
//!   template filled with its own `tid`.
//! - `offline_access` is always asked for: without it Entra issues no refresh token.
//! - Refresh tokens rotate, and one unused for 90 days ends.
//! - There is no revocation endpoint a client may call: a deletion forgets the grant
//!   here, and the user (or an administrator) removes the app's access in their account.
//! - Refusals carry `AADSTS` codes (in `error_codes` and at the start of
//!   `error_description`), read by [`read_refusal`].

use std::time::Duration;

use super::{Preset, Protocol, Quirks, Revocation};
use crate::oauth::grant::{Cause, Lifetimes};
use crate::oauth::provider::{GrantRefusal, ProviderError, TokenErrorAnswer};

pub(super) const PRESET: Preset = Preset {
    kind: "microsoft",
    protocol: Protocol::OpenId,
    endpoints: None,
    issuer: Some("https://login.microsoftonline.com/common/v2.0"),
    scopes: &["email", "profile"],
    required_scopes: &["offline_access"],
    auth_params: &[],
    // Entra issues a refresh token on every code exchange once `offline_access` is
    // granted; `prompt=consent` would show the consent page each time.
    prompt_consent: false,
    rotates: true,
    lifetimes: Lifetimes {
        google: false,
        idle: Some(Duration::from_secs(90 * 86_400)),
    },
    revocation: Revocation::Unsupported,
    revocation_note: "Microsoft Entra has no endpoint for a client to revoke a grant: the connection is forgotten here, and its refresh token stays valid at Microsoft until it is unused for 90 days, the user removes the app at https://myapplications.microsoft.com, or an administrator revokes the user's sessions.",
    tenant_issuer: true,
    read_refusal,
    quirks: Quirks::NONE,
};

/// The `AADSTS` codes that say what became of a grant or of the client, as
/// <https://learn.microsoft.com/entra/identity-platform/reference-error-codes> names them.
fn read_refusal(answer: &TokenErrorAnswer) -> Option<ProviderError> {
    let named = |cause| Some(ProviderError::InvalidGrant(GrantRefusal::Named(cause)));
    match answer.aadsts()? {
        // ExpiredOrRevokedGrant(InactiveToken): unused past its 90 days.
        700082 | 70008 => named(Cause::IdleExpired),
        // FreshTokenNeeded (an admin or the user revoked the user's tokens),
        // SsoArtifactInvalidOrExpired / SsoArtifactRevoked (a password change),
        // InvalidPasswordExpired(OnPrem)Password.
        50173 | 50132 | 50133 | 50055 | 50144 => named(Cause::PasswordChanged),
        // UserStrongAuthClientAuthNRequired, UserStrongAuthExpired,
        // UserStrongAuthEnrollmentRequired, BadTokenDueToSignInFrequency.
        50076 | 50078 | 50079 | 70043 => named(Cause::SessionReauthRequired),
        // BlockedByConditionalAccess(OnSecurityPolicy).
        53003 | 530032 => named(Cause::AdminPolicyEnforced),
        // DelegationDoesNotExist, AdminConsentRequired.
        65001 | 90094 => named(Cause::ConsentRequired),
        // InvalidClient, invalid client secret, InvalidClientSecretExpiredKeysProvided.
        70002 | 7000215 | 7000222 => Some(ProviderError::InvalidClient),
        _ => None,
    }
}
