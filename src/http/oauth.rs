//! Browser endpoints: start a flow from a connect link, finish it on the callback.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use super::browser::{BrowserError, html_escape};
use super::{ApiPath, ApiQuery, AppState, Client, Route};
use crate::connect::{Callback, Completed, ConnectError};
use crate::ids::FlowId;
use crate::oauth::ReturnUrl;
use crate::oauth::flow::{
    ConnectSession, FlowState, Purpose, binding_cookie_name, binding_matches,
};

/// Every answer of the browser routes (pages and redirects) carries these: no script or
/// frame may use our pages, no `Referer` leaks a callback URL (it holds a code and
/// `state`), and no content is sniffed into another type.
pub(crate) const BROWSER_HEADERS: [(header::HeaderName, &str); 3] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// `GET /oauth/{provider}/start`.
pub(in crate::http) const START: Route = Route::get("/oauth/{provider}/start", &[302]);

/// `GET /oauth/{provider}/callback`: a page without a return URL, a redirect to it
/// with one.
pub(in crate::http) const CALLBACK: Route = Route::get("/oauth/{provider}/callback", &[200, 302]);

pub(crate) fn router() -> Router<AppState> {
    BROWSER_HEADERS.into_iter().fold(
        Router::new()
            .route(START.template, get(start))
            .route(CALLBACK.template, get(callback)),
        |router, (name, value)| {
            router.layer(SetResponseHeaderLayer::overriding(
                name,
                HeaderValue::from_static(value),
            ))
        },
    )
}

#[derive(Deserialize)]
struct StartQuery {
    session: Option<String>,
}

/// `GET /oauth/{provider}/start?session=<connect token>` → 302 to the provider's
/// authorization endpoint, with a short-lived browser-binding cookie.
#[tracing::instrument(skip_all, fields(provider = %provider_name, user_id, flow_id))]
async fn start(
    State(state): State<AppState>,
    Client(client): Client,
    ApiPath(provider_name): ApiPath<String>,
    ApiQuery(query): ApiQuery<StartQuery>,
) -> Result<Response, BrowserError> {
    let provider = state.tokens.provider(&provider_name)?;
    let session: ConnectSession = query
        .session
        .as_deref()
        .and_then(|s| state.sealer.open(Purpose::ConnectSession, s).ok())
        .ok_or(ConnectError::InvalidSession)?;
    if session.provider != provider_name {
        return Err(ConnectError::InvalidSession.into());
    }
    record_flow_ids(&session.user_id, &session.flow_id);
    if session.expires_at < Utc::now().timestamp() {
        return Err(ConnectError::SessionExpired.into());
    }
    let started = state
        .connect
        .start(provider, &session, &client)
        .await
        .map_err(|failed| BrowserError {
            return_to: failed
                .to_return_url
                .then(|| session.return_to.clone())
                .flatten(),
            flow_id: failed.to_return_url.then(|| session.flow_id.clone()),
            error: failed.error.into(),
        })?;
    let cookie = binding_cookie(&state, &provider_name, &session.flow_id, started.binding)
        .http_only(true)
        .secure(state.settings.is_https())
        .same_site(SameSite::Lax)
        .max_age(max_age(state.settings.flow.state_ttl))
        .build();
    let mut response = crate::http::found(started.authorize_url.as_str());
    if let Ok(value) = cookie.to_string().parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The binding cookie of one flow: one name per flow (two tabs do not collide). On
/// https it is `__Host-` prefixed, which requires `Path=/`; on http its `Path` is the
/// callback's path under the public base URL (which may itself carry a path).
fn binding_cookie(
    state: &AppState,
    provider_name: &str,
    flow_id: &FlowId,
    value: String,
) -> cookie::CookieBuilder<'static> {
    let name = binding_cookie_name(flow_id);
    if state.settings.is_https() {
        Cookie::build((format!("__Host-{name}"), value)).path("/")
    } else {
        let callback = state.settings.redirect_uri(provider_name);
        let path = url::Url::parse(&callback)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| format!("/oauth/{provider_name}/callback"));
        Cookie::build((name, value)).path(path)
    }
}

