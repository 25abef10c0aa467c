//! The listeners, their limits, and logging.

use super::unit::*;
use super::*;

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

impl RateLimitSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 4] {
        [
            (
                "rate_limit_browser_per_minute",
                u64::from(self.browser_per_minute),
                1_000_000,
            ),
            (
                "rate_limit_browser_burst",
                u64::from(self.browser_burst),
                1_000_000,
            ),
            (
                "rate_limit_auth_failures_per_minute",
                u64::from(self.auth_failures_per_minute),
                1_000_000,
            ),
            (
                "rate_limit_auth_failures_burst",
                u64::from(self.auth_failures_burst),
                1_000_000,
            ),
        ]
    }
}

impl ServerSettings {
    /// The largest value of each bounded setting of the group.
    pub(super) fn bounds(&self) -> [Bound; 10] {
        [
            ("readiness_cache_secs", secs(self.readiness_cache), HOUR),
            ("drain_timeout_secs", secs(self.drain_timeout), 10 * MINUTE),
            (
                "header_read_timeout_secs",
                secs(self.header_read_timeout),
                5 * MINUTE,
            ),
            (
                "request_timeout_secs",
                secs(self.request_timeout),
                10 * MINUTE,
            ),
            ("max_connections", self.max_connections as u64, 1_000_000),
            (
                "max_connections_per_client",
                self.max_connections_per_client as u64,
                1_000_000,
            ),
            (
                "connection_idle_timeout_secs",
                secs(self.idle_timeout),
                HOUR,
            ),
            (
                "http2_ping_interval_secs",
                self.http2_ping_interval.map_or(0, secs),
                HOUR,
            ),
            (
                "http2_ping_timeout_secs",
                secs(self.http2_ping_timeout),
                5 * MINUTE,
            ),
            ("startup_timeout_secs", secs(self.startup_timeout), HOUR),
        ]
    }
}
