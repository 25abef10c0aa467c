//! Lifecycle events: what happened to a connection, told to the application. Each is
//! made here and stored in the same write as the change that caused it (see
//! [`Connections::put`](crate::store::Connections::put)), then read back in order by the
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
//! ([`EventFeed::event_write_bound`]). What remains between instances is their clocks'
//! difference ([`CLOCK_ALLOWANCE`]): a feed delay of at least the write bound plus that
//! allowance passes no event still to land. A shorter `AXNT_EVENTS_FEED_DELAY_MS` is
//! raised to it ([`EventRules::new`]), with a warning at start-up. A DynamoDB write that
//! is found stored only after its bound is written again by the store under fresh ids
//! (its copies' `data.originalId` naming the events they repeat): readers need not know.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::store::{Event, EventFeed, StoreError, event_bound, event_millis};

mod data;

pub(crate) use data::{About, EventPayload, Granted, PreviousAccount};

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

/// What a webhook delivers: the feed's item without `id` (which is `webhook-id`). The
/// body is this type, serialized, and its schema is derived from it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookPayload<'a> {
    /// Documented with the `data` it tells of ([`EventPayload`]).
    #[serde(rename = "type")]
    #[schema(ignore)]
    kind: &'a str,
    /// When the event was made: RFC 3339 UTC, to the millisecond.
    timestamp: String,
    #[serde(flatten)]
    #[schema(value_type = EventPayload)]
    data: StoredData<'a>,
}

/// A stored event's `data`, served as it was made from its [`EventPayload`].
#[derive(Serialize)]
pub(crate) struct StoredData<'a> {
    data: Cow<'a, Map<String, Value>>,
}

impl<'a> StoredData<'a> {
    pub(crate) fn of(event: &'a Event) -> Self {
        Self {
            data: Cow::Borrowed(&event.data),
        }
    }

    pub(crate) fn owned(data: Map<String, Value>) -> Self {
        Self {
            data: Cow::Owned(data),
        }
    }
}

