//! Importing one grant made elsewhere, for a service that migrates user by user:
//! `POST /v1/users/{userId}/connections/{provider}/import`. Keys need
//! `import_connections`, which a key only has when its `operations` name it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{CallerOf, permitted};
use super::{ConnectionPath, RequestId};
use crate::callers::Operation;
use crate::error::Error;
use crate::http::{ApiPath, ApiQuery, AppState, Client, Route};
use crate::tokens::{ConnectionSummary, ImportOptions, ImportOutcome, ImportedGrant, TokenError};

/// `POST /v1/users/{userId}/connections/{provider}/import`.
pub(in crate::http) const IMPORT: Route = Route::post(
    "/v1/users/{user_id}/connections/{provider}/import",
    &[200, 201],
);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route(IMPORT.template, post(import_connections));
    permitted(routes, state, Operation::ImportConnections)
}

/// How the grant is imported.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::http) struct ImportQuery {
    /// Replace an existing connection (otherwise the answer is 409
    /// `already_connected` and the connection stays as it is).
    #[serde(default)]
    replace: bool,
    /// Redeem the refresh token once before answering (one refresh at the provider;
    /// a rotating provider's new refresh token is stored), record the scopes the
    /// provider reports, and take `sub` and `email` from it when the body lacks them.
    #[serde(default)]
    verify: bool,
    /// With `verify`: keep a grant found dead, inactive (otherwise the answer is 409
    /// `reauthorization_required` and nothing is stored).
    #[serde(default)]
    keep_dead: bool,
}

/// The grant to import: the migration format's fields but `userId` and `provider`,
/// which the path gives (a body that repeats them must agree).
///
/// Documentation only: the body is read by the migration format's own parser, the one
/// `axnt-oauth import` uses.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub(in crate::http) struct ImportBody {
    /// The refresh token (never echoed, logged or listed).
    #[schema(example = "1//0g…")]
    refresh_token: String,
    /// A current access token, used until `expiresAt` (ignored with `verify`).
    access_token: Option<String>,
    /// When the access token expires: RFC 3339, or epoch seconds.
    #[schema(value_type = Option<String>, example = "2026-12-05T10:00:00Z")]
    expires_at: Option<String>,
    /// The scopes the grant holds: a list, or one space-separated string.
    scopes: Option<Vec<String>>,
    /// The account's subject at the provider.
    sub: Option<String>,
    email: Option<String>,
    /// The OAuth client (its client id) the grant was made with, when the provider has
    /// several; the current one when absent.
    client: Option<String>,
    /// When the user consented: RFC 3339, or epoch seconds.
    #[schema(value_type = Option<String>)]
    consented_at: Option<String>,
}

/// A body sent as `application/json`, as bytes: read by the migration format's parser,
/// whose errors never quote a value (serde's, which axum's `Json` answers with, do).
pub(in crate::http) struct JsonBytes(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBytes {
    type Rejection = Error;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Error::UnsupportedMediaType(
                "send Content-Type: application/json".into(),
            ));
        }
        Ok(Self(Bytes::from_request(request, state).await?))
    }
}

/// What the import did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(in crate::http) struct ImportAnswer {
    /// `stored`, `replaced`, `unchanged` (this refresh token is the connection's
    /// already) or `dead_kept`.
    outcome: &'static str,
    /// Whether the refresh token was redeemed.
    verified: bool,
    connection: ConnectionSummary,
}

/// `POST /v1/users/{userId}/connections/{provider}/import[?replace=true&verify=true]`
/// with the grant as JSON → 201 (stored) or 200 (replaced) with the connection as the
/// lists show it; 409 `already_connected` when one exists; 400 naming the field of a
/// malformed body (never its value). Emits `connection.imported`; the audit records
/// the caller.
#[utoipa::path(
    post,
    path = IMPORT.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(ConnectionPath, ImportQuery),
    request_body(content = ImportBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Imported as a new connection", body = ImportAnswer),
        (status = 200, description = "Imported over an existing connection (replace)", body = ImportAnswer),
        (status = 409, description = "A connection exists (already_connected), or verify found the token dead (reauthorization_required)"),
    ),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
