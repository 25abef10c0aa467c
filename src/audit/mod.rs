//! The audit trail of token reads: which caller (by key id) read, or was refused, which
//! user's token at which provider, with what scopes, in which request.
//!
//! Cheap on the hot path: a read touches a map in memory. The first read of a caller,
//! connection and outcome in an aggregation window (`AXNT_AUDIT_WINDOW_SECS`, 60) and
//! every refusal become a record in the trail's own queue ([`queue`]), written off the
//! request; further reads in the window are counted and queued as one record
//! (`count`, `firstAt`, `lastAt`) when the window has passed, and at shutdown.
//!
//! Nothing read goes unrecorded: a read is answered only once its record is queued or
//! counted. The queue never drops; when it, or the caller's share of it (a quarter),
//! is full a read waits for room (`AXNT_AUDIT_WAIT_MS`), then is answered 503
//! `audit_unavailable` without its token.
//!
//! Refusals name their user and provider, which the caller chose: a key probing random
//! user ids would need a record per id. So past a caller's first refusals in a window
//! (half its share, at most 100) its refusals of one reason are folded into one counted
//! record naming no user or provider (`folded`), listed under the caller only. Served
//! reads are never folded: each names its user.
//!
//! Items live in the flow-log store (the logs table on DynamoDB, written directly, not
//! through the flow log's queue) under partitions no user id can be —
//! `/audit/user/<userId>` and `/audit/caller/<callerId>` (user ids never hold `/`) — so
//! one read serves "per user" and one "per caller", with their own retention
//! (`AXNT_AUDIT_RETENTION_DAYS`). Nothing secret is in them: no token, no key, only
//! ids, scopes, outcomes and problem codes.

mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{Map, json};

pub(crate) use queue::{AuditWait, Full};
use queue::{Queue, Record, RecordKey, ServedKey, Sink, Target};

use crate::jobs::{self, Jobs, Schedule};
use crate::retry::Backoff;
use crate::series::Label;
use crate::store::flow_log::SortKeyClock;
use crate::store::{FlowLog, FlowLogEntry, FlowStep, StoreError};

/// How long a listing waits for records queued before it (read your own reads).
const LIST_WAITS_FOR_WRITES: Duration = Duration::from_secs(2);

/// A caller's refusals in a window recorded one by one, at most (fewer when half its
/// share of the queue is fewer); the rest are folded.
const REFUSALS_ONE_BY_ONE: usize = 100;

/// What a read came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum ReadOutcome {
    /// Handed out as stored (or from the cache).
    Served,
    /// Handed out after a refresh.
    Refreshed,
    /// Refused (the problem code is the item's `error`).
    Refused,
    /// Not a read: the caller stored a grant made elsewhere as the connection
    /// (`axnt-oauth import`, the import API).
    Imported,
    /// Not a read: `axnt-oauth export` wrote the connection's metadata out (no token).
    Exported,
    /// Not a read: `axnt-oauth export --include-refresh-tokens` wrote the connection
    /// out with its refresh token (encrypted to the export's recipient).
    ExportedWithToken,
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

impl Read<'_> {
    /// This read (or action) as one record of `target`, at `now`.
    fn into_record(self, target: Target, now: DateTime<Utc>) -> Record {
        Record {
            key: RecordKey {
                caller: self.caller.to_string(),
                target,
                outcome: self.outcome,
                reason: self.reason,
            },
            count: 1,
            first_at: now,
            last_at: now,
            scopes: self.scopes.map(str::to_string),
            request_id: self.request_id.map(str::to_string),
        }
    }
}

/// How the trail is kept and written.
pub(crate) struct AuditRules {
    pub(crate) retention: Duration,
    pub(crate) window: Duration,
    /// Records waiting at most; also the most windows open at once.
    pub(crate) capacity: usize,
    /// How long a read waits for room in a full queue.
    pub(crate) wait: Duration,
    /// Writes in flight at once.
    pub(crate) concurrency: usize,
}

/// Reads counted in the current window, after its first (already queued).
struct Window {
    started: DateTime<Utc>,
    count: u64,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
    scopes: Option<String>,
    request_id: Option<String>,
}

/// A caller's refusals in the current window.
struct Refusals {
    started: DateTime<Utc>,
    count: usize,
}

