//! The OAuth providers: `AXNT_PROVIDERS` names them, and each name's settings are the
//! keys `<name>_<field>` (`AXNT_<NAME>_<FIELD>`, upper case, `-` as `_`).
//!
//! `google`'s settings were written before there were others, and keep their names:
//! `AXNT_GOOGLE_ISSUER`, `AXNT_GOOGLE_CLIENT_ID`, `AXNT_GOOGLE_CLIENT_SECRET` and
//! `AXNT_GOOGLE_SECRET_ID` already follow the rule; its rotation settings
//! (`AXNT_PROVIDER_ROTATES_REFRESH_TOKENS`, `AXNT_REFRESH_REUSE_GRACE_SECS`) stand in
//! for the ones the rule would give it when those are unset.

use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use figment::value::Dict;
use secrecy::SecretString;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use url::Url;

use super::{ConfigError, de};
use crate::secrets::{ClientCredentials, ClientEntry, ClientOverride, client_set};

/// A provider's name: what routes, rows, metrics and events carry.
const NAME_RULE: &str = "a provider name is 1 to 32 of a-z, 0-9 and -, starting with a letter";

/// Whether `name` is a provider name (`[a-z][a-z0-9-]{0,31}`).
pub(crate) fn is_provider_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The key prefix of a provider's settings (`my-idp` → `my_idp`).
pub(crate) fn key_prefix(name: &str) -> String {
    name.replace('-', "_")
}

/// One provider's settings, as the keys `<name>_<field>` give them. What is unset is
/// the preset's (see `oauth::provider::presets`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProviderEntry {
    /// Set by the loader from `AXNT_PROVIDERS`, not read from a key.
    #[serde(skip)]
    pub(crate) name: String,
    /// `AXNT_<NAME>_KIND`: the preset (`google`, `microsoft`, `github`, `oidc`, `oauth2`); unset, the name
    /// when it is a preset's, else `oidc`.
    pub(crate) kind: Option<String>,
    /// `AXNT_<NAME>_ISSUER`: the OpenID issuer, found through its discovery document.
    pub(crate) issuer: Option<Url>,
    /// `AXNT_<NAME>_AUTHORIZE_URL`: an OAuth 2 provider's authorization endpoint.
    pub(crate) authorize_url: Option<Url>,
    /// `AXNT_<NAME>_TOKEN_URL`: an OAuth 2 provider's token endpoint.
    pub(crate) token_url: Option<Url>,
    /// `AXNT_<NAME>_USERINFO_URL`: an OAuth 2 provider's user endpoint, which names the
    /// account (`sub` or `id`, `email`).
    pub(crate) userinfo_url: Option<Url>,
    /// `AXNT_<NAME>_REVOKE_URL`: the revocation endpoint (RFC 7009; GitHub's grant
    /// endpoint, with `{client_id}`), when discovery names none or the preset's is not
    /// the one.
    pub(crate) revoke_url: Option<Url>,
    /// `AXNT_<NAME>_CLIENT_ID`: the OAuth client's id.
    pub(crate) client_id: Option<String>,
    /// `AXNT_<NAME>_CLIENT_SECRET`: the OAuth client's secret.
    pub(crate) client_secret: Option<SecretString>,
    /// `AXNT_<NAME>_CLIENTS`: more OAuth clients, as a JSON list of `{"client_id",
    /// "client_secret", "current"}` (a list of tables in a file). The one marked
    /// `current` (else `CLIENT_ID`'s, else the first) is the one new links use; the
    /// others keep serving the connections made with them.
    #[serde(deserialize_with = "client_list")]
    pub(crate) clients: Vec<ClientEntry>,
    /// `AXNT_<NAME>_SECRET_ID`: a Secrets Manager secret holding the client (aws mode;
    /// the same document shape as the service's secret). `google`'s is the service's
    /// own secret.
    pub(crate) secret_id: Option<String>,
    /// `AXNT_<NAME>_SCOPES`: the scopes every link asks for, beside `openid` (space or
    /// comma separated).
    #[serde(deserialize_with = "scope_list")]
    pub(crate) scopes: Option<Vec<String>>,
    /// `AXNT_<NAME>_AUTH_PARAMS`: extra authorization parameters, as a query string
    /// (`domain_hint=example.com&max_age=0`), added to the preset's.
    #[serde(deserialize_with = "auth_params")]
    pub(crate) auth_params: Vec<(String, String)>,
    /// `AXNT_<NAME>_ROTATES_REFRESH_TOKENS`: whether the provider issues a new refresh
    /// token on each refresh and refuses the old one. Unset: the preset's.
    pub(crate) rotates_refresh_tokens: Option<bool>,
    /// `AXNT_<NAME>_REFRESH_REUSE_GRACE_SECS`: how long a rotating provider still
    /// accepts a redeemed refresh token. Unset: the preset's.
    #[serde(rename = "refresh_reuse_grace_secs", deserialize_with = "opt_secs")]
    pub(crate) refresh_reuse_grace: Option<Duration>,
}

