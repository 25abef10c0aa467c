//! Where requests enter: one module per surface, each with its own `router()`, merged
//! once here with the layers every route shares.

pub(crate) mod api;
pub(crate) mod browser;
pub(crate) mod client;
pub(crate) mod limits;
pub(crate) mod oauth;
mod openapi;
pub(crate) mod probes;
mod risc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::config::{Settings, TrustedProxies};
use crate::error::{Error, log_errors};
use crate::oauth::ReturnUrls;
use crate::oauth::flow::StateSealer;
use crate::secrets::SecretsCache;
use crate::store::FlowRecorder;
use crate::store::flow_log::ClientInfo;
use crate::tokens::TokenService;

pub(crate) use client::client_ip;
pub(crate) use probes::{Readiness, Starting, admin_router, starting_router};

/// Everything a handler may use. Cloned per request (one `Arc`).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Services>);

pub(crate) struct Services {
    pub(crate) settings: Arc<Settings>,
    pub(crate) tokens: Arc<TokenService>,
    /// The connect flow: links, their start, the callback, confirmation.
    pub(crate) connect: Arc<crate::connect::ConnectService>,
    pub(crate) flow_log: Arc<FlowRecorder>,
    pub(crate) audit: Arc<crate::audit::AuditTrail>,
    pub(crate) sealer: Arc<StateSealer>,
    pub(crate) secrets: Arc<SecretsCache>,
    pub(crate) return_urls: ReturnUrls,
    pub(crate) readiness: Readiness,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) rate_limits: Arc<limits::RateLimits>,
    /// Checks callers' credentials that are not keys (IAM, OIDC workload tokens).
    pub(crate) identity: Arc<crate::callers::IdentityChecks>,
    /// Verifies Google's security event tokens (`POST /risc/google`).
    pub(crate) risc: Arc<crate::oauth::risc::RiscVerifier>,
}

impl AppState {
    pub(crate) fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Largest request body accepted: connect-session requests are a few hundred bytes.
const BODY_LIMIT: usize = 64 * 1024;
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application's routes and shared layers.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .merge(probes::router())
        .merge(openapi::router())
        .merge(oauth::router().route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_browser,
        )))
        .merge(api::router(state.clone()))
        .merge(risc::router())
        .fallback(|| async { Error::RouteNotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        // Inside the layers below, so a timed-out request is still counted, logged once
        // and answered no-store like any other error.
        .layer(middleware::from_fn_with_state(
            state.settings.server.request_timeout,
            answer_within,
        ))
        // Tokens, sign-in pages, redirects carrying codes and readiness reports: no
        // answer of this service may be kept by a cache.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(middleware::from_fn(log_errors))
        .layer(middleware::from_fn_with_state(
            Arc::new(HttpSeries::default()),
            record_metrics,
        ))
        // Enforced by the body extractors, so an oversized body is refused through
        // `Error` (413 `payload_too_large` problem+json) like every other bad request.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(
            // Failures are logged once by `log_errors`, with their code; not again here.
            TraceLayer::new_for_http()
                .on_failure(())
                .make_span_with(|request: &Request| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map(MatchedPath::as_str)
                        .unwrap_or("unmatched");
                    let request_id = request
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // The URI is not recorded: callback and start URLs carry codes and state.
                    tracing::info_span!("request", method = %request.method(), route, request_id)
                }),
        )
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::SET_COOKIE,
            // A return redirect carries a confirmation code.
            header::LOCATION,
        ]))
        .with_state(state)
}

/// Answers 408 `request_timeout` when the handler (reading the body included) has not
/// finished in time. Work a handler started in its own task (a refresh) carries on.
async fn answer_within(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::RequestTimeout.into_response(),
    }
}

/// One route: its method, its template as axum matches it (and as
/// [`HTTP_REQUESTS_TOTAL`](crate::series::HTTP_REQUESTS_TOTAL) labels it), and the statuses of a successful answer. Each
/// route is declared once, beside its handler, and its router, its OpenAPI entry
/// ([`Route::documented`]) and the metric labels all read it there.
pub(crate) struct Route {
    pub(crate) method: &'static str,
    pub(crate) template: &'static str,
    pub(crate) ok: &'static [u16],
}

