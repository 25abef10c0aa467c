//! Reading the layers into [`Settings`]: every group is read from the same merged
//! layers, and a key that no group reads is refused, as a wrong value is.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Dict;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use super::{
    AwsModeSettings, ConfigError, DataKeySettings, FlowLogSettings, FlowSettings, LogSettings,
    ProviderSettings, RateLimitSettings, RefreshSettings, RetentionSettings, SecretSettings,
    ServerSettings, Settings, UNPREFIXED_ENV, Ungrouped, WebhookSettings,
};
use crate::aws::SdkEnv;
use crate::config::Backend;

/// Keys whose values are secrets: an error about them never quotes the value.
const SECRET_KEYS: [&str; 6] = [
    "webhook_secret",
    "api_keys",
    "callers",
    "google_client_secret",
    "state_key",
    "previous_state_key",
];

impl Settings {
    /// Loads the layers: defaults, `config/default.toml` (when present in the working
    /// directory), `extra_file` (must exist when given), then `env`.
    pub fn load(
        extra_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::file("config/default.toml"));
        if let Some(path) = extra_file {
            if !path.is_file() {
                return Err(ConfigError {
                    setting: "--config".into(),
                    reason: format!("no such file: {}", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Environment values are kept as strings (not guessed into numbers), so a
        // numeric-looking API key stays a string; numbers are read leniently below.
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut aws_sdk_env = SdkEnv::default();
        for (name, value) in &env {
            if SdkEnv::NAMES.contains(&name.as_str()) && !value.is_empty() {
                aws_sdk_env.set(name, value.clone());
            }
        }
        let figment = figment.merge(Serialized::defaults(env_layer(env)));
        let provider_names = super::providers::provider_names(&figment)?;
        refuse_unknown_keys(&figment, &provider_names)?;
        let ungrouped: Ungrouped = extract(&figment)?;
        let mut settings = Settings {
            backend: ungrouped.backend,
            data_dir: ungrouped.data_dir,
            server: extract(&figment)?,
            flow: extract(&figment)?,
            secrets: extract(&figment)?,
            provider: extract(&figment)?,
            refresh: extract(&figment)?,
            retention: extract(&figment)?,
            webhooks: extract(&figment)?,
            aws: extract(&figment)?,
            rate_limit: extract(&figment)?,
            data_key: extract(&figment)?,
            flow_log: extract(&figment)?,
            log: extract(&figment)?,
            providers: super::providers::entries(&figment, &provider_names)?,
            aws_sdk_env,
        };
        for entry in &mut settings.providers {
            entry.complete_google(&settings.provider);
        }
        // One list of callers: the keys and the named callers, no name twice.
        let callers = std::mem::take(&mut settings.secrets.callers);
        settings.secrets.api_keys.extend(callers);
        crate::callers::check_names(&settings.secrets.api_keys)
            .map_err(|e| ConfigError::new("callers", e.to_string()))?;
        if settings.secrets.api_keys.has_iam()
            && settings
                .secrets
                .iam_server_id
                .as_deref()
                .is_none_or(|id| id.trim().is_empty())
        {
            return Err(ConfigError::new(
                "iam_server_id",
                "must be set when a caller has iamArn: IAM callers sign it in X-Axnt-Server-Id",
            ));
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Loads from the process environment. AWS variables are left to the AWS SDK's
    /// own chain (which also knows profiles, service-specific endpoints and the like).
    pub fn from_env(extra_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut settings = Self::load(extra_file, std::env::vars())?;
        settings.aws_sdk_env = SdkEnv::default();
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let base = &self.server.public_base_url;
        match base.scheme() {
            "http" | "https" => {}
            other => {
                return Err(ConfigError::new(
                    "public_base_url",
                    format!("scheme must be http or https, not {other}"),
                ));
            }
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ConfigError::new(
                "public_base_url",
                "must not carry a query or fragment",
            ));
        }
        if !matches!(self.provider.issuer.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "google_issuer",
                "scheme must be http or https",
            ));
        }
        for url in &self.flow.allowed_return_urls {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::new(
                    "allowed_return_urls",
                    format!("{:?} must be an http(s) origin or URL prefix", url.as_str()),
                ));
            }
        }
        let secrets = &self.secrets;
        if secrets.client_id.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new("google_client_id", "is set but empty"));
        }
        if secrets.client_id.is_some() != secrets.client_secret.is_some()
            && self.backend == Backend::Embedded
        {
            let missing = if secrets.client_id.is_some() {
                "google_client_secret"
            } else {
                "google_client_id"
            };
            return Err(ConfigError::new(
                missing,
                "client id and client secret must be set together in embedded mode",
            ));
        }
        let aws = &self.aws;
        for (key, value) in [
            ("dynamodb_oauth_table", &aws.tokens_table),
            ("dynamodb_oauth_logs_table", &aws.logs_table),
            ("dynamodb_oauth_events_table", &aws.events_table),
            ("kms_key_id", &aws.kms_key_id),
            ("google_secret_id", &aws.secret_id),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        for (key, zero) in [
            (
                "header_read_timeout_secs",
                self.server.header_read_timeout.is_zero(),
            ),
            (
                "request_timeout_secs",
                self.server.request_timeout.is_zero(),
            ),
            ("max_connections", self.server.max_connections == 0),
            (
                "max_connections_per_client",
                self.server.max_connections_per_client == 0,
            ),
            (
                "connection_idle_timeout_secs",
                self.server.idle_timeout.is_zero(),
            ),
            (
                "http2_ping_timeout_secs",
                self.server.http2_ping_timeout.is_zero(),
            ),
            (
                "rate_limit_browser_burst",
                self.rate_limit.browser_per_minute > 0 && self.rate_limit.browser_burst == 0,
            ),
            (
                "rate_limit_auth_failures_burst",
                self.rate_limit.auth_failures_per_minute > 0
                    && self.rate_limit.auth_failures_burst == 0,
            ),
            (
                "connect_session_ttl_secs",
                self.flow.connect_session_ttl.is_zero(),
            ),
            ("flow_state_ttl_secs", self.flow.state_ttl.is_zero()),
            (
                "confirmation_ttl_secs",
                self.flow.confirmation_ttl.is_zero(),
            ),
            ("provider_timeout_secs", self.provider.timeout.is_zero()),
            (
                "keepalive_interval_secs",
                self.refresh.keepalive_interval.is_zero(),
            ),
            (
                "keepalive_per_minute",
                self.refresh.keepalive_per_minute == 0,
            ),
            ("google_grant_limit", self.provider.grant_limit == 0),
            (
                "audit_retention_days",
                self.retention.audit_retention.is_zero(),
            ),
            ("audit_window_secs", self.retention.audit_window.is_zero()),
            (
                "events_retention_days",
                self.retention.events_retention.is_zero(),
            ),
            ("webhook_retry_hours", self.webhooks.retry_period.is_zero()),
            ("webhook_timeout_ms", self.webhooks.timeout.is_zero()),
            ("webhook_poll_ms", self.webhooks.poll.is_zero()),
            (
                "revocation_retry_secs",
                self.provider.revocation_retry.is_zero(),
            ),
            (
                "provider_metadata_ttl_secs",
                self.provider.metadata_ttl.is_zero(),
            ),
            (
                "secret_reload_min_interval_secs",
                secrets.reload_min_interval.is_zero(),
            ),
            ("refresh_deadline_secs", self.refresh.deadline.is_zero()),
            (
                "provider_circuit_open_secs",
                self.refresh.circuit_open.is_zero(),
            ),
            (
                "connection_ttl_days",
                self.retention.connection_ttl.is_zero(),
            ),
            (
                "purge_interval_secs",
                self.retention.purge_interval.is_zero(),
            ),
            ("aws_connect_timeout_ms", aws.connect_timeout.is_zero()),
            ("aws_operation_timeout_ms", aws.operation_timeout.is_zero()),
            ("aws_max_attempts", aws.max_attempts == 0),
            ("data_key_max_uses", self.data_key.max_uses == 0),
            ("data_key_cache_entries", self.data_key.cache_entries == 0),
            ("flow_log_buffer", self.flow_log.buffer == 0),
            ("audit_buffer", self.flow_log.audit_buffer == 0),
            (
                "flow_log_write_concurrency",
                self.flow_log.write_concurrency == 0,
            ),
        ] {
            if zero {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
        }
        self.check_bounds()?;
        let hooks = &self.webhooks;
        for url in &hooks.urls {
            let private = || {
                (!hooks.allow_private)
                    .then(|| crate::guard::private_host(url))
                    .flatten()
            };
            if let Some(reason) = crate::guard::unusable_url(url).or_else(private) {
                return Err(ConfigError::new(
                    "webhook_urls",
                    format!(
                        "{}://{}…: {reason} (AXNT_WEBHOOK_ALLOW_PRIVATE=true allows private addresses)",
                        url.scheme(),
                        url.host_str().unwrap_or("")
                    ),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| ConfigError::new("log", e.to_string()))?;
        for entry in &self.providers {
            entry.validate(self.backend == Backend::Embedded)?;
        }
        Ok(())
    }

    /// Upper bounds: a value past them is a mistake (a unit mixed up, a digit too
    /// many), and far past them it would overflow where it meets a clock.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let bounds = [
            &self.webhooks.bounds()[..],
            &self.retention.bounds()[..],
            &self.provider.bounds()[..],
            &self.refresh.bounds()[..],
            &self.rate_limit.bounds()[..],
            &self.server.bounds()[..],
            &self.flow.bounds()[..],
            &self.secrets.bounds()[..],
            &self.aws.bounds()[..],
            &self.data_key.bounds()[..],
            &self.flow_log.bounds()[..],
        ]
        .concat();
        for (key, value, max) in bounds {
            if value > max {
                return Err(ConfigError::new(key, format!("must be at most {max}")));
            }
        }
        Ok(())
    }
}

/// Reads one group of settings from the merged layers.
fn extract<T: DeserializeOwned>(figment: &Figment) -> Result<T, ConfigError> {
    figment.extract_lossy().map_err(|e| {
        let key = e.path.last().cloned().unwrap_or_default();
        if key.is_empty() {
            ConfigError {
                setting: "configuration".into(),
                reason: e.to_string(),
            }
        } else if SECRET_KEYS.contains(&key.as_str()) {
            // Our own messages (the key rules) quote nothing; serde's type errors do.
            match &e.kind {
                figment::error::Kind::Message(rule) => ConfigError::new(&key, rule.clone()),
                _ => ConfigError::new(&key, "must be a string (or, for a list, strings)"),
            }
        } else {
            ConfigError::new(&key, e.kind.to_string())
        }
    })
}

/// Every key a group reads. A key in the layers that is not among them is a typo or
/// a setting this version does not have: either way start-up stops on it.
fn known_keys() -> BTreeSet<&'static str> {
    [
        keys_of::<Ungrouped>(),
        keys_of::<ServerSettings>(),
        keys_of::<FlowSettings>(),
        keys_of::<SecretSettings>(),
        keys_of::<ProviderSettings>(),
        keys_of::<RefreshSettings>(),
        keys_of::<RetentionSettings>(),
        keys_of::<WebhookSettings>(),
        keys_of::<AwsModeSettings>(),
        keys_of::<RateLimitSettings>(),
        keys_of::<DataKeySettings>(),
        keys_of::<FlowLogSettings>(),
        keys_of::<LogSettings>(),
        &["providers"],
    ]
    .concat()
    .into_iter()
    .collect()
}

/// Refuses a key no group reads and no configured provider owns. A provider key of a
/// provider `AXNT_PROVIDERS` does not list says so.
fn refuse_unknown_keys(figment: &Figment, providers: &[String]) -> Result<(), ConfigError> {
    let given: Dict = figment.extract().map_err(|e| ConfigError {
        setting: "configuration".into(),
        reason: e.to_string(),
    })?;
    let known = known_keys();
    // A provider's keys must be its own: `provider` would take
    // `provider_rotates_refresh_tokens`, `google-risc` `google_risc_issuer`. (`google`'s
    // issuer, client and secret id are the service's, by design.)
    for name in providers.iter().filter(|name| *name != "google") {
        if let Some(key) = super::providers::keys_of_provider(name)
            .into_iter()
            .find(|key| known.contains(key.as_str()))
        {
            return Err(ConfigError::new(
                "providers",
                format!(
                    "{name:?} cannot be a provider's name: its setting {} is one of the service's own",
                    super::env_name(&key)
                ),
            ));
        }
    }
    let owned: BTreeSet<String> = providers
        .iter()
        .flat_map(|name| super::providers::keys_of_provider(name))
        .collect();
    let Some(key) = given
        .keys()
        .find(|key| !known.contains(key.as_str()) && !owned.contains(key.as_str()))
    else {
        return Ok(());
    };
    let field = super::providers::entry_fields()
        .iter()
        .find(|field| key.ends_with(&format!("_{field}")));
    match field {
        Some(field) => Err(ConfigError::new(
            key,
            format!(
                "names provider {:?}, which AXNT_PROVIDERS does not list",
                key[..key.len() - field.len() - 1].replace('_', "-")
            ),
        )),
        None => Err(ConfigError::new(key, "not a setting of this service")),
    }
}

/// The keys `T` reads: the field names (after renames) serde's derive hands to
/// `deserialize_struct`, caught by a deserializer that records them and stops.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut keys));
    keys
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// Picks our variables out of an environment: `AXNT_*` and the two table names.
/// Empty values count as unset, as operators expect from `FOO= cmd`.
fn env_layer(env: impl IntoIterator<Item = (String, String)>) -> HashMap<String, String> {
    env.into_iter()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(name, value)| {
            if let Some((_, key)) = UNPREFIXED_ENV.iter().find(|(env, _)| *env == name) {
                return Some(((*key).to_string(), value));
            }
            let key = name.strip_prefix("AXNT_")?;
            Some((key.to_ascii_lowercase(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use url::Url;

    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn api_keys_may_be_named_and_limited() {
        let s = load(&[(
            "AXNT_API_KEYS",
            r#"[{"name":"reader","key":"0123456789012345","operations":["read_tokens"],"providers":["google"]}, "ops:abcdefghijklmnopq"]"#,
        )])
        .expect("loads");
        let ids: Vec<_> = s
            .secrets
            .api_keys
            .keys
            .iter()
            .map(|k| k.caller().id.clone())
            .collect();
        assert_eq!(ids, vec!["reader", "ops"]);
        assert_eq!(
            s.secrets.api_keys.keys[0].caller().operations,
            Some(vec![crate::callers::Operation::ReadTokens])
        );
        let e = load(&[("AXNT_API_KEYS", "a:0123456789012345,a:0123456789012346")])
            .expect_err("a name twice");
        assert_eq!(e.setting, "AXNT_API_KEYS");
    }

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.backend, Backend::Embedded);
        assert_eq!(s.server.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            s.redirect_uri("google"),
            "http://127.0.0.1:8080/oauth/google/callback"
        );
        assert_eq!(s.aws.tokens_table, "axnt-oauth-tokens");
        assert_eq!(s.aws.logs_table, "axnt-oauth-tokens-logs");
        assert_eq!(s.aws.kms_key_id, "alias/axnt-oauth");
        assert_eq!(s.aws.secret_id, "axnt/google-oauth");
        assert_eq!(s.refresh.margin, Duration::from_secs(300));
        assert_eq!(s.provider.metadata_ttl, Duration::from_secs(3_600));
        assert_eq!(s.provider.metadata_max_stale, Duration::from_secs(86_400));
        assert_eq!(s.secrets.reload_min_interval, Duration::from_secs(30));
    }

    #[test]
    fn environment_names_reach_their_settings() {
        let s = load(&[
            ("AXNT_BACKEND", "aws"),
            ("AXNT_LISTEN_ADDR", "0.0.0.0:9000"),
            ("AXNT_API_KEYS", "0123456789012345, abcdefghijklmnopq"),
            ("AXNT_ALLOWED_RETURN_URLS", "https://app.example.com"),
            ("DYNAMODB_OAUTH_TABLE", "t1"),
            ("DYNAMODB_OAUTH_LOGS_TABLE", "t2"),
            ("AXNT_REFRESH_MARGIN_SECS", "120"),
            ("AXNT_GOOGLE_CLIENT_SECRET", "12345"),
        ])
        .expect("loads");
        assert_eq!(s.backend, Backend::Aws);
        assert_eq!(s.server.listen_addr.port(), 9000);
        assert_eq!(s.secrets.api_keys.keys.len(), 2);
        let first = crate::callers::ApiKey::parse("0123456789012345").expect("key");
        assert!(first.is_one_of(&s.secrets.api_keys.keys[..1]));
        assert_eq!(
            s.flow.allowed_return_urls,
            vec![Url::parse("https://app.example.com").expect("url")]
        );
        assert_eq!(s.aws.tokens_table, "t1");
        assert_eq!(s.aws.logs_table, "t2");
        assert_eq!(s.refresh.margin, Duration::from_secs(120));
        assert_eq!(
            s.secrets.client_secret.as_ref().map(|s| s.expose_secret()),
            Some("12345")
        );
    }

    #[test]
    fn every_bounded_setting_names_itself_when_too_large() {
        for (name, value) in [
            ("AXNT_CONNECT_SESSION_TTL_SECS", "604801"),
            ("AXNT_REFRESH_MARGIN_SECS", "9223372036854775807"),
            ("AXNT_CONNECTION_TTL_DAYS", "3651"),
            ("AXNT_INACTIVE_RETENTION_DAYS", "18446744073709551615"),
            ("AXNT_AWS_OPERATION_TIMEOUT_MS", "600001"),
            ("AXNT_AWS_MAX_ATTEMPTS", "21"),
            ("AXNT_FLOW_LOG_WRITE_CONCURRENCY", "257"),
            ("AXNT_DATA_KEY_MAX_USES", "4294967297"),
        ] {
            let e = load(&[(name, value)]).expect_err(name);
            assert_eq!(e.setting, name);
        }
        // The bounds themselves are accepted.
        load(&[
            ("AXNT_CONNECT_SESSION_TTL_SECS", "604800"),
            ("AXNT_CONNECTION_TTL_DAYS", "3650"),
            ("AXNT_DATA_KEY_MAX_USES", "4294967296"),
        ])
        .expect("at the bounds");
    }

    #[test]
    fn a_wrong_setting_is_named_by_its_environment_name() {
        let e = load(&[("AXNT_BACKEND", "cloud")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_BACKEND");
        let e = load(&[("AXNT_PUBLIC_BASE_URL", "not a url")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_PUBLIC_BASE_URL");
        let e = load(&[("AXNT_LISTEN_ADDR", "nowhere")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_LISTEN_ADDR");
        let e = load(&[("AXNT_GOOGLE_CLIENT_ID", "abc")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_GOOGLE_CLIENT_SECRET");
        let e = load(&[("AXNT_API_KEYS", "short")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_API_KEYS");
        let e = load(&[("AXNT_REFRESH_MARGIN_SECS", "soon")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_REFRESH_MARGIN_SECS");
        let e = load(&[("AXNT_PROVIDER_METADATA_TTL_SECS", "0")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_PROVIDER_METADATA_TTL_SECS");
        let e = load(&[("AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS", "0")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS");
    }

    #[test]
    fn aws_sdk_variables_of_an_explicit_environment_are_kept_and_never_printed() {
        let s = load(&[
            ("AXNT_BACKEND", "aws"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "planted-aws-secret"),
            ("AXNT_DATA_KEY_MAX_USES", "50"),
        ])
        .expect("loads");
        assert_eq!(
            s.aws_sdk_env.endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(s.aws_sdk_env.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.data_key.max_uses, 50);
        assert!(!format!("{s:?}").contains("planted-aws-secret"));
        let e = load(&[("AXNT_FLOW_LOG_WRITE_CONCURRENCY", "0")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_FLOW_LOG_WRITE_CONCURRENCY");
    }

    #[test]
    fn secrets_never_print() {
        let s = load(&[
            ("AXNT_GOOGLE_CLIENT_ID", "id"),
            ("AXNT_GOOGLE_CLIENT_SECRET", "planted-client-secret"),
            ("AXNT_API_KEYS", "planted-api-key-0000"),
        ])
        .expect("loads");
        let printed = format!("{s:?}");
        assert!(!printed.contains("planted-client-secret"));
        assert!(!printed.contains("planted-api-key-0000"));
    }
    #[test]
    fn values_are_typed_at_load_in_the_unit_their_key_names() {
        let s = load(&[
            ("AXNT_CONNECTION_TTL_DAYS", "2"),
            ("AXNT_AWS_CONNECT_TIMEOUT_MS", "250"),
            ("AXNT_BACKGROUND_REFRESH_SECS", "45"),
            ("AXNT_TRUSTED_PROXIES", "10.0.0.1, ::1, 172.16.0.0/12"),
            ("AXNT_GOOGLE_ISSUER", "http://127.0.0.1:9999/realm"),
        ])
        .expect("loads");
        assert_eq!(s.retention.connection_ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(s.aws.connect_timeout, Duration::from_millis(250));
        assert_eq!(s.refresh.background, Some(Duration::from_secs(45)));
        for (ip, trusted) in [
            ("10.0.0.1", true),
            ("::1", true),
            ("172.20.1.1", true),
            ("10.0.0.2", false),
        ] {
            assert_eq!(
                s.server.trusted_proxies.contains(ip.parse().expect("ip")),
                trusted,
                "{ip}"
            );
        }
        assert_eq!(s.provider.issuer.as_str(), "http://127.0.0.1:9999/realm");
        assert!(s.provider.rotates(), "a provider other than Google");
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.refresh.background, None, "0 (the default) is off");
        assert!(!s.provider.rotates(), "Google does not rotate");
    }

    #[test]
    fn a_value_out_of_range_is_an_error_not_a_panic() {
        let e = load(&[("AXNT_CONNECTION_TTL_DAYS", &u64::MAX.to_string())]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_CONNECTION_TTL_DAYS");
        let e = load(&[("AXNT_TRUSTED_PROXIES", "10.0.0.1, proxy.internal")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_TRUSTED_PROXIES");
        assert!(e.reason.contains("proxy.internal"), "{e}");
    }

    #[test]
    fn an_unknown_setting_is_named() {
        let e = load(&[("AXNT_REFRESH_MARGIN", "300")]).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_REFRESH_MARGIN");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("extra.toml");
        std::fs::write(&file, "[server]\nlisten_addr = \"0.0.0.0:1\"\n").expect("write");
        let e = Settings::load(Some(&file), Vec::new()).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_SERVER", "the keys are flat: no tables");
    }

    #[test]
    fn callers_of_every_kind_may_be_a_file_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("extra.toml");
        std::fs::write(
            &file,
            r#"
iam_server_id = "axnt.example"
[[callers]]
name = "sync"
iamArn = "arn:aws:iam::123456789012:role/sync"
operations = ["read_tokens"]
[[callers]]
name = "ci"
userIds = ["tenant-a:*"]
[callers.oidc]
issuer = "https://token.actions.githubusercontent.com"
audience = "axnt"
claims = { sub = "repo:acme/*" }
"#,
        )
        .expect("write");
        let s = Settings::load(Some(&file), Vec::new()).expect("loads");
        let names: Vec<&str> = s
            .secrets
            .api_keys
            .identities
            .iter()
            .map(|c| c.caller.id.as_str())
            .collect();
        assert_eq!(names, ["sync", "ci"]);
        assert!(
            s.secrets
                .api_keys
                .iam_caller("arn:aws:iam::123456789012:role/sync")
                .is_some()
        );
        // An IAM caller without the server id it must sign is refused at load.
        let e = load(&[(
            "AXNT_CALLERS",
            r#"[{"name":"sync","iamArn":"arn:aws:iam::123456789012:role/sync"}]"#,
        )])
        .expect_err("no server id");
        assert_eq!(e.setting, "AXNT_IAM_SERVER_ID");
    }

    #[test]
    fn a_wrong_secret_is_named_but_never_quoted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("extra.toml");
        std::fs::write(&file, "google_client_secret = 8675309123\n").expect("write");
        let e = Settings::load(Some(&file), Vec::new()).expect_err("rejects");
        assert_eq!(e.setting, "AXNT_GOOGLE_CLIENT_SECRET");
        assert!(!e.to_string().contains("8675309123"), "{e}");
    }

    /// `config/default.toml` sets nothing, and lists every key, commented out, with
    /// the built-in default (`key =` alone: no default).
    #[test]
    fn default_toml_sets_nothing_and_lists_every_key_with_its_default() {
        let text = include_str!("../../config/default.toml");
        let set: Dict = Figment::from(Toml::string(text))
            .extract()
            .expect("default.toml parses");
        assert!(set.is_empty(), "default.toml sets {set:?}");

        let known = known_keys();
        let mut listed = BTreeSet::new();
        let mut defaults = String::new();
        for line in text.lines() {
            let Some((key, value)) = line
                .strip_prefix("# ")
                .and_then(|rest| rest.split_once('='))
            else {
                continue;
            };
            let key = key.trim();
            if !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            assert!(
                known.contains(key),
                "default.toml lists {key}, not a setting"
            );
            assert!(listed.insert(key), "default.toml lists {key} twice");
            if !value.trim().is_empty() {
                defaults.push_str(&format!("{key} = {}\n", value.trim()));
            }
        }
        let missing: Vec<_> = known.difference(&listed).collect();
        assert!(missing.is_empty(), "default.toml does not list {missing:?}");

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("defaults.toml");
        std::fs::write(&file, defaults).expect("write");
        let uncommented = Settings::load(Some(&file), Vec::new()).expect("listed defaults load");
        let built_in = load(&[]).expect("defaults load");
        assert_eq!(format!("{uncommented:?}"), format!("{built_in:?}"));
    }

    #[test]
    fn aws_toml_loads_as_aws_mode() {
        let s = Settings::load(Some(Path::new("config/aws.toml")), Vec::new()).expect("loads");
        assert_eq!(s.backend, Backend::Aws);
        assert!(s.is_https());
    }
}
