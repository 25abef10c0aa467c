//! The events table: lifecycle events written in one `TransactWriteItems` with the
//! tokens-table change that caused them, partitioned by UTC day (`day`, e.g.
//! `2026-11-26`) and sorted by id (a UUIDv7), so the feed reads a day's events in order
//! with one `Query` and walks the days forward.
//!
//! # Never later than the bound
//!
//! The feed hands out cursors past events older than its delay, so an event must be
//! readable within [`EVENT_WRITE_BOUND`] of the moment its id names, or never be stored.
//! A transaction whose answer is late is not simply waited for or retried (a request
//! still in flight can commit after the SDK gave up on it):
//!
//! - each attempt ("round") stamps its events afresh and gets [`ROUND`] at most (the
//!   SDK's own retries, under the same ids, inside it);
//! - a round without an answer is **fenced**: a conditional `PutItem` of a marker item
//!   under its first event's key. Once the marker is in, the round's transaction can
//!   never commit (its event put requires the key free); if the key holds the event
//!   instead, the round committed before the fence. Either way its outcome is known;
//! - the bound is a round and its fence's budget, [`FENCE`]: a fence answered by then
//!   settles the round in time (the round committed, if it did, before the fence was
//!   written, so within the bound). The fence is tried on while the call's time
//!   (`AXNT_AWS_OPERATION_TIMEOUT_MS`) lasts, so the caller learns the outcome when it
//!   can; a fenced round is made again under fresh ids while that time lasts, else the
//!   write fails, nothing of it stored;
//! - a round found committed **after** the bound (its fence answered late), may have
//!   been passed by a cursor on any instance: its events are written again under fresh
//!   ids, each copy's `data.originalId` naming the event it repeats, so every cursor
//!   reads them (counted in [`EVENTS_LATE_TOTAL`](crate::series::EVENTS_LATE_TOTAL));
//! - a round whose fence gets no answer within the call's time is answered as failed
//!   and left to the settler (`settle`), which fences it until its outcome is known
//!   and copies its events if it was stored. What it cannot settle is counted in
//!   [`EVENTS_UNSETTLED_TOTAL`](crate::series::EVENTS_UNSETTLED_TOTAL) and logged with the replay that sends it.
//!
//! Markers are never read as events and expire by the table's TTL after a day.

use crate::store::EventFeed;
use async_trait::async_trait;
use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem};
use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::DynamoStore;
use super::call;
use super::item::{Item, from_item, n, rfc3339, s, to_item};
use super::settle::{Owed, late};
use crate::aws::error::{AwsFailure, FailureKind, count_call};
use crate::retry::Backoff;
use crate::store::{Event, StoreError, event_millis};

/// One round of an event-bearing transaction gets this long under its ids.
pub(super) const ROUND: Duration = Duration::from_millis(1_500);
/// A fence answered within this long after its round's time settles the round in time.
const FENCE: Duration = Duration::from_millis(1_000);
/// The longest from an event's stamp until it is readable, or known never to be: a
/// round and its fence. The store reports it (`EventFeed::event_write_bound`); the
/// feed's delay is never shorter than it plus the clock allowance.
pub(crate) const EVENT_WRITE_BOUND: Duration = ROUND.saturating_add(FENCE);
/// The marker item's attribute; an item with it is a fence, never an event.
const FENCE_ATTR: &str = "fence";
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

/// What one round came to.
enum Round {
    Committed,
    /// Not stored, and no attempt of the round can be: a conflict or a refusal.
    Refused(StoreError),
    /// No answer, or a passing failure: an attempt may be in flight still.
    Unknown(StoreError),
}

/// What a fence found.
pub(super) enum Fence {
    /// The marker is in: the round never commits.
    Fenced,
    /// The round's event is: it committed.
    Stored,
    /// The marker could not be written in time.
    Unsettled,
}

