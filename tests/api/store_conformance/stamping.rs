//! Events are stamped by the store as it writes them (their ids name the write, not
//! the moment the caller made them), keep their order and content, and read back in
//! id order across day partitions.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axnt_oauth::store::{Event, FlowLog, TokenStore};
use chrono::{DateTime, Utc};

use super::{bound, event_at, row, user};
use crate::support::aws;

/// The epoch milliseconds an event id names.
fn millis(id: &str) -> i64 {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    i64::from_str_radix(&hex, 16).expect("a UUIDv7")
}

async fn a_write_stamps_its_events_as_it_stores_them(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    // Made five seconds before the write (a caller that waited, a write that queued).
    let made_ms = Utc::now().timestamp_millis() - 5_000;
    let made = [
        event_at(made_ms, 1, &u, "stamped.first"),
        event_at(made_ms, 2, &u, "stamped.second"),
    ];
    let before = Utc::now().timestamp_millis();
    tokens
        .put(&row(&u, "google", 1, "s"), None, &made)
        .await
        .expect("create with two events");
    let after = Utc::now().timestamp_millis() + 1;
    let stored: Vec<Event> = tokens
        .events_between(&bound(before), &bound(after), 1000)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.user_id == u)
        .collect();
    assert_eq!(
        stored.len(),
        2,
        "both, stamped within the write: {stored:?}"
    );
    for (stored, made) in stored.iter().zip(&made) {
        assert_eq!(stored.kind, made.kind, "in the order given");
        assert_ne!(stored.id, made.id);
        let at = millis(&stored.id);
        assert!(
            before <= at && at < after,
            "{at} within [{before}, {after})"
        );
        assert_eq!(stored.timestamp.timestamp_millis(), at, "the id's moment");
        assert_eq!(
            stored.expires_at - made.expires_at,
            stored.timestamp.timestamp() - made.timestamp.timestamp(),
            "kept as long after the write as it was to be after its making"
        );
        assert_eq!(
            (&stored.data, &stored.provider),
            (&made.data, &made.provider)
        );
    }
    assert!(
        tokens
            .events_between(&bound(made_ms), &bound(made_ms + 1), 1000)
            .await
            .expect("read")
            .iter()
            .all(|e| e.user_id != u),
        "nothing under the ids the caller made"
    );
}

/// The bound a store reports holds for its writes, and keeps the default feed delay
/// (3 s) safe with the hosts' clock allowance (0.5 s), so the default is never raised.
async fn a_write_is_readable_within_the_bound_its_store_reports(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let write_bound = tokens.event_write_bound();
    assert!(
        write_bound > Duration::ZERO
            && write_bound + Duration::from_millis(500) <= Duration::from_secs(3),
        "{write_bound:?}"
    );
    let u = user();
    let now = Utc::now().timestamp_millis();
    tokens
        .put(
            &row(&u, "google", 1, "s"),
            None,
            &[event_at(now, 1, &u, "bound.first")],
        )
        .await
        .expect("create with an event");
    let read_at = Utc::now().timestamp_millis();
    let stored: Vec<Event> = tokens
        .events_between(&bound(now - 60_000), &bound(read_at + 1), 1000)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.user_id == u)
        .collect();
    assert_eq!(stored.len(), 1, "readable once the write returns");
    let age = read_at - millis(&stored[0].id);
    assert!(
        age <= i64::try_from(write_bound.as_millis()).expect("ms"),
        "readable {age} ms after its id's moment, within {write_bound:?}"
    );
}

