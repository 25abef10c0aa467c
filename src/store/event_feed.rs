//! Lifecycle events, stored with the changes that caused them, and the feed that
//! reads them back in order.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;

/// A lifecycle event (`connection.created`, …), stored in the same write as the change
/// that caused it: if the change is stored, so is the event; if not, neither is.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// A UUIDv7, hyphenated: its text sorts as the events were stored, so it is also the
    /// feed's cursor. Made by the store as it writes the event ([`Event::restamped`]).
    /// Unique; a delivery's `webhook-id`.
    pub id: String,
    /// `connection.created`, `connection.refresh_failed`, …
    pub kind: String,
    pub user_id: String,
    pub provider: String,
    pub timestamp: DateTime<Utc>,
    /// The payload's `data` (`userId` and `provider` included). Never a secret.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Epoch seconds when the event may be purged (its retention).
    pub expires_at: i64,
}

impl Event {
    /// This event under an id made now, its `timestamp` the id's and its purge time
    /// moved by as much. A store stamps each event as it writes it (SQLite: holding the
    /// write lock; DynamoDB: as each attempt at the transaction starts), never earlier,
    /// so an event is visible within the store's write bound of the moment its id names:
    /// the feed's invariant (see `events`). Ids made in one process sort as made.
    pub(crate) fn restamped(&self) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let timestamp = event_millis(&id)
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let moved = timestamp.timestamp() - self.timestamp.timestamp();
        Self {
            id,
            timestamp,
            expires_at: self.expires_at.saturating_add(moved),
            ..self.clone()
        }
    }
}

/// The stored events, read as a feed.
#[async_trait]
pub trait EventFeed: Send + Sync {
    /// Stored events with `after < id < before` (ids compare as text, which is their
    /// order), oldest first, at most `limit`. Purged events (past `expires_at`) may or
    /// may not be among them.
    async fn events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The store's event write bound: how long after the moment its id names an event
    /// stored by this store's writes (across instances) is readable, or known never to
    /// be. The feed's delay is never shorter than it plus the hosts' clock allowance
    /// (see `events`). A write that cannot keep it says so itself (the backend's doc).
    fn event_write_bound(&self) -> Duration;
}

/// The epoch milliseconds an event id (a UUIDv7) was made at.
pub(crate) fn event_millis(id: &str) -> Option<i64> {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    if hex.len() != 12 {
        return None;
    }
    i64::from_str_radix(&hex, 16).ok()
}

/// A bound between event ids: sorts after every event made before `ms` and before
/// every event made at or after it (a real id's version digit is 7, the bound's 0).
pub(crate) fn event_bound(ms: i64) -> String {
    let ms = ms.clamp(0, 0xffff_ffff_ffff);
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}