fn client_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ClientEntry>, D::Error> {
    /// A list, or (the only way an environment variable can give one) its JSON text.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrJson {
        List(Vec<ClientEntry>),
        Json(String),
    }
    // Never serde's own message: it may quote a value, and these hold secrets.
    let shape = || D::Error::custom("must be a list of {client_id, client_secret, current}");
    match ListOrJson::deserialize(d).map_err(|_| shape())? {
        ListOrJson::List(entries) => Ok(entries),
        ListOrJson::Json(text) => serde_json::from_str(&text).map_err(|_| shape()),
    }
}

fn scope_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let scopes: Vec<String> = de::strings(d)?
        .iter()
        .flat_map(|item| item.split_whitespace())
        .map(str::to_string)
        .collect();
    if let Some(bad) = scopes.iter().find(|s| {
        !s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(D::Error::custom(format!("{bad:?} is not a scope")));
    }
    Ok(Some(scopes))
}

fn auth_params<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let text = String::deserialize(d)?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(text.trim().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // The flow's own parameters are not the operator's to set.
    const OWN: [&str; 9] = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "login_hint",
    ];
    match params
        .iter()
        .find(|(k, _)| k.is_empty() || OWN.contains(&k.as_str()))
    {
        Some((k, _)) => Err(D::Error::custom(format!(
            "{k:?} cannot be set here: the flow sets it"
        ))),
        None => Ok(params),
    }
}

fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de::secs(d).map(Some)
}

/// The fields of [`ProviderEntry`], as keys after the provider's prefix.
pub(super) fn entry_fields() -> &'static [&'static str] {
    super::load::keys_of::<ProviderEntry>()
}

/// The list in `AXNT_PROVIDERS`.
#[derive(Deserialize)]
struct ProviderList {
    #[serde(default = "default_providers", deserialize_with = "de::strings")]
    providers: Vec<String>,
}

fn default_providers() -> Vec<String> {
    vec!["google".into()]
}