impl Route {
    pub(crate) const fn get(template: &'static str, ok: &'static [u16]) -> Self {
        Self {
            method: "GET",
            template,
            ok,
        }
    }

    pub(crate) const fn post(template: &'static str, ok: &'static [u16]) -> Self {
        Self {
            method: "POST",
            template,
            ok,
        }
    }

    pub(crate) const fn delete(template: &'static str, ok: &'static [u16]) -> Self {
        Self {
            method: "DELETE",
            template,
            ok,
        }
    }

    /// The template as the OpenAPI document writes it: each parameter in camelCase,
    /// as the API names it (`/v1/users/{user_id}` → `/v1/users/{userId}`).
    pub(crate) fn documented(&self) -> String {
        let mut out = String::with_capacity(self.template.len());
        let (mut in_parameter, mut upper_next) = (false, false);
        for c in self.template.chars() {
            match c {
                '{' => in_parameter = true,
                '}' => in_parameter = false,
                '_' if in_parameter => {
                    upper_next = true;
                    continue;
                }
                _ => {}
            }
            if upper_next {
                out.extend(c.to_uppercase());
                upper_next = false;
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// The public listener's routes. Start-up registers each with its successful statuses
/// and [`STATUSES_EVERY_ROUTE_CAN_ANSWER`] at zero, so a rate over errors works from
/// the first scrape; a matched route missing here is labelled `other`.
pub(crate) const ROUTES: [&Route; 17] = [
    &probes::HEALTHZ,
    &probes::READYZ,
    &openapi::OPENAPI_JSON,
    &api::connect_sessions::CREATE,
    &api::connect_sessions::CONFIRM,
    &api::tokens::READ,
    &api::connections::LIST,
    &api::connections::LIST_ALL,
    &api::connections::DELETE,
    &api::import::IMPORT,
    &api::whoami::WHOAMI,
    &api::logs::FLOW_LOGS,
    &api::logs::AUDIT,
    &api::events::FEED,
    &risc::RECEIVE,
    &oauth::START,
    &oauth::CALLBACK,
];

/// Answers any route can give: bad input, unknown, rate-limited, failed, unavailable.
pub(crate) const STATUSES_EVERY_ROUTE_CAN_ANSWER: [u16; 5] = [400, 404, 429, 500, 503];

/// Counts requests by route and status and times them, through handles resolved once
/// per label set ([`HttpSeries`]): a request builds no label and looks nothing up in
/// the registry.
async fn record_metrics(
    State(series): State<Arc<HttpSeries>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |p| route_index(p.as_str()));
    let method = method_index(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    series.count(method, route, response.status(), started.elapsed());
    response
}

/// The handles of [`HTTP_REQUESTS_TOTAL`](crate::series::HTTP_REQUESTS_TOTAL) and
/// [`HTTP_REQUEST_DURATION_SECONDS`](crate::series::HTTP_REQUEST_DURATION_SECONDS), by
/// method, route and status index.
struct HttpSeries {
    requests: crate::series::Cells<metrics::Counter>,
    durations: crate::series::Cells<metrics::Histogram>,
}

/// The route labels: [`ROUTES`], then `other` (a matched route missing there: the
/// metrics test requests every route and finds none counted as `other`, so a new route
/// must join that test's list and [`ROUTES`]), then `unmatched`.
const ROUTE_LABELS: usize = ROUTES.len() + 2;
const OTHER_ROUTE: usize = ROUTES.len();
const UNMATCHED: usize = ROUTES.len() + 1;

/// The method labels, from a fixed set: a client choosing method names must not be
/// able to add series (each a counter and a histogram, kept for the process's life).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// The statuses the service answers with, each a fixed label.
const STATUSES: [(u16, &str); 20] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (302, "302"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (410, "410"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

impl Default for HttpSeries {
    fn default() -> Self {
        Self {
            requests: crate::series::Cells::new(METHODS.len() * ROUTE_LABELS * STATUSES.len()),
            durations: crate::series::Cells::new(METHODS.len() * ROUTE_LABELS),
        }
    }
}

impl HttpSeries {
    fn count(&self, method: usize, route: usize, status: axum::http::StatusCode, took: Duration) {
        let (method_label, route_label) = (METHODS[method], route_label(route));
        let code = status.as_u16();
        let known = STATUSES.iter().position(|(known, _)| *known == code);
        match known.and_then(|s| {
            self.requests
                .at((method * ROUTE_LABELS + route) * STATUSES.len() + s, || {
                    metrics::counter!(crate::series::HTTP_REQUESTS_TOTAL, "method" => method_label, "route" => route_label, "status" => STATUSES[s].1)
                })
        }) {
            Some(counter) => counter.increment(1),
            // A status this service never answers with on its own: looked up each time.
            None => metrics::counter!(crate::series::HTTP_REQUESTS_TOTAL, "method" => method_label, "route" => route_label, "status" => code.to_string())
                .increment(1),
        }
        if let Some(histogram) = self.durations.at(method * ROUTE_LABELS + route, || {
            metrics::histogram!(crate::series::HTTP_REQUEST_DURATION_SECONDS, "method" => method_label, "route" => route_label)
        }) {
            histogram.record(took.as_secs_f64());
        }
    }
}

/// The matched route's index in [`ROUTES`], or [`OTHER_ROUTE`].
fn route_index(matched: &str) -> usize {
    ROUTES
        .iter()
        .position(|route| route.template == matched)
        .unwrap_or(OTHER_ROUTE)
}

fn route_label(index: usize) -> &'static str {
    match ROUTES.get(index) {
        Some(route) => route.template,
        None if index == OTHER_ROUTE => "other",
        None => "unmatched",
    }
}

fn method_index(method: &axum::http::Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// JSON bodies whose rejections answer in our problem format (see the `From`
/// rejection impls in [`crate::error`]).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub(crate) struct ApiJson<T>(pub T);

/// Path parameters whose rejections answer in our problem format.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub(crate) struct ApiPath<T>(pub T);

/// Query strings whose rejections answer in our problem format.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub(crate) struct ApiQuery<T>(pub T);

/// The caller's address (see [`client`]: the peer, or what trusted proxies forwarded),
/// user agent and (on the internal API) name, for flow-log items.
pub(crate) struct Client(pub ClientInfo);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ip = client_ip(parts, &state.trusted_proxies);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Set by the internal API's authentication; browsers' requests have none.
        let caller = parts
            .extensions
            .get::<api::auth::CallerOf>()
            .map(|api::auth::CallerOf(caller)| caller.id.clone());
        Ok(Self(ClientInfo {
            ip_address: ip.map(|a| a.to_string()),
            user_agent,
            caller,
        }))
    }
}

/// `302 Found` to `location`: what OAuth redirects traditionally use (axum's
/// `Redirect::to` answers 303).
pub(crate) fn found(location: &str) -> Response {
    let mut response = axum::http::StatusCode::FOUND.into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_documented_with_its_parameters_in_camel_case() {
        let route = |template| Route {
            method: "GET",
            template,
            ok: &[200],
        };
        assert_eq!(
            route("/v1/users/{user_id}/tokens/{provider}").documented(),
            "/v1/users/{userId}/tokens/{provider}"
        );
        assert_eq!(
            route("/v1/connect-sessions/{flow_id}/confirm").documented(),
            "/v1/connect-sessions/{flowId}/confirm"
        );
        assert_eq!(route("/v1/audit_log").documented(), "/v1/audit_log");
    }

    #[test]
    fn every_route_is_listed_once_with_a_successful_status() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(!route.ok.is_empty(), "{}", route.template);
            assert!(
                ROUTES[i + 1..]
                    .iter()
                    .all(|other| (other.method, other.template) != (route.method, route.template)),
                "{} {} is listed twice",
                route.method,
                route.template
            );
        }
    }
}