/// The audit trail.
pub(crate) struct AuditTrail {
    log: Arc<dyn FlowLog>,
    window: Duration,
    wait: Duration,
    /// A caller's refusals in a window recorded one by one; the rest are folded.
    fold_after: usize,
    /// Each caller's refusals in its current window (callers are API keys: few).
    refusals: Mutex<HashMap<String, Refusals>>,
    /// Windows open at once, at most: past it a read opens none and is queued as a
    /// record of its own (merged with an identical one still waiting), so memory stays
    /// bounded whatever the number of connections read.
    max_windows: usize,
    windows: Mutex<hashbrown::HashMap<RecordKey, Window>>,
    queue: Arc<Queue>,
}

/// The partitions of the audit items.
pub(crate) fn user_partition(user_id: &str) -> String {
    format!("/audit/user/{user_id}")
}

pub(crate) fn caller_partition(caller: &str) -> String {
    format!("/audit/caller/{caller}")
}

impl AuditTrail {
    /// The trail over `log` (the store itself, not a dropping queue), with its writer
    /// started on the current runtime.
    pub(crate) fn new(log: Arc<dyn FlowLog>, rules: &AuditRules) -> Self {
        let queue = Arc::new(Queue::new(rules.capacity));
        let writer = Arc::new(Writer {
            log: Arc::clone(&log),
            retention: rules.retention,
            clock: SortKeyClock::default(),
            failing: AtomicBool::new(false),
        });
        queue.spawn_writer(writer, rules.concurrency);
        Self {
            log,
            window: rules.window,
            wait: rules.wait,
            // Half the share: its other half stays for the caller's folded records and
            // served reads, so a probe never holds up the caller's own reads either.
            fold_after: (queue.share() / 2).min(REFUSALS_ONE_BY_ONE),
            refusals: Mutex::new(HashMap::new()),
            max_windows: rules.capacity.max(1),
            windows: Mutex::new(hashbrown::HashMap::new()),
            queue,
        }
    }

    /// Records one read: counted in its open window, or queued (a refusal, folded past
    /// the caller's first in its window, or the first read of a window). Fails when
    /// the queue, or the caller's share of it, stayed full for `AXNT_AUDIT_WAIT_MS`:
    /// the read must then not be answered with its token.
    pub(crate) async fn record(&self, read: Read<'_>) -> Result<(), Full> {
        let now = Utc::now();
        // Reads are counted in windows; imports and exports are each a record.
        let counted = matches!(read.outcome, ReadOutcome::Served | ReadOutcome::Refreshed);
        let refused = read.outcome == ReadOutcome::Refused;
        let window = chrono::TimeDelta::from_std(self.window).unwrap_or_default();
        if counted && self.count_in_window(&read, now, window) {
            return Ok(());
        }
        let deadline = Instant::now() + self.wait;
        let target = if refused && self.fold(read.caller, now, window) {
            metrics::counter!(crate::series::AUDIT_FOLDED_TOTAL).increment(1);
            Target::Folded
        } else {
            Target::Connection {
                user_id: read.user_id.to_string(),
                provider: read.provider.to_string(),
            }
        };
        let record = read.into_record(target, now);
        let key = record.key.clone();
        self.queue.push(record, deadline).await?;
        if counted {
            let mut windows = self.windows.lock();
            if windows.len() < self.max_windows {
                windows.entry(key).or_insert(Window {
                    started: now,
                    count: 0,
                    first_at: None,
                    last_at: None,
                    scopes: None,
                    request_id: None,
                });
            }
        }
        Ok(())
    }

    /// Records an action that is not a read (an import, an export): queued as its own
    /// record at once, whatever the queue holds (never dropped, never refused: an
    /// action is done when it is recorded, and its callers are few and paced).
    pub(crate) fn record_action(&self, action: Read<'_>) {
        let target = Target::Connection {
            user_id: action.user_id.to_string(),
            provider: action.provider.to_string(),
        };
        self.queue
            .push_unbounded(action.into_record(target, Utc::now()));
    }

