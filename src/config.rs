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

use crate::crypto::SecretKey;
use crate::secrets::ApiKey;

use crate::aws::{AwsSettings, SdkEnv};

mod de;
pub mod env_file;
mod load;
mod net;

pub use net::TrustedProxies;

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

/// `AXNT_GOOGLE_PUBLISHING_STATUS`: the OAuth client's publishing status in the Google
/// Cloud console, which decides whether grants die after 7 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishingStatus {
    /// "Testing": grants holding more than name, email and profile end after 7 days.
    Testing,
    /// "In production": no such clock.
    Production,
    /// Not declared: a grant that dies about 7 days after consent, never having been
    /// refreshed past that mark, is taken for the Testing expiry.
    #[default]
    Unknown,
}

/// `AXNT_PARTIAL_GRANT`: what a connect flow does when the user granted fewer scopes
/// than it asked for (Google's per-scope consent lets them untick some).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PartialGrant {
    /// Store the grant; the connection lists the missing scopes.
    #[default]
    Accept,
    /// Store nothing (an existing connection stays as it was) and send the browser back
    /// with `error=scopes_not_granted&missingScopes=…`.
    Reject,
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

/// Where the service listens and how it is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// `AXNT_LISTEN_ADDR`: socket address to listen on; port 0 picks a free port.
    pub(crate) listen_addr: SocketAddr,
    /// `AXNT_PUBLIC_BASE_URL`: base of every URL handed to browsers. The redirect URI
    /// registered with the provider is this plus `/oauth/google/callback`.
    pub(crate) public_base_url: Url,
    /// `AXNT_TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges of the proxies
    /// (load balancers) whose `X-Forwarded-For` is believed for the client address (flow
    /// log, rate limits). Their own connections are not capped per client.
    #[serde(deserialize_with = "de::trusted_proxies")]
    pub(crate) trusted_proxies: TrustedProxies,
    /// `AXNT_READINESS_CACHE_SECS`: `/readyz` answers from a result this fresh.
    #[serde(rename = "readiness_cache_secs", deserialize_with = "de::secs")]
    pub(crate) readiness_cache: Duration,
    /// `AXNT_DRAIN_TIMEOUT_SECS`: on shutdown, how long requests in progress and then
    /// refreshes in flight (they hold tokens the provider issued) may take, in all;
    /// connections still open at the deadline are closed and the flow log is flushed.
    #[serde(rename = "drain_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) drain_timeout: Duration,
    /// `AXNT_HEADER_READ_TIMEOUT_SECS`: a connection that has not sent its first request
    /// this long after it opened (sending nothing, only the HTTP/2 preface, or part of a
    /// head) is closed, and so is an HTTP/1 connection whose next request head, once
    /// begun, is not whole this long after its first byte.
    #[serde(rename = "header_read_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) header_read_timeout: Duration,
    /// `AXNT_CONNECTION_IDLE_TIMEOUT_SECS`: a connection with no request in progress
    /// for this long after its last answer (HTTP/1 keep-alive, or HTTP/2 answering
    /// pings) is closed. Longer than a load balancer's own idle timeout (ALB: 60 s),
    /// so the balancer, not this service, closes its idle connections.
    #[serde(rename = "connection_idle_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) idle_timeout: Duration,
    /// `AXNT_HTTP2_PING_INTERVAL_SECS`: an HTTP/2 connection from which nothing arrived
    /// this long is pinged (0: never).
    #[serde(
        rename = "http2_ping_interval_secs",
        deserialize_with = "de::secs_or_off"
    )]
    pub(crate) http2_ping_interval: Option<Duration>,
    /// `AXNT_HTTP2_PING_TIMEOUT_SECS`: a ping not answered this long closes the
    /// connection (a peer that went away, or one that reads nothing).
    #[serde(rename = "http2_ping_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) http2_ping_timeout: Duration,
    /// `AXNT_REQUEST_TIMEOUT_SECS`: a request not answered this long after its head
    /// arrived (a body sent slowly included) is answered 408 `request_timeout`. Longer
    /// than a refresh's deadline, so it stops slow clients, not slow providers.
    #[serde(rename = "request_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) request_timeout: Duration,
    /// `AXNT_MAX_CONNECTIONS`: connections served at once. At the cap, a new connection
    /// closes the oldest one that holds no request (one that has not sent a request yet
    /// first, then one idle between requests); only when every connection has a
    /// request in progress does the new one wait in the kernel's accept queue.
    pub(crate) max_connections: usize,
    /// `AXNT_MAX_CONNECTIONS_PER_CLIENT`: connections one client address (an IPv6
    /// client: its /64) may hold idle; past it, its own oldest connection holding no
    /// request is closed (a client whose every connection has a request in progress is
    /// let in all the same). Trusted proxies are exempt (a load balancer carries every
    /// user).
    pub(crate) max_connections_per_client: usize,
    /// `AXNT_ADMIN_LISTEN_ADDR`: where `/metrics` and `/healthz` are served, apart from
    /// the public listener (which does not serve `/metrics`). `off` or empty: no admin
    /// listener. Port 0 picks a free port.
    #[serde(deserialize_with = "de::addr_or_off")]
    pub(crate) admin_listen_addr: Option<SocketAddr>,
    /// `AXNT_STARTUP_TIMEOUT_SECS`: how long start-up waits for a dependency that is
    /// unavailable for now (Secrets Manager unreachable, throttled or failing), retrying
    /// with backoff while `/healthz` answers and `/readyz` names what it waits for. A
    /// dependency that answers "wrong" (a malformed secret, access denied, not found)
    /// stops start-up at once. 0: no waiting, the first failure stops start-up.
    #[serde(rename = "startup_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) startup_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: Url::parse("http://127.0.0.1:8080").unwrap_or_else(|_| unreachable!()),
            trusted_proxies: TrustedProxies::default(),
            readiness_cache: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            http2_ping_interval: Some(Duration::from_secs(20)),
            http2_ping_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
            max_connections: 1_024,
            max_connections_per_client: 128,
            admin_listen_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            startup_timeout: Duration::from_secs(300),
        }
    }
}