impl<'a> WebhookPayload<'a> {
    pub(crate) fn of(event: &'a Event) -> Self {
        Self {
            kind: &event.kind,
            timestamp: event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data: StoredData::of(event),
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
    /// The event telling `payload`, made now.
    pub(crate) fn make(&self, payload: EventPayload) -> Event {
        let About {
            user_id, provider, ..
        } = payload.about().clone();
        let (kind, data) = match serde_json::to_value(&payload) {
            Ok(Value::Object(mut told)) => (
                match told.remove("type") {
                    Some(Value::String(kind)) => kind,
                    _ => String::new(),
                },
                match told.remove("data") {
                    Some(Value::Object(data)) => data,
                    _ => Map::new(),
                },
            ),
            // Plain fields and a tagged enum always serialize as a map.
            _ => (String::new(), Map::new()),
        };
        self.stamp(&kind, &user_id, &provider, data)
    }

    /// The event `check` stores with its probe row's removal ([`PROBE_KIND`]).
    pub(crate) fn probe(&self, user_id: &str, provider: &str) -> Event {
        let data = Map::from_iter([
            ("userId".to_string(), Value::from(user_id)),
            ("provider".to_string(), Value::from(provider)),
        ]);
        self.stamp(PROBE_KIND, user_id, provider, data)
    }

    /// An event of `kind` made now, with its id.
    fn stamp(&self, kind: &str, user_id: &str, provider: &str, data: Map<String, Value>) -> Event {
        // Ordered by creation within this process; the timestamp is the id's own.
        let id = uuid::Uuid::now_v7().to_string();
        let timestamp = event_millis(&id)
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
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

    fn about() -> About {
        About {
            user_id: "u".into(),
            provider: "google".into(),
            original_id: None,
        }
    }

    fn granted() -> Granted {
        Granted {
            about: about(),
            sub: "s".into(),
            email: None,
            granted_scopes: vec!["openid".into()],
            requested_scopes: vec!["openid".into()],
        }
    }

    #[test]
    fn ids_sort_as_made_and_bounds_fall_between_milliseconds() {
        let rules = EventRules::default();
        let a = rules.make(EventPayload::Created(granted()));
        let b = rules.make(EventPayload::Deleted {
            about: about(),
            sub: "s".into(),
            email: None,
            revocation: "revoked".into(),
            revoked_token: None,
        });
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
    }

    /// Each type's name and `data`, key for key, as docs/events.md and earlier
    /// releases give them (`null` where a value is unknown), and the webhook body
    /// around them.
    #[test]
    fn each_payload_is_stored_with_its_documented_type_and_data() {
        let rules = EventRules::default();
        let scopes = || vec!["openid".to_string()];
        let cases = [
            (
                EventPayload::Created(granted()),
                "connection.created",
                r#"{"userId":"u","provider":"google","sub":"s","email":null,"grantedScopes":["openid"],"requestedScopes":["openid"]}"#,
            ),
            (
                EventPayload::Reauthorized {
                    granted: granted(),
                    account_changed: false,
                    was_active: true,
                    previous: None,
                },
                "connection.reauthorized",
                r#"{"userId":"u","provider":"google","sub":"s","email":null,"grantedScopes":["openid"],"requestedScopes":["openid"],"accountChanged":false,"wasActive":true}"#,
            ),
            (
                EventPayload::Reauthorized {
                    granted: granted(),
                    account_changed: true,
                    was_active: false,
                    previous: Some(PreviousAccount {
                        previous_sub: "p".into(),
                        previous_email: None,
                    }),
                },
                "connection.reauthorized",
                r#"{"userId":"u","provider":"google","sub":"s","email":null,"grantedScopes":["openid"],"requestedScopes":["openid"],"accountChanged":true,"wasActive":false,"previousSub":"p","previousEmail":null}"#,
            ),
            (
                EventPayload::ScopesChanged {
                    about: about(),
                    granted_scopes: scopes(),
                    previous_granted_scopes: vec![],
                    added_scopes: scopes(),
                    removed_scopes: vec![],
                },
                "connection.scopes_changed",
                r#"{"userId":"u","provider":"google","grantedScopes":["openid"],"previousGrantedScopes":[],"addedScopes":["openid"],"removedScopes":[]}"#,
            ),
            (
                EventPayload::RefreshFailed {
                    about: about(),
                    cause: "revoked_by_user".into(),
                    remedy: Some("r".into()),
                    is_active: false,
                    retry_after_secs: None,
                },
                "connection.refresh_failed",
                r#"{"userId":"u","provider":"google","cause":"revoked_by_user","remedy":"r","isActive":false}"#,
            ),
            (
                EventPayload::RefreshFailed {
                    about: about(),
                    cause: "provider_unavailable".into(),
                    remedy: None,
                    is_active: true,
                    retry_after_secs: Some(30),
                },
                "connection.refresh_failed",
                r#"{"userId":"u","provider":"google","cause":"provider_unavailable","remedy":null,"isActive":true,"retryAfterSecs":30}"#,
            ),
            (
                EventPayload::Recovered {
                    about: about(),
                    granted_scopes: scopes(),
                },
                "connection.recovered",
                r#"{"userId":"u","provider":"google","grantedScopes":["openid"]}"#,
            ),
            (
                EventPayload::ExpiringSoon {
                    about: about(),
                    predicted_expiry: "2026-01-08T00:00:00Z".into(),
                    reason: crate::oauth::grant::ExpiryReason::TestingMode,
                    sub: "s".into(),
                    email: Some("a@example.com".into()),
                },
                "connection.expiring_soon",
                r#"{"userId":"u","provider":"google","predictedExpiry":"2026-01-08T00:00:00Z","reason":"testing_mode","sub":"s","email":"a@example.com"}"#,
            ),
            (
                EventPayload::RevokedByUser {
                    about: about(),
                    cause: "revoked_by_user".into(),
                    remedy: Some("r".into()),
                    sub: "s".into(),
                    email: None,
                    security_event: "tokens-revoked".into(),
                },
                "connection.revoked_by_user",
                r#"{"userId":"u","provider":"google","cause":"revoked_by_user","remedy":"r","sub":"s","email":null,"securityEvent":"tokens-revoked"}"#,
            ),
            (
                EventPayload::Deleted {
                    about: about(),
                    sub: "s".into(),
                    email: None,
                    revocation: "pending".into(),
                    revoked_token: Some("refresh_token".into()),
                },
                "connection.deleted",
                r#"{"userId":"u","provider":"google","sub":"s","email":null,"revocation":"pending","revokedToken":"refresh_token"}"#,
            ),
            (
                EventPayload::Imported {
                    granted: granted(),
                    verified: true,
                    replaced: false,
                    is_active: true,
                },
                "connection.imported",
                r#"{"userId":"u","provider":"google","sub":"s","email":null,"grantedScopes":["openid"],"requestedScopes":["openid"],"verified":true,"replaced":false,"isActive":true}"#,
            ),
        ];
        for (payload, kind, data) in cases {
            let event = rules.make(payload);
            assert_eq!(event.kind, kind);
            assert_eq!(
                (event.user_id.as_str(), event.provider.as_str()),
                ("u", "google")
            );
            let data: Value = serde_json::from_str(data).expect("literal");
            assert_eq!(Value::Object(event.data.clone()), data, "{kind}");
            let body = serde_json::to_string(&WebhookPayload::of(&event)).expect("json");
            let timestamp = event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(
                body,
                format!(r#"{{"type":"{kind}","timestamp":"{timestamp}","data":{data}}}"#)
            );
        }
    }
}