    /// Counts a served read in its open window (true), or queues the counted reads of
    /// its window that has passed (false: the read opens the next). Copies nothing: the
    /// window is found by the read's borrowed key, and its scopes and request id are
    /// written over in place.
    fn count_in_window(
        &self,
        read: &Read<'_>,
        now: DateTime<Utc>,
        window: chrono::TimeDelta,
    ) -> bool {
        let key = ServedKey {
            caller: read.caller,
            user_id: read.user_id,
            provider: read.provider,
            outcome: read.outcome,
        };
        let mut windows = self.windows.lock();
        match windows.get_mut(&key) {
            Some(open) if now < open.started + window => {
                open.count += 1;
                open.first_at.get_or_insert(now);
                open.last_at = Some(now);
                if open.scopes.as_deref() != read.scopes {
                    open.scopes = read.scopes.map(str::to_string);
                }
                match (&mut open.request_id, read.request_id) {
                    (Some(kept), Some(id)) => {
                        kept.clear();
                        kept.push_str(id);
                    }
                    (kept, id) => *kept = id.map(str::to_string),
                }
                true
            }
            Some(_) => {
                // Passed: its counted reads go out now; this read opens the next.
                if let Some((key, done)) = windows.remove_entry(&key)
                    && let Some(done) = done.into_record(&key)
                {
                    self.queue.push_unbounded(done);
                }
                false
            }
            None => false,
        }
    }

    /// Counts a refusal of `caller`: whether it is past the caller's first
    /// [`Self::fold_after`] in its window, and so folded.
    fn fold(&self, caller: &str, now: DateTime<Utc>, window: chrono::TimeDelta) -> bool {
        let mut refusals = self.refusals.lock();
        let current = refusals.entry(caller.to_string()).or_insert(Refusals {
            started: now,
            count: 0,
        });
        if now >= current.started + window {
            *current = Refusals {
                started: now,
                count: 0,
            };
        }
        current.count = current.count.saturating_add(1);
        current.count > self.fold_after
    }

    /// The audit items of `partition`, newest first, once the records queued before
    /// this call are written (or a short wait has passed).
    pub(crate) async fn list(
        &self,
        partition: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FlowLogEntry>, StoreError> {
        self.queue.settled(LIST_WAITS_FOR_WRITES).await;
        self.log.list(partition, limit, before).await
    }

    /// Queues the windows that have passed (every `every`).
    pub(crate) fn schedule_flush(self: &Arc<Self>, jobs: &Jobs, every: Duration) {
        let this = Arc::clone(self);
        jobs.run(
            "audit flush",
            Schedule::every(every),
            jobs::from_fn(move |_stop| {
                this.queue_windows(false);
                std::future::ready(())
            }),
        );
    }

    /// Queues the counted reads of windows that have passed (`all`: of every window).
    fn queue_windows(&self, all: bool) {
        let now = Utc::now();
        let window = chrono::TimeDelta::from_std(self.window).unwrap_or_default();
        let done: Vec<Record> = {
            let mut windows = self.windows.lock();
            let keys: Vec<RecordKey> = windows
                .iter()
                .filter(|(_, w)| all || now >= w.started + window)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| windows.remove(&k).and_then(|w| w.into_record(&k)))
                .collect()
        };
        for record in done {
            self.queue.push_unbounded(record);
        }
        self.refusals
            .lock()
            .retain(|_, r| !all && now < r.started + window);
    }

    /// At shutdown: queues every window's counted reads and waits up to `within` for
    /// the queue to be written. What is still unwritten then is logged and counted
    /// ([`AUDIT_LOST_TOTAL`](crate::series::AUDIT_LOST_TOTAL)), and the writer stops.
    pub(crate) async fn close(&self, within: Duration) {
        self.queue_windows(true);
        if !self.queue.settled(within).await {
            let left = self.queue.unwritten();
            metrics::counter!(crate::series::AUDIT_LOST_TOTAL).increment(left.reads);
            tracing::error!(
                records = left.records,
                reads = left.reads,
                "audit records not written by the drain deadline (AXNT_DRAIN_TIMEOUT_SECS): these reads are not in the audit trail"
            );
        }
        self.queue.stop();
    }
}

impl Drop for AuditTrail {
    fn drop(&mut self) {
        self.queue.stop();
    }
}

