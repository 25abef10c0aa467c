//! Start-up: builds the backends the settings ask for, wires the services, binds the
//! listener (port 0 allowed) and runs until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod backends;
mod connections;
mod series;
mod serve;
mod startup;

use backends::client_override;
pub use backends::{Backends, uncached_key_provider};

use crate::config::{Backend, ConfigError, Settings};
use crate::crypto::{CryptoError, EnvelopeCipher, SecretKey};
use crate::events::EventRules;
use crate::http::limits::RateLimits;
use crate::http::{self, AppState, Readiness, Services};
use crate::jobs::Jobs;
use crate::oauth::ReturnUrls;
use crate::oauth::flow::StateSealer;
use crate::oauth::provider::{
    OidcProvider, ProviderConfig, ProviderError, ProviderLimits, Providers,
};
use crate::secrets::{SecretError, SecretsCache};
use crate::store::dynamodb::Settler;
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
    /// A dependency stayed unavailable for all of `AXNT_STARTUP_TIMEOUT_SECS`.
    #[error(
        "gave up after {waited_secs} s (AXNT_STARTUP_TIMEOUT_SECS) waiting for {waiting_for}: {last}"
    )]
    GaveUp {
        waited_secs: u64,
        waiting_for: String,
        last: Box<StartupError>,
    },
}

impl StartupError {
    /// Whether waiting may mend it: a dependency unreachable, throttled or failing for
    /// now. One that answered "wrong" (malformed, not found, access denied) is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Secret(SecretError::Unavailable(_)))
    }
}

/// A bound application: serving, or (when a dependency was unavailable at start)
/// serving probes while it waits for it.
pub struct App {
    listener: TcpListener,
    /// `/metrics` and `/healthz`, apart from the public listener (none when off).
    admin_listener: Option<TcpListener>,
    drain_timeout: Duration,
    limits: serve::ServeLimits,
    phase: Phase,
}

enum Phase {
    Running(Box<Running>),
    /// Waiting for a dependency: `run_until_stopped` serves probes meanwhile.
    Starting(Box<startup::Pending>),
}

/// The assembled service: its routes and what shutdown drains.
struct Running {
    router: Router,
    flow_log: Arc<dyn FlowLog>,
    audit: Arc<crate::audit::AuditTrail>,
    tokens: Arc<TokenService>,
    /// aws mode's event writes still to settle.
    settler: Option<Arc<Settler>>,
    /// The periodic work, stopped at shutdown.
    jobs: Jobs,
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
    ///
    /// A dependency that answers "wrong" (a malformed, missing or denied secret, a
    /// setting that does not fit) fails this at once. One that is unavailable for now
    /// (unreachable, throttled, failing, or silent for 2 s) does not: the app returned
    /// then serves `/healthz` (200) and `/readyz` (503 `starting`, naming what it waits
    /// for) from [`App::run_until_stopped`], retries with backoff for up to
    /// `AXNT_STARTUP_TIMEOUT_SECS`, and serves everything on the same listener once the
    /// dependency is back ([`App::is_starting`] tells which it is).
    pub async fn with_listener(
        settings: Settings,
        backends: Backends,
        listener: TcpListener,
    ) -> Result<Self, StartupError> {
        let settings = Arc::new(settings);
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
        let phase = match startup::first_attempt(&settings, &backends).await {
            Ok(secrets) => Phase::Running(Box::new(assemble(
                Arc::clone(&settings),
                backends,
                secrets,
            )?)),
            Err(e) if e.is_transient() && !settings.server.startup_timeout.is_zero() => {
                Phase::Starting(Box::new(startup::Pending::new(
                    Arc::clone(&settings),
                    backends,
                    e,
                )))
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            listener,
            admin_listener,
            drain_timeout: settings.server.drain_timeout,
            limits: serve::ServeLimits::from(&settings.server),
            phase,
        })
    }

    /// Whether the app is still waiting for a dependency (it serves probes only until
    /// that is back; `/readyz` says what it waits for).
    pub fn is_starting(&self) -> bool {
        matches!(self.phase, Phase::Starting(_))
    }

