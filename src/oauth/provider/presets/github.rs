//! GitHub (`github`): OAuth 2 without OpenID.
//!
//! - The account is `GET /user` (`id`, `login`, `name`, `avatar_url`), and its email
//!   the verified primary one of `GET /user/emails` (which needs `user:email`).
//! - An OAuth app's tokens never expire and come without a refresh token; a GitHub
//!   App's user tokens expire (8 hours) with a refresh token that rotates and lives
//!   6 months (`refresh_token_expires_in`). Both are handled as they come.
//! - The token endpoint answers its errors with HTTP 200, takes the client in the form
//!   body, and lists scopes comma-separated; `bad_refresh_token` is its dead grant.
//! - A grant is revoked at `DELETE /applications/{client_id}/grant` with the client's
//!   Basic authentication and the access token, which ends every token of the grant.

use super::{Preset, Protocol, Quirks, Revocation, StaticEndpoints};
use crate::oauth::grant::Lifetimes;
use crate::oauth::provider::{GrantRefusal, ProviderError, TokenErrorAnswer};

pub(super) const PRESET: Preset = Preset {
    kind: "github",
    protocol: Protocol::OAuth2,
    issuer: None,
    endpoints: Some(StaticEndpoints {
        authorize: "https://github.com/login/oauth/authorize",
        token: "https://github.com/login/oauth/access_token",
        userinfo: "https://api.github.com/user",
        revoke: Some("https://api.github.com/applications/{client_id}/grant"),
    }),
    scopes: &["read:user", "user:email"],
    required_scopes: &[],
    auth_params: &[],
    prompt_consent: false,
    // A GitHub App's refresh tokens rotate; an OAuth app has none to rotate.
    rotates: true,
    lifetimes: Lifetimes::UNKNOWN,
    revocation: Revocation::GitHubGrant,
    revocation_note: "GitHub's grant revocation ends every token this OAuth app (or GitHub App) holds for that GitHub account.",
    tenant_issuer: false,
    read_refusal,
    quirks: Quirks {
        client_auth_in_body: true,
        comma_separated_scopes: true,
        unexpiring_access_tokens: true,
        emails_endpoint: true,
    },
};

/// GitHub's codes
/// (<https://docs.github.com/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens>,
/// <https://docs.github.com/apps/oauth-apps/maintaining-oauth-apps/troubleshooting-oauth-app-access-token-request-errors>).
fn read_refusal(answer: &TokenErrorAnswer) -> Option<ProviderError> {
    match answer.error.as_str() {
        "bad_refresh_token" | "bad_verification_code" => {
            Some(ProviderError::InvalidGrant(GrantRefusal::Unspecified))
        }
        "incorrect_client_credentials" => Some(ProviderError::InvalidClient),
        _ => None,
    }
}
