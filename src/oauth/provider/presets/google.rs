//! Google (`google`): offline access, consent every time a refresh token is wanted
//! again, incremental scopes; no rotation; RFC 7009 revocation; the clocks of
//! `oauth::grant` (Testing status, six months idle, 100 grants per account).
//!
//! Its refusals name little: `error_subtype: invalid_rapt` (session control),
//! `admin_policy_enforced` (a Workspace restriction), and "Token has been expired or
//! revoked." (the clocks tell which).

use super::{Preset, Protocol, Quirks, Revocation};
use crate::oauth::grant::{Cause, Lifetimes};
use crate::oauth::provider::{GrantRefusal, ProviderError, TokenErrorAnswer};

pub(super) const PRESET: Preset = Preset {
    kind: "google",
    protocol: Protocol::OpenId,
    endpoints: None,
    issuer: Some("https://accounts.google.com"),
    scopes: &["email", "profile"],
    required_scopes: &[],
    auth_params: &[
        ("access_type", "offline"),
        ("include_granted_scopes", "true"),
    ],
    prompt_consent: true,
    rotates: false,
    lifetimes: Lifetimes::GOOGLE,
    revocation: Revocation::Rfc7009,
    revocation_note: "Google's revocation ends every scope this project was granted for that Google account, including grants held for other user ids.",
    tenant_issuer: false,
    read_refusal,
    quirks: Quirks::NONE,
};

fn read_refusal(answer: &TokenErrorAnswer) -> Option<ProviderError> {
    let refusal = |r| Some(ProviderError::InvalidGrant(r));
    match answer.error.as_str() {
        "invalid_grant" if answer.says("invalid_rapt") => {
            refusal(GrantRefusal::Named(Cause::SessionReauthRequired))
        }
        "invalid_grant" if answer.says("admin_policy_enforced") => {
            refusal(GrantRefusal::Named(Cause::AdminPolicyEnforced))
        }
        "invalid_grant" if answer.says("expired or revoked") => {
            refusal(GrantRefusal::ExpiredOrRevoked)
        }
        "admin_policy_enforced" => refusal(GrantRefusal::Named(Cause::AdminPolicyEnforced)),
        _ => None,
    }
}
