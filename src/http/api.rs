//! The internal API: bearer-key authenticated JSON for the application's services.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::client::ClientKey;
use super::{ApiJson, ApiPath, ApiQuery, AppState, Client};
use crate::error::Error;
use crate::oauth::flow::{
    ConnectSession, FlowRules, MAX_SEALED_LEN, Purpose, SealError, StateSealer,
};
use crate::oauth::grant::{self, PartialGrant};
use crate::secrets::{ApiKey, Caller, Operation};
use crate::store::{FlowLogEntry, FlowStep};
use crate::tokens::{ConnectionSummary, UserId};

pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/connect-sessions", post(create_connect_session))
        .route(
            "/v1/connect-sessions/{flow_id}/confirm",
            post(confirm_connect_session),
        )
        .route("/v1/users/{user_id}/tokens/{provider}", get(get_token))
        .route("/v1/users/{user_id}/connections", get(list_connections))
        .route("/v1/connections", get(list_all_connections))
        .route(
            "/v1/users/{user_id}/connections/{provider}",
            delete(delete_connection),
        )
        .route("/v1/users/{user_id}/flow-logs", get(list_flow_logs))
        .route("/v1/audit", get(list_audit))
        .route("/v1/events", get(list_events))
        .route_layer(middleware::from_fn_with_state(state, require_api_key))
}

/// Checks `Authorization: Bearer <key>` against the configured keys in constant time.
/// The key is checked first: only a call without a valid key meets the brake on failed
/// authentication (see [`super::limits`]).
async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .and_then(|v| ApiKey::parse(v.trim()).ok());
    let caller = presented.and_then(|key| state.secrets.caller_of(&key));
    let Some(caller) = caller else {
        let (parts, _) = request.into_parts();
        let Some(client) = super::client_ip(&parts, &state.trusted_proxies) else {
            return Err(Error::Unauthorized);
        };
        let client = ClientKey::from(client);
        let limits = &state.rate_limits;
        return match limits.braked(client).or_else(|| limits.auth_failed(client)) {
            Some(retry_after_secs) => Err(Error::RateLimited { retry_after_secs }),
            None => Err(Error::Unauthorized),
        };
    };
    let mut request = request;
    if let Some(operation) = operation_of(&request) {
        metrics::counter!("axnt_api_calls_total", "caller" => caller.id.clone(), "operation" => operation.as_str())
            .increment(1);
        if !caller.may(operation) {
            if operation == Operation::ReadTokens {
                let read = TokenPath::of(&request);
                audit_refusal(&state, read, &caller.id, "caller_not_allowed").await?;
            }
            return Err(Error::CallerNotAllowed(format!(
                "do {} (its operations are limited)",
                operation.as_str()
            )));
        }
        // A provider in the path is checked here; one in a body by its handler.
        if let Some(provider) = path_provider(&request)
            && !caller.may_use(provider)
        {
            if operation == Operation::ReadTokens {
                let read = TokenPath::of(&request);
                audit_refusal(&state, read, &caller.id, "caller_not_allowed").await?;
            }
            return Err(Error::provider_not_allowed(provider));
        }
    }
    request.extensions_mut().insert(CallerOf(caller));
    Ok(next.run(request).await)
}

/// The user id (decoded), provider and request id of a token read's request
/// (`/v1/users/{user_id}/tokens/{provider}`), as its path and headers carry them.
struct TokenPath {
    user_id: String,
    provider: String,
    request_id: Option<String>,
}

impl TokenPath {
    fn of(request: &Request) -> Option<Self> {
        let segments: Vec<&str> = request.uri().path().split('/').collect();
        let (Some(user), Some(provider)) = (segments.get(3), segments.get(5)) else {
            return None;
        };
        Some(Self {
            user_id: percent_encoding::percent_decode_str(user)
                .decode_utf8_lossy()
                .into_owned(),
            provider: (*provider).to_string(),
            request_id: request_id(request.headers()).map(str::to_string),
        })
    }
}

/// Audits a token read refused before its handler ran (the key's limits); fails when
/// the audit trail cannot take the record.
async fn audit_refusal(
    state: &AppState,
    read: Option<TokenPath>,
    caller: &str,
    reason: &'static str,
) -> Result<(), Error> {
    let Some(read) = read else {
        return Ok(());
    };
    state
        .audit
        .record(crate::audit::Read {
            caller,
            user_id: &read.user_id,
            provider: &read.provider,
            outcome: crate::audit::ReadOutcome::Refused,
            reason: Some(reason),
            scopes: None,
            request_id: read.request_id.as_deref(),
        })
        .await
        .map_err(|_| Error::AuditUnavailable)
}

/// The request's id (`x-request-id`, set or passed on by the request-id layer).
fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
}

/// The operation a matched internal-API route is, for key limits and metrics.
fn operation_of(request: &Request) -> Option<Operation> {
    let route = request.extensions().get::<MatchedPath>()?.as_str();
    Some(match route {
        "/v1/users/{user_id}/tokens/{provider}" => Operation::ReadTokens,
        "/v1/users/{user_id}/flow-logs" | "/v1/audit" => Operation::ReadLogs,
        "/v1/events" => Operation::ConsumeEvents,
        _ => Operation::ManageConnections,
    })
}

/// The `{provider}` of a route that names one in its path (its last segment).
fn path_provider(request: &Request) -> Option<&str> {
    let route = request.extensions().get::<MatchedPath>()?.as_str();
    route
        .ends_with("/{provider}")
        .then(|| request.uri().path().rsplit('/').next())
        .flatten()
}

