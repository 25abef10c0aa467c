//! Settings: built-in defaults, `config/default.toml`, an optional `--config` file, then
//! environment variables — later layers win.
//!
//! Every setting has an environment name: `AXNT_` followed by the upper-cased key
//! (`listen_addr` ↔ `AXNT_LISTEN_ADDR`), except the two table names, which keep the
//! names operators already use for them, `DYNAMODB_OAUTH_TABLE` and `DYNAMODB_OAUTH_LOGS_TABLE`. Files use the
//! same keys in lower case. AWS region, endpoint and credentials are not settings of
//! ours: the AWS SDK reads them from its standard chain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use crate::aws::{AwsSettings, SdkEnv};

/// Environment names that do not follow the `AXNT_` rule (the tables' established names).
const UNPREFIXED_ENV: [(&str, &str); 2] = [
    ("DYNAMODB_OAUTH_TABLE", "dynamodb_oauth_table"),
    ("DYNAMODB_OAUTH_LOGS_TABLE", "dynamodb_oauth_logs_table"),
];

/// Where tokens and keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite file plus a local master key under `data_dir`.
    Embedded,
    /// DynamoDB, KMS and Secrets Manager.
    Aws,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default: a developer's terminal).
    Text,
    /// One JSON object a line (for log shippers).
    Json,
}