impl Window {
    /// The record of the window's counted reads, if it counted any.
    fn into_record(self, key: &RecordKey) -> Option<Record> {
        let (first_at, last_at) = (self.first_at?, self.last_at?);
        (self.count > 0).then(|| Record {
            key: key.clone(),
            count: self.count,
            first_at,
            last_at,
            scopes: self.scopes,
            request_id: self.request_id,
        })
    }
}

/// Writes records under both partitions, retrying until the store has them.
struct Writer {
    log: Arc<dyn FlowLog>,
    retention: Duration,
    clock: SortKeyClock,
    /// Whether writes are failing: logged once when they start to, and when they
    /// recover, not per attempt.
    failing: AtomicBool,
}

/// The first pause between attempts of one write; doubled each time, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[async_trait]
impl Sink for Writer {
    /// Writes the records' items together (one call, one transaction where the store
    /// can); when the store refuses one as malformed, writes each record on its own, so
    /// only that record's reads are lost.
    async fn write(&self, records: Vec<Record>) {
        let mut items = Vec::with_capacity(records.len() * 2);
        let mut ends = Vec::with_capacity(records.len());
        for record in &records {
            items.extend(self.items_of(record));
            ends.push(items.len());
        }
        if self.write_all(&items).await.is_ok() {
            return;
        }
        let mut start = 0;
        for (record, end) in records.iter().zip(ends) {
            for item in &items[start..end] {
                if !self.write_entry(item, record.count).await {
                    break;
                }
            }
            start = end;
        }
    }
}

impl Writer {
    /// A record's items: one under its user (a read of one connection) and one under
    /// its caller.
    fn items_of(&self, record: &Record) -> Vec<FlowLogEntry> {
        let key = &record.key;
        let mut data = Map::new();
        data.insert("caller".into(), json!(key.caller));
        // A read of one connection is listed under its user and its caller; a folded
        // record, of no one user, under its caller only.
        let mut partitions = vec![caller_partition(&key.caller)];
        match &key.target {
            Target::Connection { user_id, provider } => {
                data.insert("userId".into(), json!(user_id));
                data.insert("provider".into(), json!(provider));
                partitions.insert(0, user_partition(user_id));
            }
            Target::Folded => {
                data.insert("folded".into(), json!(true));
            }
        }
        data.insert("outcome".into(), json!(key.outcome.label()));
        data.insert("count".into(), json!(record.count));
        data.insert("firstAt".into(), json!(rfc3339(record.first_at)));
        data.insert("lastAt".into(), json!(rfc3339(record.last_at)));
        if let Some(scopes) = &record.scopes {
            data.insert("scopes".into(), json!(scopes));
        }
        let timestamp = self.clock.next_key(record.last_at);
        let expires_at = record
            .last_at
            .timestamp()
            .saturating_add(i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX));
        partitions
            .into_iter()
            .map(|partition| FlowLogEntry {
                user_id: partition,
                timestamp: timestamp.clone(),
                flow_id: record.request_id.clone().unwrap_or_else(|| "-".into()),
                step: FlowStep::TokenRead,
                data: data.clone(),
                error: key.reason.map(str::to_string),
                ip_address: None,
                user_agent: None,
                expires_at,
            })
            .collect()
    }
}

impl Writer {
    /// Writes items together, retrying every failure but a malformed item (which no
    /// retry mends: its error is returned) with backoff. Writing an item again is
    /// harmless: its key is fixed.
    async fn write_all(&self, items: &[FlowLogEntry]) -> Result<(), StoreError> {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            match self.log.append_all(items).await {
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("audit writes succeed again");
                    }
                    return Ok(());
                }
                Err(e @ StoreError::Corrupt(_)) => return Err(e),
                Err(e) => {
                    metrics::counter!(crate::series::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "audit write failed; retrying until stored (token reads wait once the audit queue is full)");
                    } else {
                        tracing::debug!(error = %e, "audit write failed again");
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        }
    }

    /// Writes one item of a record of `reads` reads; a malformed one is counted lost.
    async fn write_entry(&self, entry: &FlowLogEntry, reads: u64) -> bool {
        match self.write_all(std::slice::from_ref(entry)).await {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!(crate::series::AUDIT_LOST_TOTAL).increment(reads);
                tracing::error!(error = %e, reads, "an audit item was refused by the store: these reads are not in the audit trail");
                false
            }
        }
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