/// The caller whose key the request presented (set by [`require_api_key`]).
#[derive(Clone)]
pub(super) struct CallerOf(pub(super) std::sync::Arc<Caller>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CallerOf {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Error> {
        parts
            .extensions
            .get::<CallerOf>()
            .cloned()
            .ok_or_else(|| Error::Internal("no caller on an authenticated route".into()))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"userId": "u-1", "provider": "google"}))]
pub(super) struct ConnectSessionRequest {
    /// 1 to 256 bytes of printable text without `/`, `\` or invisible characters,
    /// and not `.` or `..`.
    #[schema(value_type = String, min_length = 1, max_length = 256, pattern = r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$")]
    user_id: UserId,
    /// The provider's name, e.g. `google`.
    provider: String,
    /// Where the browser is sent back; must match `AXNT_ALLOWED_RETURN_URLS`.
    #[serde(default)]
    return_to: Option<String>,
    /// Scopes beyond `openid email profile`: at most 20 OAuth scope tokens.
    #[serde(default)]
    #[schema(max_items = 20, schema_with = scope_tokens)]
    scopes: Vec<String>,
    /// The account to preselect: at most 320 bytes, no control characters.
    #[serde(default)]
    #[schema(max_length = 320, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    login_hint: Option<String>,
    /// Hold the grant until `POST /v1/connect-sessions/{flowId}/confirm` with the
    /// one-time `confirmationCode` the return redirect carries. Default
    /// `AXNT_REQUIRE_CONFIRMATION` (on), except for a session with `expectedEmail` or
    /// `hostedDomain`, which the verified ID token binds; `false` is honoured only for
    /// such a session (or with the setting off).
    #[serde(default)]
    require_confirmation: Option<bool>,
    /// Only the Google account with this verified email may complete the flow
    /// (compared without regard to case); also the `login_hint` when none is given.
    #[serde(default)]
    #[schema(
        max_length = 320,
        pattern = r"^[^@\s\u0000-\u001f\u007f-\u009f]+@[^@\s\u0000-\u001f\u007f-\u009f]+$"
    )]
    expected_email: Option<String>,
    /// Only an account of this Google Workspace domain (the ID token's `hd`) may
    /// complete the flow.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9.-]{1,253}$")]
    hosted_domain: Option<String>,
    /// A grant lacking some of the requested scopes: `accept` stores it and lists what
    /// is missing, `reject` stores nothing and returns
    /// `status=error&error=scopes_not_granted&missingScopes=…` (default
    /// `AXNT_PARTIAL_GRANT`).
    #[serde(default)]
    partial_grant: Option<PartialGrant>,
    /// `connect` (default), or `step_up`: add `scopes` to the user's existing
    /// connection (incremental authorization); only the connected Google account may
    /// complete it, and the scopes it already holds are kept. 404 `not_connected` when
    /// there is no connection.
    #[serde(default)]
    mode: Option<SessionMode>,
}

/// What a connect session is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum SessionMode {
    #[default]
    Connect,
    StepUp,
}

/// `scopes` as [`validate_scopes`] accepts them.
fn scope_tokens() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")),
        )
        .max_items(Some(20))
        .build()
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConnectSessionResponse {
    url: String,
    expires_at: DateTime<Utc>,
    flow_id: String,
    require_confirmation: bool,
}

/// `expectedEmail` and `hostedDomain`, when given: bounded, printable, one `@` in an
/// email, DNS characters in a domain. Compared case-insensitively at the callback.
fn validate_account_constraints(body: &ConnectSessionRequest) -> Result<(), Error> {
    if body.expected_email.as_ref().is_some_and(|e| {
        e.len() > 320
            || e.matches('@').count() != 1
            || e.starts_with('@')
            || e.ends_with('@')
            || e.chars().any(|c| c.is_control() || c.is_whitespace())
    }) {
        return Err(Error::InvalidRequest(
            "expectedEmail must be an email address of at most 320 characters".into(),
        ));
    }
    if body.hosted_domain.as_ref().is_some_and(|d| {
        d.is_empty()
            || d.len() > 253
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    }) {
        return Err(Error::InvalidRequest(
            "hostedDomain must be a domain name (letters, digits, dots and hyphens)".into(),
        ));
    }
    Ok(())
}

/// A caller's optional `returnTo`: the normalised URL, none when none was given, or
/// `return_url_not_allowed`.
fn requested_return(
    state: &AppState,
    candidate: Option<&str>,
) -> Result<Option<crate::oauth::ReturnUrl>, Error> {
    candidate
        .map(|url| {
            state
                .return_urls
                .check(url)
                .ok_or(Error::ReturnUrlNotAllowed)
        })
        .transpose()
}

/// Scopes a caller may add: OAuth scope tokens (RFC 6749 §3.3), a bounded number.
fn validate_scopes(scopes: &[String]) -> Result<(), Error> {
    if scopes.len() > 20 {
        return Err(Error::InvalidRequest("at most 20 scopes".into()));
    }
    let valid = |s: &String| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    };
    if scopes.iter().all(valid) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(
            "each scope must be a non-empty scope token without spaces or quotes".into(),
        ))
    }
}

