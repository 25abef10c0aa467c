//! Browser endpoints: start a flow from a connect link, finish it on the callback.

use std::sync::Arc;
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
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;

use super::browser::{BrowserError, html_escape};
use super::{ApiPath, ApiQuery, AppState, Client};
use crate::crypto::random_token;
use crate::error::Error;
use crate::oauth::ReturnUrl;
use crate::oauth::flow::{
    ConnectSession, FlowState, Purpose, binding_cookie_name, binding_matches, new_binding,
};
use crate::oauth::grant::{self, PartialGrant};
use crate::oauth::provider::OidcProvider;
use crate::oauth::provider::{AuthorizationRequest, ProviderError};
use crate::store::flow_log::ClientInfo;
use crate::store::{FlowStep, FlowSteps};
use crate::tokens::{Stored, TokenSet};

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

pub(crate) fn router() -> Router<AppState> {
    BROWSER_HEADERS.into_iter().fold(
        Router::new()
            .route("/oauth/{provider}/start", get(start))
            .route("/oauth/{provider}/callback", get(callback)),
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
        .ok_or(Error::InvalidSession)?;
    if session.provider != provider_name {
        return Err(Error::InvalidSession.into());
    }
    record_flow_ids(&session.user_id, &session.flow_id);
    if session.expires_at < Utc::now().timestamp() {
        return Err(Error::SessionExpired.into());
    }
    let fail = |error: Error| BrowserError {
        error,
        return_to: session.return_to.clone(),
        flow_id: Some(session.flow_id.clone()),
    };

    let (binding, binding_hash) = new_binding();
    let pkce_verifier = random_token(32);
    let flow = FlowState {
        user_id: session.user_id.clone(),
        provider: provider_name.clone(),
        pkce_verifier: pkce_verifier.clone(),
        nonce: random_token(32),
        return_to: session.return_to.clone(),
        expires_at: unix_time_after(state.settings.flow.state_ttl),
        flow_id: session.flow_id.clone(),
        binding_hash,
        rules: session.rules.clone(),
    };
    let sealed = state
        .sealer
        .seal(Purpose::AuthorizationState, &flow)
        .map_err(|_| fail(Error::Internal("sealing flow state failed".into())))?;
    let flow_log = state
        .flow_log
        .flow(&flow.user_id, &flow.flow_id, &provider_name, &client);
    let redirect_uri = state.settings.redirect_uri(&provider_name);
    let url = match provider
        .authorization_request(AuthorizationRequest {
            redirect_uri: &redirect_uri,
            extra_scopes: &session.rules.scopes,
            state: sealed,
            nonce: flow.nonce.clone(),
            pkce_verifier: &pkce_verifier,
            // The expected account is the natural hint for the account chooser.
            login_hint: session
                .login_hint
                .as_deref()
                .or(session.rules.expected_email.as_deref()),
            force_consent: !session.rules.skip_consent,
        })
        .await
    {
        Ok(url) => url,
        Err(e) => {
            let error = Error::from(e);
            flow_log.failed(FlowStep::AuthorizeRedirect, &error).await;
            metrics::counter!("axnt_flows_failed_total", "provider" => provider_name.clone(), "reason" => error.code()).increment(1);
            // A flow that cannot start is shown as a page: the application's return
            // URL would only hide a configuration problem from the operator.
            return Err(error.into());
        }
    };
    // Single-use: the first opening marks the flow, every later one gets a page. Marked
    // only once the redirect is ready, so a provider outage does not use up the link.
    // A refused opening writes nothing to the user's flow log (a leaked link replayed
    // must not grow it); it is counted.
    match state
        .tokens
        .mark_flow_started(&flow.flow_id, session.expires_at)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(count_rejected(&provider_name, Error::SessionUsed).into()),
        Err(error) => {
            flow_log.failed(FlowStep::AuthorizeRedirect, &error).await;
            return Err(error.into());
        }
    }
    flow_log
        .step(
            FlowStep::AuthorizeRedirect,
            json!({ "scopes": session.rules.scopes, "loginHint": session.login_hint.is_some() }),
        )
        .await;
    metrics::counter!("axnt_flows_started_total", "provider" => provider_name.clone()).increment(1);
    let cookie = binding_cookie(&state, &provider_name, &flow.flow_id, binding)
        .http_only(true)
        .secure(state.settings.is_https())
        .same_site(SameSite::Lax)
        .max_age(max_age(state.settings.flow.state_ttl))
        .build();
    let mut response = crate::http::found(url.as_str());
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
    flow_id: &str,
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

/// The Unix time `ttl` from now (saturating, like [`max_age`]).
fn unix_time_after(ttl: Duration) -> i64 {
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    Utc::now().timestamp().saturating_add(secs)
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
        .ok_or(Error::InvalidState)?;
    if flow.provider != provider_name {
        return Err(Error::InvalidState.into());
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
        return Err(count_rejected(&provider_name, Error::BrowserMismatch).into());
    }
    // The return URL is checked again: the allow-list may have changed since the link
    // was made, and a URL no longer allowed gets the page instead.
    let return_to = flow
        .return_to
        .as_ref()
        .and_then(|r| state.return_urls.check(r.as_str()));
    let flow_id = flow.flow_id.clone();
    let fail = |error: Error| BrowserError {
        error,
        return_to: return_to.clone(),
        flow_id: Some(flow_id.clone()),
    };
    if flow.expires_at < Utc::now().timestamp() {
        return Err(fail(count_rejected(&provider_name, Error::StateExpired)));
    }
    let provider_error = query.error.as_deref().map(oauth_error_code);
    let flow_log = state
        .flow_log
        .flow(&flow.user_id, &flow.flow_id, &provider_name, &client);
    flow_log
        .step(
            FlowStep::CallbackReceived,
            json!({ "hasCode": query.code.is_some(), "providerError": provider_error }),
        )
        .await;
    flow_log.step(FlowStep::StateVerified, json!({})).await;
    // From here the flow is an owned task: once the provider redeems the code, the
    // tokens exist only in this process, and a browser that leaves (or the request
    // timeout) must not drop them. The task stores the grant and completes the flow
    // log whether or not anyone still waits for its answer.
    let finishing = Finish {
        state: state.clone(),
        provider: Arc::clone(provider),
        flow,
        return_to: return_to.clone(),
        code: query.code,
        provider_error,
        client,
    };
    let result = state
        .tokens
        .spawn_owned(finishing.run())
        .await
        .map_err(|e| fail(Error::Internal(format!("callback task: {e}"))))?;
    let jar = jar.remove(binding);
    match result {
        Ok(response) => Ok((jar, response).into_response()),
        Err(error) => Err(fail(error)),
    }
}

/// The callback after `state` checked out, as an owned task.
struct Finish {
    state: AppState,
    provider: Arc<OidcProvider>,
    flow: FlowState,
    return_to: Option<ReturnUrl>,
    code: Option<String>,
    provider_error: Option<String>,
    client: ClientInfo,
}

impl Finish {
    /// Exchanges the code, verifies the ID token, stores (or holds) the grant, and
    /// records the outcome in the flow log and the metrics.
    async fn run(self) -> Result<Response, Error> {
        let name = self.provider.name().to_string();
        let flow_log =
            self.state
                .flow_log
                .flow(&self.flow.user_id, &self.flow.flow_id, &name, &self.client);
        match self.finish(&flow_log).await {
            Ok((response, held)) => {
                // A held grant completes its flow at the confirm.
                if !held {
                    metrics::counter!("axnt_flows_completed_total", "provider" => name)
                        .increment(1);
                }
                Ok(response)
            }
            Err((step, error)) => {
                metrics::counter!("axnt_flows_failed_total", "provider" => name, "reason" => error.code()).increment(1);
                flow_log.failed(step, &error).await;
                Err(error)
            }
        }
    }

    /// The steps: the answer, and whether the grant is held for confirmation. Errors
    /// carry the step that failed.
    async fn finish(
        &self,
        flow_log: &FlowSteps<'_>,
    ) -> Result<(Response, bool), (FlowStep, Error)> {
        let (state, provider, flow) = (&self.state, &self.provider, &self.flow);
        let return_to = self.return_to.as_ref();
        let name = provider.name().to_string();
        if let Some(code) = &self.provider_error {
            return Err((
                FlowStep::CallbackReceived,
                Error::AuthorizationDenied(code.clone()),
            ));
        }
        let code = self
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 4096)
            .ok_or((
                FlowStep::CallbackReceived,
                Error::InvalidRequest("the callback carries no code".into()),
            ))?;
        let tokens = provider
            .exchange_code(
                code,
                &flow.pkce_verifier,
                &state.settings.redirect_uri(&name),
            )
            .await
            .map_err(|e| match e {
                ProviderError::InvalidGrant(_) => (FlowStep::CodeExchanged, Error::CodeRejected),
                other => (FlowStep::CodeExchanged, Error::from(other)),
            })?;
        flow_log
            .step(
                FlowStep::CodeExchanged,
                json!({
                    "hasRefreshToken": tokens.refresh_token.is_some(),
                    "hasIdToken": tokens.id_token.is_some(),
                    "scope": tokens.scope,
                    "expiresIn": tokens.expires_in.map(|d| d.as_secs()),
                }),
            )
            .await;
        let id_token = tokens.id_token.as_ref().ok_or((
            FlowStep::IdTokenVerified,
            Error::IdTokenInvalid(crate::oauth::provider::IdTokenProblem::Missing),
        ))?;
        let user_info = provider
            .verify_id_token(id_token, &flow.nonce)
            .await
            .map_err(|e| (FlowStep::IdTokenVerified, Error::from(e)))?;
        flow_log
            .step(
                FlowStep::IdTokenVerified,
                json!({ "sub": user_info.sub, "email": user_info.email, "emailVerified": user_info.email_verified }),
            )
            .await;
        check_account(flow, &user_info).map_err(|e| (FlowStep::IdTokenVerified, e))?;
        let requested = provider.requested_scopes(&flow.rules.scopes);
        let mut fresh = TokenSet::from_provider(&tokens, None, Utc::now());
        if fresh.scope.is_none() {
            // RFC 6749 §5.1: no `scope` in the answer means the grant is what was asked.
            fresh.scope = Some(requested.join(" "));
        }
        let missing = grant::missing(&requested, &fresh.granted_scopes());
        let policy = flow
            .rules
            .partial_grant
            .unwrap_or(state.settings.flow.partial_grant);
        if !missing.is_empty() && policy == PartialGrant::Reject {
            // Nothing is stored: a connection the user had stays as it was. The grant is
            // not revoked either: Google's revocation would end every scope this project
            // holds for the account, that connection's included.
            return Err((FlowStep::TokensStored, Error::ScopesNotGranted { missing }));
        }
        if flow.rules.require_confirmation {
            fresh.requested_scopes = requested;
            let held = state
                .tokens
                .hold_grant(
                    &flow.flow_id,
                    &flow.user_id,
                    &name,
                    &fresh,
                    user_info.clone(),
                    state.settings.flow.confirmation_ttl,
                )
                .await
                .map_err(|e| (FlowStep::AwaitingConfirmation, e))?;
            flow_log
                .step(
                    FlowStep::AwaitingConfirmation,
                    json!({ "confirmBy": held.deadline.to_rfc3339(), "sub": user_info.sub }),
                )
                .await;
            return Ok((
                pending_page(return_to, &name, &flow.flow_id, &held.code),
                true,
            ));
        }
        let stored = state
            .tokens
            .store_grant(&flow.user_id, &name, &fresh, user_info.clone(), &requested)
            .await
            .map_err(|e| (FlowStep::TokensStored, e))?;
        flow_log
            .step(FlowStep::TokensStored, stored_step_data(&stored))
            .await;
        flow_log
            .step(FlowStep::Completed, json!({ "email": user_info.email }))
            .await;
        let detail = format!(
            "Your {} account{} is connected. You can close this window.",
            name,
            user_info
                .email
                .as_deref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default(),
        );
        let page = finished_page(
            return_to,
            &name,
            &flow.flow_id,
            "connected",
            "Connected",
            &detail,
        );
        Ok((page, false))
    }
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

/// The session's account constraints, against the verified ID token: `expectedEmail`
/// must be the token's email, verified; `hostedDomain` its `hd`. Both compared without
/// regard to ASCII case.
fn check_account(flow: &FlowState, user: &crate::store::UserInfo) -> Result<(), Error> {
    let email_ok = flow.rules.expected_email.as_ref().is_none_or(|expected| {
        user.email_verified == Some(true)
            && user
                .email
                .as_ref()
                .is_some_and(|e| e.eq_ignore_ascii_case(expected))
    });
    let domain_ok = flow.rules.hosted_domain.as_ref().is_none_or(|expected| {
        user.hd
            .as_ref()
            .is_some_and(|hd| hd.eq_ignore_ascii_case(expected))
    });
    let sub_ok = flow
        .rules
        .expected_sub
        .as_ref()
        .is_none_or(|expected| *expected == user.sub);
    if email_ok && domain_ok && sub_ok {
        Ok(())
    } else {
        Err(Error::AccountNotAllowed)
    }
}

/// The `tokens_stored` step's details: whether a connection was replaced, and by
/// another account (never silent: `accountChanged` and `previousSub`).
pub(crate) fn stored_step_data(stored: &Stored) -> serde_json::Value {
    let mut data = json!({
        "replaced": stored.replaced,
        "keptRefreshToken": stored.kept_refresh_token,
        "hasRefreshToken": stored.has_refresh_token,
        "accountChanged": stored.account_changed.is_some(),
        "grantedScopes": stored.grant.granted_scopes,
        "scopesChanged": stored.scopes_changed,
    });
    let missing = grant::missing(&stored.grant.requested_scopes, &stored.grant.granted_scopes);
    if !missing.is_empty() {
        data["partialGrant"] = json!(true);
        data["missingScopes"] = json!(missing);
    }
    if let Some(at) = stored.grant.refresh_token_expires_at {
        data["refreshTokenExpiresAt"] = json!(at);
    }
    if let Some(minted) = stored.account_grants {
        data["accountGrants"] = json!(minted);
        data["grantLimitWarning"] = json!(stored.grant_limit_warning);
    }
    if let Some(previous) = &stored.account_changed {
        data["previousSub"] = json!(previous.sub);
        data["previousEmail"] = json!(previous.email);
    }
    data
}

/// The `reason` labels of `axnt_flows_failed_total` (the problem codes a flow can end
/// with), registered at zero at start-up.
pub(crate) const FLOW_FAILURE_REASONS: [&str; 19] = [
    "invalid_session",
    "session_expired",
    "session_already_used",
    "invalid_state",
    "state_expired",
    "browser_mismatch",
    "access_denied",
    "authorization_failed",
    "id_token_invalid",
    "code_rejected",
    "account_not_allowed",
    "scopes_not_granted",
    "provider_unavailable",
    "provider_error",
    "provider_not_configured",
    "store_unavailable",
    "store_throttled",
    "keys_unavailable",
    "internal",
];

/// Counts a callback refused before anything was logged, and hands its error back.
fn count_rejected(provider_name: &str, error: Error) -> Error {
    metrics::counter!("axnt_flows_failed_total", "provider" => provider_name.to_string(), "reason" => error.code()).increment(1);
    error
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