    /// The routes as served, for the callback's fuzz target (src/fuzz.rs).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn router(&self) -> Router {
        match &self.phase {
            Phase::Running(running) => running.router.clone(),
            Phase::Starting(pending) => pending.current().borrow().clone(),
        }
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
    /// deadline), waits for refreshes in flight to store what they redeemed and for
    /// the audit trail's records to be written, and flushes buffered flow-log writes —
    /// the flush even when the deadline has passed.
    ///
    /// An app still starting serves probes while it waits for its dependency, then
    /// everything on the same listener. When the wait fails (a dependency answers
    /// "wrong", or `AXNT_STARTUP_TIMEOUT_SECS` passes) it stops serving and returns
    /// the [`StartupError`] (inside the `io::Error`); a shutdown while waiting returns
    /// `Ok`.
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
        let Self {
            listener,
            admin_listener,
            drain_timeout,
            limits,
            phase,
        } = self;
        let router = match &phase {
            Phase::Running(running) => running.router.clone(),
            Phase::Starting(pending) => switching(pending.current()),
        };
        let public = serve::serve(
            "public",
            listener,
            router,
            limits.clone(),
            stopping.clone().cancelled_owned(),
            drain_timeout,
        );
        let admin = async {
            match admin_listener {
                Some(listener) => {
                    serve::serve(
                        "admin",
                        listener,
                        http::admin_router(),
                        limits,
                        stopping.clone().cancelled_owned(),
                        drain_timeout,
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let started = async {
            let pending = match phase {
                Phase::Running(running) => return Ok(Some(running)),
                Phase::Starting(pending) => pending,
            };
            tokio::select! {
                () = stopping.cancelled() => Ok(None),
                waited = pending.wait() => match waited {
                    Ok(running) => Ok(Some(Box::new(running))),
                    Err(e) => {
                        stopping.cancel();
                        Err(e)
                    }
                },
            }
        };
        let (served, admin_served, started) = tokio::join!(public, admin, started);
        let served = served.and(admin_served);
        let running = match started {
            Ok(Some(running)) => running,
            Ok(None) => {
                tracing::info!("stopped while waiting to start");
                return served;
            }
            // The caller reports it (the binary: one line, then exit status 1).
            Err(e) => return Err(std::io::Error::other(e)),
        };
        let signalled = signalled_rx.await.unwrap_or_else(|_| Instant::now());
        let left = drain_timeout.saturating_sub(signalled.elapsed());
        // All within what is left of the budget: jobs end their passes at the next
        // step (a refresh a pass started runs on as its own task), refreshes store what
        // they redeemed, and the audit trail writes its queue (counted reads included).
        let (_, drained, ()) = tokio::join!(
            running.jobs.stop(left),
            running.tokens.drain(left),
            running.audit.close(left)
        );
        if !drained {
            tracing::error!(
                timeout_secs = drain_timeout.as_secs(),
                "refreshes still in flight at the drain deadline: their new tokens may not be stored"
            );
        }
        // After the refreshes, whose writes may leave rounds to settle: one more try
        // within what is left, then what is still unsettled is logged.
        if let Some(settler) = &running.settler {
            settler
                .close(drain_timeout.saturating_sub(signalled.elapsed()))
                .await;
        }
        if let Err(e) = running.flow_log.flush().await {
            tracing::error!(error = %e, "flushing flow-log writes at shutdown failed");
        }
        tracing::info!("stopped");
        served
    }
}

/// A router that hands each request to the router `current` holds at the time, so
/// the full service replaces the start-up probes on the same listener, for
/// connections already open too.
fn switching(current: watch::Receiver<Router>) -> Router {
    Router::new().fallback_service(tower::service_fn(move |request: Request| {
        let router = current.borrow().clone();
        async move { router.oneshot(request).await }
    }))
}

/// Loads the secrets (the one dependency start-up calls: Secrets Manager in aws mode).
async fn load_secrets(
    settings: &Settings,
    backends: &Backends,
) -> Result<Arc<SecretsCache>, StartupError> {
    Ok(SecretsCache::load(
        backends.secrets.clone(),
        client_override(settings),
        backends.api_keys.clone(),
    )
    .await?)
}

/// Wires the services over loaded secrets and starts their background work. Nothing
/// here calls a dependency, so a failure is a setting to fix, never worth a wait.
fn assemble(
    settings: Arc<Settings>,
    backends: Backends,
    secrets: Arc<SecretsCache>,
) -> Result<Running, StartupError> {
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
    // The feed delay's floor is the store's own write bound: whichever backend it is.
    let events = EventRules::new(
        settings.retention.events_retention,
        settings.retention.events_feed_delay,
        backends.tokens.event_write_bound(),
    );
    events.warn_if_raised(settings.retention.events_feed_delay);
    if secrets.current().api_keys.is_empty() {
        tracing::warn!(
            "no API key configured (AXNT_API_KEYS or the secret's api_keys): the internal API rejects every call"
        );
    }
    if !settings.flow.require_confirmation {
        tracing::warn!(
            "AXNT_REQUIRE_CONFIRMATION=false: a connect link stores the grant of whichever account completes it, \
             so a user who forwards his own link can connect a victim's account under his id (forced linking); \
             sessions without expectedEmail or hostedDomain should be confirmed"
        );
    }
    let jobs = Jobs::new();
    if let Some(store) = &backends.expiring {
        store.schedule_purge(&jobs, settings.retention.purge_interval);
    }
    if settings.backend == Backend::Aws {
        secrets.schedule_refresh(
            &jobs,
            settings
                .secrets
                .refresh_interval
                .max(Duration::from_secs(10)),
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
        TokenPolicy::new(&settings, events),
    ));
    if let Some(every) = settings.refresh.background {
        tokens.schedule_background_refresh(&jobs, every);
    }
    tokens.schedule_revocation_retries(&jobs, settings.provider.revocation_retry);
    // With the keep-alive off (0 days) the pass still runs, for expiry notices.
    tokens.schedule_keepalive(
        &jobs,
        crate::tokens::KeepAlive {
            idle: settings.refresh.keepalive_idle,
            every: settings.refresh.keepalive_interval,
            per_minute: settings.refresh.keepalive_per_minute,
        },
    );
    if !settings.webhooks.urls.is_empty() {
        let webhooks = crate::webhooks::Webhooks::new(
            Arc::clone(&backends.tokens),
            Arc::clone(&secrets),
            delivery_rules(&settings.webhooks),
            events,
        )
        .map_err(|reason| ConfigError {
            setting: crate::config::env_name("webhook_urls"),
            reason,
        })?;
        if !webhooks.has_secret() {
            return Err(ConfigError {
                setting: crate::config::env_name("webhook_secret"),
                reason:
                    "webhook deliveries must be signed: set AXNT_WEBHOOK_SECRET (whsec_ + base64) \
                             or the secret's webhook_secret"
                        .into(),
            }
            .into());
        }
        Arc::new(webhooks).schedule(&jobs);
    }
    let readiness = Readiness::new(
        Arc::clone(&backends.tokens),
        Arc::clone(&backends.flow_log),
        Arc::clone(&backends.keys),
        Arc::clone(&secrets),
        settings.server.readiness_cache,
    );
    let audit = Arc::new(crate::audit::AuditTrail::new(
        Arc::clone(&backends.audit_log),
        &crate::audit::AuditRules {
            retention: settings.retention.audit_retention,
            window: settings.retention.audit_window,
            capacity: settings.flow_log.audit_buffer,
            wait: settings.flow_log.audit_wait,
            concurrency: settings.flow_log.write_concurrency,
        },
    ));
    audit.schedule_flush(
        &jobs,
        settings.retention.audit_window.min(Duration::from_secs(10)),
    );
    let rate_limits = Arc::new(RateLimits::new(&settings.rate_limit));
    rate_limits.schedule_sweep(&jobs);
    let sealer = Arc::new(StateSealer::new(state_key).with_previous(previous_state_key));
    let connect = Arc::new(crate::connect::ConnectService::new(
        Arc::clone(&tokens),
        Arc::clone(&flow_log),
        Arc::clone(&sealer),
        Arc::clone(&settings),
    ));
    let state = AppState::new(Services {
        rate_limits,
        return_urls: ReturnUrls::new(&settings.flow.allowed_return_urls),
        trusted_proxies: settings.server.trusted_proxies.clone(),
        settings: Arc::clone(&settings),
        tokens: Arc::clone(&tokens),
        flow_log,
        audit: Arc::clone(&audit),
        sealer,
        connect,
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
    Ok(Running {
        router: http::router(state),
        flow_log: backends.flow_log,
        audit,
        tokens,
        settler: backends.settler,
        jobs,
    })
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