/// The configured providers' names, checked: each a provider name, each once, at
/// least one.
pub(super) fn provider_names(figment: &Figment) -> Result<Vec<String>, ConfigError> {
    let list: ProviderList = figment
        .extract_lossy()
        .map_err(|e| ConfigError::new("providers", e.kind.to_string()))?;
    if list.providers.is_empty() {
        return Err(ConfigError::new("providers", "names no provider"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for name in &list.providers {
        if !is_provider_name(name) {
            return Err(ConfigError::new(
                "providers",
                format!("{name:?}: {NAME_RULE}"),
            ));
        }
        // `a-b` and `a_b` would share their keys; `_` is not allowed, so only a
        // repeated name can collide.
        if seen.contains(&name.as_str()) {
            return Err(ConfigError::new(
                "providers",
                format!("{name:?} is listed twice"),
            ));
        }
        seen.push(name);
    }
    Ok(list.providers)
}

/// The keys that belong to the provider `name`: its prefix followed by a field.
pub(super) fn keys_of_provider(name: &str) -> Vec<String> {
    let prefix = key_prefix(name);
    entry_fields()
        .iter()
        .map(|field| format!("{prefix}_{field}"))
        .collect()
}

/// Reads each provider's entry from the merged layers.
pub(super) fn entries(
    figment: &Figment,
    names: &[String],
) -> Result<Vec<ProviderEntry>, ConfigError> {
    let given: Dict = figment
        .extract()
        .map_err(|e| ConfigError::new("providers", e.to_string()))?;
    names
        .iter()
        .map(|name| {
            let prefix = format!("{}_", key_prefix(name));
            let own: Dict = given
                .iter()
                .filter_map(|(key, value)| {
                    let field = key.strip_prefix(&prefix)?;
                    entry_fields()
                        .contains(&field)
                        .then(|| (field.to_string(), value.clone()))
                })
                .collect();
            let mut entry: ProviderEntry = Figment::from(Serialized::defaults(own))
                .extract_lossy()
                .map_err(|e| {
                    let field = e.path.last().cloned().unwrap_or_default();
                    let key = format!("{prefix}{field}");
                    if field == "client_secret" {
                        ConfigError::new(&key, "must be a string")
                    } else if field == "clients" {
                        ConfigError::new(
                            &key,
                            "must be a list of {client_id, client_secret, current}",
                        )
                    } else {
                        ConfigError::new(&key, e.kind.to_string())
                    }
                })?;
            entry.name = name.clone();
            Ok(entry)
        })
        .collect()
}

/// The env name of the provider `name`'s setting `field` (`AXNT_MY_IDP_CLIENT_ID`).
pub(crate) fn provider_setting(name: &str, field: &str) -> String {
    super::env_name(&format!("{}_{field}", key_prefix(name)))
}

impl ProviderEntry {
    /// `google`'s entry completed from the settings it had before providers were
    /// configured by name: the issuer's default, the client from
    /// `AXNT_GOOGLE_CLIENT_ID`/`_SECRET` (read by the secrets group too) and the
    /// rotation settings, whose default follows the issuer (Google does not rotate; any
    /// other issuer is taken to).
    pub(super) fn complete_google(&mut self, provider: &super::ProviderSettings) {
        if self.name != "google" {
            return;
        }
        self.issuer.get_or_insert_with(|| provider.issuer.clone());
        // `AXNT_GOOGLE_SECRET_ID` names the service's own secret, which the aws group
        // reads; the client in it is `google`'s.
        self.secret_id = None;
        self.rotates_refresh_tokens
            .get_or_insert_with(|| provider.rotates());
        self.refresh_reuse_grace
            .get_or_insert(provider.refresh_reuse_grace);
    }

    /// The env name of one of this provider's settings (`AXNT_MY_IDP_ISSUER`).
    pub(crate) fn setting(&self, field: &str) -> String {
        provider_setting(&self.name, field)
    }

    /// The clients its settings give: `CLIENT_ID`/`CLIENT_SECRET` and `CLIENTS`.
    pub(crate) fn client_override(&self) -> Result<ClientOverride, ConfigError> {
        let pair = match (&self.client_id, &self.client_secret) {
            (Some(id), Some(secret)) => Some(ClientCredentials {
                client_id: id.clone(),
                client_secret: secret.clone(),
            }),
            _ => None,
        };
        let (current, others) = client_set(pair, self.clients.clone()).map_err(|reason| {
            ConfigError::new(&format!("{}_clients", key_prefix(&self.name)), reason)
        })?;
        Ok(ClientOverride { current, others })
    }

    /// Checks what can be checked without the presets.
    pub(super) fn validate(&self, embedded: bool) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{}_{field}", key_prefix(&self.name));
        for (field, url) in [
            ("issuer", &self.issuer),
            ("authorize_url", &self.authorize_url),
            ("token_url", &self.token_url),
            ("userinfo_url", &self.userinfo_url),
            ("revoke_url", &self.revoke_url),
        ] {
            if let Some(url) = url
                && !matches!(url.scheme(), "http" | "https")
            {
                return Err(ConfigError::new(
                    &key(field),
                    "scheme must be http or https",
                ));
            }
        }
        if self.client_id.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new(&key("client_id"), "is set but empty"));
        }
        if self.client_id.is_some() != self.client_secret.is_some() && embedded {
            let missing = if self.client_id.is_some() {
                "client_secret"
            } else {
                "client_id"
            };
            return Err(ConfigError::new(
                &key(missing),
                "client id and client secret must be set together in embedded mode",
            ));
        }
        self.client_override()?;
        // `google`'s secret is the service's own (`AXNT_GOOGLE_SECRET_ID`), which
        // embedded mode has always ignored.
        if embedded && self.secret_id.is_some() && self.name != "google" {
            return Err(ConfigError::new(
                &key("secret_id"),
                "a Secrets Manager secret needs AXNT_BACKEND=aws; in embedded mode set the client id and secret",
            ));
        }
        if let Some(grace) = self.refresh_reuse_grace
            && grace > Duration::from_secs(3_600)
        {
            return Err(ConfigError::new(
                &key("refresh_reuse_grace_secs"),
                "must be at most 3600",
            ));
        }
        Ok(())
    }
}