pub(in crate::http) async fn import_connections(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    request_id: RequestId,
    ApiPath(ConnectionPath { user_id, provider }): ApiPath<ConnectionPath>,
    ApiQuery(query): ApiQuery<ImportQuery>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, Error> {
    if !caller.may_use(&provider) {
        return Err(TokenError::ProviderNotAllowed(provider).into());
    }
    let mut value: Value = serde_json::from_slice(&body).map_err(|e| {
        Error::InvalidRequest(format!(
            "the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(fields) = &mut value else {
        return Err(Error::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    };
    for (field, from_path) in [
        ("userId", user_id.as_str()),
        ("provider", provider.as_str()),
    ] {
        match fields.get(field) {
            None => {
                fields.insert(field.to_string(), Value::String(from_path.to_string()));
            }
            Some(Value::String(given)) if given == from_path => {}
            Some(_) => {
                return Err(Error::InvalidRequest(format!(
                    "{field}: the body names another than the path"
                )));
            }
        }
    }
    let grant =
        ImportedGrant::from_value(value).map_err(|e| Error::InvalidRequest(e.to_string()))?;
    if query.keep_dead && !query.verify {
        return Err(Error::InvalidRequest(
            "keepDead needs verify (only a verify finds a grant dead)".into(),
        ));
    }
    let tokens = Arc::clone(&state.tokens);
    // The client the grant would be refreshed with: a configured one, never echoed
    // from the body otherwise.
    let import_client = tokens.provider(&provider)?.client_id(grant.client());
    if import_client.is_none() && grant.client().is_some() {
        return Err(Error::InvalidRequest(format!(
            "client: not one of the OAuth clients configured for {provider}"
        )));
    }
    if !caller.may_use_client(import_client.as_deref()) {
        return Err(Error::client_not_allowed(import_client.as_deref()));
    }
    // A key limited to clients may not replace, or learn of, another client's
    // connection (as for connect sessions).
    if caller.clients.is_some()
        && let Some(existing) = tokens.connected_account(&user_id, &provider).await?
        && !caller.may_use_client(existing.client_id.as_deref())
    {
        return Err(Error::client_not_allowed(existing.client_id.as_deref()));
    }
    let options = ImportOptions {
        replace: query.replace,
        verify: query.verify,
        keep_dead: query.keep_dead,
        dry_run: false,
    };
    // An owned task: a caller that hangs up mid-verify does not leave the grant
    // half-imported (stored, unannounced).
    let by = caller.id.clone();
    let importer = Arc::clone(&tokens);
    let outcome = tokens
        .spawn_owned(async move { importer.import_grant(&grant, options, &by, &client).await })
        .await
        .map_err(|e| TokenError::Internal(format!("the import task ended: {e}")))??;
    let label = outcome.label();
    let (status, verified, connection) = match outcome {
        ImportOutcome::Stored {
            replaced,
            verified,
            connection,
        } => (
            if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            verified,
            connection,
        ),
        ImportOutcome::Exists => return Err(TokenError::AlreadyConnected.into()),
        ImportOutcome::Unchanged { connection } => {
            (StatusCode::OK, !connection.unverified, connection)
        }
        ImportOutcome::Dead { cause, kept: false } => {
            return Err(TokenError::ReauthorizationRequired { cause }.into());
        }
        ImportOutcome::Dead { kept: true, .. } => {
            let connection = listed(&tokens, &user_id, &provider).await?;
            (StatusCode::CREATED, true, Box::new(connection))
        }
        ImportOutcome::WouldStore { .. } => {
            return Err(Error::Token(TokenError::Internal(
                "an import that was not a dry run answered as one".into(),
            )));
        }
    };
    let scopes = connection.granted_scopes.join(" ");
    state.audit.record_action(crate::audit::Read {
        caller: &caller.id,
        user_id: user_id.as_str(),
        provider: &provider,
        outcome: crate::audit::ReadOutcome::Imported,
        reason: None,
        scopes: Some(&scopes),
        request_id: request_id.as_str(),
    });
    Ok((
        status,
        axum::Json(ImportAnswer {
            outcome: label,
            verified,
            connection: *connection,
        }),
    )
        .into_response())
}

/// The connection as the user's list shows it.
async fn listed(
    tokens: &crate::tokens::TokenService,
    user_id: &crate::ids::UserId,
    provider: &str,
) -> Result<ConnectionSummary, Error> {
    Ok(tokens
        .connections(user_id)
        .await?
        .into_iter()
        .find(|c| c.provider == provider)
        .ok_or(TokenError::NotConnected)?)
}
