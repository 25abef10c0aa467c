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

mod assembly;
mod backends;
mod connections;
mod offline;
mod series;
mod serve;
mod startup;

use assembly::{assemble, load_secrets};
use backends::client_override;
pub use backends::{Backends, uncached_key_provider};
pub(crate) use offline::Offline;

use crate::callers::CallerList;
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
