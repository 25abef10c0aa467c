//! Probes: `/healthz` (the process serves), `/readyz` (store, keys and client
//! credentials usable; cached a few seconds so probes do not multiply backend calls),
//! and `/metrics` (Prometheus text), which only the admin listener serves. While
//! start-up waits for a dependency, [`starting_router`] serves the probes alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;

use super::{AppState, Route};
use crate::crypto::{CryptoError, KeyProvider};
use crate::error::Error;
use crate::secrets::SecretsCache;
use crate::store::{FlowLog, StoreError};

/// `GET /healthz`.
pub(in crate::http) const HEALTHZ: Route = Route::get("/healthz", &[200]);

/// `GET /readyz`.
pub(in crate::http) const READYZ: Route = Route::get("/readyz", &[200]);

/// `GET /metrics`, on the admin listener only.
const METRICS: &str = "/metrics";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(HEALTHZ.template, get(healthz))
        .route(READYZ.template, get(readyz))
}

/// The admin listener's routes (`AXNT_ADMIN_LISTEN_ADDR`): what only operators should
/// reach. The public listener answers 404 to them.
pub(crate) fn admin_router() -> Router {
    Router::new()
        .route(HEALTHZ.template, get(healthz))
        .route(METRICS, get(metrics))
}

/// What start-up waits for, as `/readyz` names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Starting {
    /// The part, as a key of `checks`.
    pub(crate) part: &'static str,
    /// Its stable code.
    pub(crate) code: &'static str,
    /// The dependency, in words (`waitingFor`).
    pub(crate) what: &'static str,
}

/// The routes while start-up waits for a dependency: `/healthz` answers 200 (the
/// process is alive: do not restart it), `/readyz` 503
/// `{"status":"starting","checks":{"secrets":"unavailable"},"waitingFor":"secrets manager: unavailable"}`,
/// anything else 503 `starting`.
pub(crate) fn starting_router(starting: Starting) -> Router {
    let report = ReadinessReport {
        ready: false,
        status: "starting",
        checks: std::iter::once((starting.part.to_string(), starting.code.into())).collect(),
        waiting_for: Some(format!("{}: {}", starting.what, starting.code)),
    };
    Router::new()
        .route(HEALTHZ.template, get(healthz))
        .route(
            READYZ.template,
            get(move || async move {
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(report)).into_response()
            }),
        )
        .fallback(|| async { Error::Starting })
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            ),
        )
}

/// `GET /healthz` → 200 `{"status":"ok"}` while the process serves.
#[utoipa::path(
    get,
    path = HEALTHZ.documented(),
    tag = "probes",
    responses((status = 200, description = "The process serves", body = Health)),
)]
pub(super) async fn healthz() -> impl IntoResponse {
    axum::Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// `GET /readyz` → 200 when every part is usable, else 503; the body names each part
/// and a stable code, never the reason (which is logged):
/// `{"status":"not_ready","checks":{"store":"ok","flowLog":"ok","keys":"access_denied","provider":"ok"}}`.
/// While start-up waits for a dependency: 503 with `status` `starting` and
/// `waitingFor` (see [`starting_router`]).
#[utoipa::path(
    get,
    path = READYZ.documented(),
    tag = "probes",
    responses(
        (status = 200, description = "Every part is usable", body = ReadinessReport),
        (status = 503, description = "A part is not usable (`checks` names it), or start-up waits for a dependency (`status` `starting`, `waitingFor`)", body = ReadinessReport),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report.as_ref().clone())).into_response()
}

