//! The audit trail of token reads: which caller (by key id) read, or was refused, which
//! user's token at which provider, with what scopes, in which request.
//!
//! Cheap on the hot path: a read touches a map in memory. The first read of a caller,
//! connection and outcome in an aggregation window (`AXNT_AUDIT_WINDOW_SECS`, 60) and
//! every refusal are written at once (on a task of their own, not in the request);
//! further reads in the window are counted and written as one item (`count`,
//! `firstAt`, `lastAt`) when the window has passed, and at shutdown.
//!
//! Items live in the flow-log store (the logs table on DynamoDB) under partitions no
//! user id can be — `/audit/user/<userId>` and `/audit/caller/<callerId>` (user ids
//! never hold `/`) — so one read serves "per user" and one "per caller", with their
//! own retention (`AXNT_AUDIT_RETENTION_DAYS`). Nothing secret is in them: no token,
//! no key, only ids, scopes, outcomes and problem codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::store::flow_log::SortKeyClock;
use crate::store::{FlowLog, FlowLogEntry, FlowStep};

/// What a read came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ReadOutcome {
    /// Handed out as stored (or from the cache).
    Served,
    /// Handed out after a refresh.
    Refreshed,
    /// Refused (the problem code is the item's `error`).
    Refused,
}

impl ReadOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Refreshed => "refreshed",
            Self::Refused => "refused",
        }
    }
}

/// One read, as the API saw it.
pub(crate) struct Read<'a> {
    pub(crate) caller: &'a str,
    pub(crate) user_id: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) outcome: ReadOutcome,
    /// The problem code of a refusal.
    pub(crate) reason: Option<&'static str>,
    /// The scopes the handed-out token holds.
    pub(crate) scopes: Option<&'a str>,
    pub(crate) request_id: Option<&'a str>,
}

type Key = (String, String, String, ReadOutcome);

/// Reads counted in the current window, after its first (already written).
struct Window {
    started: DateTime<Utc>,
    count: u64,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
    scopes: Option<String>,
    request_id: Option<String>,
}

/// The audit trail.
pub(crate) struct AuditTrail {
    log: Arc<dyn FlowLog>,
    retention: Duration,
    window: Duration,
    clock: SortKeyClock,
    windows: Mutex<HashMap<Key, Window>>,
    /// Writes in flight, waited for at shutdown.
    writes: tokio_util::task::TaskTracker,
}

/// The partitions of the audit items.
pub(crate) fn user_partition(user_id: &str) -> String {
    format!("/audit/user/{user_id}")
}

pub(crate) fn caller_partition(caller: &str) -> String {
    format!("/audit/caller/{caller}")
}

impl AuditTrail {
    pub(crate) fn new(log: Arc<dyn FlowLog>, retention: Duration, window: Duration) -> Self {
        Self {
            log,
            retention,
            window,
            clock: SortKeyClock::default(),
            windows: Mutex::new(HashMap::new()),
            writes: tokio_util::task::TaskTracker::new(),
        }
    }

    pub(crate) fn log(&self) -> &Arc<dyn FlowLog> {
        &self.log
    }

    /// Records one read: written at once when it is a refusal or the first of its
    /// window, else counted.
    pub(crate) fn record(self: &Arc<Self>, read: Read<'_>) {
        let now = Utc::now();
        if read.outcome != ReadOutcome::Refused {
            let key: Key = (
                read.caller.to_string(),
                read.user_id.to_string(),
                read.provider.to_string(),
                read.outcome,
            );
            let window = chrono::TimeDelta::from_std(self.window).unwrap_or_default();
            let mut windows = lock(&self.windows);
            match windows.get_mut(&key) {
                Some(open) if now < open.started + window => {
                    open.count += 1;
                    open.first_at.get_or_insert(now);
                    open.last_at = Some(now);
                    open.scopes = read.scopes.map(str::to_string);
                    open.request_id = read.request_id.map(str::to_string);
                    return;
                }
                _ => {
                    // A window that passed with reads counted is written by the flusher;
                    // this read opens the next one.
                    if let Some(done) = windows.remove(&key) {
                        self.spawn_write(&key, done);
                    }
                    windows.insert(
                        key,
                        Window {
                            started: now,
                            count: 0,
                            first_at: None,
                            last_at: None,
                            scopes: None,
                            request_id: None,
                        },
                    );
                }
            }
        }
        let item = self.item(&read, 1, now, now);
        let this = Arc::clone(self);
        self.writes.spawn(async move { this.write(item).await });
    }

