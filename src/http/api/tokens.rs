//! Token reads: `GET /v1/users/{userId}/tokens/{provider}` hands out a valid access
//! token, each read recorded in the audit trail first. Keys need `read_tokens`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{CallerOf, permitted};
use super::{ConnectionPath, RequestId, requested_return, validate_scopes};
use crate::callers::Operation;
use crate::connect::{LinkKind, LinkRequest};
use crate::error::Error;
use crate::http::{ApiPath, ApiQuery, AppState, Client, Route};
use crate::ids::UserId;
use crate::oauth::flow::FlowRules;
use crate::oauth::grant;

/// `GET /v1/users/{userId}/tokens/{provider}`.
pub(in crate::http) const READ: Route = Route::get("/v1/users/{user_id}/tokens/{provider}", &[200]);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route(READ.template, get(get_token));
    permitted(routes, state, Operation::ReadTokens)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(in crate::http) struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: DateTime<Utc>,
    scope: Option<&'a str>,
    email: Option<&'a str>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::http) struct TokenQuery {
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
    path = READ.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(ConnectionPath, TokenQuery),
    responses((status = 200, description = "A valid access token", body = TokenResponse)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
pub(in crate::http) async fn get_token(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    request_id: RequestId,
    ApiPath(ConnectionPath { user_id, provider }): ApiPath<ConnectionPath>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Response, Error> {
    let result = read_token(&state, &client, &caller, &user_id, &provider, query).await;
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
            request_id: request_id.as_str(),
        })
        .await
        .map_err(|_| Error::AuditUnavailable)?;
    result.map(|(response, _)| response)
}

/// The token read behind [`get_token`]: the answer, and the token it handed out.
async fn read_token(
    state: &AppState,
    client: &crate::store::flow_log::ClientInfo,
    caller: &crate::callers::Caller,
    user_id: &UserId,
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
    // A key limited to clients learns nothing of other clients' connections, and
    // refreshes none: checked before the read, the same whether there is one or not.
    if caller.clients.is_some() {
        let client_id = state
            .tokens
            .connected_account(user_id, provider)
            .await?
            .and_then(|a| a.client_id);
        if !caller.may_use_client(client_id.as_deref()) {
            return Err(Error::client_not_allowed(client_id.as_deref()));
        }
    }
    let token = state.tokens.valid_token(user_id, provider, client).await?;
    let missing = if required.is_empty() {
        Vec::new()
    } else {
        let granted = token
            .scope
            .as_deref()
            .map(grant::parse_scopes)
            .unwrap_or_default();
        grant::missing(&required, &granted)
    };
    if !missing.is_empty() {
        let rules = FlowRules {
            scopes: missing.clone(),
            // The step-up widens the grant with the client that made it.
            client: token.client_id.as_deref().map(str::to_string),
            expected_sub: Some(token.sub.clone()),
            // The grant is live (its token was just served): no new refresh token,
            // unless the grant records no client and may be another's than the link's.
            skip_consent: token.client_id.is_some()
                || !state.tokens.provider(provider)?.has_other_clients(),
            // Bound like any link: the confirm names the user and the code.
            require_confirmation: state.settings.flow.require_confirmation,
            ..FlowRules::default()
        };
        let link = state
            .connect
            .mint_link(
                client,
                LinkRequest {
                    user_id,
                    provider,
                    return_to,
                    login_hint: token.email.clone(),
                    rules,
                    kind: LinkKind::StepUp,
                },
            )
            .await?;
        return Err(Error::InsufficientScope {
            missing,
            step_up_url: link.url,
        });
    }
    let body = TokenResponse {
        access_token: token.access_token.expose_secret(),
        token_type: &token.token_type,
        expires_at: token.expires_at,
        scope: token.scope.as_deref(),
        email: token.email.as_deref(),
    };
    let response = json_response(&body)?;
    Ok((response, token))
}

/// `body` as a JSON answer, written once into a buffer of about its size.
fn json_response(body: &TokenResponse<'_>) -> Result<Response, Error> {
    let size = 96
        + body.access_token.len()
        + body.token_type.len()
        + body.scope.map_or(0, str::len)
        + body.email.map_or(0, str::len);
    let mut bytes = Vec::with_capacity(size);
    serde_json::to_writer(&mut bytes, body)
        .map_err(|e| Error::Internal(format!("writing a token answer: {e}")))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}
