//! Lifecycle events: what happened to a connection, told to the application. Each is
//! made here and stored in the same write as the change that caused it (see
//! [`TokenStore::put`](crate::store::TokenStore::put)), then read back in order by the
//! pull feed (`GET /v1/events`) and the webhook workers.
//!
//! # At least once
//!
//! Readers walk the events in id order and hand out (or keep) a cursor: the id of the
//! last event read. An event stored after a cursor passed its id would never be read,
//! so the feed reads only events older than its delay, and the stores keep the
//! invariant that makes that enough:
//!
//! > an event is readable within the store's write bound of the moment its id names,
//! > or it is never stored.
//!
//! The store makes an event's id as it writes it (under SQLite's write lock; at the
//! start of each DynamoDB transaction attempt, whose late answers are fenced, see
//! `store::dynamodb`), so no wait before the write counts, and reports its bound
//! ([`TokenStore::event_write_bound`]). What remains between instances is their clocks'
//! difference ([`CLOCK_ALLOWANCE`]): a feed delay of at least the write bound plus that
//! allowance passes no event still to land. A shorter `AXNT_EVENTS_FEED_DELAY_MS` is
//! raised to it ([`EventRules::new`]), with a warning at start-up. A DynamoDB write that
//! is found stored only after its bound is written again by the store under fresh ids
//! (its copies' `data.originalId` naming the events they repeat): readers need not know.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::store::{Event, EventFeed, StoreError, event_bound, event_millis};

/// The kinds of lifecycle event (the payload's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum EventType {
    /// A user connected an account for the first time (no row before).
    #[serde(rename = "connection.created")]
    Created,
    /// A new grant replaced the connection's: a reconnection, a step-up, or another
    /// Google account (`accountChanged`).
    #[serde(rename = "connection.reauthorized")]
    Reauthorized,
    /// The scopes the provider says the grant holds changed.
    #[serde(rename = "connection.scopes_changed")]
    ScopesChanged,
    /// A refresh failed: the grant is dead (`isActive: false`, with its `cause`), or
    /// the provider is failing and refreshes pause (`isActive: true`).
    #[serde(rename = "connection.refresh_failed")]
    RefreshFailed,
    /// A refresh succeeded after failed ones.
    #[serde(rename = "connection.recovered")]
    Recovered,
    /// The grant is forecast to end soon (`predictedExpiry`, `reason`).
    #[serde(rename = "connection.expiring_soon")]
    ExpiringSoon,
    /// The user (or Google, for the account) revoked the grant, as Google's security
    /// events tell.
    #[serde(rename = "connection.revoked_by_user")]
    RevokedByUser,
    /// The connection was removed through the API (`revocation` says what became of
    /// the grant at the provider).
    #[serde(rename = "connection.deleted")]
    Deleted,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Created => "connection.created",
            EventType::Reauthorized => "connection.reauthorized",
            EventType::ScopesChanged => "connection.scopes_changed",
            EventType::RefreshFailed => "connection.refresh_failed",
            EventType::Recovered => "connection.recovered",
            EventType::ExpiringSoon => "connection.expiring_soon",
            EventType::RevokedByUser => "connection.revoked_by_user",
            EventType::Deleted => "connection.deleted",
        }
    }
}

/// The event `check` stores with its probe row's removal: proves the events table
/// takes transactional writes, and is never served or delivered.
pub(crate) const PROBE_KIND: &str = "check.probe";

/// How far the clocks of the hosts sharing a store may disagree: an event's id is
/// made by one host's clock, the feed's bound by another's.
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_millis(500);

/// How events are kept and served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventRules {
    /// Events are purged this long after they were made.
    pub(crate) retention: Duration,
    /// The feed holds back events younger than this: never less than the store's
    /// write bound plus [`CLOCK_ALLOWANCE`] (see [`EventRules::new`]).
    pub(crate) feed_delay: Duration,
}

impl Default for EventRules {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(14 * 86_400),
            feed_delay: Duration::from_millis(3_000),
        }
    }
}

/// What an event's `data` may hold: `userId` and `provider` always, the rest by type.
/// Never a token.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // the schema of a JSON map the events carry, never built
pub(crate) struct EventData {
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

// The webhook body is this type, serialized, and its OpenAPI schema is derived from it.
/// What a webhook delivers: the feed's item without `id` (which is `webhook-id`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookPayload<'a> {
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    kind: &'a str,
    /// When the event was made: RFC 3339 UTC, to the millisecond.
    timestamp: String,
    #[schema(value_type = EventData)]
    data: &'a Map<String, Value>,
}

impl<'a> WebhookPayload<'a> {
    pub(crate) fn of(event: &'a Event) -> Self {
        Self {
            kind: &event.kind,
            timestamp: event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data: &event.data,
        }
    }
}

impl EventRules {
    /// Events kept `retention`, the feed holding back `feed_delay` but never less than
    /// the shortest delay that keeps at-least-once over a store whose event writes are
    /// readable within `write_bound` of their ids: that bound plus [`CLOCK_ALLOWANCE`].
    pub(crate) fn new(retention: Duration, feed_delay: Duration, write_bound: Duration) -> Self {
        Self {
            retention,
            feed_delay: feed_delay.max(write_bound + CLOCK_ALLOWANCE),
        }
    }