/// `POST /v1/connect-sessions` → 201 with the start link for one user.
///
/// ```json
/// {"userId": "u-123", "provider": "google", "returnTo": "https://app.example.com/settings",
///  "scopes": ["https://www.googleapis.com/auth/calendar.readonly"], "loginHint": "a@example.com"}
/// ```
/// answers `{"url": "http://…/oauth/google/start?session=…", "expiresAt": "…", "flowId": "…"}`.
#[utoipa::path(
    post,
    path = "/v1/connect-sessions",
    tag = "internal",
    security(("bearerAuth" = [])),
    request_body = ConnectSessionRequest,
    responses((status = 201, description = "The start link for the user", body = ConnectSessionResponse)),
)]
#[tracing::instrument(skip_all, fields(user_id = %body.user_id, provider = %body.provider))]
pub(super) async fn create_connect_session(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    ApiJson(body): ApiJson<ConnectSessionRequest>,
) -> Result<Response, Error> {
    state.tokens.provider(&body.provider)?;
    if !caller.may_use(&body.provider) {
        return Err(Error::provider_not_allowed(&body.provider));
    }
    validate_scopes(&body.scopes)?;
    validate_account_constraints(&body)?;
    if body
        .login_hint
        .as_ref()
        .is_some_and(|h| h.len() > 320 || h.chars().any(char::is_control))
    {
        return Err(Error::InvalidRequest(
            "loginHint must be at most 320 characters".into(),
        ));
    }
    let return_to = requested_return(&state, body.return_to.as_deref())?;
    // A session pinned to an account is bound by the verified ID token; any other is
    // bound by the confirmation (the deployment's floor: a session may ask for it,
    // never waive it unpinned).
    let pinned = body.expected_email.is_some() || body.hosted_domain.is_some();
    let mut rules = FlowRules {
        scopes: body.scopes.clone(),
        require_confirmation: body.require_confirmation == Some(true)
            || (state.settings.flow.require_confirmation && !pinned),
        expected_email: body.expected_email.clone(),
        hosted_domain: body.hosted_domain.clone(),
        partial_grant: body.partial_grant,
        expected_sub: None,
        skip_consent: false,
    };
    let mut login_hint = body.login_hint.clone();
    let mode = body.mode.unwrap_or_default();
    if mode == SessionMode::StepUp {
        let account = state
            .tokens
            .connected_account(body.user_id.as_str(), &body.provider)
            .await?
            .ok_or(Error::NotConnected)?;
        login_hint = login_hint.or(account.user_info.email);
        rules.expected_sub = Some(account.user_info.sub);
        // A live grant keeps its refresh token: no new one need be minted.
        rules.skip_consent = account.is_active;
    }
    let link = mint_link(
        &state,
        &client,
        body.user_id.as_str(),
        &body.provider,
        return_to,
        login_hint,
        rules,
        mode,
    )
    .await?;
    let response = ConnectSessionResponse {
        url: link.url,
        expires_at: link.expires_at,
        flow_id: link.flow_id,
        require_confirmation: link.require_confirmation,
    };
    Ok((StatusCode::CREATED, axum::Json(response)).into_response())
}

/// A connect link as minted.
struct Link {
    url: String,
    expires_at: DateTime<Utc>,
    flow_id: String,
    require_confirmation: bool,
}

/// Mints a connect link for one user (the session sealed into the start URL) and logs
/// `session_created`: for `POST /v1/connect-sessions` and a token read's step-up link.
#[allow(clippy::too_many_arguments)]
async fn mint_link(
    state: &AppState,
    client: &crate::store::flow_log::ClientInfo,
    user_id: &str,
    provider: &str,
    return_to: Option<crate::oauth::ReturnUrl>,
    login_hint: Option<String>,
    rules: FlowRules,
    mode: SessionMode,
) -> Result<Link, Error> {
    let now = Utc::now();
    // Saturating: a TTL past the calendar's end means a link that never expires.
    let expires_at = chrono::TimeDelta::from_std(state.settings.flow.connect_session_ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let session = ConnectSession {
        user_id: user_id.to_string(),
        provider: provider.to_string(),
        return_to: return_to.clone(),
        login_hint,
        flow_id: uuid::Uuid::new_v4().to_string(),
        expires_at: expires_at.timestamp(),
        rules,
    };
    let sealed = seal_link(&state.sealer, &session)?;
    let mut url = url::Url::parse(
        &state
            .settings
            .public_url(&format!("/oauth/{provider}/start")),
    )
    .map_err(|e| Error::Internal(format!("public URL: {e}")))?;
    url.query_pairs_mut().append_pair("session", &sealed);
    state
        .flow_log
        .flow(user_id, &session.flow_id, provider, client)
        .step(
            FlowStep::SessionCreated,
            json!({
                "returnTo": return_to,
                "scopes": session.rules.scopes,
                "expiresAt": expires_at.to_rfc3339(),
                "requireConfirmation": session.rules.require_confirmation,
                "expectedEmail": session.rules.expected_email,
                "hostedDomain": session.rules.hosted_domain,
                "partialGrant": session.rules.partial_grant,
                "mode": match mode {
                    SessionMode::Connect => "connect",
                    SessionMode::StepUp => "step_up",
                },
            }),
        )
        .await;
    Ok(Link {
        url: url.to_string(),
        expires_at,
        flow_id: session.flow_id,
        require_confirmation: session.rules.require_confirmation,
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ConfirmRequest {
    /// The application's user it checked is logged in on the request the returning
    /// browser made: the user the flow was started for, or the held grant is discarded
    /// (404).
    ///
    /// Required: a confirm without it is refused as one by another user would be.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 256, pattern = r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$")]
    user_id: Option<UserId>,
    /// The `confirmationCode` the flow's return redirect carried (one-time); a wrong
    /// one discards the held grant (404).
    ///
    /// Required: a confirm without it (the flow id alone) is refused as a wrong code is.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 128)]
    confirmation_code: Option<ConfirmationCode>,
}

/// A confirmation code as presented: secret (never shown in a `Debug` or an error),
/// bounded.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct ConfirmationCode(secrecy::SecretString);

impl TryFrom<String> for ConfirmationCode {
    type Error = &'static str;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        if code.is_empty() || code.len() > 128 {
            return Err("confirmationCode must be the code the return redirect carried");
        }
        Ok(Self(secrecy::SecretString::from(code)))
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfirmResponse {
    flow_id: String,
    user_id: String,
    provider: String,
    email: Option<String>,
    sub: String,
    /// Whether a connection existed before (now replaced).
    replaced: bool,
    /// Whether the replaced connection was another Google account's.
    account_changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_account: Option<crate::store::ReplacedAccount>,
}

/// `POST /v1/connect-sessions/{flowId}/confirm` with `{"userId": "…",
/// "confirmationCode": "…"}` → 200 once the application's backend, on the request the
/// returning browser made, has checked its logged-in user and presents that user and
/// the code the return redirect carried: the held grant becomes the connection. 404
/// `confirmation_not_found` when no grant awaits (never held, already confirmed), or
/// the user or the code is not the flow's (the grant is then discarded); 410
/// `confirmation_expired` past `AXNT_CONFIRMATION_TTL_SECS`; 503 when the grant cannot
/// be opened now (it stays held: retry).
#[utoipa::path(
    post,
    path = "/v1/connect-sessions/{flowId}/confirm",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(("flowId" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-]+$", description = "The flow id from POST /v1/connect-sessions")),
    request_body(content = ConfirmRequest, description = "The application's logged-in user on the returning browser's request, and the code the return redirect carried"),
    responses((status = 200, description = "The held grant is now the connection", body = ConfirmResponse)),
)]
#[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
pub(super) async fn confirm_connect_session(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    ApiPath(flow_id): ApiPath<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Error> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge
        } else {
            Error::InvalidRequest("the body could not be read".into())
        }
    })?;
    if flow_id.is_empty()
        || flow_id.len() > 64
        || !flow_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::InvalidRequest(
            "flowId must be a flow id from POST /v1/connect-sessions".into(),
        ));
    }
    // An empty body is the flow id alone: refused below as a wrong code is, and the
    // grant discarded. serde's message is not passed on: it could quote the code.
    let request: ConfirmRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConfirmRequest {
            user_id: None,
            confirmation_code: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            Error::InvalidRequest(
                "the body must be {\"userId\": \"…\", \"confirmationCode\": \"…\"}: the user the \
                 application checked is logged in, and the code the return redirect carried"
                    .into(),
            )
        })?
    };
    // An owned task: once the held grant is taken, only this call holds it; a caller
    // that hangs up (or the request timeout) must not drop it halfway between the take
    // and the store (or the put-back).
    let task_state = state.clone();
    let confirmed = state
        .tokens
        .spawn_owned(
            async move { confirm_and_log(task_state, caller, client, flow_id, request).await },
        )
        .await
        .map_err(|e| Error::Internal(format!("confirm task: {e}")))??;
    Ok(axum::Json(confirmed).into_response())
}

