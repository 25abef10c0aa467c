//! The events table: lifecycle events written in one `TransactWriteItems` with the
//! tokens-table change that caused them, partitioned by UTC day (`day`, e.g.
//! `2026-11-26`) and sorted by id (a UUIDv7), so the feed reads a day's events in order
//! with one `Query` and walks the days forward.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::DynamoStore;
use super::call;
use super::item::{Item, from_item, rfc3339, s, to_item};
use crate::store::{Event, StoreError, event_millis};

/// The events table's item, attribute for attribute.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventItem {
    /// The partition: the UTC day the event was made.
    day: String,
    id: String,
    #[serde(rename = "type")]
    kind: String,
    user_id: String,
    provider: String,
    /// RFC 3339 UTC, to the millisecond.
    timestamp: String,
    /// The payload's `data`, as JSON text (kept byte for byte across deliveries).
    data: String,
    /// TTL: epoch seconds.
    expires_at: i64,
}

/// The partition an event id belongs to.
fn day_of(id: &str) -> Result<NaiveDate, StoreError> {
    event_millis(id)
        .and_then(DateTime::from_timestamp_millis)
        .map(|at| at.date_naive())
        .ok_or_else(|| StoreError::Corrupt("event id: not a UUIDv7".into()))
}

fn event_item(e: &Event) -> Result<Item, StoreError> {
    let data = serde_json::to_string(&e.data)
        .map_err(|err| StoreError::Corrupt(format!("event data: {err}")))?;
    to_item(
        "event item",
        &EventItem {
            day: day_of(&e.id)?.to_string(),
            id: e.id.clone(),
            kind: e.kind.clone(),
            user_id: e.user_id.clone(),
            provider: e.provider.clone(),
            timestamp: rfc3339(&e.timestamp),
            data,
            expires_at: e.expires_at,
        },
    )
}

fn event_from(item: &Item) -> Result<Event, StoreError> {
    let e: EventItem = from_item(item)?;
    Ok(Event {
        timestamp: DateTime::parse_from_rfc3339(&e.timestamp)
            .map_err(|_| StoreError::Corrupt("timestamp: not RFC 3339".into()))?
            .with_timezone(&Utc),
        data: serde_json::from_str(&e.data)
            .map_err(|_| StoreError::Corrupt("data: not a JSON object".into()))?,
        id: e.id,
        kind: e.kind,
        user_id: e.user_id,
        provider: e.provider,
        expires_at: e.expires_at,
    })
}

impl DynamoStore {
    /// Writes `change` (a conditional write of the tokens table) and `events` in one
    /// transaction: both or neither. A failed condition is a conflict.
    pub(super) async fn transact(
        &self,
        change: TransactWriteItem,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let table = &self.events_table;
        let mut items = vec![change];
        for e in events {
            // An event id is never reused: a retried transaction that had in fact
            // succeeded fails here rather than writing the event twice.
            let put = Put::builder()
                .table_name(table)
                .set_item(Some(event_item(e)?))
                .condition_expression("attribute_not_exists(id)")
                .build()
                .map_err(|err| StoreError::Corrupt(format!("event put: {err}")))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let lost = match &result {
            Err(SdkError::ServiceError(e)) => match e.err() {
                TransactWriteItemsError::TransactionCanceledException(c) => {
                    // Only a failed condition is a conflict; another transaction on the
                    // same item at that moment (TransactionConflict) is a passing
                    // failure, retried like any unavailable store.
                    c.cancellation_reasons()
                        .iter()
                        .any(|r| r.code() == Some("ConditionalCheckFailed"))
                }
                _ => false,
            },
            _ => false,
        };
        match call("TransactWriteItems", result) {
            Ok(_) => Ok(()),
            Err(_) if lost => Err(StoreError::Conflict),
            Err(f) => Err(self.error(
                "TransactWriteItems",
                &format!("{} and table/{table}", self.tokens_table),
                f,
            )),
        }
    }

    pub(super) async fn read_events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let table = &self.events_table;
        let last_day = day_of(before)?;
        let mut day = day_of(after)?;
        let mut events = Vec::new();
        while day <= last_day && events.len() < limit {
            let mut start: Option<Item> = None;
            'pages: loop {
                let request = self
                    .client
                    .query()
                    .table_name(table)
                    .key_condition_expression("#day = :day AND #id > :after")
                    .expression_attribute_names("#day", "day")
                    .expression_attribute_names("#id", "id")
                    .expression_attribute_values(":day", s(day.to_string()))
                    .expression_attribute_values(":after", s(after))
                    .consistent_read(true)
                    .limit(i32::try_from(limit - events.len()).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start.take());
                let out = call("Query", request.send().await)
                    .map_err(|f| self.error("Query", table, f))?;
                for item in out.items() {
                    let e = event_from(item)?;
                    if e.id.as_str() >= before {
                        return Ok(events);
                    }
                    events.push(e);
                    if events.len() >= limit {
                        return Ok(events);
                    }
                }
                match out.last_evaluated_key() {
                    Some(key) if !key.is_empty() => start = Some(key.clone()),
                    _ => break 'pages,
                }
            }
            match day.checked_add_days(Days::new(1)) {
                Some(next) => day = next,
                None => break,
            }
        }
        Ok(events)
    }
}
