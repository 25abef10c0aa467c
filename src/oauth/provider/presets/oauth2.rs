//! Any OAuth 2 provider without OpenID (`oauth2`): its endpoints as settings
//! (`AXNT_<NAME>_AUTHORIZE_URL`, `_TOKEN_URL`, `_USERINFO_URL`, `_REVOKE_URL` for RFC
//! 7009), the account from its user endpoint (`sub`, else `id`), nothing assumed about
//! its clocks.

use super::{Preset, Protocol, Quirks, Revocation, oauth_only};
use crate::oauth::grant::Lifetimes;

pub(super) const PRESET: Preset = Preset {
    kind: "oauth2",
    protocol: Protocol::OAuth2,
    issuer: None,
    endpoints: None,
    scopes: &[],
    required_scopes: &[],
    auth_params: &[],
    prompt_consent: false,
    rotates: true,
    lifetimes: Lifetimes::UNKNOWN,
    revocation: Revocation::Rfc7009,
    revocation_note: "The provider's revocation ends this grant; what else it ends is the provider's to say.",
    tenant_issuer: false,
    read_refusal: oauth_only,
    quirks: Quirks::NONE,
};