/// The service's settings. Field docs name the environment variable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `AXNT_BACKEND`: `embedded` (default) or `aws`.
    pub backend: Backend,
    /// `AXNT_LISTEN_ADDR`: socket address to listen on; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// `AXNT_PUBLIC_BASE_URL`: base of every URL handed to browsers. The redirect URI
    /// registered with the provider is this plus `/oauth/google/callback`.
    pub public_base_url: Url,
    /// `AXNT_DATA_DIR`: embedded mode's database, master key, state key and generated
    /// API key.
    pub data_dir: PathBuf,
    /// `AXNT_API_KEYS`: comma-separated bearer keys accepted by the internal API.
    #[serde(deserialize_with = "secret_list")]
    pub api_keys: Vec<SecretString>,
    /// `AXNT_ALLOWED_RETURN_URLS`: comma-separated origins or URL prefixes a flow may
    /// send the browser back to.
    #[serde(deserialize_with = "string_list")]
    pub allowed_return_urls: Vec<String>,
    /// `AXNT_GOOGLE_CLIENT_ID`: OAuth client id (overrides the secret's).
    pub google_client_id: Option<String>,
    /// `AXNT_GOOGLE_CLIENT_SECRET`: OAuth client secret (overrides the secret's).
    pub google_client_secret: Option<SecretString>,
    /// `AXNT_GOOGLE_SECRET_ID`: Secrets Manager secret with the client credentials.
    pub google_secret_id: String,
    /// `AXNT_GOOGLE_ISSUER`: OpenID issuer, found through its discovery document.
    pub google_issuer: String,
    /// `AXNT_STATE_KEY`: base64 of 32 bytes sealing flow state and connect links. Every
    /// instance must share it. Embedded mode generates one into `data_dir` when unset;
    /// aws mode reads `state_key` from the secret.
    pub state_key: Option<SecretString>,
    /// `AXNT_KMS_KEY_ID`: KMS key id, ARN or alias wrapping the data keys.
    pub kms_key_id: String,
    /// `DYNAMODB_OAUTH_TABLE`: the tokens table.
    pub dynamodb_oauth_table: String,
    /// `DYNAMODB_OAUTH_LOGS_TABLE`: the flow-logs table.
    pub dynamodb_oauth_logs_table: String,
    /// `AXNT_TRUSTED_PROXIES`: comma-separated IP addresses whose `X-Forwarded-For`
    /// is believed when recording a flow step's client address.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// `AXNT_REFRESH_MARGIN_SECS`: a token handed out is valid at least this long.
    pub refresh_margin_secs: u64,
    /// `AXNT_CONNECT_SESSION_TTL_SECS`: how long a connect link may be started.
    pub connect_session_ttl_secs: u64,
    /// `AXNT_FLOW_STATE_TTL_SECS`: how long a browser may spend at the provider.
    pub flow_state_ttl_secs: u64,
    /// `AXNT_LAST_USED_INTERVAL_SECS`: `lastUsed` is written at most this often per
    /// connection, so token reads do not become writes.
    pub last_used_interval_secs: u64,
    /// `AXNT_CONNECTION_TTL_DAYS`: an active row is purged this long after its last
    /// refresh or use (Google drops refresh tokens unused for six months).
    pub connection_ttl_days: u64,
    /// `AXNT_INACTIVE_RETENTION_DAYS`: an inactive row is kept this long.
    pub inactive_retention_days: u64,
    /// `AXNT_FLOW_LOG_RETENTION_DAYS`: flow-log items are purged after this long.
    pub flow_log_retention_days: u64,
    /// `AXNT_PURGE_INTERVAL_SECS`: embedded mode deletes expired rows and flow-log items
    /// this often (aws mode: DynamoDB's TTL deletes them).
    pub purge_interval_secs: u64,
    /// `AXNT_PROVIDER_TIMEOUT_SECS`: timeout of one call to the OAuth provider.
    pub provider_timeout_secs: u64,
    /// `AXNT_PROVIDER_METADATA_TTL_SECS`: the provider's discovery document and keys are
    /// fetched again (in the background) once this old.
    pub provider_metadata_ttl_secs: u64,
    /// `AXNT_PROVIDER_METADATA_MAX_STALE_SECS`: while refetching fails, the cached
    /// metadata is still used for at most this long past its TTL; then every flow and
    /// refresh needs a successful fetch again. 0: never used past its TTL.
    pub provider_metadata_max_stale_secs: u64,
    /// `AXNT_REFRESH_DEADLINE_SECS`: a refresh, with its retries of an unavailable
    /// provider, gives up after this long (then 503, stored row untouched).
    pub refresh_deadline_secs: u64,
    /// `AXNT_BACKGROUND_REFRESH_SECS`: when above 0, connections read in the last hour
    /// are refreshed ahead of time every this many seconds. Off (0) by default.
    pub background_refresh_secs: u64,
    /// `AXNT_REFRESH_COOLDOWN_SECS`: after a failed refresh (provider down, answer
    /// lost), no new refresh of that connection for this long: reads answer 503 with
    /// `Retry-After` without calling the provider. 0 turns it off.
    pub refresh_cooldown_secs: u64,
    /// `AXNT_PROVIDER_CIRCUIT_FAILURES`: this many consecutive failed refreshes (any
    /// connections) open the provider's circuit. 0 turns the circuit off.
    pub provider_circuit_failures: u32,
    /// `AXNT_PROVIDER_CIRCUIT_OPEN_SECS`: how long an open circuit refuses refreshes
    /// before one is let through to test the provider.
    pub provider_circuit_open_secs: u64,
    /// `AXNT_PROVIDER_ROTATES_REFRESH_TOKENS`: whether the provider issues a new refresh
    /// token on every refresh and rejects the old one. Unset: false for Google's issuer
    /// (Google does not rotate), true for any other (the safe assumption). Decides
    /// whether a refresh whose answer was lost may be sent again with the same token.
    pub provider_rotates_refresh_tokens: Option<bool>,
    /// `AXNT_REFRESH_REUSE_GRACE_SECS`: a rotating provider's reuse interval (it still
    /// accepts a redeemed refresh token this long; Okta and Auth0 have one). 0: none.
    pub refresh_reuse_grace_secs: u64,
    /// `AXNT_DRAIN_TIMEOUT_SECS`: on shutdown, how long to wait for refreshes in flight
    /// (they hold tokens the provider issued) after the last request was answered.
    pub drain_timeout_secs: u64,
    /// `AXNT_READINESS_CACHE_SECS`: `/readyz` answers from a result this fresh.
    pub readiness_cache_secs: u64,
    /// `AXNT_SECRET_REFRESH_SECS`: how often the client secret is re-read.
    pub secret_refresh_secs: u64,
    /// `AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS`: after the provider answers
    /// `invalid_client`, the secret is re-read at once, but at most this often.
    pub secret_reload_min_interval_secs: u64,
    /// `AXNT_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `AXNT_LOG`: a `tracing` filter such as `info` or `axnt_oauth=debug,info`.
    pub log: String,
    /// `AXNT_AWS_CONNECT_TIMEOUT_MS`: aws mode, time allowed to open a connection to an
    /// AWS endpoint. Short: a host that does not answer should be retried, not waited on.
    pub aws_connect_timeout_ms: u64,
    /// `AXNT_AWS_OPERATION_TIMEOUT_MS`: aws mode, time allowed for one AWS call
    /// including the SDK's retries; each attempt gets this divided by
    /// `AXNT_AWS_MAX_ATTEMPTS` (at least one second), so a hung attempt leaves time to retry.
    pub aws_operation_timeout_ms: u64,
    /// `AXNT_AWS_MAX_ATTEMPTS`: aws mode, attempts per AWS call (the SDK's standard
    /// retry mode: exponential backoff with jitter on throttling and transient errors).
    pub aws_max_attempts: u32,
    /// `AXNT_DATA_KEY_MAX_USES`: aws mode, a KMS data key seals at most this many token
    /// sets before a new one is generated (1: a fresh key per write).
    pub data_key_max_uses: u64,
    /// `AXNT_DATA_KEY_MAX_AGE_SECS`: aws mode, a data key is used for sealing at most
    /// this long after KMS generated it.
    pub data_key_max_age_secs: u64,
    /// `AXNT_DATA_KEY_CACHE_ENTRIES`: aws mode, decrypted data keys kept (LRU), so a
    /// token read does not cost a KMS call. Each entry is the 32-byte key plus its
    /// wrapped form (a few hundred bytes), so this also bounds the cache's bytes.
    pub data_key_cache_entries: u64,
    /// `AXNT_DATA_KEY_CACHE_TTL_SECS`: aws mode, a decrypted data key is forgotten this
    /// long after KMS decrypted it, so revoking KMS access takes effect within it.
    pub data_key_cache_ttl_secs: u64,
    /// `AXNT_FLOW_LOG_BUFFER`: aws mode, flow-log items waiting to be written; when
    /// full, further items are dropped (and counted) rather than slowing requests.
    pub flow_log_buffer: usize,
    /// `AXNT_FLOW_LOG_WRITE_CONCURRENCY`: aws mode, flow-log writes in flight at once.
    pub flow_log_write_concurrency: usize,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` as found in an environment given to [`Settings::load`]
    /// (tests, embedding). Empty when loaded with [`Settings::from_env`]: the AWS SDK
    /// then reads the process environment itself, through its standard chain.
    #[serde(skip)]
    pub aws_sdk_env: SdkEnv,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: Url::parse("http://127.0.0.1:8080").unwrap_or_else(|_| unreachable!()),
            data_dir: PathBuf::from("./data"),
            api_keys: Vec::new(),
            allowed_return_urls: Vec::new(),
            google_client_id: None,
            google_client_secret: None,
            google_secret_id: "axnt/google-oauth".into(),
            google_issuer: "https://accounts.google.com".into(),
            state_key: None,
            kms_key_id: "alias/axnt-oauth".into(),
            dynamodb_oauth_table: "axnt-oauth-tokens".into(),
            dynamodb_oauth_logs_table: "axnt-oauth-tokens-logs".into(),
            trusted_proxies: Vec::new(),
            refresh_margin_secs: 300,
            connect_session_ttl_secs: 600,
            flow_state_ttl_secs: 600,
            last_used_interval_secs: 60,
            connection_ttl_days: 180,
            inactive_retention_days: 30,
            flow_log_retention_days: 90,
            purge_interval_secs: 3600,
            provider_timeout_secs: 10,
            provider_metadata_ttl_secs: 3_600,
            provider_metadata_max_stale_secs: 86_400,
            refresh_deadline_secs: 15,
            background_refresh_secs: 0,
            refresh_cooldown_secs: 30,
            provider_circuit_failures: 5,
            provider_circuit_open_secs: 15,
            provider_rotates_refresh_tokens: None,
            refresh_reuse_grace_secs: 0,
            drain_timeout_secs: 20,
            readiness_cache_secs: 5,
            secret_refresh_secs: 300,
            secret_reload_min_interval_secs: 30,
            log_format: LogFormat::Text,
            log: "info".into(),
            aws_connect_timeout_ms: 3_000,
            aws_operation_timeout_ms: 10_000,
            aws_max_attempts: 3,
            data_key_max_uses: 1_000,
            data_key_max_age_secs: 300,
            data_key_cache_entries: 10_000,
            data_key_cache_ttl_secs: 300,
            flow_log_buffer: 1_024,
            flow_log_write_concurrency: 4,
            aws_sdk_env: SdkEnv::default(),
        }
    }
}

/// A setting that is present and wrong. Start-up stops on it (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The environment name of the setting, so the operator knows what to fix.
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            setting: env_name(key),
            reason: reason.into(),
        }
    }
}

/// The environment variable that sets `key`.
pub fn env_name(key: &str) -> String {
    UNPREFIXED_ENV
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(env, _)| (*env).to_string())
        .unwrap_or_else(|| format!("AXNT_{}", key.to_ascii_uppercase()))
}

impl Settings {
    /// Loads the layers: defaults, `config/default.toml` (when present in the working
    /// directory), `extra_file` (must exist when given), then `env`.
    pub fn load(
        extra_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(DefaultsView::default()))
            .merge(Toml::file("config/default.toml"));
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
        figment = figment.merge(Serialized::defaults(env_layer(env)));
        let mut settings: Settings = figment.extract_lossy().map_err(|e| {
            let key = e.path.last().cloned().unwrap_or_default();
            let reason = e.kind.to_string();
            if key.is_empty() {
                ConfigError {
                    setting: "configuration".into(),
                    reason: e.to_string(),
                }
            } else {
                ConfigError::new(&key, reason)
            }
        })?;
        settings.validate()?;
        settings.aws_sdk_env = aws_sdk_env;
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
        match self.public_base_url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(ConfigError::new(
                    "public_base_url",
                    format!("scheme must be http or https, not {other}"),
                ));
            }
        }
        if self.public_base_url.query().is_some() || self.public_base_url.fragment().is_some() {
            return Err(ConfigError::new(
                "public_base_url",
                "must not carry a query or fragment",
            ));
        }
        let issuer = Url::parse(&self.google_issuer)
            .map_err(|e| ConfigError::new("google_issuer", format!("not a URL: {e}")))?;
        if !matches!(issuer.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "google_issuer",
                "scheme must be http or https",
            ));
        }
        for entry in &self.allowed_return_urls {
            let url = Url::parse(entry).map_err(|e| {
                ConfigError::new(
                    "allowed_return_urls",
                    format!("{entry:?} is not a URL: {e}"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError::new(
                    "allowed_return_urls",
                    format!("{entry:?} must be an http(s) origin or URL prefix"),
                ));
            }
        }
        for proxy in &self.trusted_proxies {
            proxy.parse::<IpAddr>().map_err(|_| {
                ConfigError::new("trusted_proxies", format!("{proxy:?} is not an IP address"))
            })?;
        }
        if self.api_keys.iter().any(|k| k.expose_secret().len() < 16) {
            return Err(ConfigError::new(
                "api_keys",
                "every key must be at least 16 characters",
            ));
        }
        if self.google_client_id.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new("google_client_id", "is set but empty"));
        }
        if self.google_client_id.is_some() != self.google_client_secret.is_some()
            && self.backend == Backend::Embedded
        {
            let missing = if self.google_client_id.is_some() {
                "google_client_secret"
            } else {
                "google_client_id"
            };
            return Err(ConfigError::new(
                missing,
                "client id and client secret must be set together in embedded mode",
            ));
        }
        if let Some(key) = &self.state_key {
            // The shape only; the key itself is parsed once, where it is used.
            let text = key.expose_secret().trim();
            let decoded = STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')));
            if !decoded.is_ok_and(|bytes| bytes.len() == 32) {
                return Err(ConfigError::new("state_key", "must be base64 of 32 bytes"));
            }
        }
        for (key, value) in [
            ("dynamodb_oauth_table", &self.dynamodb_oauth_table),
            ("dynamodb_oauth_logs_table", &self.dynamodb_oauth_logs_table),
            ("kms_key_id", &self.kms_key_id),
            ("google_secret_id", &self.google_secret_id),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        for (key, value) in [
            ("connect_session_ttl_secs", self.connect_session_ttl_secs),
            ("flow_state_ttl_secs", self.flow_state_ttl_secs),
            ("provider_timeout_secs", self.provider_timeout_secs),
            (
                "provider_metadata_ttl_secs",
                self.provider_metadata_ttl_secs,
            ),
            (
                "secret_reload_min_interval_secs",
                self.secret_reload_min_interval_secs,
            ),
            ("refresh_deadline_secs", self.refresh_deadline_secs),
            (
                "provider_circuit_open_secs",
                self.provider_circuit_open_secs,
            ),
            ("connection_ttl_days", self.connection_ttl_days),
            ("purge_interval_secs", self.purge_interval_secs),
            ("aws_connect_timeout_ms", self.aws_connect_timeout_ms),
            ("aws_operation_timeout_ms", self.aws_operation_timeout_ms),
            ("aws_max_attempts", u64::from(self.aws_max_attempts)),
            ("data_key_max_uses", self.data_key_max_uses),
            ("data_key_cache_entries", self.data_key_cache_entries),
            ("flow_log_buffer", self.flow_log_buffer as u64),
            (
                "flow_log_write_concurrency",
                self.flow_log_write_concurrency as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| ConfigError::new("log", e.to_string()))?;
        Ok(())
    }

    /// The redirect URI registered with the provider `name`.
    pub fn redirect_uri(&self, provider: &str) -> String {
        self.public_url(&format!("/oauth/{provider}/callback"))
    }

    /// An absolute URL under the public base.
    pub fn public_url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.public_base_url.as_str().trim_end_matches('/'),
            path
        )
    }

    /// Whether browsers reach us over https (cookies are then `Secure`).
    pub fn is_https(&self) -> bool {
        self.public_base_url.scheme() == "https"
    }

    pub fn refresh_margin(&self) -> Duration {
        Duration::from_secs(self.refresh_margin_secs)
    }

    pub fn provider_timeout(&self) -> Duration {
        Duration::from_secs(self.provider_timeout_secs)
    }

    /// Whether the configured provider rotates refresh tokens (see
    /// [`Settings::provider_rotates_refresh_tokens`]).
    pub fn rotates_refresh_tokens(&self) -> bool {
        self.provider_rotates_refresh_tokens.unwrap_or_else(|| {
            self.google_issuer.trim_end_matches('/') != "https://accounts.google.com"
        })
    }

    /// The trusted proxies, parsed (validated at load time).
    pub fn trusted_proxy_addrs(&self) -> Vec<IpAddr> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl From<&Settings> for AwsSettings {
    fn from(s: &Settings) -> Self {
        Self {
            connect_timeout: Duration::from_millis(s.aws_connect_timeout_ms),
            operation_timeout: Duration::from_millis(s.aws_operation_timeout_ms),
            max_attempts: s.aws_max_attempts,
            sdk_env: s.aws_sdk_env.clone(),
            tokens_table: s.dynamodb_oauth_table.clone(),
            logs_table: s.dynamodb_oauth_logs_table.clone(),
            kms_key_id: s.kms_key_id.clone(),
            secret_id: s.google_secret_id.clone(),
        }
    }
}

/// The defaults as a figment layer (secrets excluded: they have no default).
#[derive(Serialize)]
struct DefaultsView {
    backend: Backend,
    listen_addr: String,
    public_base_url: String,
    data_dir: PathBuf,
    api_keys: Vec<String>,
    allowed_return_urls: Vec<String>,
    google_secret_id: String,
    google_issuer: String,
    kms_key_id: String,
    dynamodb_oauth_table: String,
    dynamodb_oauth_logs_table: String,
    trusted_proxies: Vec<String>,
    refresh_margin_secs: u64,
    connect_session_ttl_secs: u64,
    flow_state_ttl_secs: u64,
    last_used_interval_secs: u64,
    connection_ttl_days: u64,
    inactive_retention_days: u64,
    flow_log_retention_days: u64,
    purge_interval_secs: u64,
    provider_timeout_secs: u64,
    provider_metadata_ttl_secs: u64,
    provider_metadata_max_stale_secs: u64,
    refresh_deadline_secs: u64,
    background_refresh_secs: u64,
    refresh_cooldown_secs: u64,
    provider_circuit_failures: u32,
    provider_circuit_open_secs: u64,
    refresh_reuse_grace_secs: u64,
    drain_timeout_secs: u64,
    readiness_cache_secs: u64,
    secret_refresh_secs: u64,
    secret_reload_min_interval_secs: u64,
    log_format: LogFormat,
    log: String,
    aws_connect_timeout_ms: u64,
    aws_operation_timeout_ms: u64,
    aws_max_attempts: u32,
    data_key_max_uses: u64,
    data_key_max_age_secs: u64,
    data_key_cache_entries: u64,
    data_key_cache_ttl_secs: u64,
    flow_log_buffer: usize,
    flow_log_write_concurrency: usize,
}

impl Default for DefaultsView {
    fn default() -> Self {
        let d = Settings::default();
        Self {
            backend: d.backend,
            listen_addr: d.listen_addr.to_string(),
            public_base_url: d.public_base_url.as_str().trim_end_matches('/').to_string(),
            data_dir: d.data_dir,
            api_keys: Vec::new(),
            allowed_return_urls: d.allowed_return_urls,
            google_secret_id: d.google_secret_id,
            google_issuer: d.google_issuer,
            kms_key_id: d.kms_key_id,
            dynamodb_oauth_table: d.dynamodb_oauth_table,
            dynamodb_oauth_logs_table: d.dynamodb_oauth_logs_table,
            trusted_proxies: d.trusted_proxies,
            refresh_margin_secs: d.refresh_margin_secs,
            connect_session_ttl_secs: d.connect_session_ttl_secs,
            flow_state_ttl_secs: d.flow_state_ttl_secs,
            last_used_interval_secs: d.last_used_interval_secs,
            connection_ttl_days: d.connection_ttl_days,
            inactive_retention_days: d.inactive_retention_days,
            flow_log_retention_days: d.flow_log_retention_days,
            purge_interval_secs: d.purge_interval_secs,
            provider_timeout_secs: d.provider_timeout_secs,
            provider_metadata_ttl_secs: d.provider_metadata_ttl_secs,
            provider_metadata_max_stale_secs: d.provider_metadata_max_stale_secs,
            refresh_deadline_secs: d.refresh_deadline_secs,
            background_refresh_secs: d.background_refresh_secs,
            refresh_cooldown_secs: d.refresh_cooldown_secs,
            provider_circuit_failures: d.provider_circuit_failures,
            provider_circuit_open_secs: d.provider_circuit_open_secs,
            refresh_reuse_grace_secs: d.refresh_reuse_grace_secs,
            drain_timeout_secs: d.drain_timeout_secs,
            readiness_cache_secs: d.readiness_cache_secs,
            secret_refresh_secs: d.secret_refresh_secs,
            secret_reload_min_interval_secs: d.secret_reload_min_interval_secs,
            log_format: d.log_format,
            log: d.log,
            aws_connect_timeout_ms: d.aws_connect_timeout_ms,
            aws_operation_timeout_ms: d.aws_operation_timeout_ms,
            aws_max_attempts: d.aws_max_attempts,
            data_key_max_uses: d.data_key_max_uses,
            data_key_max_age_secs: d.data_key_max_age_secs,
            data_key_cache_entries: d.data_key_cache_entries,
            data_key_cache_ttl_secs: d.data_key_cache_ttl_secs,
            flow_log_buffer: d.flow_log_buffer,
            flow_log_write_concurrency: d.flow_log_write_concurrency,
        }
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

/// A list given either as a TOML array or as one comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrCsv {
    List(Vec<String>),
    Csv(String),
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(items) => items,
        ListOrCsv::Csv(csv) => csv.split(',').map(str::to_string).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(string_list(d)?
        .into_iter()
        .map(SecretString::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.listen_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            s.redirect_uri("google"),
            "http://127.0.0.1:8080/oauth/google/callback"
        );
        assert_eq!(s.dynamodb_oauth_table, "axnt-oauth-tokens");
        assert_eq!(s.dynamodb_oauth_logs_table, "axnt-oauth-tokens-logs");
        assert_eq!(s.kms_key_id, "alias/axnt-oauth");
        assert_eq!(s.google_secret_id, "axnt/google-oauth");
        assert_eq!(s.refresh_margin_secs, 300);
        assert_eq!(s.provider_metadata_ttl_secs, 3_600);
        assert_eq!(s.provider_metadata_max_stale_secs, 86_400);
        assert_eq!(s.secret_reload_min_interval_secs, 30);
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
        assert_eq!(s.listen_addr.port(), 9000);
        assert_eq!(s.api_keys.len(), 2);
        assert_eq!(s.api_keys[0].expose_secret(), "0123456789012345");
        assert_eq!(s.allowed_return_urls, vec!["https://app.example.com"]);
        assert_eq!(s.dynamodb_oauth_table, "t1");
        assert_eq!(s.dynamodb_oauth_logs_table, "t2");
        assert_eq!(s.refresh_margin_secs, 120);
        assert_eq!(
            s.google_client_secret.as_ref().map(|s| s.expose_secret()),
            Some("12345")
        );
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
        assert_eq!(s.data_key_max_uses, 50);
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
}