/// Confirms a held grant, then records the flow's last steps and its metrics.
async fn confirm_and_log(
    state: AppState,
    caller: std::sync::Arc<crate::secrets::Caller>,
    client: crate::store::flow_log::ClientInfo,
    flow_id: String,
    request: ConfirmRequest,
) -> Result<ConfirmResponse, Error> {
    let confirmed = state
        .tokens
        .confirm_grant(
            &flow_id,
            request.user_id.as_ref().map(UserId::as_str),
            request.confirmation_code.as_ref().map(|c| &c.0),
            &client,
            &|provider| caller.may_use(provider),
        )
        .await;
    let confirmed = match confirmed {
        Ok(confirmed) => confirmed,
        Err(error) => {
            metrics::counter!("axnt_confirmations_total", "outcome" => error.code()).increment(1);
            return Err(error);
        }
    };
    let grant = &confirmed.grant;
    let flow_log = state
        .flow_log
        .flow(&grant.user_id, &flow_id, &grant.provider, &client);
    flow_log.step(FlowStep::Confirmed, json!({})).await;
    flow_log
        .step(
            FlowStep::TokensStored,
            super::oauth::stored_step_data(&confirmed.stored),
        )
        .await;
    flow_log
        .step(
            FlowStep::Completed,
            json!({ "email": grant.user_info.email }),
        )
        .await;
    metrics::counter!("axnt_confirmations_total", "outcome" => "confirmed").increment(1);
    metrics::counter!("axnt_flows_completed_total", "provider" => grant.provider.clone())
        .increment(1);
    Ok(ConfirmResponse {
        flow_id,
        user_id: grant.user_id.clone(),
        provider: grant.provider.clone(),
        email: grant.user_info.email.clone(),
        sub: grant.user_info.sub.clone(),
        replaced: confirmed.stored.replaced,
        account_changed: confirmed.stored.account_changed.is_some(),
        previous_account: confirmed.stored.account_changed.clone(),
    })
}

/// Seals the link's `session`, and checks the `state` `/start` will make from it fits
/// too, so no link fails only after the user consented.
fn seal_link(sealer: &StateSealer, session: &ConnectSession) -> Result<String, Error> {
    let seal = || {
        sealer.seal(Purpose::AuthorizationState, &session.largest_state())?;
        sealer.seal(Purpose::ConnectSession, session)
    };
    seal().map_err(|e| match e {
        SealError::TooLarge => Error::InvalidRequest(format!(
            "the connect link would be longer than {MAX_SEALED_LEN} characters: \
             shorten returnTo or loginHint, or request fewer scopes"
        )),
        SealError::Invalid => Error::Internal("sealing the connect session failed".into()),
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_at: DateTime<Utc>,
    scope: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TokenQuery {
    /// Scopes the caller needs, comma- or space-separated (at most 20). When the grant
    /// lacks any, the answer is 403 `insufficient_scope` with `missingScopes` and a
    /// `stepUpUrl` that asks the user for exactly those.
    #[param(
        max_length = 5400,
        pattern = r"^[\x20-\x7e]*$",
        example = "https://www.googleapis.com/auth/calendar.readonly"
    )]
    required_scopes: Option<String>,
    /// Where the `stepUpUrl` returns the browser (it must match
    /// `AXNT_ALLOWED_RETURN_URLS`); the return redirect carries the `confirmationCode`
    /// the step-up's confirm needs. Without it the step-up ends on a page.
    #[param(
        max_length = 2048,
        pattern = r"^[\x21-\x7e]*$",
        example = "https://app.example.com/settings"
    )]
    return_to: Option<String>,
}