/// Per-client rate limits (client: the socket's peer, or the address a trusted proxy
/// forwarded). Each is a rate per minute with a burst on top; a rate of 0 turns the
/// limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitSettings {
    /// `AXNT_RATE_LIMIT_BROWSER_PER_MINUTE`: `/oauth/{provider}/start` and `/callback`
    /// requests one client may make a minute; past it they are answered 429.
    #[serde(rename = "rate_limit_browser_per_minute")]
    pub(crate) browser_per_minute: u32,
    /// `AXNT_RATE_LIMIT_BROWSER_BURST`: browser requests allowed at once before the
    /// rate applies.
    #[serde(rename = "rate_limit_browser_burst")]
    pub(crate) browser_burst: u32,
    /// `AXNT_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE`: internal-API calls with a missing or
    /// wrong API key one client may make a minute. Past it (and the burst), every API
    /// call from that client without a valid key is answered 429 until the wait ends; a
    /// call with a valid key is never braked.
    #[serde(rename = "rate_limit_auth_failures_per_minute")]
    pub(crate) auth_failures_per_minute: u32,
    /// `AXNT_RATE_LIMIT_AUTH_FAILURES_BURST`: failed authentications allowed at once
    /// before the rate applies.
    #[serde(rename = "rate_limit_auth_failures_burst")]
    pub(crate) auth_failures_burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            browser_per_minute: 60,
            browser_burst: 30,
            auth_failures_per_minute: 10,
            auth_failures_burst: 20,
        }
    }
}

