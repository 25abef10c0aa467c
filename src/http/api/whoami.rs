//! `GET /v1/whoami`: the caller as the service knows it (its name, how it
//! authenticated, what it may do), for a service checking its own least privilege.
//! Any valid caller may ask; it learns nothing of other callers.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{CallerOf, authenticated};
use crate::error::Error;
use crate::http::{AppState, Route};
use crate::series::Label;

/// `GET /v1/whoami`.
pub(in crate::http) const WHOAMI: Route = Route::get("/v1/whoami", &[200]);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    authenticated(Router::new().route(WHOAMI.template, get(whoami)), state)
}

/// The caller and its permissions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(in crate::http) struct Whoami {
    /// The caller's name, as audit items and metrics give it.
    name: String,
    /// How it authenticated: `api_key`, `iam` (a signed `sts:GetCallerIdentity`) or
    /// `oidc` (a workload token).
    #[schema(example = "iam")]
    kind: &'static str,
    /// The operations it may do.
    operations: Vec<&'static str>,
    /// The providers whose connections it may use; null: every provider.
    providers: Option<Vec<String>>,
    /// The OAuth clients whose connections it may use; null: every client.
    clients: Option<Vec<String>>,
    /// The user ids (patterns, `*` for any run of characters) whose connections it may
    /// use; null: every user.
    user_ids: Option<Vec<String>>,
}

/// `GET /v1/whoami` → `{"name", "kind", "operations", "providers", "clients",
/// "userIds"}` (null: not limited).
#[utoipa::path(
    get,
    path = WHOAMI.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    responses((status = 200, description = "The caller and its permissions", body = Whoami)),
)]
pub(in crate::http) async fn whoami(CallerOf(caller): CallerOf) -> Result<Response, Error> {
    Ok(axum::Json(Whoami {
        name: caller.id.clone(),
        kind: caller.kind.label(),
        operations: caller
            .allowed_operations()
            .into_iter()
            .map(|op| op.label())
            .collect(),
        providers: caller.providers.clone(),
        clients: caller.clients.clone(),
        user_ids: caller.user_ids.clone(),
    })
    .into_response())
}
