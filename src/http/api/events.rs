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
use crate::callers::Operation;
use crate::error::Error;
use crate::events::{EventPayload, StoredData};
use crate::http::{ApiQuery, AppState, Route};

/// `GET /v1/events`.
pub(in crate::http) const FEED: Route = Route::get("/v1/events", &[200]);

pub(super) fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route(FEED.template, get(list_events));
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

/// One lifecycle event, as the feed serves it and (without `id`, which travels as
/// `webhook-id`) as webhooks deliver it.
#[derive(Serialize, ToSchema)]
pub(in crate::http) struct EventEntry {
    /// Unique; ids sort as the events were made. A cursor for `after=`.
    id: String,
    /// Documented with the `data` it tells of ([`EventPayload`]).
    #[serde(rename = "type")]
    #[schema(ignore)]
    kind: String,
    /// RFC 3339 UTC, to the millisecond.
    timestamp: String,
    #[serde(flatten)]
    #[schema(value_type = EventPayload)]
    data: StoredData<'static>,
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
    path = FEED.documented(),
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
        .filter(|e| caller.may_use(&e.provider) && caller.may_use_user(&e.user_id))
        .map(|e| EventEntry {
            timestamp: e
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            id: e.id,
            kind: e.kind,
            data: StoredData::owned(e.data),
        })
        .collect();
    Ok(axum::Json(EventPage {
        items,
        next: page.next,
    })
    .into_response())
}