/// The browser's way through a flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FlowSettings {
    /// `AXNT_ALLOWED_RETURN_URLS`: comma-separated origins or URL prefixes a flow may
    /// send the browser back to.
    #[serde(deserialize_with = "de::url_list")]
    pub(crate) allowed_return_urls: Vec<Url>,
    /// `AXNT_CONNECT_SESSION_TTL_SECS`: how long a connect link may be started.
    #[serde(rename = "connect_session_ttl_secs", deserialize_with = "de::secs")]
    pub(crate) connect_session_ttl: Duration,
    /// `AXNT_FLOW_STATE_TTL_SECS`: how long a browser may spend at the provider.
    #[serde(rename = "flow_state_ttl_secs", deserialize_with = "de::secs")]
    pub(crate) state_ttl: Duration,
    /// `AXNT_REQUIRE_CONFIRMATION` (default on): hold every grant until the
    /// application confirms its flow with the one-time code the return redirect carried
    /// (`POST /v1/connect-sessions/{flowId}/confirm`), so a link completes only for the
    /// application user who started it. A session pinned to an account (`expectedEmail`
    /// or `hostedDomain`, checked against the verified ID token) needs none unless it
    /// asks with `requireConfirmation`. Off: open to forced linking (warned at start).
    pub(crate) require_confirmation: bool,
    /// `AXNT_CONFIRMATION_TTL_SECS`: how long a held grant waits for its confirmation.
    #[serde(rename = "confirmation_ttl_secs", deserialize_with = "de::secs")]
    pub(crate) confirmation_ttl: Duration,
    /// `AXNT_PARTIAL_GRANT`: `accept` (default) stores a grant that lacks some of the
    /// scopes asked for, and lists what is missing; `reject` stores nothing and sends the
    /// browser back with `error=scopes_not_granted`. A session may choose with
    /// `partialGrant`.
    pub(crate) partial_grant: PartialGrant,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            allowed_return_urls: Vec::new(),
            connect_session_ttl: Duration::from_secs(600),
            state_ttl: Duration::from_secs(600),
            require_confirmation: true,
            confirmation_ttl: Duration::from_secs(600),
            partial_grant: PartialGrant::Accept,
        }
    }
}

/// Credentials and keys given as settings, and how often the secret is re-read.
/// `Debug` never prints a secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SecretSettings {
    /// `AXNT_API_KEYS`: comma-separated bearer keys accepted by the internal API.
    #[serde(deserialize_with = "de::api_keys")]
    pub(crate) api_keys: Vec<ApiKey>,
    /// `AXNT_GOOGLE_CLIENT_ID`: OAuth client id (overrides the secret's).
    #[serde(rename = "google_client_id")]
    pub(crate) client_id: Option<String>,
    /// `AXNT_GOOGLE_CLIENT_SECRET`: OAuth client secret (overrides the secret's).
    #[serde(rename = "google_client_secret")]
    pub(crate) client_secret: Option<SecretString>,
    /// `AXNT_STATE_KEY`: base64 of 32 bytes sealing flow state and connect links. Every
    /// instance must share it. Embedded mode generates one into `data_dir` when unset;
    /// aws mode reads `state_key` from the secret.
    #[serde(deserialize_with = "de::state_key")]
    pub(crate) state_key: Option<SecretKey>,
    /// `AXNT_PREVIOUS_STATE_KEY`: the state key before a rotation. Nothing is sealed
    /// with it; flows and connect links sealed under it still open until they expire.
    /// aws mode also reads `previous_state_key` from the secret.
    #[serde(deserialize_with = "de::state_key")]
    pub(crate) previous_state_key: Option<SecretKey>,
    /// `AXNT_SECRET_REFRESH_SECS`: how often the client secret is re-read.
    #[serde(rename = "secret_refresh_secs", deserialize_with = "de::secs")]
    pub(crate) refresh_interval: Duration,
    /// `AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS`: after the provider answers
    /// `invalid_client`, the secret is re-read at once, but at most this often.
    #[serde(
        rename = "secret_reload_min_interval_secs",
        deserialize_with = "de::secs"
    )]
    pub(crate) reload_min_interval: Duration,
    /// `AXNT_ALLOW_INSTANCE_STATE_KEY`: aws mode without a state key (neither the
    /// secret's `state_key` nor `AXNT_STATE_KEY`) refuses to start, because a flow
    /// would then only complete on the instance that started it. `true` accepts a key
    /// made per process (one instance only).
    pub(crate) allow_instance_state_key: bool,
}

