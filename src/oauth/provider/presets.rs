//! The provider kinds this service knows (`AXNT_<NAME>_KIND`): each is a [`Preset`] in a
//! file of its own, registered in [`ALL`]. A preset fills in what a provider's settings
//! leave unset and says how its grants live and die ([`Profile`]).

mod github;
mod google;
mod microsoft;
mod oauth2;
mod oidc;

use std::time::Duration;

use url::Url;

use super::{ProviderConfig, ProviderError, TokenErrorAnswer};
use crate::config::{ConfigError, ProviderEntry};
use crate::oauth::grant::Lifetimes;

/// Every preset, by kind.
pub(crate) const ALL: [&Preset; 5] = [
    &google::PRESET,
    &microsoft::PRESET,
    &github::PRESET,
    &oidc::PRESET,
    &oauth2::PRESET,
];

/// The kind a provider is of when `AXNT_<NAME>_KIND` is unset and its name is no
/// preset's.
const DEFAULT_KIND: &str = "oidc";

/// What a kind of provider is unless its settings say otherwise.
pub(crate) struct Preset {
    /// `AXNT_<NAME>_KIND`.
    pub(crate) kind: &'static str,
    /// OpenID (discovery, ID tokens) or plain OAuth 2 (endpoints as settings, the
    /// account from its user endpoint).
    pub(crate) protocol: Protocol,
    /// The issuer when `AXNT_<NAME>_ISSUER` is unset (none: it must be set). OpenID
    /// only.
    pub(crate) issuer: Option<&'static str>,
    /// OAuth 2's endpoints when their settings are unset (none: they must be set).
    pub(crate) endpoints: Option<StaticEndpoints>,
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
    /// Quirks of its token endpoint and user API.
    pub(crate) quirks: Quirks,
}

/// How a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// OpenID Connect: discovery, JWKS, an ID token names the account.
    OpenId,
    /// OAuth 2 without OpenID: the account is read from the user endpoint.
    OAuth2,
}

/// A preset's own OAuth 2 endpoints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticEndpoints {
    pub(crate) authorize: &'static str,
    pub(crate) token: &'static str,
    pub(crate) userinfo: &'static str,
    pub(crate) revoke: Option<&'static str>,
}

/// An OAuth 2 provider's endpoints, from its settings or its preset.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) authorize: Url,
    pub(crate) token: Url,
    pub(crate) userinfo: Url,
}

/// What sets a provider apart from the specifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Quirks {
    /// The token endpoint wants the client id and secret in the form body, not in
    /// HTTP Basic authentication (GitHub).
    pub(crate) client_auth_in_body: bool,
    /// The token response's `scope` is comma-separated (GitHub).
    pub(crate) comma_separated_scopes: bool,
    /// An access token answered without `expires_in` does not expire (GitHub's OAuth
    /// apps); otherwise it is taken to live an hour.
    pub(crate) unexpiring_access_tokens: bool,
    /// The verified primary email is at the user endpoint + `/emails` (GitHub).
    pub(crate) emails_endpoint: bool,
}

impl Quirks {
    /// None: the specifications as written.
    pub(crate) const NONE: Self = Self {
        client_auth_in_body: false,
        comma_separated_scopes: false,
        unexpiring_access_tokens: false,
        emails_endpoint: false,
    };
}

/// How a provider's grants are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// RFC 7009 at the endpoint `AXNT_<NAME>_REVOKE_URL` names, else the discovery
    /// document's `revocation_endpoint` (none there: not possible).
    Rfc7009,
    /// GitHub's: `DELETE` the revoke URL (`{client_id}` filled in) with the client's
    /// Basic authentication and `{"access_token": …}`, which ends the whole grant.
    GitHubGrant,
    /// The provider has no way for a client to revoke a grant: a deletion only forgets
    /// it here (`revocation: "not_possible"`).
    Unsupported,
}