/// Writes events straight into a backend's storage, at ids the test chooses, laid out
/// as docs/events.md, "Where events are kept", says (a write through the store would stamp
/// them itself).
async fn seed(guard: &(dyn Any + Send), events: &[Event]) {
    let timestamp = |e: &Event| {
        e.timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    if let Some(dir) = guard.downcast_ref::<tempfile::TempDir>() {
        let db = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
        for e in events {
            db.execute(
                "INSERT INTO events (id, type, user_id, provider, timestamp, data, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    e.id,
                    e.kind,
                    e.user_id,
                    e.provider,
                    timestamp(e),
                    serde_json::to_string(&e.data).expect("json"),
                    e.expires_at
                ],
            )
            .expect("insert an event");
        }
        return;
    }
    let fixture = guard
        .downcast_ref::<aws::AwsFixture>()
        .expect("an embedded or a DynamoDB backend");
    let settings = fixture.settings();
    let client = aws_sdk_dynamodb::Client::new(&fixture.sdk_config().await);
    let s = |v: String| aws_sdk_dynamodb::types::AttributeValue::S(v);
    for e in events {
        let day = DateTime::<Utc>::from_timestamp_millis(millis(&e.id))
            .expect("time")
            .date_naive();
        client
            .put_item()
            .table_name(&settings.aws.events_table)
            .item("day", s(day.to_string()))
            .item("id", s(e.id.clone()))
            .item("type", s(e.kind.clone()))
            .item("userId", s(e.user_id.clone()))
            .item("provider", s(e.provider.clone()))
            .item("timestamp", s(timestamp(e)))
            .item("data", s(serde_json::to_string(&e.data).expect("json")))
            .item(
                "expiresAt",
                aws_sdk_dynamodb::types::AttributeValue::N(e.expires_at.to_string()),
            )
            .send()
            .await
            .expect("PutItem an event");
    }
}

async fn events_read_in_order_across_days_within_bounds(
    tokens: Arc<dyn TokenStore>,
    guard: &(dyn Any + Send),
) {
    let u = user();
    // Around a midnight long ago (no other case writes there), and a day later.
    let midnight = DateTime::parse_from_rfc3339("2020-01-02T00:00:00Z")
        .expect("time")
        .timestamp_millis();
    let events = [
        event_at(midnight - 2, 1, &u, "e1"),
        event_at(midnight - 1, 1, &u, "e2"),
        event_at(midnight - 1, 2, &u, "e3"),
        event_at(midnight, 1, &u, "e4"),
        event_at(midnight + 86_400_000 + 5, 1, &u, "e5"),
    ];
    // Stored out of order: read back in id order.
    seed(
        guard,
        &[
            events[3].clone(),
            events[0].clone(),
            events[4].clone(),
            events[2].clone(),
            events[1].clone(),
        ],
    )
    .await;
    let ids = |read: Vec<Event>| read.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    let all = tokens
        .events_between(
            &bound(midnight - 10),
            &bound(midnight + 2 * 86_400_000),
            100,
        )
        .await
        .expect("all");
    assert_eq!(all[2], events[2], "an event reads back as stored");
    assert_eq!(ids(all), ["e1", "e2", "e3", "e4", "e5"]);
    let after_e2 = tokens
        .events_between(&events[1].id, &bound(midnight + 2 * 86_400_000), 100)
        .await
        .expect("after");
    assert_eq!(
        ids(after_e2),
        ["e3", "e4", "e5"],
        "strictly after the cursor"
    );
    let limited = tokens
        .events_between(&bound(midnight - 10), &bound(midnight + 2 * 86_400_000), 2)
        .await
        .expect("limited");
    assert_eq!(ids(limited), ["e1", "e2"]);
    let before_midnight = tokens
        .events_between(&bound(midnight - 10), &bound(midnight), 100)
        .await
        .expect("bounded");
    assert_eq!(
        ids(before_midnight),
        ["e1", "e2", "e3"],
        "strictly before the bound"
    );
    let across_empty_day = tokens
        .events_between(&events[3].id, &bound(midnight + 2 * 86_400_000), 100)
        .await
        .expect("next day");
    assert_eq!(ids(across_empty_day), ["e5"]);
}

every_backend!(
    a_write_stamps_its_events_as_it_stores_them,
    a_write_is_readable_within_the_bound_its_store_reports
);

macro_rules! seeded {
    ($case:ident: $($backend:ident),+) => {
        mod $case {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    let (tokens, _log, guard) = crate::store_conformance::$backend().await;
                    super::$case(tokens, guard.as_ref()).await;
                }
            )+
        }
    };
}

seeded!(events_read_in_order_across_days_within_bounds: embedded, embedded_buffered, dynamodb);
