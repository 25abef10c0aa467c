//! The OAuth provider, the connect flow, credentials, and refresh.

use super::unit::*;
use super::*;

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
    #[serde(deserialize_with = "de::callers")]
    pub(crate) api_keys: CallerList,
    /// `AXNT_CALLERS`: named callers, a JSON list of `{name, apiKey | iamArn | oidc,
    /// operations, providers, clients, userIds}` (`apiKey` may be `sha256:` and the
    /// key's hex digest). Merged into `api_keys` at load: one list of callers.
    #[serde(deserialize_with = "de::callers")]
    pub(crate) callers: CallerList,
    /// `AXNT_IAM_SERVER_ID`: what an IAM caller signs in its `X-Axnt-Server-Id` header,
    /// so a request signed for this service is no use against another (a host name of
    /// the service is customary). Required when a caller has `iamArn`.
    pub(crate) iam_server_id: Option<String>,
    /// `AXNT_IAM_STS_ENDPOINT`: where IAM callers' signed requests are sent (an STS VPC
    /// endpoint, say). Default: `AWS_ENDPOINT_URL` when set, else the STS endpoint of
    /// `AWS_REGION` (`https://sts.<region>.amazonaws.com/`). Callers sign for its host.
    pub(crate) iam_sts_endpoint: Option<Url>,
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
            api_keys: CallerList::default(),
            callers: CallerList::default(),
            iam_server_id: None,
            iam_sts_endpoint: None,
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

impl ProviderSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 6] {
        [
            ("google_grant_limit", u64::from(self.grant_limit), 10_000),
            ("revocation_retry_secs", secs(self.revocation_retry), DAY),
            ("provider_timeout_secs", secs(self.timeout), 5 * MINUTE),
            (
                "provider_metadata_ttl_secs",
                secs(self.metadata_ttl),
                30 * DAY,
            ),
            (
                "provider_metadata_max_stale_secs",
                secs(self.metadata_max_stale),
                30 * DAY,
            ),
            (
                "refresh_reuse_grace_secs",
                secs(self.refresh_reuse_grace),
                HOUR,
            ),
        ]
    }
}

impl RefreshSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 10] {
        [
            // Inside Google's six months, with room for a failing pass or two.
            ("keepalive_days", days(self.keepalive_idle), 170),
            (
                "keepalive_interval_secs",
                secs(self.keepalive_interval),
                7 * DAY,
            ),
            (
                "keepalive_per_minute",
                u64::from(self.keepalive_per_minute),
                6_000,
            ),
            ("refresh_margin_secs", secs(self.margin), DAY),
            ("token_cache_secs", secs(self.token_cache), 5 * MINUTE),
            ("refresh_deadline_secs", secs(self.deadline), 10 * MINUTE),
            (
                "background_refresh_secs",
                self.background.map_or(0, secs),
                DAY,
            ),
            ("refresh_cooldown_secs", secs(self.cooldown), DAY),
            (
                "provider_circuit_failures",
                u64::from(self.circuit_failures),
                10_000,
            ),
            ("provider_circuit_open_secs", secs(self.circuit_open), HOUR),
        ]
    }
}

impl FlowSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 3] {
        [
            (
                "connect_session_ttl_secs",
                secs(self.connect_session_ttl),
                7 * DAY,
            ),
            ("flow_state_ttl_secs", secs(self.state_ttl), DAY),
            (
                "confirmation_ttl_secs",
                secs(self.confirmation_ttl),
                7 * DAY,
            ),
        ]
    }
}

impl SecretSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 2] {
        [
            ("secret_refresh_secs", secs(self.refresh_interval), DAY),
            (
                "secret_reload_min_interval_secs",
                secs(self.reload_min_interval),
                DAY,
            ),
        ]
    }
}