/// A cookie's `Max-Age` (saturating: a TTL beyond `i64` seconds is "for ever").
fn max_age(ttl: Duration) -> cookie::time::Duration {
    cookie::time::Duration::try_from(ttl).unwrap_or(cookie::time::Duration::MAX)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/{provider}/callback?code=…&state=…` (or `error=…`): checks `state`
/// first (authentic, unexpired, bound to this browser), then exchanges the code,
/// verifies the ID token, stores the tokens and sends the browser back.
#[tracing::instrument(skip_all, fields(provider = %provider_name, user_id, flow_id))]
async fn callback(
    State(state): State<AppState>,
    Client(client): Client,
    jar: CookieJar,
    ApiPath(provider_name): ApiPath<String>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Result<Response, BrowserError> {
    let provider = state.tokens.provider(&provider_name)?;
    // State before anything else: nothing from this request is trusted or logged
    // under a user's name until it is proven ours.
    let flow: FlowState = query
        .state
        .as_deref()
        .and_then(|s| state.sealer.open(Purpose::AuthorizationState, s).ok())
        .ok_or(ConnectError::InvalidState)?;
    if flow.provider != provider_name {
        return Err(ConnectError::InvalidState.into());
    }
    record_flow_ids(&flow.user_id, &flow.flow_id);
    // Browser binding and expiry are checked before anything is written: a leaked
    // `state` replayed by anyone must not grow the user's flow log. These failures are
    // counted (the reason label is a fixed code) and answered, never logged per request.
    let binding = binding_cookie(&state, &provider_name, &flow.flow_id, String::new()).build();
    let bound = jar
        .get(binding.name())
        .is_some_and(|c| binding_matches(c.value(), &flow.binding_hash));
    if !bound {
        // Not this browser's flow: show a page rather than send a stranger's browser
        // to the application's return URL.
        return Err(
            crate::connect::count_rejected(&provider_name, ConnectError::BrowserMismatch).into(),
        );
    }
    // The return URL is checked again: the allow-list may have changed since the link
    // was made, and a URL no longer allowed gets the page instead.
    let return_to = flow
        .return_to
        .as_ref()
        .and_then(|r| state.return_urls.check(r.as_str()));
    let flow_id = flow.flow_id.clone();
    let fail = |error: ConnectError| BrowserError {
        error: error.into(),
        return_to: return_to.clone(),
        flow_id: Some(flow_id.clone()),
    };
    if flow.expires_at < Utc::now().timestamp() {
        return Err(fail(crate::connect::count_rejected(
            &provider_name,
            ConnectError::StateExpired,
        )));
    }
    let provider_name = flow.provider.clone();
    let callback = Callback {
        code: query.code,
        provider_error: query.error.as_deref().map(oauth_error_code),
    };
    let result = state
        .connect
        .finish(provider.clone(), flow, callback, client)
        .await;
    let jar = jar.remove(binding);
    let page = match result {
        Ok(Completed::Held { code }) => {
            pending_page(return_to.as_ref(), &provider_name, &flow_id, &code)
        }
        Ok(Completed::Stored { email }) => {
            let detail = format!(
                "Your {} account{} is connected. You can close this window.",
                provider_name,
                email
                    .as_deref()
                    .map(|e| format!(" {e}"))
                    .unwrap_or_default(),
            );
            finished_page(
                return_to.as_ref(),
                &provider_name,
                &flow_id,
                "connected",
                "Connected",
                &detail,
            )
        }
        Err(error) => return Err(fail(error)),
    };
    Ok((jar, page).into_response())
}

/// A held grant's answer: the return URL with `status=pending_confirmation`, `flowId`
/// and the one-time `confirmationCode` (the only place the code ever appears), so the
/// application's backend confirms from the request the returning browser makes. With
/// no return URL, a page shows the code for the user to enter in the application.
fn pending_page(
    return_to: Option<&ReturnUrl>,
    provider: &str,
    flow_id: &str,
    code: &SecretString,
) -> Response {
    match return_to {
        Some(return_to) => {
            let url = return_to.with_query(&[
                ("status", "pending_confirmation"),
                ("provider", provider),
                ("flowId", flow_id),
                ("confirmationCode", code.expose_secret()),
            ]);
            crate::http::found(url.as_str())
        }
        None => Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Almost done</title></head>\
             <body><h1>Almost done</h1><p>Enter this code in the application you came from to finish \
             connecting your {provider} account:</p><p><code id=\"confirmationCode\">{code}</code></p>\
             <p>Enter it yourself, in your own session. Never give it to anyone: whoever enters it gets \
             access to your account.</p><p>Flow: <code id=\"flowId\">{flow_id}</code></p></body></html>",
            provider = html_escape(provider),
            code = html_escape(code.expose_secret()),
            flow_id = html_escape(flow_id),
        ))
        .into_response(),
    }
}

/// A finished flow's answer: the return URL with `status`, `provider` and `flowId`,
/// or a short page when the session had no return URL.
fn finished_page(
    return_to: Option<&ReturnUrl>,
    provider: &str,
    flow_id: &str,
    status: &str,
    title: &str,
    detail: &str,
) -> Response {
    match return_to {
        Some(return_to) => {
            let url = return_to.with_query(&[
                ("status", status),
                ("provider", provider),
                ("flowId", flow_id),
            ]);
            crate::http::found(url.as_str())
        }
        None => Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{detail}</p></body></html>",
            title = html_escape(title),
            detail = html_escape(detail),
        ))
        .into_response(),
    }
}

/// Names the flow in the handler's span, once its sealed value proved authentic.
fn record_flow_ids(user_id: &str, flow_id: &str) {
    let span = tracing::Span::current();
    span.record("user_id", user_id);
    span.record("flow_id", flow_id);
}

/// A provider's `error` parameter as a safe code: OAuth error codes are ASCII words;
/// anything else is reported as `invalid_error_parameter` rather than stored.
fn oauth_error_code(raw: &str) -> String {
    if !raw.is_empty()
        && raw.len() <= 64
        && raw.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        raw.to_string()
    } else {
        "invalid_error_parameter".into()
    }
}
