//! What is kept and for how long: retention, aws mode, data keys, the flow log, webhooks.

use super::unit::*;
use super::*;

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

impl WebhookSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 5] {
        [
            (
                "webhook_retry_hours",
                secs(self.retry_period) / HOUR,
                24 * 14,
            ),
            ("webhook_backoff_ms", millis(self.first_backoff), 3_600_000),
            ("webhook_timeout_ms", millis(self.timeout), 60_000),
            ("webhook_poll_ms", millis(self.poll), 60_000),
            ("webhook_circuit_open_secs", secs(self.circuit_open), HOUR),
        ]
    }
}

impl RetentionSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 9] {
        [
            ("events_retention_days", days(self.events_retention), 365),
            (
                "events_feed_delay_ms",
                millis(self.events_feed_delay),
                60_000,
            ),
            ("audit_retention_days", days(self.audit_retention), 3650),
            ("audit_window_secs", secs(self.audit_window), HOUR),
            ("connection_ttl_days", days(self.connection_ttl), 10 * 365),
            (
                "inactive_retention_days",
                days(self.inactive_retention),
                10 * 365,
            ),
            (
                "flow_log_retention_days",
                days(self.flow_log_retention),
                10 * 365,
            ),
            (
                "last_used_interval_secs",
                secs(self.last_used_interval),
                DAY,
            ),
            ("purge_interval_secs", secs(self.purge_interval), 7 * DAY),
        ]
    }
}

impl AwsModeSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 3] {
        [
            (
                "aws_connect_timeout_ms",
                millis(self.connect_timeout),
                MINUTE * 1_000,
            ),
            (
                "aws_operation_timeout_ms",
                millis(self.operation_timeout),
                10 * MINUTE * 1_000,
            ),
            ("aws_max_attempts", u64::from(self.max_attempts), 20),
        ]
    }
}

impl DataKeySettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 4] {
        [
            // A data key seals with random 96-bit nonces: NIST SP 800-38D's bound is
            // 2^32 messages per key.
            ("data_key_max_uses", self.max_uses, 1 << 32),
            ("data_key_max_age_secs", secs(self.max_age), YEAR),
            ("data_key_cache_entries", self.cache_entries, 10_000_000),
            ("data_key_cache_ttl_secs", secs(self.cache_ttl), DAY),
        ]
    }
}

impl FlowLogSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 4] {
        [
            ("flow_log_buffer", self.buffer as u64, 1_000_000),
            ("audit_buffer", self.audit_buffer as u64, 1_000_000),
            ("audit_wait_ms", millis(self.audit_wait), MINUTE * 1_000),
            (
                "flow_log_write_concurrency",
                self.write_concurrency as u64,
                256,
            ),
        ]
    }
}