    /// Says at start-up when the `configured` delay was raised.
    pub(crate) fn warn_if_raised(&self, configured: Duration) {
        if configured < self.feed_delay {
            tracing::warn!(
                configured_ms = configured.as_millis() as u64,
                used_ms = self.feed_delay.as_millis() as u64,
                "AXNT_EVENTS_FEED_DELAY_MS is shorter than the longest an event write can take plus the clock allowance: \
                 a feed or webhook cursor could pass an event still being written, so the shortest safe delay is used"
            );
        }
    }
}

impl EventRules {
    /// An event of `kind` about one connection; `details` (an object) joins `userId`
    /// and `provider` in its `data`.
    pub(crate) fn make(
        &self,
        kind: EventType,
        user_id: &str,
        provider: &str,
        details: Value,
    ) -> Event {
        self.make_kind(kind.name(), user_id, provider, details)
    }

    pub(crate) fn make_kind(
        &self,
        kind: &str,
        user_id: &str,
        provider: &str,
        details: Value,
    ) -> Event {
        // Ordered by creation within this process; the timestamp is the id's own.
        let id = uuid::Uuid::now_v7().to_string();
        let timestamp = event_millis(&id)
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let mut data = Map::new();
        data.insert("userId".into(), json!(user_id));
        data.insert("provider".into(), json!(provider));
        if let Value::Object(extra) = details {
            data.extend(extra);
        }
        let retention = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        Event {
            id,
            kind: kind.to_string(),
            user_id: user_id.to_string(),
            provider: provider.to_string(),
            timestamp,
            data,
            expires_at: timestamp.timestamp().saturating_add(retention),
        }
    }
}

/// Whether `cursor` has the shape of an event id (the feed's cursors are ids).
pub(crate) fn is_cursor(cursor: &str) -> bool {
    cursor.len() == 36
        && cursor.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// One page of the feed.
pub(crate) struct FeedPage {
    pub(crate) items: Vec<Event>,
    /// Where the next page starts: the last event served, or where this one started.
    pub(crate) next: String,
}

/// The events after `after` (from the oldest kept when absent or older), oldest first,
/// at most `limit`, none younger than the feed delay.
pub(crate) async fn feed_page(
    store: &dyn EventFeed,
    rules: &EventRules,
    after: Option<&str>,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<FeedPage, StoreError> {
    let now_ms = now.timestamp_millis();
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    // A cursor older than retention starts at the oldest event kept: nothing before it
    // is left, and the store is not walked day by day back to it.
    let oldest = event_bound(now_ms.saturating_sub(millis(rules.retention)));
    let start = after
        .filter(|a| *a > oldest.as_str())
        .map_or(oldest, str::to_string);
    let until = event_bound(now_ms.saturating_sub(millis(rules.feed_delay)));
    if start >= until {
        return Ok(FeedPage {
            items: Vec::new(),
            next: start,
        });
    }
    let read = store.events_between(&start, &until, limit).await?;
    let next = read.last().map_or(start, |e| e.id.clone());
    let items = read.into_iter().filter(|e| e.kind != PROBE_KIND).collect();
    Ok(FeedPage { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_delay_below_the_write_bound_and_clock_allowance_is_raised_to_it() {
        let bound = Duration::from_secs(2);
        let day = Duration::from_secs(86_400);
        for (configured, used) in [(0, 2_500), (2_499, 2_500), (2_500, 2_500), (3_000, 3_000)] {
            let rules = EventRules::new(day, Duration::from_millis(configured), bound);
            assert_eq!(
                rules.feed_delay,
                Duration::from_millis(used),
                "{configured}"
            );
            assert_eq!(rules.retention, day);
        }
    }

    #[test]
    fn ids_sort_as_made_and_bounds_fall_between_milliseconds() {
        let rules = EventRules::default();
        let a = rules.make(EventType::Created, "u", "google", json!({}));
        let b = rules.make(
            EventType::Deleted,
            "u",
            "google",
            json!({"revocation": "revoked"}),
        );
        assert!(a.id < b.id);
        assert!(is_cursor(&a.id), "{}", a.id);
        let ms = event_millis(&a.id).expect("v7");
        assert_eq!(ms, a.timestamp.timestamp_millis());
        assert!(event_bound(ms) < a.id && a.id < event_bound(ms + 1));
        assert_eq!(b.data["revocation"], "revoked");
        assert_eq!(b.data["userId"], "u");
        for bad in [
            "",
            "x",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
            "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
        ] {
            assert!(!is_cursor(bad), "{bad}");
        }
        for t in [
            EventType::Created,
            EventType::Reauthorized,
            EventType::ScopesChanged,
            EventType::RefreshFailed,
            EventType::Recovered,
            EventType::ExpiringSoon,
            EventType::RevokedByUser,
            EventType::Deleted,
        ] {
            assert_eq!(serde_json::to_value(t).expect("name"), t.name());
        }
    }
}
