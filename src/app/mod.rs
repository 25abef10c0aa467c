//! Start-up: builds the backends the settings ask for, wires the services, binds the
//! listener (port 0 allowed) and runs until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod backends;
mod series;
mod serve;

use backends::client_override;
pub use backends::{Backends, uncached_key_provider};

use crate::config::{Backend, ConfigError, Settings};
use crate::crypto::{CryptoError, EnvelopeCipher, SecretKey};
use crate::http::limits::RateLimits;
use crate::http::{self, AppState, Readiness, Services};
use crate::oauth::ReturnUrls;
use crate::oauth::flow::StateSealer;
use crate::oauth::provider::{
    OidcProvider, ProviderConfig, ProviderError, ProviderLimits, Providers,
};
use crate::secrets::{SecretError, SecretsCache};
use crate::store::{FlowLog, FlowRecorder, StoreError};
use crate::tokens::{TokenPolicy, TokenService};

/// Why the service could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("keys: {0}")]
    Crypto(#[from] CryptoError),
    #[error("secrets: {0}")]
    Secret(#[from] SecretError),
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("aws: {0}")]
    Aws(String),
}

/// A built, bound application.
pub struct App {
    listener: TcpListener,
    router: Router,
    /// `/metrics` and `/healthz`, apart from the public listener (none when off).
    admin_listener: Option<TcpListener>,
    flow_log: Arc<dyn FlowLog>,
    audit: Arc<crate::audit::AuditTrail>,
    tokens: Arc<TokenService>,
    drain_timeout: Duration,
    limits: serve::ServeLimits,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Builds everything and binds `listen_addr`.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let backends = Backends::open(&settings).await?;
        let listener = TcpListener::bind(settings.server.listen_addr)
            .await
            .map_err(|e| StartupError::Bind {
                addr: settings.server.listen_addr,
                reason: e.to_string(),
            })?;
        Self::with_listener(settings, backends, listener).await
    }

    /// Builds on given backends and an already bound listener (tests bind port 0
    /// first, so the public URL can name the port). The admin listener is bound here,
    /// from `AXNT_ADMIN_LISTEN_ADDR`.
    pub async fn with_listener(
        settings: Settings,
        backends: Backends,
        listener: TcpListener,
    ) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
        let secrets = SecretsCache::load(
            backends.secrets.clone(),
            client_override(&settings),
            backends.api_keys.clone(),
        )
        .await?;
        let state_key = match secrets.current().state_key.clone().or(backends.state_key) {
            Some(key) => key,
            None if settings.secrets.allow_instance_state_key => {
                tracing::warn!(
                    "no state key configured (secret field state_key or AXNT_STATE_KEY): using a per-process key, \
                     so a flow only completes on the instance that started it"
                );
                SecretKey::generate()
            }
            None => {
                return Err(ConfigError {
                    setting: crate::config::env_name("state_key"),
                    reason: "no state key: every instance must seal flows with the same key; put state_key \
                             (base64 of 32 bytes) in the secret or set AXNT_STATE_KEY \
                             (AXNT_ALLOW_INSTANCE_STATE_KEY=true accepts a per-process key, for one instance only)"
                        .into(),
                }
                .into());
            }
        };
        // The two-key window of a state-key rotation: the secret's previous key with
        // the secret's key, the settings' with the settings'.
        let previous_state_key = match secrets.current().state_key {
            Some(_) => secrets.current().previous_state_key.clone(),
            None => backends.previous_state_key.clone(),
        };
        TokenPolicy::from(&*settings)
            .events
            .warn_if_raised(settings.retention.events_feed_delay);
        if secrets.current().api_keys.is_empty() {
            tracing::warn!(
                "no API key configured (AXNT_API_KEYS or the secret's api_keys): the internal API rejects every call"
            );
        }
        let mut background = Vec::new();
        if let Some(store) = &backends.expiring {
            background.push(store.spawn_purger(settings.retention.purge_interval));
        }
        if settings.backend == Backend::Aws {
            background.push(
                secrets.spawn_refresher(
                    settings
                        .secrets
                        .refresh_interval
                        .max(Duration::from_secs(10)),
                ),
            );
        }

        let mut provider_config = ProviderConfig::google(settings.provider.issuer.as_str());
        provider_config.rotates_refresh_tokens = settings.provider.rotates();
        provider_config.refresh_reuse_grace = settings.provider.refresh_reuse_grace;
        let provider = OidcProvider::new(
            provider_config,
            Arc::clone(&secrets),
            ProviderLimits::from_settings(&settings),
        )?;
        let provider_names = [provider.name().to_string()];
        let providers = Arc::new(Providers::new(vec![Arc::new(provider)]));
        let flow_log = Arc::new(FlowRecorder::new(
            Arc::clone(&backends.flow_log),
            settings.retention.flow_log_retention,
        ));
        let cipher = Arc::new(EnvelopeCipher::new(
            Arc::clone(&backends.keys),
            settings.aws.tokens_table.clone(),
        ));
        let tokens = Arc::new(TokenService::new(
            Arc::clone(&backends.tokens),
            cipher,
            providers,
            Arc::clone(&flow_log),
            TokenPolicy::from(&*settings),
        ));
        if let Some(every) = settings.refresh.background {
            background.push(tokens.spawn_background_refresh(every));
        }
        background.push(tokens.spawn_revocation_retries(settings.provider.revocation_retry));
        // With the keep-alive off (0 days) the pass still runs, for expiry notices.
        background.push(tokens.spawn_keepalive(crate::tokens::KeepAlive {
            idle: settings.refresh.keepalive_idle,
            every: settings.refresh.keepalive_interval,
            per_minute: settings.refresh.keepalive_per_minute,
        }));
        if !settings.webhooks.urls.is_empty() {
            let webhooks = crate::webhooks::Webhooks::new(
                Arc::clone(&backends.tokens),
                Arc::clone(&secrets),
                delivery_rules(&settings.webhooks),
                TokenPolicy::from(&*settings).events,
            )
            .map_err(|reason| ConfigError {
                setting: crate::config::env_name("webhook_urls"),
                reason,
            })?;
            if !webhooks.has_secret() {
                return Err(ConfigError {
                    setting: crate::config::env_name("webhook_secret"),
                    reason: "webhook deliveries must be signed: set AXNT_WEBHOOK_SECRET (whsec_ + base64) \
                             or the secret's webhook_secret"
                        .into(),
                }
                .into());
            }
            background.extend(Arc::new(webhooks).spawn());
        }
        let readiness = Readiness::new(
            Arc::clone(&backends.tokens),
            Arc::clone(&backends.flow_log),
            Arc::clone(&backends.keys),
            Arc::clone(&secrets),
            settings.server.readiness_cache,
        );
        let audit = Arc::new(crate::audit::AuditTrail::new(
            Arc::clone(&backends.flow_log),
            settings.retention.audit_retention,
            settings.retention.audit_window,
        ));
        background.push(
            audit.spawn_flusher(settings.retention.audit_window.min(Duration::from_secs(10))),
        );
        let rate_limits = Arc::new(RateLimits::new(&settings.rate_limit));
        background.push(rate_limits.spawn_sweeper());
        let state = AppState::new(Services {
            rate_limits,
            return_urls: ReturnUrls::new(&settings.flow.allowed_return_urls),
            trusted_proxies: settings.server.trusted_proxies.clone(),
            settings: Arc::clone(&settings),
            tokens: Arc::clone(&tokens),
            flow_log,
            audit: Arc::clone(&audit),
            sealer: Arc::new(StateSealer::new(state_key).with_previous(previous_state_key)),
            secrets,
            readiness,
            risc: Arc::new(
                crate::oauth::risc::RiscVerifier::new(
                    &settings.provider.risc_issuer,
                    settings.provider.timeout,
                )
                .map_err(|reason| ConfigError {
                    setting: crate::config::env_name("google_risc_issuer"),
                    reason,
                })?,
            ),
        });
        if crate::telemetry::metrics().is_some() {
            series::register(settings.backend, &provider_names);
        }
        let admin_listener = match settings.server.admin_listen_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartupError::Bind {
                        addr,
                        reason: e.to_string(),
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            router: http::router(state),
            admin_listener,
            flow_log: backends.flow_log,
            audit,
            tokens,
            drain_timeout: settings.server.drain_timeout,
            limits: serve::ServeLimits::from(&settings.server),
            background,
        })
    }

    /// The routes as served, for the callback's fuzz target (src/fuzz.rs).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn router(&self) -> Router {
        self.router.clone()
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Where `/metrics` is served (`AXNT_ADMIN_LISTEN_ADDR`, its port when 0 was asked
    /// for), or `None` when the admin listener is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then, within `AXNT_DRAIN_TIMEOUT_SECS` of it,
    /// lets requests in progress finish (closing connections still open at the
    /// deadline), waits for refreshes in flight to store what they redeemed, and
    /// flushes buffered flow-log writes — the flush even when the deadline has passed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<Instant>();
        // One signal stops both listeners.
        let stopping = CancellationToken::new();
        let stop = stopping.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = signalled_tx.send(Instant::now());
            stop.cancel();
        });
        let public = serve::serve(
            "public",
            self.listener,
            self.router,
            self.limits,
            stopping.clone().cancelled_owned(),
            self.drain_timeout,
        );
        let admin = async {
            match self.admin_listener {
                Some(listener) => {
                    serve::serve(
                        "admin",
                        listener,
                        http::admin_router(),
                        self.limits,
                        stopping.clone().cancelled_owned(),
                        self.drain_timeout,
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let (served, admin_served) = tokio::join!(public, admin);
        let served = served.and(admin_served);
        let signalled = signalled_rx.await.unwrap_or_else(|_| Instant::now());
        // The background loops only start refreshes; a refresh they started runs on
        // as its own task, which the drain below waits for.
        for task in &self.background {
            task.abort();
        }
        let left = self.drain_timeout.saturating_sub(signalled.elapsed());
        if !self.tokens.drain(left).await {
            tracing::error!(
                timeout_secs = self.drain_timeout.as_secs(),
                "refreshes still in flight at the drain deadline: their new tokens may not be stored"
            );
        }
        // Counted reads not yet written go out before the writes are flushed.
        self.audit.flush(true).await;
        if let Err(e) = self.flow_log.flush().await {
            tracing::error!(error = %e, "flushing flow-log writes at shutdown failed");
        }
        tracing::info!("stopped");
        served
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received: draining");
}

/// How webhooks are delivered, from the settings.
fn delivery_rules(s: &crate::config::WebhookSettings) -> crate::webhooks::DeliveryRules {
    crate::webhooks::DeliveryRules {
        urls: s.urls.clone(),
        secret: s.secret.clone(),
        allow_private: s.allow_private,
        retry_period: s.retry_period,
        first_backoff: s.first_backoff,
        timeout: s.timeout,
        poll: s.poll,
        circuit_open: s.circuit_open,
    }
}