/// `GET /v1/users/{userId}/tokens/{provider}[?requiredScopes=a,b]` → a valid access
/// token: `{"accessToken": "…", "tokenType": "Bearer", "expiresAt": "…", "scope": "…",
/// "email": "…"}`; 403 `insufficient_scope` (with `missingScopes` and `stepUpUrl`) when
/// the grant lacks a required scope.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/tokens/{provider}",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(("userId" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$", example = "u-1", description = "The application's id for its user: 1 to 256 bytes of printable text without `/`, `\\` or invisible characters, and not `.` or `..`"), ("provider" = String, Path, example = "google", description = "The provider's name"), TokenQuery),
    responses((status = 200, description = "A valid access token", body = TokenResponse)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
pub(super) async fn get_token(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    headers: axum::http::HeaderMap,
    ApiPath((user_id, provider)): ApiPath<(UserId, String)>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Response, Error> {
    let result = read_token(&state, &client, user_id.as_str(), &provider, query).await;
    let (outcome, reason, scopes) = match &result {
        Ok((_, token)) => (
            match token.source {
                crate::tokens::token_set::TokenSource::Refreshed => {
                    crate::audit::ReadOutcome::Refreshed
                }
                _ => crate::audit::ReadOutcome::Served,
            },
            None,
            token.scope.as_deref(),
        ),
        Err(e) => (crate::audit::ReadOutcome::Refused, Some(e.code()), None),
    };
    // Answered only once recorded: a read the audit trail cannot take (its queue
    // stayed full) is refused, its token not handed out.
    state
        .audit
        .record(crate::audit::Read {
            caller: &caller.id,
            user_id: user_id.as_str(),
            provider: &provider,
            outcome,
            reason,
            scopes,
            request_id: request_id(&headers),
        })
        .await
        .map_err(|_| Error::AuditUnavailable)?;
    result.map(|(response, _)| response)
}

/// The token read behind [`get_token`]: the answer, and the token it handed out.
async fn read_token(
    state: &AppState,
    client: &crate::store::flow_log::ClientInfo,
    user_id: &str,
    provider: &str,
    query: TokenQuery,
) -> Result<(Response, crate::tokens::IssuedToken), Error> {
    let required: Vec<String> = query
        .required_scopes
        .as_deref()
        .map(|text| {
            text.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    validate_scopes(&required).map_err(|_| {
        Error::InvalidRequest(
            "requiredScopes must be at most 20 scope tokens, separated by commas".into(),
        )
    })?;
    let return_to = requested_return(state, query.return_to.as_deref())?;
    let token = state.tokens.valid_token(user_id, provider, client).await?;
    let granted = token
        .scope
        .as_deref()
        .map(grant::parse_scopes)
        .unwrap_or_default();
    let missing = grant::missing(&required, &granted);
    if !missing.is_empty() {
        let rules = FlowRules {
            scopes: missing.clone(),
            expected_sub: Some(token.sub.clone()),
            // The grant is live (its token was just served): no new refresh token.
            skip_consent: true,
            // Bound like any link: the confirm names the user and the code.
            require_confirmation: state.settings.flow.require_confirmation,
            ..FlowRules::default()
        };
        let link = mint_link(
            state,
            client,
            user_id,
            provider,
            return_to,
            token.email.clone(),
            rules,
            SessionMode::StepUp,
        )
        .await?;
        return Err(Error::InsufficientScope {
            missing,
            step_up_url: link.url,
        });
    }
    let body = TokenResponse {
        access_token: token.access_token.expose_secret().to_string(),
        token_type: token.token_type.clone(),
        expires_at: token.expires_at,
        scope: token.scope.clone(),
        email: token.email.clone(),
    };
    Ok((axum::Json(body).into_response(), token))
}

/// `GET /v1/users/{userId}/connections` → `{"connections": [{"provider", "email",
/// "userInfo", "isActive", "createdAt", "updatedAt", "lastUsed", "accessTokenExpiresAt"}]}`.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/connections",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(("userId" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$", example = "u-1", description = "The application's id for its user: 1 to 256 bytes of printable text without `/`, `\\` or invisible characters, and not `.` or `..`")),
    responses((status = 200, description = "The user's connections", body = ConnectionList)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub(super) async fn list_connections(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    ApiPath(user_id): ApiPath<UserId>,
) -> Result<Response, Error> {
    let mut connections = state.tokens.connections(user_id.as_str()).await?;
    // A key limited to some providers sees only their connections.
    connections.retain(|c| caller.may_use(&c.provider));
    Ok(axum::Json(ConnectionList { connections }).into_response())
}

#[derive(Serialize, ToSchema)]
pub(super) struct ConnectionList {
    connections: Vec<ConnectionSummary>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AllConnectionsQuery {
    /// Only connections of this health: `at_risk` (what needs attention soon) or `dead`
    /// (what needs the user); all when absent.
    health: Option<grant::Health>,
    /// Items per page.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<usize>,
    /// `next` of the previous page.
    #[param(min_length = 1, max_length = 1400)]
    after: Option<String>,
}

/// One connection of some user, as `GET /v1/connections` lists it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AccountConnection {
    user_id: String,
    #[serde(flatten)]
    connection: ConnectionSummary,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AllConnectionsPage {
    items: Vec<AccountConnection>,
    /// Where the next page starts (`after=`), or null when the table is done. A page
    /// may hold fewer items than `limit` (even none) while `next` is set.
    next: Option<String>,
}

const DEFAULT_CONNECTIONS_PAGE: usize = 100;
const MAX_CONNECTIONS_PAGE: usize = 500;

/// `GET /v1/connections?health=at_risk|dead&limit=100&after=<cursor>` → connections
/// across users, for operators and for "expiring soon" jobs: `{"items": [{"userId", …
/// the fields of a user's connections list}], "next": "<cursor>" | null}`. Pages through
/// the whole tokens table (DynamoDB `Scan`, at most 2,000 rows read per page).
#[utoipa::path(
    get,
    path = "/v1/connections",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(AllConnectionsQuery),
    responses((status = 200, description = "Connections across users, in key order", body = AllConnectionsPage)),
)]
#[tracing::instrument(skip_all)]
pub(super) async fn list_all_connections(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    ApiQuery(query): ApiQuery<AllConnectionsQuery>,
) -> Result<Response, Error> {
    let limit = page_limit(query.limit, DEFAULT_CONNECTIONS_PAGE, MAX_CONNECTIONS_PAGE)?;
    let after = query
        .after
        .as_deref()
        .map(|text| {
            decode_cursor(text).ok_or_else(|| {
                Error::InvalidRequest("after must be the next of a previous page".into())
            })
        })
        .transpose()?;
    let (found, next) = state
        .tokens
        .connections_across(query.health, after, limit)
        .await?;
    let items = found
        .into_iter()
        .filter(|(_, connection)| caller.may_use(&connection.provider))
        .map(|(user_id, connection)| AccountConnection {
            user_id,
            connection,
        })
        .collect();
    Ok(axum::Json(AllConnectionsPage {
        items,
        next: next.as_ref().map(encode_cursor),
    })
    .into_response())
}

/// A scan position as the API hands it out: base64url of `[userId, provider]`.
fn encode_cursor(cursor: &crate::store::ScanCursor) -> String {
    let json = serde_json::to_vec(&(&cursor.user_id, &cursor.provider)).unwrap_or_default();
    crate::crypto::b64url(&json)
}

fn decode_cursor(text: &str) -> Option<crate::store::ScanCursor> {
    if text.is_empty() || text.len() > 1400 {
        return None;
    }
    let json = crate::crypto::b64url_decode(text)?;
    let (user_id, provider): (String, String) = serde_json::from_slice(&json).ok()?;
    UserId::parse(&user_id).ok()?;
    Some(crate::store::ScanCursor { user_id, provider })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    /// `false`: forget the connection here without revoking it at the provider.
    #[param(default = true)]
    revoke: Option<bool>,
}

/// What a deletion did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Deleted {
    user_id: String,
    provider: String,
    /// `revoked` (the provider accepted it), `pending` (the provider kept failing: the
    /// revocation is kept and retried, across restarts, for up to three days),
    /// `skipped` (`revoke=false`) or `not_possible` (no revocation endpoint, the
    /// provider refused it, or the stored tokens do not open).
    revocation: &'static str,
    /// Which token was (or will be) revoked: `refresh_token` (the whole grant) or
    /// `access_token` (a grant without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_token: Option<&'static str>,
    /// What revoking means at Google.
    note: &'static str,
}

/// `DELETE /v1/users/{userId}/connections/{provider}[?revoke=false]` → 200 after
/// revoking the grant at the provider (or keeping the revocation to retry, or not, with
/// `revoke=false`) and removing the row; 404 when there was none. The answer says what
/// was revoked: `{"userId", "provider", "revocation": "revoked" | "pending" | "skipped" |
/// "not_possible", "revokedToken": "refresh_token" | "access_token", "note"}`.
#[utoipa::path(
    delete,
    path = "/v1/users/{userId}/connections/{provider}",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(("userId" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$", example = "u-1", description = "The application's id for its user: 1 to 256 bytes of printable text without `/`, `\\` or invisible characters, and not `.` or `..`"), ("provider" = String, Path, example = "google", description = "The provider's name"), DeleteQuery),
    responses((status = 200, description = "Removed; what was revoked at the provider", body = Deleted)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
pub(super) async fn delete_connection(
    State(state): State<AppState>,
    Client(client): Client,
    ApiPath((user_id, provider)): ApiPath<(UserId, String)>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, Error> {
    let revoke = query.revoke.unwrap_or(true);
    let done = state
        .tokens
        .disconnect(user_id.as_str(), &provider, &client, revoke)
        .await?
        .ok_or(Error::NotConnected)?;
    Ok(axum::Json(Deleted {
        user_id: user_id.to_string(),
        provider,
        revocation: done.revocation.label(),
        revoked_token: done.token_kind,
        note: "Google's revocation ends every scope this project was granted for that Google account, including grants held for other user ids.",
    })
    .into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FlowLogQuery {
    /// Items per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<usize>,
    /// `nextBefore` of the previous page.
    #[param(min_length = 1, max_length = 64)]
    before: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct FlowLogPage {
    items: Vec<FlowLogEntry>,
    /// Where the next page starts (`before=`), or null on the last page.
    next_before: Option<String>,
}

const DEFAULT_FLOW_LOG_PAGE: usize = 50;
const MAX_FLOW_LOG_PAGE: usize = 500;

/// A page's `limit`: `default` when absent, else 1 to `max`.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Error> {
    let n = limit.unwrap_or(default);
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(Error::InvalidRequest(format!("limit must be 1 to {max}")))
    }
}

/// A flow-log or audit page's `limit` (default 50, at most 500), once `before` is
/// checked to be a sort key's length.
fn log_page(limit: Option<usize>, before: Option<&str>) -> Result<usize, Error> {
    let limit = page_limit(limit, DEFAULT_FLOW_LOG_PAGE, MAX_FLOW_LOG_PAGE)?;
    if before.is_some_and(|b| b.is_empty() || b.len() > 64) {
        return Err(Error::InvalidRequest(
            "before must be a timestamp from a previous page".into(),
        ));
    }
    Ok(limit)
}

/// Whether a stored step (flow log or audit, both name their provider) is one a
/// provider-limited key may read.
fn visible_to(caller: &Caller, entry: &FlowLogEntry) -> bool {
    caller.providers.is_none()
        || entry
            .data
            .get("provider")
            .and_then(|p| p.as_str())
            .is_some_and(|p| caller.may_use(p))
}

/// `GET /v1/users/{userId}/flow-logs?limit=50&before=<timestamp>` → the user's flow
/// steps, newest first: `{"items": [...], "nextBefore": "<timestamp>" | null}`.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/flow-logs",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(("userId" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$", example = "u-1", description = "The application's id for its user: 1 to 256 bytes of printable text without `/`, `\\` or invisible characters, and not `.` or `..`"), FlowLogQuery),
    responses((status = 200, description = "The user's flow steps, newest first", body = FlowLogPage)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub(super) async fn list_flow_logs(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    ApiPath(user_id): ApiPath<UserId>,
    ApiQuery(query): ApiQuery<FlowLogQuery>,
) -> Result<Response, Error> {
    let limit = log_page(query.limit, query.before.as_deref())?;
    let items: Vec<FlowLogEntry> = state
        .flow_log
        .log()
        .list(user_id.as_str(), limit, query.before.as_deref())
        .await?;
    let next_before = (items.len() == limit)
        .then(|| items.last().map(|e| e.timestamp.clone()))
        .flatten();
    // A page may hold fewer than `limit` for a provider-limited key; `nextBefore`
    // still pages on.
    let items = items
        .into_iter()
        .filter(|e| visible_to(&caller, e))
        .collect();
    Ok(axum::Json(FlowLogPage { items, next_before }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// The user whose token reads to list.
    #[param(min_length = 1, max_length = 256)]
    user_id: Option<String>,
    /// The caller (API key id) whose token reads to list; with `userId`, that caller's
    /// reads of that user's tokens.
    #[param(min_length = 1, max_length = 64)]
    caller: Option<String>,
    /// Items per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<usize>,
    /// `nextBefore` of the previous page.
    #[param(min_length = 1, max_length = 64)]
    before: Option<String>,
}

/// One audit item: a token read (or a window of them) by one caller, or its refusals
/// folded past its first in a window.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuditEntry {
    /// Sort key: when, and a unique suffix.
    timestamp: String,
    /// The API key's id (its name, or `key-` and a hash prefix).
    caller: Option<String>,
    /// The user whose token was read; null on a folded item.
    user_id: Option<String>,
    /// The provider; null on a folded item.
    provider: Option<String>,
    /// `served`, `refreshed` or `refused`.
    outcome: Option<String>,
    /// Whether the item folds a caller's refusals of one reason past its first in a
    /// window, whichever user and provider they named (`userId` and `provider` null;
    /// listed under `caller=` only). Served reads are never folded.
    folded: bool,
    /// A refusal's problem code.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The scopes of the token handed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<String>,
    /// The request's `x-request-id` (of the last read of a window).
    request_id: String,
    /// How many reads this item stands for (the first of a window is an item of its
    /// own; a folded item counts its refusals).
    count: u64,
    first_at: Option<String>,
    last_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct AuditPage {
    items: Vec<AuditEntry>,
    /// Where the next page starts (`before=`), or null on the last page.
    next_before: Option<String>,
}

/// `GET /v1/audit?userId=|caller=&limit=50&before=` → token reads, newest first: who
/// (the key's id) read or was refused which user's token, with what scopes, in which
/// request. Never a token.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(AuditQuery),
    responses((status = 200, description = "Token reads, newest first", body = AuditPage)),
)]
#[tracing::instrument(skip_all)]
pub(super) async fn list_audit(
    State(state): State<AppState>,
    CallerOf(reader): CallerOf,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, Error> {
    let limit = log_page(query.limit, query.before.as_deref())?;
    let partition = match (&query.user_id, &query.caller) {
        (Some(user), _) => {
            UserId::parse(user.as_str())
                .map_err(|e| Error::InvalidRequest(format!("userId: {e}")))?;
            crate::audit::user_partition(user)
        }
        (None, Some(caller)) if !caller.is_empty() && caller.len() <= 64 => {
            crate::audit::caller_partition(caller)
        }
        _ => {
            return Err(Error::InvalidRequest(
                "give userId or caller (an API key's id)".into(),
            ));
        }
    };
    let entries: Vec<FlowLogEntry> = state
        .audit
        .list(&partition, limit, query.before.as_deref())
        .await?;
    let next_before = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.timestamp.clone()))
        .flatten();
    let text =
        |e: &FlowLogEntry, key: &str| e.data.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let items = entries
        .iter()
        .filter(|e| e.step == FlowStep::TokenRead)
        .filter(|e| {
            query
                .caller
                .as_ref()
                .is_none_or(|c| text(e, "caller").as_ref() == Some(c))
        })
        .filter(|e| visible_to(&reader, e))
        .map(|e| AuditEntry {
            timestamp: e.timestamp.clone(),
            caller: text(e, "caller"),
            user_id: text(e, "userId"),
            provider: text(e, "provider"),
            outcome: text(e, "outcome"),
            folded: e
                .data
                .get("folded")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            reason: e.error.clone(),
            scopes: text(e, "scopes"),
            request_id: e.flow_id.clone(),
            count: e.data.get("count").and_then(|v| v.as_u64()).unwrap_or(1),
            first_at: text(e, "firstAt"),
            last_at: text(e, "lastAt"),
        })
        .collect();
    Ok(axum::Json(AuditPage { items, next_before }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// `next` of a previous page (an event's id): the page starts after it. Absent:
    /// from the oldest event kept.
    #[param(
        min_length = 36,
        max_length = 36,
        example = "019ac1a2-7b3c-7d4e-8f50-6a7b8c9d0e1f"
    )]
    after: Option<String>,
    /// Events per page.
    #[param(minimum = 1, maximum = 500, default = 100)]
    limit: Option<usize>,
}

/// What an event's `data` may hold: `userId` and `provider` always, the rest by type.
/// Never a token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // the schema of a JSON map the events carry, never built
pub(super) struct EventData {
    user_id: String,
    provider: String,
    /// The account's `sub` (created, reauthorized, deleted).
    sub: Option<String>,
    email: Option<String>,
    /// The scopes the grant holds (created, reauthorized, scopes_changed, recovered).
    granted_scopes: Option<Vec<String>>,
    requested_scopes: Option<Vec<String>>,
    /// scopes_changed: what the grant held before, and the difference.
    previous_granted_scopes: Option<Vec<String>>,
    added_scopes: Option<Vec<String>>,
    removed_scopes: Option<Vec<String>>,
    /// reauthorized: a grant of another Google account replaced the connection.
    account_changed: Option<bool>,
    previous_sub: Option<String>,
    previous_email: Option<String>,
    /// reauthorized: whether the replaced grant was alive.
    was_active: Option<bool>,
    /// refresh_failed, revoked_by_user: why (see the causes table in docs/grants.md).
    cause: Option<String>,
    remedy: Option<String>,
    /// refresh_failed: false once the grant is dead; true while the provider fails
    /// and refreshes pause for `retryAfterSecs`.
    is_active: Option<bool>,
    retry_after_secs: Option<u64>,
    /// expiring_soon: when the grant is forecast to end, and why.
    predicted_expiry: Option<String>,
    reason: Option<String>,
    /// deleted: `revoked`, `pending`, `skipped` or `not_possible`, and which token.
    revocation: Option<String>,
    revoked_token: Option<String>,
    /// Any type: this event repeats the one with this id, written again because the
    /// store took longer than its bound to write that one (a cursor may have passed
    /// it). De-duplicate on it as on `id`.
    original_id: Option<String>,
}

/// One lifecycle event, as the feed serves it and (without `id`, which travels as
/// `webhook-id`) as webhooks deliver it.
#[derive(Serialize, ToSchema)]
pub(super) struct EventEntry {
    /// Unique; ids sort as the events were made. A cursor for `after=`.
    id: String,
    #[serde(rename = "type")]
    #[schema(value_type = crate::events::EventType)]
    kind: String,
    /// RFC 3339 UTC, to the millisecond.
    timestamp: String,
    #[schema(value_type = EventData)]
    data: serde_json::Map<String, serde_json::Value>,
}

/// What a webhook delivers: the feed's item without `id` (which is `webhook-id`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the schema of the body the webhooks send, never built here
pub(crate) struct WebhookPayload {
    #[serde(rename = "type")]
    #[schema(value_type = crate::events::EventType)]
    kind: String,
    /// When the event was made: RFC 3339 UTC, to the millisecond.
    timestamp: String,
    #[schema(value_type = EventData)]
    data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct EventPage {
    /// Oldest first.
    items: Vec<EventEntry>,
    /// `after=` for the next page: the last event of this one, or where it started
    /// when it is empty (poll again with it).
    next: String,
}

const DEFAULT_EVENT_PAGE: usize = 100;
const MAX_EVENT_PAGE: usize = 500;

/// `GET /v1/events?after=<cursor>&limit=100` → lifecycle events after the cursor,
/// oldest first, for applications that poll instead of (or as well as) receiving
/// webhooks: `{"items": [{"id", "type", "timestamp", "data"}], "next": "<cursor>"}`.
/// Replayable from any cursor within retention (`AXNT_EVENTS_RETENTION_DAYS`); the
/// newest `AXNT_EVENTS_FEED_DELAY_MS` are held back.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "internal",
    security(("bearerAuth" = [])),
    params(EventsQuery),
    responses((status = 200, description = "Events after the cursor, oldest first", body = EventPage)),
)]
#[tracing::instrument(skip_all)]
pub(super) async fn list_events(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, Error> {
    let limit = page_limit(query.limit, DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE)?;
    if let Some(after) = &query.after
        && !crate::events::is_cursor(after)
    {
        return Err(Error::InvalidRequest(
            "after must be `next` (or an event id) from a previous page".into(),
        ));
    }
    let page = state
        .tokens
        .events_page(query.after.as_deref(), limit)
        .await?;
    // A provider-limited key sees its providers' events only; `next` pages on past
    // the others.
    let items = page
        .items
        .into_iter()
        .filter(|e| caller.may_use(&e.provider))
        .map(|e| EventEntry {
            timestamp: e
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            id: e.id,
            kind: e.kind,
            data: e.data,
        })
        .collect();
    Ok(axum::Json(EventPage {
        items,
        next: page.next,
    })
    .into_response())
}