/// `GET /metrics` → Prometheus text exposition.
async fn metrics() -> Response {
    match crate::telemetry::metrics() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response(),
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReadinessReport {
    #[serde(skip)]
    pub(crate) ready: bool,
    /// `ready`, `not_ready`, or `starting` (start-up waits for a dependency).
    pub(crate) status: &'static str,
    /// Each part (`store`, `flowLog`, `keys`, `provider`; while starting, the part
    /// waited for, e.g. `secrets`) and `ok` or a stable code.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub(crate) checks: serde_json::Map<String, serde_json::Value>,
    /// While starting: what start-up waits for, and why (`secrets manager: unavailable`).
    #[serde(rename = "waitingFor", skip_serializing_if = "Option::is_none")]
    pub(crate) waiting_for: Option<String>,
}

/// Checks the parts a request needs and remembers the answer for `ttl`.
pub(crate) struct Readiness {
    store: Arc<dyn crate::store::Health>,
    flow_log: Arc<dyn FlowLog>,
    keys: Arc<dyn KeyProvider>,
    /// Each provider's name and where its OAuth client is.
    clients: Vec<(String, Arc<SecretsCache>)>,
    ttl: Duration,
    last: Mutex<Option<(Instant, Arc<ReadinessReport>)>>,
}

impl Readiness {
    pub(crate) fn new(
        store: Arc<dyn crate::store::Health>,
        flow_log: Arc<dyn FlowLog>,
        keys: Arc<dyn KeyProvider>,
        clients: Vec<(String, Arc<SecretsCache>)>,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            flow_log,
            keys,
            clients,
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The cached report, or a fresh one. Concurrent probes wait for one check.
    pub(crate) async fn check(&self) -> Arc<ReadinessReport> {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return Arc::clone(report);
        }
        let report = Arc::new(self.run().await);
        *last = Some((Instant::now(), Arc::clone(&report)));
        report
    }

    async fn run(&self) -> ReadinessReport {
        let mut checks = serde_json::Map::new();
        let mut ready = true;
        // The public answer names each part and a stable code; the reason (AWS messages
        // carry account ids and role ARNs, embedded mode a file path) goes to the log.
        let mut put = |part: &str, result: Result<(), (&'static str, String)>| {
            let code = match result {
                Ok(()) => "ok",
                Err((code, detail)) => {
                    ready = false;
                    tracing::warn!(part, code, detail = %detail, "readiness check failed");
                    code
                }
            };
            checks.insert(part.into(), code.into());
        };
        put(
            "store",
            self.store
                .ping()
                .await
                .map_err(|e| (store_code(&e), e.to_string())),
        );
        put(
            "flowLog",
            self.flow_log
                .ping()
                .await
                .map_err(|e| (store_code(&e), e.to_string())),
        );
        let keys = async {
            let dk = self.keys.generate_data_key().await?;
            let back = self
                .keys
                .decrypt_data_key(&dk.key_id, &dk.encrypted)
                .await?;
            if back.expose() == dk.plaintext.expose() {
                Ok(())
            } else {
                Err(CryptoError::Integrity)
            }
        };
        put(
            "keys",
            keys.await
                .map_err(|e: CryptoError| (key_code(&e), e.to_string())),
        );
        // Every provider needs its client; the first without one is named.
        let provider = match self
            .clients
            .iter()
            .find(|(_, secrets)| secrets.current().client.is_none())
        {
            None => Ok(()),
            Some((name, secrets)) => Err((
                "not_configured",
                crate::oauth::provider::ProviderError::not_configured(name, &secrets.source_name())
                    .to_string(),
            )),
        };
        put("provider", provider);
        ReadinessReport {
            ready,
            status: if ready { "ready" } else { "not_ready" },
            checks,
            waiting_for: None,
        }
    }
}

/// A store failure as the stable code `/readyz` shows.
fn store_code(e: &StoreError) -> &'static str {
    match e {
        StoreError::AccessDenied(_) => "access_denied",
        StoreError::MissingTable(_) => "missing_table",
        StoreError::Throttled(_) => "throttled",
        StoreError::Corrupt(_) => "corrupt",
        StoreError::Unavailable(_) | StoreError::Conflict => "unavailable",
    }
}

/// A key-service failure as the stable code `/readyz` shows.
fn key_code(e: &CryptoError) -> &'static str {
    match e {
        CryptoError::Unavailable(_) => "unavailable",
        CryptoError::Rejected(_) => "rejected",
        CryptoError::Integrity | CryptoError::InvalidKey(_) => "invalid_key",
    }
}
