//! What happened: a user's flow steps (`GET /v1/users/{userId}/flow-logs`) and the
//! audit trail of token reads (`GET /v1/audit`). Keys need `read_logs`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{CallerOf, permitted};
use super::{UserPath, page_limit};
use crate::callers::{Caller, Operation};
use crate::error::Error;
use crate::http::{ApiPath, ApiQuery, AppState, Route};
use crate::ids::UserId;
use crate::store::{FlowLogEntry, FlowStep};

/// `GET /v1/users/{userId}/flow-logs`.
pub(in crate::http) const FLOW_LOGS: Route = Route::get("/v1/users/{user_id}/flow-logs", &[200]);

/// `GET /v1/audit`.
pub(in crate::http) const AUDIT: Route = Route::get("/v1/audit", &[200]);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route(FLOW_LOGS.template, get(list_flow_logs))
        .route(AUDIT.template, get(list_audit));
    permitted(routes, state, Operation::ReadLogs)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(in crate::http) struct FlowLogQuery {
    /// Items per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<usize>,
    /// `nextBefore` of the previous page.
    #[param(min_length = 1, max_length = 64)]
    before: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(in crate::http) struct FlowLogPage {
    items: Vec<FlowLogEntry>,
    /// Where the next page starts (`before=`), or null on the last page.
    next_before: Option<String>,
}

const DEFAULT_FLOW_LOG_PAGE: usize = 50;
const MAX_FLOW_LOG_PAGE: usize = 500;

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
    let named = |field: &str, may: &dyn Fn(&str) -> bool| {
        entry
            .data
            .get(field)
            .and_then(|v| v.as_str())
            .is_some_and(may)
    };
    // An audit item names its user in `data`; a flow-log step is its user's item.
    let user_ok = caller.user_ids.is_none()
        || named("userId", &|u| caller.may_use_user(u))
        || (!entry.user_id.starts_with('/') && caller.may_use_user(&entry.user_id));
    (caller.providers.is_none() || named("provider", &|p| caller.may_use(p))) && user_ok
}

/// `GET /v1/users/{userId}/flow-logs?limit=50&before=<timestamp>` → the user's flow
/// steps, newest first: `{"items": [...], "nextBefore": "<timestamp>" | null}`.
#[utoipa::path(
    get,
    path = FLOW_LOGS.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(UserPath, FlowLogQuery),
    responses((status = 200, description = "The user's flow steps, newest first", body = FlowLogPage)),
)]
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub(in crate::http) async fn list_flow_logs(
    State(state): State<AppState>,
    CallerOf(caller): CallerOf,
    ApiPath(UserPath { user_id }): ApiPath<UserPath>,
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
pub(in crate::http) struct AuditQuery {
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
pub(in crate::http) struct AuditEntry {
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
pub(in crate::http) struct AuditPage {
    items: Vec<AuditEntry>,
    /// Where the next page starts (`before=`), or null on the last page.
    next_before: Option<String>,
}

/// `GET /v1/audit?userId=|caller=&limit=50&before=` → token reads, newest first: who
/// (the key's id) read or was refused which user's token, with what scopes, in which
/// request. Never a token.
#[utoipa::path(
    get,
    path = AUDIT.documented(),
    tag = "internal",
    security(("bearerAuth" = [])),
    params(AuditQuery),
    responses((status = 200, description = "Token reads, newest first", body = AuditPage)),
)]
#[tracing::instrument(skip_all)]
pub(in crate::http) async fn list_audit(
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
