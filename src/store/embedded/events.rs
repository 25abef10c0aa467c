//! The events table: lifecycle events, inserted in the same SQLite transaction as the
//! row change that caused them, read back in id order for the feed.
//!
//! Events are stamped inside that transaction, once its change's statement holds
//! SQLite's write lock: however long the write waited for the lock (another process's
//! write, the busy timeout), its events are made after the wait, and are visible as
//! soon as it commits, within [`EVENT_WRITE_BOUND`] of the moment their ids name.

use crate::store::EventFeed;
use async_trait::async_trait;
use std::time::{Duration, Instant};

use rusqlite::{Transaction, params};

use super::{EmbeddedStore, corrupt, parse_time, rfc3339, sql};
use crate::store::{Event, StoreError};

/// The longest a write holds its events between stamping and committing them: past
/// it the transaction is rolled back instead (the write fails, its change and events
/// not stored), so no event becomes visible later than this after its id's moment.
/// Inserting a few rows under a held lock takes well under a millisecond.
pub(crate) const EVENT_WRITE_BOUND: Duration = Duration::from_millis(250);

/// An event laid out as its columns.
pub(super) struct EventRow {
    id: String,
    kind: String,
    user_id: String,
    provider: String,
    timestamp: String,
    data: String,
    expires_at: i64,
}

impl EventRow {
    pub(super) fn all(events: &[Event]) -> Result<Vec<Self>, StoreError> {
        events
            .iter()
            .map(|e| {
                Ok(Self {
                    id: e.id.clone(),
                    kind: e.kind.clone(),
                    user_id: e.user_id.clone(),
                    provider: e.provider.clone(),
                    timestamp: rfc3339(&e.timestamp),
                    data: serde_json::to_string(&e.data).map_err(|e| corrupt("event data", e))?,
                    expires_at: e.expires_at,
                })
            })
            .collect()
    }
}

/// When a write stamped its events; checked right before it commits.
pub(super) struct Stamped(Instant);

impl Stamped {
    /// Refuses a commit later than [`EVENT_WRITE_BOUND`] after the stamp (the caller
    /// then drops its transaction, which rolls back).
    pub(super) fn in_time(&self) -> Result<(), StoreError> {
        if self.0.elapsed() <= EVENT_WRITE_BOUND {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "a write held its events longer than {} ms before committing; rolled back",
            EVENT_WRITE_BOUND.as_millis()
        )))
    }
}

/// Stamps `events` now and inserts them inside the caller's transaction, which holds
/// the write lock already (its change's statement took it).
pub(super) fn insert(tx: &Transaction<'_>, events: &[Event]) -> Result<Stamped, StoreError> {
    let stamped = Stamped(Instant::now());
    let events = EventRow::all(&events.iter().map(Event::restamped).collect::<Vec<_>>())?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO events (id, type, user_id, provider, timestamp, data, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(sql)?;
    for e in events {
        stmt.execute(params![
            e.id,
            e.kind,
            e.user_id,
            e.provider,
            e.timestamp,
            e.data,
            e.expires_at
        ])
        .map_err(sql)?;
    }
    Ok(stamped)
}

impl EmbeddedStore {
    pub(super) async fn read_events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let (after, before) = (after.to_string(), before.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<EventRow> = self
            .with_reader(move |db| {
                let mut stmt = db
                    .prepare_cached(
                        "SELECT id, type, user_id, provider, timestamp, data, expires_at \
                         FROM events WHERE id > ?1 AND id < ?2 ORDER BY id LIMIT ?3",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![after, before, limit], |r| {
                        Ok(EventRow {
                            id: r.get(0)?,
                            kind: r.get(1)?,
                            user_id: r.get(2)?,
                            provider: r.get(3)?,
                            timestamp: r.get(4)?,
                            data: r.get(5)?,
                            expires_at: r.get(6)?,
                        })
                    })
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Event {
                    timestamp: parse_time("event timestamp", &r.timestamp)?,
                    data: serde_json::from_str(&r.data).map_err(|e| corrupt("event data", e))?,
                    id: r.id,
                    kind: r.kind,
                    user_id: r.user_id,
                    provider: r.provider,
                    expires_at: r.expires_at,
                })
            })
            .collect()
    }
}

#[async_trait]
impl EventFeed for EmbeddedStore {
    async fn events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_events_between(after, before, limit).await
    }

    fn event_write_bound(&self) -> std::time::Duration {
        super::events::EVENT_WRITE_BOUND
    }
}