/// How a provider's grants live and die, from its preset and settings.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    /// OAuth 2's endpoints (none for OpenID: discovery has them).
    pub(crate) endpoints: Option<Endpoints>,
    pub(crate) quirks: Quirks,
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
        let (issuer, endpoints) = match preset.protocol {
            Protocol::OpenId => {
                let issuer = entry
                    .issuer
                    .as_ref()
                    .map(|u| u.as_str().to_string())
                    .or_else(|| preset.issuer.map(str::to_string))
                    .ok_or_else(|| ConfigError {
                        setting: entry.setting("issuer"),
                        reason: format!("a provider of kind {kind} needs its OpenID issuer"),
                    })?;
                (issuer, None)
            }
            Protocol::OAuth2 => {
                let endpoints = oauth2_endpoints(entry, preset)?;
                // Names the provider where an issuer would (logs, spans): the origin
                // of its authorization endpoint.
                let issuer = entry
                    .issuer
                    .as_ref()
                    .unwrap_or(&endpoints.authorize)
                    .origin()
                    .ascii_serialization();
                (issuer, Some(endpoints))
            }
        };
        let revoke_url = entry.revoke_url.clone().or_else(|| {
            preset
                .endpoints
                .and_then(|e| e.revoke)
                .and_then(|u| Url::parse(u).ok())
        });
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
                endpoints,
                quirks: preset.quirks,
                rotates_refresh_tokens: entry.rotates_refresh_tokens.unwrap_or(preset.rotates),
                refresh_reuse_grace: entry.refresh_reuse_grace.unwrap_or_default(),
                lifetimes: preset.lifetimes,
                revocation: preset.revocation,
                revoke_url,
                revocation_note: preset.revocation_note,
                tenant_issuer: preset.tenant_issuer,
                read_refusal: preset.read_refusal,
            },
        })
    }
}

/// An OAuth 2 provider's endpoints: each from its setting, else the preset's.
fn oauth2_endpoints(entry: &ProviderEntry, preset: &Preset) -> Result<Endpoints, ConfigError> {
    let pick = |field: &str, set: &Option<Url>, default: Option<&'static str>| {
        set.clone()
            .or_else(|| default.and_then(|u| Url::parse(u).ok()))
            .ok_or_else(|| ConfigError {
                setting: entry.setting(field),
                reason: format!("a provider of kind {} needs it", preset.kind),
            })
    };
    let defaults = preset.endpoints;
    Ok(Endpoints {
        authorize: pick(
            "authorize_url",
            &entry.authorize_url,
            defaults.map(|e| e.authorize),
        )?,
        token: pick("token_url", &entry.token_url, defaults.map(|e| e.token))?,
        userinfo: pick(
            "userinfo_url",
            &entry.userinfo_url,
            defaults.map(|e| e.userinfo),
        )?,
    })
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
            refused
                .reason
                .contains("google, microsoft, github, oidc, oauth2"),
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

    /// GitHub's token errors, as its troubleshooting page prints them
    /// (<https://docs.github.com/apps/oauth-apps/maintaining-oauth-apps/troubleshooting-oauth-app-access-token-request-errors>).
    #[test]
    fn github_refusals_read_as_their_kind() {
        let github = find("github").expect("preset").read_refusal;
        let answer =
            |json: &str| -> TokenErrorAnswer { serde_json::from_str(json).expect("answer") };
        assert!(matches!(
            answer(r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired.","error_uri":"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}"#)
                .classify(github),
            ProviderError::InvalidGrant(crate::oauth::provider::GrantRefusal::Unspecified)
        ));
        assert!(matches!(
            answer(r#"{"error":"incorrect_client_credentials","error_description":"The client_id and/or client_secret passed are incorrect.","error_uri":"/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials"}"#)
                .classify(github),
            ProviderError::InvalidClient
        ));
    }

    #[test]
    fn an_oauth2_provider_needs_its_endpoints_and_github_has_its_own() {
        let mut e = entry("slack");
        e.kind = Some("oauth2".into());
        let refused = ProviderConfig::from_entry(&e).expect_err("no endpoints");
        assert_eq!(refused.setting, "AXNT_SLACK_AUTHORIZE_URL");
        e.authorize_url = Some(Url::parse("https://slack.com/oauth/v2/authorize").expect("url"));
        e.token_url = Some(Url::parse("https://slack.com/api/oauth.v2.access").expect("url"));
        let refused = ProviderConfig::from_entry(&e).expect_err("no user endpoint");
        assert_eq!(refused.setting, "AXNT_SLACK_USERINFO_URL");
        e.userinfo_url =
            Some(Url::parse("https://slack.com/api/openid.connect.userInfo").expect("url"));
        let slack = ProviderConfig::from_entry(&e).expect("slack");
        assert_eq!(slack.issuer, "https://slack.com");
        assert!(slack.default_scopes.is_empty());
        assert_eq!(slack.profile.revoke_url, None);

        let github = ProviderConfig::from_entry(&entry("github")).expect("github");
        let endpoints = github.profile.endpoints.expect("OAuth 2");
        assert_eq!(
            endpoints.token.as_str(),
            "https://github.com/login/oauth/access_token"
        );
        assert_eq!(github.profile.revocation, Revocation::GitHubGrant);
        assert!(github.profile.quirks.comma_separated_scopes);
    }
}
