//! The provider kinds this service knows (`AXNT_<NAME>_KIND`): each is a [`Preset`] in a
//! file of its own, registered in [`ALL`]. A preset fills in what a provider's settings
//! leave unset and says how its grants live and die ([`Profile`]).

mod google;
mod microsoft;
mod oidc;

use std::time::Duration;

use url::Url;

use super::{ProviderConfig, ProviderError, TokenErrorAnswer};
use crate::config::{ConfigError, ProviderEntry};
use crate::oauth::grant::Lifetimes;

/// Every preset, by kind.
pub(crate) const ALL: [&Preset; 3] = [&google::PRESET, &microsoft::PRESET, &oidc::PRESET];

/// The kind a provider is of when `AXNT_<NAME>_KIND` is unset and its name is no
/// preset's.
const DEFAULT_KIND: &str = "oidc";

/// What a kind of provider is unless its settings say otherwise.
pub(crate) struct Preset {
    /// `AXNT_<NAME>_KIND`.
    pub(crate) kind: &'static str,
    /// The issuer when `AXNT_<NAME>_ISSUER` is unset (none: it must be set).
    pub(crate) issuer: Option<&'static str>,
    /// Scopes asked for beside `openid` when `AXNT_<NAME>_SCOPES` is unset.
    pub(crate) scopes: &'static [&'static str],
    /// Scopes asked for whatever `AXNT_<NAME>_SCOPES` says (Microsoft's
    /// `offline_access`, without which it issues no refresh token).
    pub(crate) required_scopes: &'static [&'static str],
    /// Authorization parameters before the settings' own.
    pub(crate) auth_params: &'static [(&'static str, &'static str)],
    /// Whether `prompt=consent` is asked for when a link wants a refresh token again.
    pub(crate) prompt_consent: bool,
    /// Whether refresh tokens rotate when `AXNT_<NAME>_ROTATES_REFRESH_TOKENS` is unset.
    pub(crate) rotates: bool,
    /// What the health forecast and the causes of dead grants know of its clocks.
    pub(crate) lifetimes: Lifetimes,
    /// How a grant is revoked there.
    pub(crate) revocation: Revocation,
    /// What a connection's deletion answer says revoking does there.
    pub(crate) revocation_note: &'static str,
    /// Whether its discovery document's issuer is a template with `{tenantid}` for
    /// multi-tenant issuers, each ID token naming the tenant that signed it.
    pub(crate) tenant_issuer: bool,
    /// Reads the provider's own refusals (codes in `error_description`, subtypes);
    /// `None` leaves the answer to OAuth's reading.
    pub(crate) read_refusal: fn(&TokenErrorAnswer) -> Option<ProviderError>,
}

/// How a provider's grants are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// RFC 7009 at the endpoint `AXNT_<NAME>_REVOKE_URL` names, else the discovery
    /// document's `revocation_endpoint` (none there: not possible).
    Rfc7009,
    /// The provider has no way for a client to revoke a grant: a deletion only forgets
    /// it here (`revocation: "not_possible"`).
    Unsupported,
}

/// How a provider's grants live and die, from its preset and settings.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub(crate) rotates_refresh_tokens: bool,
    /// A rotating provider still accepts a redeemed refresh token for this long.
    pub(crate) refresh_reuse_grace: Duration,
    pub(crate) lifetimes: Lifetimes,
    pub(crate) revocation: Revocation,
    pub(crate) revoke_url: Option<Url>,
    pub(crate) revocation_note: &'static str,
    pub(crate) tenant_issuer: bool,
    pub(crate) read_refusal: fn(&TokenErrorAnswer) -> Option<ProviderError>,
}

/// The preset of `kind`.
pub(crate) fn find(kind: &str) -> Option<&'static Preset> {
    ALL.iter().copied().find(|p| p.kind == kind)
}

/// The kinds, for messages.
fn kinds() -> String {
    ALL.iter().map(|p| p.kind).collect::<Vec<_>>().join(", ")
}

impl ProviderConfig {
    /// A provider from its settings and its kind's preset.
    pub(crate) fn from_entry(entry: &ProviderEntry) -> Result<Self, ConfigError> {
        let kind = entry
            .kind
            .as_deref()
            .unwrap_or_else(|| find(&entry.name).map_or(DEFAULT_KIND, |preset| preset.kind));
        let preset = find(kind).ok_or_else(|| ConfigError {
            setting: entry.setting("kind"),
            reason: format!(
                "{kind:?} is not a provider kind of this version ({})",
                kinds()
            ),
        })?;
        let issuer = entry
            .issuer
            .as_ref()
            .map(|u| u.as_str().to_string())
            .or_else(|| preset.issuer.map(str::to_string))
            .ok_or_else(|| ConfigError {
                setting: entry.setting("issuer"),
                reason: format!("a provider of kind {kind} needs its OpenID issuer"),
            })?;
        let mut default_scopes: Vec<String> = match &entry.scopes {
            Some(scopes) => scopes.clone(),
            None => preset.scopes.iter().map(|s| (*s).to_string()).collect(),
        };
        for scope in preset.required_scopes {
            if !default_scopes.iter().any(|s| s == scope) {
                default_scopes.push((*scope).to_string());
            }
        }
        default_scopes.retain(|s| s != "openid");
        let mut extra_auth_params: Vec<(String, String)> = preset
            .auth_params
            .iter()
            .filter(|(k, _)| !entry.auth_params.iter().any(|(own, _)| own == k))
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        extra_auth_params.extend(entry.auth_params.iter().cloned());
        Ok(Self {
            name: entry.name.clone(),
            issuer: issuer.trim_end_matches('/').to_string(),
            default_scopes,
            extra_auth_params,
            prompt_consent: preset.prompt_consent,
            profile: Profile {
                rotates_refresh_tokens: entry.rotates_refresh_tokens.unwrap_or(preset.rotates),
                refresh_reuse_grace: entry.refresh_reuse_grace.unwrap_or_default(),
                lifetimes: preset.lifetimes,
                revocation: preset.revocation,
                revoke_url: entry.revoke_url.clone(),
                revocation_note: preset.revocation_note,
                tenant_issuer: preset.tenant_issuer,
                read_refusal: preset.read_refusal,
            },
        })
    }
}