impl Default for SecretSettings {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            client_id: None,
            client_secret: None,
            state_key: None,
            previous_state_key: None,
            refresh_interval: Duration::from_secs(300),
            reload_min_interval: Duration::from_secs(30),
            allow_instance_state_key: false,
        }
    }
}

/// The OAuth provider and the bounds on talking to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ProviderSettings {
    /// `AXNT_GOOGLE_ISSUER`: OpenID issuer, found through its discovery document.
    #[serde(rename = "google_issuer")]
    pub(crate) issuer: Url,
    /// `AXNT_PROVIDER_TIMEOUT_SECS`: timeout of one call to the OAuth provider.
    #[serde(rename = "provider_timeout_secs", deserialize_with = "de::secs")]
    pub(crate) timeout: Duration,
    /// `AXNT_PROVIDER_METADATA_TTL_SECS`: the provider's discovery document and keys are
    /// fetched again (in the background) once this old.
    #[serde(rename = "provider_metadata_ttl_secs", deserialize_with = "de::secs")]
    pub(crate) metadata_ttl: Duration,
    /// `AXNT_PROVIDER_METADATA_MAX_STALE_SECS`: while refetching fails, the cached
    /// metadata is still used for at most this long past its TTL; then every flow and
    /// refresh needs a successful fetch again. 0: never used past its TTL.
    #[serde(
        rename = "provider_metadata_max_stale_secs",
        deserialize_with = "de::secs"
    )]
    pub(crate) metadata_max_stale: Duration,
    /// `AXNT_PROVIDER_ROTATES_REFRESH_TOKENS`: whether the provider issues a new refresh
    /// token on every refresh and rejects the old one. Unset: see
    /// [`ProviderSettings::rotates`]. Decides whether a refresh whose answer was lost
    /// may be sent again with the same token.
    #[serde(rename = "provider_rotates_refresh_tokens")]
    pub(crate) rotates_refresh_tokens: Option<bool>,
    /// `AXNT_REFRESH_REUSE_GRACE_SECS`: a rotating provider's reuse interval (it still
    /// accepts a redeemed refresh token this long; Okta and Auth0 have one). 0: none.
    #[serde(rename = "refresh_reuse_grace_secs", deserialize_with = "de::secs")]
    pub(crate) refresh_reuse_grace: Duration,
    /// `AXNT_GOOGLE_PUBLISHING_STATUS`: the OAuth client's publishing status in the
    /// Google Cloud console, `testing`, `production` or `unknown` (default). Testing-status
    /// grants holding more than name, email and profile end after 7 days: `testing` makes
    /// the health forecast count that clock; `unknown` still names the cause when a
    /// grant dies on it.
    #[serde(rename = "google_publishing_status")]
    pub(crate) publishing_status: PublishingStatus,
    /// `AXNT_REVOCATION_RETRY_SECS`: how often each instance looks for revocations that
    /// failed when their connection was deleted, to send them again (one query of a
    /// small partition on DynamoDB). At least 1.
    #[serde(rename = "revocation_retry_secs", deserialize_with = "de::secs")]
    pub(crate) revocation_retry: Duration,
    /// `AXNT_GOOGLE_GRANT_LIMIT`: live refresh tokens Google keeps per account and
    /// OAuth client (100, as documented; past it the oldest is ended without a word).
    /// Connections warn from 90 % of it, and a grant refused once this many newer ones
    /// were minted for its account is `token_limit_evicted`.
    #[serde(rename = "google_grant_limit")]
    pub(crate) grant_limit: u32,
    /// `AXNT_GOOGLE_RISC_ISSUER`: the issuer of Google's security event tokens (RISC),
    /// whose keys are found through `{issuer}/.well-known/risc-configuration`.
    #[serde(rename = "google_risc_issuer")]
    pub(crate) risc_issuer: Url,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            issuer: Url::parse(GOOGLE_ISSUER).unwrap_or_else(|_| unreachable!()),
            timeout: Duration::from_secs(10),
            metadata_ttl: Duration::from_secs(3_600),
            metadata_max_stale: Duration::from_secs(86_400),
            rotates_refresh_tokens: None,
            refresh_reuse_grace: Duration::ZERO,
            publishing_status: PublishingStatus::Unknown,
            revocation_retry: Duration::from_secs(30),
            grant_limit: 100,
            risc_issuer: Url::parse("https://accounts.google.com/")
                .unwrap_or_else(|_| unreachable!()),
        }
    }
}