    /// Writes the windows that have passed (every `every`), and at shutdown all.
    pub(crate) fn spawn_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                this.flush(false).await;
            }
        })
    }

    /// Writes counted reads of windows that have passed (`all`: of every window).
    pub(crate) async fn flush(&self, all: bool) {
        let now = Utc::now();
        let window = chrono::TimeDelta::from_std(self.window).unwrap_or_default();
        let done: Vec<(Key, Window)> = {
            let mut windows = lock(&self.windows);
            let keys: Vec<Key> = windows
                .iter()
                .filter(|(_, w)| all || now >= w.started + window)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| windows.remove(&k).map(|w| (k, w)))
                .collect()
        };
        for (key, window) in done {
            if let Some(item) = self.window_item(&key, &window) {
                self.write(item).await;
            }
        }
        if all {
            // At shutdown: the first reads and refusals still being written, too.
            self.writes.close();
            if tokio::time::timeout(Duration::from_secs(5), self.writes.wait())
                .await
                .is_err()
            {
                tracing::warn!("audit writes still in flight at shutdown");
            }
        }
    }

    fn spawn_write(self: &Arc<Self>, key: &Key, window: Window) {
        if let Some(item) = self.window_item(key, &window) {
            let this = Arc::clone(self);
            self.writes.spawn(async move { this.write(item).await });
        }
    }

    /// The item of a window's counted reads, if it counted any.
    fn window_item(&self, key: &Key, window: &Window) -> Option<AuditItem> {
        let (first, last) = (window.first_at?, window.last_at?);
        let read = Read {
            caller: &key.0,
            user_id: &key.1,
            provider: &key.2,
            outcome: key.3,
            reason: None,
            scopes: window.scopes.as_deref(),
            request_id: window.request_id.as_deref(),
        };
        (window.count > 0).then(|| self.item(&read, window.count, first, last))
    }

    fn item(
        &self,
        read: &Read<'_>,
        count: u64,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> AuditItem {
        let mut data = Map::new();
        data.insert("caller".into(), json!(read.caller));
        data.insert("userId".into(), json!(read.user_id));
        data.insert("provider".into(), json!(read.provider));
        data.insert("outcome".into(), json!(read.outcome.as_str()));
        data.insert("count".into(), json!(count));
        data.insert("firstAt".into(), json!(rfc3339(first)));
        data.insert("lastAt".into(), json!(rfc3339(last)));
        if let Some(scopes) = read.scopes {
            data.insert("scopes".into(), json!(scopes));
        }
        AuditItem {
            caller: read.caller.to_string(),
            user_id: read.user_id.to_string(),
            timestamp: self.clock.next_key(last),
            request_id: read.request_id.unwrap_or("-").to_string(),
            data,
            error: read.reason.map(str::to_string),
            expires_at: last
                .timestamp()
                .saturating_add(i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX)),
        }
    }

    /// Writes an item under both partitions; a failure is logged (and counted), never
    /// answered.
    async fn write(&self, item: AuditItem) {
        for partition in [
            user_partition(&item.user_id),
            caller_partition(&item.caller),
        ] {
            let entry = FlowLogEntry {
                user_id: partition,
                timestamp: item.timestamp.clone(),
                flow_id: item.request_id.clone(),
                step: FlowStep::TokenRead,
                data: item.data.clone(),
                error: item.error.clone(),
                ip_address: None,
                user_agent: None,
                expires_at: item.expires_at,
            };
            if let Err(e) = self.log.append(&entry).await {
                metrics::counter!("axnt_audit_write_failures_total").increment(1);
                tracing::warn!(error = %e, "audit write failed");
            }
        }
    }
}

/// An audit item before it is filed under its two partitions.
struct AuditItem {
    caller: String,
    user_id: String,
    timestamp: String,
    request_id: String,
    data: Map<String, Value>,
    error: Option<String>,
    expires_at: i64,
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A map behind a mutex held for a few instructions, never across an await.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