/// Reads no refusal of its own: OAuth's reading stands.
fn oauth_only(_: &TokenErrorAnswer) -> Option<ProviderError> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ProviderEntry {
        ProviderEntry {
            name: name.into(),
            ..ProviderEntry::default()
        }
    }

    #[test]
    fn a_name_that_is_a_kind_is_of_that_kind_and_any_other_is_oidc() {
        let google = ProviderConfig::from_entry(&entry("google")).expect("google");
        assert_eq!(google.issuer, "https://accounts.google.com");
        assert!(!google.profile.rotates_refresh_tokens);
        assert!(google.profile.lifetimes.google);
        assert!(
            google
                .extra_auth_params
                .contains(&("access_type".into(), "offline".into()))
        );

        let microsoft = ProviderConfig::from_entry(&entry("microsoft")).expect("microsoft");
        assert_eq!(
            microsoft.issuer,
            "https://login.microsoftonline.com/common/v2.0"
        );
        assert!(microsoft.default_scopes.contains(&"offline_access".into()));
        assert!(microsoft.profile.rotates_refresh_tokens);
        assert_eq!(microsoft.profile.revocation, Revocation::Unsupported);

        let e = ProviderConfig::from_entry(&entry("acme")).expect_err("oidc needs an issuer");
        assert_eq!(e.setting, "AXNT_ACME_ISSUER");
        let mut acme = entry("acme");
        acme.issuer = Some(Url::parse("https://idp.example.com/").expect("url"));
        let acme = ProviderConfig::from_entry(&acme).expect("acme");
        assert_eq!(acme.issuer, "https://idp.example.com");
        assert!(
            acme.profile.rotates_refresh_tokens,
            "assumed, as the safe default"
        );
        assert_eq!(acme.profile.lifetimes, Lifetimes::UNKNOWN);
    }

    #[test]
    fn settings_override_the_preset_and_required_scopes_stay() {
        let mut e = entry("work");
        e.kind = Some("microsoft".into());
        e.issuer =
            Some(Url::parse("https://login.microsoftonline.com/organizations/v2.0").expect("url"));
        e.scopes = Some(vec!["openid".into(), "Mail.Read".into()]);
        e.auth_params = vec![("domain_hint".into(), "example.com".into())];
        e.rotates_refresh_tokens = Some(false);
        let c = ProviderConfig::from_entry(&e).expect("work");
        assert_eq!(c.default_scopes, ["Mail.Read", "offline_access"]);
        assert_eq!(
            c.extra_auth_params,
            [("domain_hint".to_string(), "example.com".to_string())]
        );
        assert!(!c.profile.rotates_refresh_tokens);

        e.kind = Some("myspace".into());
        let refused = ProviderConfig::from_entry(&e).expect_err("unknown kind");
        assert_eq!(refused.setting, "AXNT_WORK_KIND");
        assert!(
            refused.reason.contains("google, microsoft, oidc"),
            "{}",
            refused.reason
        );
    }

    /// Entra's codes, from `error_codes` or the description's `AADSTS` prefix, as the
    /// error-codes page prints them
    /// (<https://learn.microsoft.com/entra/identity-platform/reference-error-codes>).
    #[test]
    fn entra_codes_are_read_from_either_place() {
        let answer =
            |json: &str| -> TokenErrorAnswer { serde_json::from_str(json).expect("answer") };
        let listed = answer(
            r#"{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for the input parameter 'scope' isn't valid.","error_codes":[70011]}"#,
        );
        assert_eq!(listed.aadsts(), Some(70011));
        let described = answer(
            r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity."}"#,
        );
        assert_eq!(described.aadsts(), Some(700082));
        let odd = answer(r#"{"error":"invalid_grant","error_codes":"70011"}"#);
        assert_eq!(odd.aadsts(), None);
        assert!(matches!(
            described.classify(find("microsoft").expect("preset").read_refusal),
            ProviderError::InvalidGrant(crate::oauth::provider::GrantRefusal::Named(
                crate::oauth::grant::Cause::IdleExpired
            ))
        ));
        // Google's reading does not know Entra's codes; OAuth's stands.
        assert!(matches!(
            described.classify(find("google").expect("preset").read_refusal),
            ProviderError::InvalidGrant(crate::oauth::provider::GrantRefusal::Unspecified)
        ));
    }
}