const GOOGLE_ISSUER: &str = "https://accounts.google.com";

impl ProviderSettings {
    /// Whether the provider rotates refresh tokens: as set, else false for Google's
    /// issuer (Google does not rotate) and true for any other (the safe assumption).
    pub(crate) fn rotates(&self) -> bool {
        self.rotates_refresh_tokens
            .unwrap_or_else(|| self.issuer.as_str().trim_end_matches('/') != GOOGLE_ISSUER)
    }
}

/// When and how tokens are refreshed, and when the provider is left alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RefreshSettings {
    /// `AXNT_REFRESH_MARGIN_SECS`: a token handed out is valid at least this long.
    #[serde(rename = "refresh_margin_secs", deserialize_with = "de::secs")]
    pub(crate) margin: Duration,
    /// `AXNT_REFRESH_DEADLINE_SECS`: a refresh, with its retries of an unavailable
    /// provider, gives up after this long (then 503, stored row untouched).
    #[serde(rename = "refresh_deadline_secs", deserialize_with = "de::secs")]
    pub(crate) deadline: Duration,
    /// `AXNT_BACKGROUND_REFRESH_SECS`: when above 0, connections read in the last hour
    /// are refreshed ahead of time every this many seconds. Off (0) by default.
    #[serde(
        rename = "background_refresh_secs",
        deserialize_with = "de::secs_or_off"
    )]
    pub(crate) background: Option<Duration>,
    /// `AXNT_REFRESH_COOLDOWN_SECS`: after a failed refresh (provider down, answer
    /// lost), no new refresh of that connection for this long: reads answer 503 with
    /// `Retry-After` without calling the provider. 0 turns it off.
    #[serde(rename = "refresh_cooldown_secs", deserialize_with = "de::secs")]
    pub(crate) cooldown: Duration,
    /// `AXNT_PROVIDER_CIRCUIT_FAILURES`: this many consecutive failed refreshes (any
    /// connections) open the provider's circuit. 0 turns the circuit off.
    #[serde(rename = "provider_circuit_failures")]
    pub(crate) circuit_failures: u32,
    /// `AXNT_PROVIDER_CIRCUIT_OPEN_SECS`: how long an open circuit refuses refreshes
    /// before one is let through to test the provider.
    #[serde(rename = "provider_circuit_open_secs", deserialize_with = "de::secs")]
    pub(crate) circuit_open: Duration,
    /// `AXNT_TOKEN_CACHE_SECS`: an opened token set is kept in memory this long, so a
    /// warm read costs no store call and no decryption. 0 turns the cache off.
    #[serde(rename = "token_cache_secs", deserialize_with = "de::secs")]
    pub(crate) token_cache: Duration,
    /// `AXNT_KEEPALIVE_DAYS`: connections whose refresh token went unused this long are
    /// refreshed, so Google's six-month idle limit never ends them. 0 turns it off; at
    /// most 170.
    #[serde(rename = "keepalive_days", deserialize_with = "de::days")]
    pub(crate) keepalive_idle: Duration,
    /// `AXNT_KEEPALIVE_INTERVAL_SECS`: how often an instance tries to run a keep-alive
    /// pass (one instance at a time runs it, under a lease in the tokens table).
    #[serde(rename = "keepalive_interval_secs", deserialize_with = "de::secs")]
    pub(crate) keepalive_interval: Duration,
    /// `AXNT_KEEPALIVE_PER_MINUTE`: refreshes a keep-alive pass makes a minute, at most.
    #[serde(rename = "keepalive_per_minute")]
    pub(crate) keepalive_per_minute: u32,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            margin: Duration::from_secs(300),
            deadline: Duration::from_secs(15),
            background: None,
            cooldown: Duration::from_secs(30),
            circuit_failures: 5,
            circuit_open: Duration::from_secs(15),
            token_cache: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(30 * 86_400),
            keepalive_interval: Duration::from_secs(86_400),
            keepalive_per_minute: 60,
        }
    }
}

