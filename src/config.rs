//! Settings: built-in defaults, `config/default.toml`, an optional `--config` file, then
//! environment variables — later layers win.
//!
//! Every setting has a flat key and an environment name: `AXNT_` followed by the
//! upper-cased key (`listen_addr` ↔ `AXNT_LISTEN_ADDR`), except the two table names,
//! which keep the names operators already use for them, `DYNAMODB_OAUTH_TABLE` and
//! `DYNAMODB_OAUTH_LOGS_TABLE`. Files use the same keys in lower case. AWS region,
//! endpoint and credentials are not settings of ours: the AWS SDK reads them from its
//! standard chain.
//!
//! The keys stay flat (they are what operators write); in the program they are grouped
//! by what they govern ([`Settings::refresh`], [`Settings::retention`], …) and typed
//! once, at load: durations are [`Duration`]s (the key's name gives the unit it is
//! written in), URLs [`Url`]s, addresses [`SocketAddr`]s. Each group's `Default` is the one
//! place its defaults are written; `config/default.toml` only lists them, commented out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::callers::CallerList;
use crate::crypto::SecretKey;

use crate::aws::{AwsSettings, SdkEnv};

mod de;
pub mod env_file;
mod load;
mod net;
mod provider;
mod providers;
mod server;
mod storage;

pub use net::TrustedProxies;

/// A bounded setting: its key (as the config file names it), its value in the unit the
/// key names, and the largest value it may take. Each group declares its own, beside
/// its fields; loading refuses a value past its bound, naming the setting.
type Bound = (&'static str, u64, u64);

/// The units bounds are written in.
mod unit {
    use std::time::Duration;

    pub(super) const MINUTE: u64 = 60;
    pub(super) const HOUR: u64 = 60 * MINUTE;
    pub(super) const DAY: u64 = 24 * HOUR;
    pub(super) const YEAR: u64 = 365 * DAY;

    pub(super) fn secs(d: Duration) -> u64 {
        d.as_secs()
    }

    pub(super) fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn days(d: Duration) -> u64 {
        d.as_secs() / DAY
    }
}
pub use provider::*;
pub use providers::ProviderEntry;
pub(crate) use providers::provider_setting;
pub use server::*;
pub use storage::*;

/// Environment names that do not follow the `AXNT_` rule (the tables' established names).
const UNPREFIXED_ENV: [(&str, &str); 3] = [
    ("DYNAMODB_OAUTH_TABLE", "dynamodb_oauth_table"),
    ("DYNAMODB_OAUTH_LOGS_TABLE", "dynamodb_oauth_logs_table"),
    ("DYNAMODB_OAUTH_EVENTS_TABLE", "dynamodb_oauth_events_table"),
];

/// Where tokens and keys live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite file plus a local master key under `data_dir`.
    #[default]
    Embedded,
    /// DynamoDB, KMS and Secrets Manager.
    Aws,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The default: human-readable lines with colour when the log's stream (stderr) is
    /// a terminal, JSON lines otherwise (containers, files, pipes).
    #[default]
    Auto,
    /// Human-readable lines; colour only on a terminal.
    Text,
    /// One JSON object a line (for log shippers).
    Json,
}

/// The service's settings. Field docs name the environment variable.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AXNT_BACKEND`: `embedded` (default) or `aws`.
    pub backend: Backend,
    /// `AXNT_DATA_DIR`: embedded mode's database, master key, state key and generated
    /// API key.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub flow: FlowSettings,
    pub secrets: SecretSettings,
    pub provider: ProviderSettings,
    pub refresh: RefreshSettings,
    pub retention: RetentionSettings,
    pub webhooks: WebhookSettings,
    pub aws: AwsModeSettings,
    pub(crate) rate_limit: RateLimitSettings,
    pub(crate) data_key: DataKeySettings,
    pub(crate) flow_log: FlowLogSettings,
    pub(crate) log: LogSettings,
    /// `AXNT_PROVIDERS` and each one's `AXNT_<NAME>_*`, in the order listed.
    pub providers: Vec<ProviderEntry>,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN` as found in an environment given to [`Settings::load`]
    /// (tests, embedding). Empty when loaded with [`Settings::from_env`]: the AWS SDK
    /// then reads the process environment itself, through its standard chain.
    pub(crate) aws_sdk_env: SdkEnv,
}

/// The two settings that belong to no group.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Ungrouped {
    backend: Backend,
    data_dir: PathBuf,
}

impl Default for Ungrouped {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// A setting that is present and wrong. Start-up stops on it (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The environment name of the setting, so the operator knows what to fix.
    pub(crate) setting: String,
    pub(crate) reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            setting: env_name(key),
            reason: reason.into(),
        }
    }
}

/// The environment variable that sets `key`.
pub(crate) fn env_name(key: &str) -> String {
    UNPREFIXED_ENV
        .iter()
        .find(|(_, k)| *k == key)
        .map(|(env, _)| (*env).to_string())
        .unwrap_or_else(|| format!("AXNT_{}", key.to_ascii_uppercase()))
}

impl Settings {
    /// The redirect URI registered with the provider `name`.
    pub(crate) fn redirect_uri(&self, provider: &str) -> String {
        self.public_url(&format!("/oauth/{provider}/callback"))
    }

    /// An absolute URL under the public base.
    pub(crate) fn public_url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.server.public_base_url.as_str().trim_end_matches('/'),
            path
        )
    }

    /// Whether browsers reach us over https (cookies are then `Secure`).
    pub(crate) fn is_https(&self) -> bool {
        self.server.public_base_url.scheme() == "https"
    }
}

impl From<&Settings> for AwsSettings {
    fn from(s: &Settings) -> Self {
        Self {
            connect_timeout: s.aws.connect_timeout,
            operation_timeout: s.aws.operation_timeout,
            max_attempts: s.aws.max_attempts,
            sdk_env: s.aws_sdk_env.clone(),
            tokens_table: s.aws.tokens_table.clone(),
            logs_table: s.aws.logs_table.clone(),
            events_table: s.aws.events_table.clone(),
            kms_key_id: s.aws.kms_key_id.clone(),
            secret_id: s.aws.secret_id.clone(),
        }
    }
}
