//! Connections: a user's (`GET /v1/users/{userId}/connections`), all of them
//! (`GET /v1/connections`), and their removal
//! (`DELETE /v1/users/{userId}/connections/{provider}`). Keys need `manage_connections`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{CallerOf, permitted};
use super::{ConnectionPath, UserPath, page_limit};
use crate::callers::Operation;
use crate::error::Error;
use crate::http::{ApiPath, ApiQuery, AppState, Client, Route};
use crate::ids::UserId;
use crate::oauth::grant;
use crate::series::Label;
use crate::tokens::{ConnectionSummary, TokenError};

/// `GET /v1/users/{userId}/connections`.
pub(in crate::http) const LIST: Route = Route::get("/v1/users/{user_id}/connections", &[200]);

/// `GET /v1/connections`.
pub(in crate::http) const LIST_ALL: Route = Route::get("/v1/connections", &[200]);

/// `DELETE /v1/users/{userId}/connections/{provider}`.
pub(in crate::http) const DELETE: Route =
    Route::delete("/v1/users/{user_id}/connections/{provider}", &[200]);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route(LIST.template, get(list_connections))
        .route(LIST_ALL.template, get(list_all_connections))
        .route(DELETE.template, delete(delete_connection));
    permitted(routes, state, Operation::ManageConnections)
}

/// `GET /v1/users/{userId}/connections` → `{"connections": [{"provider", "email",
/// "userInfo", "isActive", "createdAt", "updatedAt", "lastUsed", "accessTokenExpiresAt"}]}`.
#[utoipa::path(
    get,
    path = LIST.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(UserPath),
    responses((status = 200, description = "The user's connections", body = ConnectionList)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub(in crate::http) async fn list_connections(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    ApiPath(UserPath { user_id }): ApiPath<UserPath>,
) -> Result<Response, Error> {
    let mut connections = state.tokens.connections(&user_id).await?;
    // A key limited to some providers sees only their connections.
    connections
        .retain(|c| caller.may_use(&c.provider) && caller.may_use_client(c.client.as_deref()));
    Ok(axum::Json(ConnectionList { connections }).into_response())
}

#[derive(Serialize, ToSchema)]
pub(in crate::http) struct ConnectionList {
    connections: Vec<ConnectionSummary>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(in crate::http) struct AllConnectionsQuery {
    /// Only connections of this health: `at_risk` (what needs attention soon) or `dead`
    /// (what needs the user); all when absent.
    health: Option<grant::Health>,
    /// Only connections made with this OAuth client (its client id): who still holds
    /// grants of a client before it is retired. A connection made before clients were
    /// recorded names its client from its next refresh on.
    #[param(min_length = 1, max_length = 256)]
    client: Option<String>,
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
pub(in crate::http) struct AccountConnection {
    user_id: String,
    #[serde(flatten)]
    connection: ConnectionSummary,
}

#[derive(Serialize, ToSchema)]
pub(in crate::http) struct AllConnectionsPage {
    items: Vec<AccountConnection>,
    /// Where the next page starts (`after=`), or null when the table is done. A page
    /// may hold fewer items than `limit` (even none) while `next` is set.
    next: Option<String>,
}

const DEFAULT_CONNECTIONS_PAGE: usize = 100;
const MAX_CONNECTIONS_PAGE: usize = 500;

/// `GET /v1/connections?health=at_risk|dead&client=<client id>&limit=100&after=<cursor>` → connections
/// across users, for operators and for "expiring soon" jobs: `{"items": [{"userId", …
/// the fields of a user's connections list}], "next": "<cursor>" | null}`. Pages through
/// the whole tokens table (DynamoDB `Scan`, at most 2,000 rows read per page).
#[utoipa::path(
    get,
    path = LIST_ALL.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(AllConnectionsQuery),
    responses((status = 200, description = "Connections across users, in key order", body = AllConnectionsPage)),
)]
#[tracing::instrument(skip_all)]
pub(in crate::http) async fn list_all_connections(
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
    if query
        .client
        .as_deref()
        .is_some_and(|c| c.is_empty() || c.len() > 256)
    {
        return Err(Error::InvalidRequest(
            "client must be 1 to 256 characters".into(),
        ));
    }
    let filter = crate::tokens::AcrossFilter {
        health: query.health,
        client: query.client.as_deref(),
    };
    let (found, next) = state
        .tokens
        .connections_across(&filter, after, limit)
        .await?;
    let items = found
        .into_iter()
        .filter(|(user_id, connection)| {
            caller.may_use(&connection.provider)
                && caller.may_use_client(connection.client.as_deref())
                && caller.may_use_user(user_id)
        })
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
pub(in crate::http) struct DeleteQuery {
    /// `false`: forget the connection here without revoking it at the provider.
    #[param(default = true)]
    revoke: Option<bool>,
}

/// What a deletion did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(in crate::http) struct Deleted {
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
    /// What revoking means at this provider (Google: it ends every grant of the Google
    /// account to the project; Microsoft: there is no revocation a client can make).
    note: &'static str,
}

/// `DELETE /v1/users/{userId}/connections/{provider}[?revoke=false]` → 200 after
/// revoking the grant at the provider (or keeping the revocation to retry, or not, with
/// `revoke=false`) and removing the row; 404 when there was none. The answer says what
/// was revoked: `{"userId", "provider", "revocation": "revoked" | "pending" | "skipped" |
/// "not_possible", "revokedToken": "refresh_token" | "access_token", "note"}`.
#[utoipa::path(
    delete,
    path = DELETE.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(ConnectionPath, DeleteQuery),
    responses((status = 200, description = "Removed; what was revoked at the provider", body = Deleted)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
pub(in crate::http) async fn delete_connection(
    State(state): State<AppState>,
    Client(client): Client,
    CallerOf(caller): CallerOf,
    ApiPath(ConnectionPath { user_id, provider }): ApiPath<ConnectionPath>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, Error> {
    let revoke = query.revoke.unwrap_or(true);
    let note = state
        .tokens
        .provider(&provider)?
        .config()
        .profile
        .revocation_note;
    if caller.clients.is_some() {
        let client = state
            .tokens
            .connected_account(&user_id, &provider)
            .await?
            .and_then(|a| a.client_id);
        if !caller.may_use_client(client.as_deref()) {
            return Err(Error::client_not_allowed(client.as_deref()));
        }
    }
    let done = state
        .tokens
        .disconnect(&user_id, &provider, &client, revoke)
        .await?
        .ok_or(Error::Token(TokenError::NotConnected))?;
    Ok(axum::Json(Deleted {
        user_id: user_id.to_string(),
        provider,
        revocation: done.revocation.label(),
        revoked_token: done.token_kind,
        note,
    })
    .into_response())
}