/// How long rows and flow-log items are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// `AXNT_CONNECTION_TTL_DAYS`: an active row is purged this long after its last
    /// refresh or use (Google drops refresh tokens unused for six months).
    #[serde(rename = "connection_ttl_days", deserialize_with = "de::days")]
    pub(crate) connection_ttl: Duration,
    /// `AXNT_INACTIVE_RETENTION_DAYS`: an inactive row is kept this long.
    #[serde(rename = "inactive_retention_days", deserialize_with = "de::days")]
    pub(crate) inactive_retention: Duration,
    /// `AXNT_FLOW_LOG_RETENTION_DAYS`: flow-log items are purged after this long.
    #[serde(rename = "flow_log_retention_days", deserialize_with = "de::days")]
    pub(crate) flow_log_retention: Duration,
    /// `AXNT_LAST_USED_INTERVAL_SECS`: `lastUsed` (and with it the row's purge time) is
    /// written at most this often per connection, so token reads do not become writes.
    #[serde(rename = "last_used_interval_secs", deserialize_with = "de::secs")]
    pub(crate) last_used_interval: Duration,
    /// `AXNT_PURGE_INTERVAL_SECS`: embedded mode deletes expired rows and flow-log items
    /// this often (aws mode: DynamoDB's TTL deletes them).
    #[serde(rename = "purge_interval_secs", deserialize_with = "de::secs")]
    pub(crate) purge_interval: Duration,
    /// `AXNT_AUDIT_RETENTION_DAYS`: how long audit-trail items (token reads) are kept.
    #[serde(rename = "audit_retention_days", deserialize_with = "de::days")]
    pub(crate) audit_retention: Duration,
    /// `AXNT_AUDIT_WINDOW_SECS`: reads of one caller, connection and outcome after the
    /// first in this window are written as one counted item.
    #[serde(rename = "audit_window_secs", deserialize_with = "de::secs")]
    pub(crate) audit_window: Duration,
    /// `AXNT_EVENTS_RETENTION_DAYS`: lifecycle events are kept (replayable from the
    /// feed) this long.
    #[serde(rename = "events_retention_days", deserialize_with = "de::days")]
    pub(crate) events_retention: Duration,
    /// `AXNT_EVENTS_FEED_DELAY_MS`: the feed holds back events younger than this, so
    /// a write still in flight when a page is read cannot land behind its cursor. Used
    /// as at least the backend's shortest safe delay (see `events::EventRules::new`).
    #[serde(rename = "events_feed_delay_ms", deserialize_with = "de::millis")]
    pub(crate) events_feed_delay: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Self {
            connection_ttl: Duration::from_secs(180 * DAY),
            inactive_retention: Duration::from_secs(30 * DAY),
            flow_log_retention: Duration::from_secs(90 * DAY),
            last_used_interval: Duration::from_secs(60),
            purge_interval: Duration::from_secs(3_600),
            audit_retention: Duration::from_secs(365 * DAY),
            audit_window: Duration::from_secs(60),
            events_retention: Duration::from_secs(14 * DAY),
            events_feed_delay: Duration::from_millis(3_000),
        }
    }
}