/// What became of a write of events.
pub(super) enum Written {
    Stored,
    /// Not stored, and no attempt of it can be (a change without events, which has
    /// nothing to fence, is as unknown as any call that got no answer).
    NotStored(StoreError),
    /// Not known: handed to the settler, which learns it.
    Settling(StoreError),
}

impl DynamoStore {
    /// Writes `change` (a conditional write of the tokens table) and `events` in one
    /// transaction: both or neither, within the bound (see the module's doc). A failed
    /// condition of `change` is a conflict.
    pub(super) async fn transact(
        &self,
        change: TransactWriteItem,
        events: &[Event],
    ) -> Result<(), StoreError> {
        match self.write(Some(change), events).await {
            Written::Stored => Ok(()),
            Written::NotStored(e) | Written::Settling(e) => Err(e),
        }
    }

    /// Writes `events` under fresh ids, with `change` when there is one (without, the
    /// events are copies of events stored late: see `settle`), round after round while
    /// the call's time lasts.
    pub(super) async fn write(
        &self,
        change: Option<TransactWriteItem>,
        events: &[Event],
    ) -> Written {
        let copies = change.is_none();
        let deadline = Instant::now() + self.operation_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            // Taken before the stamp, so the bound is never counted from later than the
            // moment the ids name.
            let started = Instant::now();
            let stamped: Vec<Event> = events.iter().map(Event::restamped).collect();
            let failure = match self.round(change.clone(), &stamped).await {
                Round::Committed => return Written::Stored,
                Round::Refused(e) => return Written::NotStored(e),
                Round::Unknown(e) => e,
            };
            let Some(first) = stamped.first() else {
                return Written::NotStored(failure);
            };
            match self.fence_until(first, deadline).await {
                Fence::Fenced => {
                    tracing::warn!(error = %failure, "an event write did not go through in time: fenced, so not stored");
                }
                Fence::Stored => {
                    if started.elapsed() > EVENT_WRITE_BOUND {
                        late(&stamped, "was found stored later than the bound");
                        self.owe(stamped, Owed::Copy, copies);
                    }
                    return Written::Stored;
                }
                Fence::Unsettled => {
                    self.owe(stamped, Owed::Fence { started }, copies);
                    return Written::Settling(failure);
                }
            }
            let wait = backoff.next_wait();
            if Instant::now() + wait + EVENT_WRITE_BOUND > deadline {
                return Written::NotStored(failure);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One round: the transaction under `events`' ids, given [`ROUND`].
    async fn round(&self, change: Option<TransactWriteItem>, events: &[Event]) -> Round {
        let table = &self.events_table;
        let changes = usize::from(change.is_some());
        let mut items: Vec<TransactWriteItem> = change.into_iter().collect();
        for e in events {
            // An event id is never reused: an attempt that finds its round's own event
            // stored learns that an earlier attempt committed, and a fence with that key
            // keeps a late attempt from committing.
            let put = event_item(e).and_then(|item| {
                Put::builder()
                    .table_name(table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(id)")
                    .build()
                    .map_err(|err| StoreError::Corrupt(format!("event put: {err}")))
            });
            match put {
                Ok(put) => items.push(TransactWriteItem::builder().put(put).build()),
                Err(e) => return Round::Refused(e),
            }
        }
        let tables = format!("{} and table/{table}", self.tokens_table);
        let sent = tokio::time::timeout(
            ROUND,
            self.client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send(),
        )
        .await;
        let Ok(result) = sent else {
            let failure = AwsFailure {
                kind: FailureKind::Timeout,
                code: None,
                detail: format!("no answer within {} ms", ROUND.as_millis()),
            };
            crate::store::count_write("dynamodb");
            count_call("dynamodb", "TransactWriteItems", Some(&failure));
            return Round::Unknown(self.error("TransactWriteItems", &tables, failure));
        };
        // The cancellation reasons come one per item, in order: the change (if any),
        // then the events.
        let canceled = match &result {
            Err(SdkError::ServiceError(e)) => match e.err() {
                TransactWriteItemsError::TransactionCanceledException(c) => {
                    let failed = |r: &aws_sdk_dynamodb::types::CancellationReason| {
                        r.code() == Some("ConditionalCheckFailed")
                    };
                    let reasons = c.cancellation_reasons();
                    Some(if reasons.iter().skip(changes).any(failed) {
                        // This round's own event is stored: an earlier attempt of it
                        // committed, and its answer was lost.
                        Round::Committed
                    } else if changes == 1 && reasons.first().is_some_and(failed) {
                        Round::Refused(StoreError::Conflict)
                    } else {
                        // Another transaction on an item at that moment: passing.
                        Round::Unknown(StoreError::Unavailable(format!(
                            "dynamodb:TransactWriteItems on table/{tables}: canceled ({})",
                            reasons
                                .iter()
                                .filter_map(|r| r.code())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )))
                    })
                }
                _ => None,
            },
            _ => None,
        };
        match (call("TransactWriteItems", result), canceled) {
            (Ok(_), _) => Round::Committed,
            (Err(_), Some(round)) => round,
            (Err(f), None) => {
                let kind = f.kind;
                let e = self.error("TransactWriteItems", &tables, f);
                match kind {
                    // Refused as a whole, by every attempt alike: nothing was stored.
                    FailureKind::AccessDenied
                    | FailureKind::NotFound
                    | FailureKind::Rejected
                    | FailureKind::ConditionFailed => Round::Refused(e),
                    FailureKind::Throttled | FailureKind::Timeout | FailureKind::Unavailable => {
                        Round::Unknown(e)
                    }
                }
            }
        }
    }

    /// Fences the round whose first event is `event` until its outcome is known or
    /// `deadline` passes. A try still unanswered at `deadline` is given up (its marker
    /// may land later: harmless, it only fences the round).
    pub(super) async fn fence_until(&self, event: &Event, deadline: Instant) -> Fence {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match tokio::time::timeout_at(deadline, self.fence(event)).await {
                Ok(Ok(fence)) => return fence,
                Ok(Err(e)) => tracing::debug!(error = %e, "fencing an event write failed"),
                Err(_) => return Fence::Unsettled,
            }
            let now = Instant::now();
            if now >= deadline {
                return Fence::Unsettled;
            }
            tokio::time::sleep(backoff.next_wait().min(deadline - now)).await;
        }
    }

    /// One fence: the marker under `event`'s key, only while the key is free. The old
    /// item, when the key is taken, tells an earlier fence of ours from the event.
    pub(super) async fn fence(&self, event: &Event) -> Result<Fence, StoreError> {
        let table = &self.events_table;
        let expires = Utc::now().timestamp().saturating_add(86_400);
        let result = self
            .client
            .put_item()
            .table_name(table)
            .item("day", s(day_of(&event.id)?.to_string()))
            .item("id", s(&event.id))
            .item(
                FENCE_ATTR,
                aws_sdk_dynamodb::types::AttributeValue::Bool(true),
            )
            .item("expiresAt", n(expires))
            .condition_expression("attribute_not_exists(id)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let taken_by_fence = match &result {
            Err(SdkError::ServiceError(e)) => match e.err() {
                PutItemError::ConditionalCheckFailedException(c) => {
                    Some(c.item().map(|item| item.contains_key(FENCE_ATTR)))
                }
                _ => None,
            },
            _ => None,
        };
        match (call("PutItem", result), taken_by_fence) {
            (Ok(_), _) | (Err(_), Some(Some(true))) => Ok(Fence::Fenced),
            (Err(_), Some(Some(false))) => Ok(Fence::Stored),
            (Err(_), Some(None)) => Err(StoreError::Unavailable(
                "dynamodb:PutItem: a failed condition without the item it met".into(),
            )),
            (Err(f), None) => Err(self.error("PutItem", table, f)),
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
                    if item.contains_key(FENCE_ATTR) {
                        continue;
                    }
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

#[async_trait]
impl EventFeed for DynamoStore {
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
