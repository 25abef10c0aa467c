//! Any OpenID provider (`oidc`): everything from its discovery document, nothing
//! assumed about its clocks.

use super::{Preset, Protocol, Quirks, Revocation, oauth_only};
use crate::oauth::grant::Lifetimes;

pub(super) const PRESET: Preset = Preset {
    kind: "oidc",
    protocol: Protocol::OpenId,
    endpoints: None,
    issuer: None,
    scopes: &["email", "profile"],
    required_scopes: &[],
    auth_params: &[],
    prompt_consent: true,
    // The safe assumption: a token sent in a request whose answer was lost is not
    // sent again.
    rotates: true,
    lifetimes: Lifetimes::UNKNOWN,
    revocation: Revocation::Rfc7009,
    revocation_note: "The provider's revocation ends this grant; what else it ends is the provider's to say.",
    tenant_issuer: false,
    read_refusal: oauth_only,
    quirks: Quirks::NONE,
};