/// Where lifecycle events are delivered, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// `AXNT_WEBHOOK_URLS`: comma-separated endpoints every event is delivered to.
    #[serde(rename = "webhook_urls", deserialize_with = "de::webhook_urls")]
    pub(crate) urls: Vec<Url>,
    /// `AXNT_WEBHOOK_SECRET`: `whsec_` + base64, signing every delivery (aws mode: else
    /// the secret's `webhook_secret`).
    #[serde(rename = "webhook_secret", deserialize_with = "de::webhook_secret")]
    pub(crate) secret: Option<crate::crypto::WebhookSecret>,
    /// `AXNT_WEBHOOK_ALLOW_PRIVATE`: deliver to loopback and private addresses too
    /// (off: only public ones, against SSRF).
    #[serde(rename = "webhook_allow_private")]
    pub(crate) allow_private: bool,
    /// `AXNT_WEBHOOK_RETRY_HOURS`: an event is retried until it is this old.
    #[serde(rename = "webhook_retry_hours", deserialize_with = "de::hours")]
    pub(crate) retry_period: Duration,
    /// `AXNT_WEBHOOK_BACKOFF_MS`: the wait after a first failed attempt, doubled per
    /// attempt up to an hour, with jitter.
    #[serde(rename = "webhook_backoff_ms", deserialize_with = "de::millis")]
    pub(crate) first_backoff: Duration,
    /// `AXNT_WEBHOOK_TIMEOUT_MS`: one attempt's time limit.
    #[serde(rename = "webhook_timeout_ms", deserialize_with = "de::millis")]
    pub(crate) timeout: Duration,
    /// `AXNT_WEBHOOK_POLL_MS`: how often new events are looked for.
    #[serde(rename = "webhook_poll_ms", deserialize_with = "de::millis")]
    pub(crate) poll: Duration,
    /// `AXNT_WEBHOOK_CIRCUIT_OPEN_SECS`: after five failed attempts in a row, nothing
    /// is sent to the endpoint for this long.
    #[serde(rename = "webhook_circuit_open_secs", deserialize_with = "de::secs")]
    pub(crate) circuit_open: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: None,
            allow_private: false,
            retry_period: Duration::from_secs(72 * 3_600),
            first_backoff: Duration::from_millis(1_000),
            timeout: Duration::from_millis(10_000),
            poll: Duration::from_millis(1_000),
            circuit_open: Duration::from_secs(60),
        }
    }
}

/// aws mode's resources and its calls to AWS.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AwsModeSettings {
    /// `DYNAMODB_OAUTH_TABLE`: the tokens table.
    #[serde(rename = "dynamodb_oauth_table")]
    pub tokens_table: String,
    /// `DYNAMODB_OAUTH_LOGS_TABLE`: the flow-logs table.
    #[serde(rename = "dynamodb_oauth_logs_table")]
    pub(crate) logs_table: String,
    /// `DYNAMODB_OAUTH_EVENTS_TABLE`: the lifecycle-events table.
    #[serde(rename = "dynamodb_oauth_events_table")]
    pub events_table: String,
    /// `AXNT_KMS_KEY_ID`: KMS key id, ARN or alias wrapping the data keys.
    pub(crate) kms_key_id: String,
    /// `AXNT_GOOGLE_SECRET_ID`: Secrets Manager secret with the client credentials.
    #[serde(rename = "google_secret_id")]
    pub secret_id: String,
    /// `AXNT_AWS_CONNECT_TIMEOUT_MS`: time allowed to open a connection to an AWS
    /// endpoint. Short: a host that does not answer should be retried, not waited on.
    #[serde(rename = "aws_connect_timeout_ms", deserialize_with = "de::millis")]
    pub(crate) connect_timeout: Duration,
    /// `AXNT_AWS_OPERATION_TIMEOUT_MS`: time allowed for one AWS call including the
    /// SDK's retries; each attempt gets this divided by `AXNT_AWS_MAX_ATTEMPTS` (at
    /// least one second), so a hung attempt leaves time to retry.
    #[serde(rename = "aws_operation_timeout_ms", deserialize_with = "de::millis")]
    pub operation_timeout: Duration,
    /// `AXNT_AWS_MAX_ATTEMPTS`: attempts per AWS call (the SDK's standard retry mode:
    /// exponential backoff with jitter on throttling and transient errors).
    #[serde(rename = "aws_max_attempts")]
    pub(crate) max_attempts: u32,
}

