//! The lifecycle events feed, `GET /v1/events`, and the schema of what webhooks
//! deliver. Keys need `consume_events`.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{CallerOf, permitted};
use super::page_limit;
use crate::error::Error;
use crate::http::{ApiQuery, AppState};
use crate::secrets::Operation;

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route("/v1/events", get(list_events));
    permitted(routes, state, Operation::ConsumeEvents)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::http) struct EventsQuery {
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
pub(in crate::http) struct EventData {
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
    /// revoked_by_user: the Google security event that ended the grant, by the last
    /// segment of its type URI (e.g. `tokens-revoked`).
    security_event: Option<String>,
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
pub(in crate::http) struct EventEntry {
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
pub(in crate::http) struct EventPage {
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
pub(in crate::http) async fn list_events(
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
