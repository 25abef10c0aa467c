//! Connect sessions: `POST /v1/connect-sessions` mints a link for one user, and
//! `POST /v1/connect-sessions/{flowId}/confirm` turns a held grant into the connection.
//! Keys need `manage_connections`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{CallerOf, permitted};
use super::{requested_return, validate_scopes};
use crate::callers::Operation;
use crate::connect::{Confirmation, LinkKind, LinkRequest};
use crate::error::Error;
use crate::http::{ApiJson, ApiPath, AppState, Client, Route};
use crate::ids::{FlowId, UserId};
use crate::oauth::flow::FlowRules;
use crate::oauth::grant::PartialGrant;
use crate::tokens::TokenError;

/// `POST /v1/connect-sessions`.
pub(in crate::http) const CREATE: Route = Route::post("/v1/connect-sessions", &[201]);

/// `POST /v1/connect-sessions/{flowId}/confirm`.
pub(in crate::http) const CONFIRM: Route =
    Route::post("/v1/connect-sessions/{flow_id}/confirm", &[200]);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route(CREATE.template, post(create_connect_session))
        .route(CONFIRM.template, post(confirm_connect_session));
    permitted(routes, state, Operation::ManageConnections)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"userId": "u-1", "provider": "google"}))]
pub(in crate::http) struct ConnectSessionRequest {
    user_id: UserId,
    /// The provider's name, e.g. `google`.
    provider: String,
    /// Where the browser is sent back; must match `AXNT_ALLOWED_RETURN_URLS`.
    #[serde(default)]
    return_to: Option<String>,
    /// The OAuth client (its client id) to connect with, one of the provider's
    /// clients (`AXNT_<NAME>_CLIENTS`); default its current one. The connection keeps
    /// it: it refreshes and is revoked with that client.
    #[serde(default)]
    #[schema(max_length = 256)]
    client: Option<String>,
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
pub(in crate::http) enum SessionMode {
    #[default]
    Connect,
    StepUp,
}

impl From<SessionMode> for LinkKind {
    fn from(mode: SessionMode) -> Self {
        match mode {
            SessionMode::Connect => Self::Connect,
            SessionMode::StepUp => Self::StepUp,
        }
    }
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
pub(in crate::http) struct ConnectSessionResponse {
    url: String,
    expires_at: DateTime<Utc>,
    #[schema(value_type = String)]
    flow_id: FlowId,
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

/// `POST /v1/connect-sessions` → 201 with the start link for one user.
///
/// ```json
/// {"userId": "u-123", "provider": "google", "returnTo": "https://app.example.com/settings",
///  "scopes": ["https://www.googleapis.com/auth/calendar.readonly"], "loginHint": "a@example.com"}
/// ```
/// answers `{"url": "http://…/oauth/google/start?session=…", "expiresAt": "…", "flowId": "…"}`.
#[utoipa::path(
    post,
    path = CREATE.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    request_body = ConnectSessionRequest,
    responses((status = 201, description = "The start link for the user", body = ConnectSessionResponse)),
)]
#[tracing::instrument(skip_all, fields(user_id = %body.user_id, provider = %body.provider))]
pub(in crate::http) async fn create_connect_session(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    ApiJson(body): ApiJson<ConnectSessionRequest>,
) -> Result<Response, Error> {
    let provider = state.tokens.provider(&body.provider)?;
    if !caller.may_use(&body.provider) {
        return Err(Error::provider_not_allowed(&body.provider));
    }
    if !caller.may_use_user(&body.user_id) {
        return Err(Error::user_not_allowed());
    }
    // The client the link would be made with: the one named, else the current one.
    let link_client = provider
        .client_id(body.client.as_deref())
        .or_else(|| body.client.clone());
    if !caller.may_use_client(link_client.as_deref()) {
        return Err(Error::client_not_allowed(link_client.as_deref()));
    }
    // A key limited to clients may not replace a connection of another client.
    if caller.clients.is_some()
        && let Some(existing) = state
            .tokens
            .connected_account(&body.user_id, &body.provider)
            .await?
        && !caller.may_use_client(existing.client_id.as_deref())
    {
        return Err(Error::client_not_allowed(existing.client_id.as_deref()));
    }
    validate_scopes(&body.scopes)?;
    validate_account_constraints(&body)?;
    if body
        .client
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 256 || c.chars().any(char::is_control))
    {
        return Err(Error::InvalidRequest(
            "client must be 1 to 256 characters, no control characters".into(),
        ));
    }
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
        client: body.client.clone(),
    };
    let mut login_hint = body.login_hint.clone();
    let mode = body.mode.unwrap_or_default();
    if mode == SessionMode::StepUp {
        let account = state
            .tokens
            .connected_account(&body.user_id, &body.provider)
            .await?
            .ok_or(Error::Token(TokenError::NotConnected))?;
        login_hint = login_hint.or(account.user_info.email);
        rules.expected_sub = Some(account.user_info.sub);
        // A step-up widens the connection's grant: with the client that made it.
        if !caller.may_use_client(account.client_id.as_deref()) {
            return Err(Error::client_not_allowed(account.client_id.as_deref()));
        }
        // A live grant keeps its refresh token: no new one need be minted, unless the
        // grant records no client and may be another's than the link's.
        rules.skip_consent =
            account.is_active && (account.client_id.is_some() || !provider.has_other_clients());
        rules.client = account.client_id.or(rules.client);
    }
    let link = state
        .connect
        .mint_link(
            &client,
            LinkRequest {
                user_id: &body.user_id,
                provider: &body.provider,
                return_to,
                login_hint,
                rules,
                kind: mode.into(),
            },
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

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::http) struct ConfirmRequest {
    /// The application's user it checked is logged in on the request the returning
    /// browser made: the user the flow was started for, or the held grant is discarded
    /// (404).
    ///
    /// Required: a confirm without it is refused as one by another user would be.
    #[serde(default)]
    #[schema(value_type = UserId, required = true)]
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
pub(in crate::http) struct ConfirmResponse {
    #[schema(value_type = String)]
    flow_id: FlowId,
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
    path = CONFIRM.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(("flowId" = String, Path, min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9-]+$", description = "The flow id from POST /v1/connect-sessions")),
    request_body(content = ConfirmRequest, description = "The application's logged-in user on the returning browser's request, and the code the return redirect carried"),
    responses((status = 200, description = "The held grant is now the connection", body = ConfirmResponse)),
)]
#[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
pub(in crate::http) async fn confirm_connect_session(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    ApiPath(flow_id): ApiPath<FlowId>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Error> {
    let body = body?;
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
    if request
        .user_id
        .as_ref()
        .is_some_and(|u| !caller.may_use_user(u.as_str()))
    {
        return Err(Error::user_not_allowed());
    }
    let confirmed = state
        .connect
        .confirm(
            caller,
            client,
            Confirmation {
                flow_id: flow_id.clone(),
                user_id: request.user_id,
                code: request.confirmation_code.map(|c| c.0),
            },
        )
        .await?;
    let grant = &confirmed.grant;
    let confirmed = ConfirmResponse {
        flow_id,
        user_id: grant.user_id.clone(),
        provider: grant.provider.clone(),
        email: grant.user_info.email.clone(),
        sub: grant.user_info.sub.clone(),
        replaced: confirmed.stored.replaced,
        account_changed: confirmed.stored.account_changed.is_some(),
        previous_account: confirmed.stored.account_changed.clone(),
    };
    Ok(axum::Json(confirmed).into_response())
}