impl Default for AwsModeSettings {
    fn default() -> Self {
        Self {
            tokens_table: "axnt-oauth-tokens".into(),
            logs_table: "axnt-oauth-tokens-logs".into(),
            events_table: "axnt-oauth-tokens-events".into(),
            kms_key_id: "alias/axnt-oauth".into(),
            secret_id: "axnt/google-oauth".into(),
            connect_timeout: Duration::from_millis(3_000),
            operation_timeout: Duration::from_millis(10_000),
            max_attempts: 3,
        }
    }
}

/// aws mode: how KMS data keys are reused and cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct DataKeySettings {
    /// `AXNT_DATA_KEY_MAX_USES`: a KMS data key seals at most this many token sets
    /// before a new one is generated (1: a fresh key per write).
    #[serde(rename = "data_key_max_uses")]
    pub(crate) max_uses: u64,
    /// `AXNT_DATA_KEY_MAX_AGE_SECS`: a data key is used for sealing at most this long
    /// after KMS generated it.
    #[serde(rename = "data_key_max_age_secs", deserialize_with = "de::secs")]
    pub(crate) max_age: Duration,
    /// `AXNT_DATA_KEY_CACHE_ENTRIES`: decrypted data keys kept (LRU), so a token read
    /// does not cost a KMS call. Each entry is the 32-byte key plus its wrapped form (a
    /// few hundred bytes), so this also bounds the cache's bytes.
    #[serde(rename = "data_key_cache_entries")]
    pub(crate) cache_entries: u64,
    /// `AXNT_DATA_KEY_CACHE_TTL_SECS`: a decrypted data key is forgotten this long
    /// after KMS decrypted it, so revoking KMS access takes effect within it.
    #[serde(rename = "data_key_cache_ttl_secs", deserialize_with = "de::secs")]
    pub(crate) cache_ttl: Duration,
}

impl Default for DataKeySettings {
    fn default() -> Self {
        Self {
            max_uses: 1_000,
            max_age: Duration::from_secs(300),
            cache_entries: 10_000,
            cache_ttl: Duration::from_secs(300),
        }
    }
}

/// The queues that write off the request path: aws mode's flow-log writer, and the
/// audit trail's (both modes).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct FlowLogSettings {
    /// `AXNT_FLOW_LOG_BUFFER`: flow-log items waiting to be written; when full, further
    /// items are dropped (and counted) rather than slowing requests.
    #[serde(rename = "flow_log_buffer")]
    pub(crate) buffer: usize,
    /// `AXNT_FLOW_LOG_WRITE_CONCURRENCY`: flow-log writes in flight at once (and, apart
    /// from them, audit writes).
    #[serde(rename = "flow_log_write_concurrency")]
    pub(crate) write_concurrency: usize,
    /// `AXNT_AUDIT_BUFFER`: audit records waiting to be written (identical ones count
    /// once). Never dropped: when it is full, a token read waits for room.
    #[serde(rename = "audit_buffer")]
    pub(crate) audit_buffer: usize,
    /// `AXNT_AUDIT_WAIT_MS`: how long a token read waits for room in a full audit queue
    /// before it is answered 503 `audit_unavailable` (the token is not handed out
    /// unrecorded). 0: answer at once.
    #[serde(rename = "audit_wait_ms", deserialize_with = "de::millis")]
    pub(crate) audit_wait: Duration,
}

impl Default for FlowLogSettings {
    fn default() -> Self {
        Self {
            buffer: 1_024,
            write_concurrency: 4,
            audit_buffer: 10_000,
            audit_wait: Duration::from_millis(1_000),
        }
    }
}

/// Log lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct LogSettings {
    /// `AXNT_LOG_FORMAT`: `auto` (JSON unless stderr is a terminal), `text` or `json`.
    #[serde(rename = "log_format")]
    pub(crate) format: LogFormat,
    /// `AXNT_LOG`: a `tracing` filter such as `info` or `axnt_oauth=debug,info`.
    #[serde(rename = "log")]
    pub(crate) filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: "info".into(),
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
