//! The audit trail's own write queue: bounded, never dropping, with back-pressure.
//!
//! The flow log may lose a line rather than slow a flow; the audit trail may not lose
//! a read, so it does not share the flow log's drop-on-full queue. A record waits here
//! until the store has it: a write that fails is retried with backoff until it
//! succeeds (an outage, a throttle, a missing permission all hold it here), with a few
//! writes in flight.
//!
//! The bound is on records, not reads: a record identical (caller, user, provider,
//! outcome, reason) to one still waiting is merged into it (`count` and `lastAt`), so
//! a flood of the same refusal costs one slot. A read whose record needs a new slot
//! while every slot is taken waits for one, up to a deadline; past it the read gets
//! [`Full`] and is answered 503 (`audit_unavailable`) rather than served unrecorded.
//! Records of counting windows that have passed enter without a slot (they are
//! bounded by the number of windows, which the trail bounds by the same setting).
//!
//! The slots are shared fairly: one caller (API key) holds at most a quarter of them
//! ([`Queue::share`]). A caller at its share waits for its own records to be written,
//! then gets [`Full`], however many slots are free: one key's flood, or its reads of
//! many users while the store is slow, leaves three quarters of the queue to the
//! others, and it takes four keys at their share at once to fill it.
//!
//! [`AUDIT_QUEUE_DEPTH`](crate::series::AUDIT_QUEUE_DEPTH) and [`AUDIT_QUEUE_OLDEST_SECONDS`](crate::series::AUDIT_QUEUE_OLDEST_SECONDS) show the records not
//! yet written and how long the oldest has waited.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::ReadOutcome;
use crate::series::Label;

/// How a read that found the queue full fared: [`AUDIT_WAITS_TOTAL`](crate::series::AUDIT_WAITS_TOTAL)'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum AuditWait {
    /// Room came within the wait.
    Waited,
    /// No room in time: the read is refused.
    TimedOut,
}

/// Out of how many parts of the queue one caller may hold one.
const SHARES: usize = 4;

/// What makes two records one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordKey {
    pub(super) caller: String,
    pub(super) target: Target,
    pub(super) outcome: ReadOutcome,
    /// A refusal's problem code.
    pub(super) reason: Option<&'static str>,
}

/// A served read's [`RecordKey`], borrowed from the read: the trail finds the read's
/// open window with it, and copies nothing unless the read needs a record of its own.
pub(super) struct ServedKey<'a> {
    pub(super) caller: &'a str,
    pub(super) user_id: &'a str,
    pub(super) provider: &'a str,
    pub(super) outcome: ReadOutcome,
}

/// [`RecordKey`]'s hash, from its parts: the one rule the owned and borrowed keys share.
fn hash_key<H: std::hash::Hasher>(
    state: &mut H,
    caller: &str,
    target: Option<(&str, &str)>,
    outcome: ReadOutcome,
    reason: Option<&str>,
) {
    use std::hash::Hash;
    caller.hash(state);
    target.hash(state);
    outcome.hash(state);
    reason.hash(state);
}

impl std::hash::Hash for RecordKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let target = match &self.target {
            Target::Connection { user_id, provider } => Some((user_id.as_str(), provider.as_str())),
            Target::Folded => None,
        };
        hash_key(state, &self.caller, target, self.outcome, self.reason);
    }
}

impl std::hash::Hash for ServedKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_key(
            state,
            self.caller,
            Some((self.user_id, self.provider)),
            self.outcome,
            None,
        );
    }
}

impl hashbrown::Equivalent<RecordKey> for ServedKey<'_> {
    fn equivalent(&self, key: &RecordKey) -> bool {
        key.reason.is_none()
            && key.outcome == self.outcome
            && key.caller == self.caller
            && matches!(&key.target, Target::Connection { user_id, provider }
                if user_id == self.user_id && provider == self.provider)
    }
}

/// Whose token a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Target {
    /// One user's connection at one provider.
    Connection { user_id: String, provider: String },
    /// Any user at any provider: a caller's refusals past its threshold in a window,
    /// folded into one counted record (see the trail).
    Folded,
}

/// One or more identical reads between `first_at` and `last_at`.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) key: RecordKey,
    pub(super) count: u64,
    pub(super) first_at: DateTime<Utc>,
    pub(super) last_at: DateTime<Utc>,
    /// The scopes handed out, and the request id, of the last read.
    pub(super) scopes: Option<String>,
    pub(super) request_id: Option<String>,
}

impl Record {
    fn absorb(&mut self, other: Self) {
        self.count = self.count.saturating_add(other.count);
        self.first_at = self.first_at.min(other.first_at);
        if other.last_at >= self.last_at {
            self.last_at = other.last_at;
            self.scopes = other.scopes;
            self.request_id = other.request_id;
        }
    }
}

/// Where records go: writes one, retrying until it is stored (or can never be).
#[async_trait]
pub(super) trait Sink: Send + Sync {
    /// Writes `records` (taken together: at most [`BATCH`]).
    async fn write(&self, records: Vec<Record>);
}

/// Records written together at most (two items each; SQLite writes a batch in one
/// transaction). A batch is what is waiting when a write starts; no record waits for
/// one to fill.
pub(super) const BATCH: usize = 12;

/// The queue, or the caller's share of it, is full and stayed full until the read's
/// deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no room for the record in the audit queue, or in its caller's share of it, in time")]
pub(crate) struct Full;

/// A record's place in the queue, given back once it is written.
struct Slot {
    _caller: OwnedSemaphorePermit,
    _queue: OwnedSemaphorePermit,
}

struct Waiting {
    record: Record,
    queued_at: Instant,
    /// The slot it holds until written (none for a passed window's record).
    slot: Option<Slot>,
}

#[derive(Default)]
struct State {
    /// By sequence number: the order records are written in.
    waiting: BTreeMap<u64, Waiting>,
    /// The waiting record of each key, to merge into.
    by_key: HashMap<RecordKey, u64>,
    /// Records being written: when they were queued, and how many reads they hold.
    in_flight: BTreeMap<u64, (Instant, u64)>,
    next_seq: u64,
}

impl State {
    /// Every record numbered below this is written.
    fn written_below(&self) -> u64 {
        let waiting = self.waiting.keys().next().copied();
        let writing = self.in_flight.keys().next().copied();
        match (waiting, writing) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.next_seq,
        }
    }

    fn oldest(&self) -> Option<Instant> {
        let waiting = self.waiting.values().next().map(|w| w.queued_at);
        let writing = self.in_flight.values().next().map(|(at, _)| *at);
        match (waiting, writing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// How many records and reads were never written (shutdown's deadline passed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unwritten {
    pub(super) records: usize,
    pub(super) reads: u64,
}

pub(super) struct Queue {
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    /// The slots one caller may hold at once.
    share: usize,
    /// Each caller's share, while it holds slots or waits for one.
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Wakes the writer when a record arrives.
    arrived: Notify,
    /// [`State::written_below`], for readers waiting for earlier records.
    written: watch::Sender<u64>,
    stop: CancellationToken,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            state: Mutex::new(State::default()),
            slots: Arc::new(Semaphore::new(capacity)),
            share: (capacity / SHARES).max(1),
            shares: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            written: watch::Sender::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// The slots one caller may hold at once: a quarter of the queue (at least one).
    pub(super) fn share(&self) -> usize {
        self.share
    }

    /// Queues a read's record: merged into an identical waiting one, or in a free slot
    /// within its caller's share, waiting for one until `deadline`.
    pub(super) async fn push(&self, record: Record, deadline: Instant) -> Result<(), Full> {
        let Some(record) = self.merge(record) else {
            return Ok(());
        };
        let mut waited = false;
        // The caller's share first: a caller at its share waits for its own records,
        // not for slots the others need.
        let share = self.share_of(&record.key.caller);
        let slot = match acquire(&share, deadline, &mut waited).await {
            Some(caller) => acquire(&self.slots, deadline, &mut waited)
                .await
                .map(|queue| Slot {
                    _caller: caller,
                    _queue: queue,
                }),
            None => None,
        };
        drop(share);
        let Some(slot) = slot else {
            metrics::counter!(crate::series::AUDIT_WAITS_TOTAL, "outcome" => AuditWait::TimedOut.label())
                .increment(1);
            return Err(Full);
        };
        if waited {
            metrics::counter!(crate::series::AUDIT_WAITS_TOTAL, "outcome" => AuditWait::Waited.label())
                .increment(1);
        }
        self.insert(record, Some(slot));
        Ok(())
    }

    /// The semaphore of `caller`'s share.
    fn share_of(&self, caller: &str) -> Arc<Semaphore> {
        let mut shares = self.shares.lock();
        if let Some(share) = shares.get(caller) {
            return Arc::clone(share);
        }
        // A caller nobody holds a permit of, or waits on, has nothing queued: forgotten,
        // so the map holds the callers with records waiting, not every key ever seen.
        shares.retain(|_, share| Arc::strong_count(share) > 1);
        let share = Arc::new(Semaphore::new(self.share));
        shares.insert(caller.to_string(), Arc::clone(&share));
        share
    }

    /// Queues a record without a slot (a passed window's counted reads).
    pub(super) fn push_unbounded(&self, record: Record) {
        if let Some(record) = self.merge(record) {
            self.insert(record, None);
        }
    }

    /// Merges into an identical waiting record; gives the record back when there is
    /// none.
    fn merge(&self, record: Record) -> Option<Record> {
        let mut state = self.state.lock();
        let State {
            waiting, by_key, ..
        } = &mut *state;
        match by_key.get(&record.key).and_then(|seq| waiting.get_mut(seq)) {
            Some(entry) => {
                entry.record.absorb(record);
                None
            }
            None => Some(record),
        }
    }

    fn insert(&self, record: Record, slot: Option<Slot>) {
        {
            let mut state = self.state.lock();
            let State {
                waiting,
                by_key,
                next_seq,
                ..
            } = &mut *state;
            // Another read may have queued the same key while this one waited for a
            // slot: merge (and give the slot back).
            if let Some(entry) = by_key.get(&record.key).and_then(|seq| waiting.get_mut(seq)) {
                entry.record.absorb(record);
                return;
            }
            let seq = *next_seq;
            *next_seq += 1;
            by_key.insert(record.key.clone(), seq);
            waiting.insert(
                seq,
                Waiting {
                    record,
                    queued_at: Instant::now(),
                    slot,
                },
            );
            report(&state);
        }
        self.arrived.notify_one();
    }

    /// The next record to write, now in flight.
    fn take(&self) -> Option<(u64, Record, Option<Slot>)> {
        let mut state = self.state.lock();
        let (seq, entry) = state.waiting.pop_first()?;
        state.by_key.remove(&entry.record.key);
        state
            .in_flight
            .insert(seq, (entry.queued_at, entry.record.count));
        Some((seq, entry.record, entry.slot))
    }

    fn written_one(&self, seq: u64) {
        let mut state = self.state.lock();
        state.in_flight.remove(&seq);
        self.written.send_replace(state.written_below());
        report(&state);
    }

    /// Waits until every record queued before this call is written, or `timeout`
    /// passed; returns whether they were.
    pub(super) async fn settled(&self, timeout: Duration) -> bool {
        let target = self.state.lock().next_seq;
        let mut written = self.written.subscribe();
        tokio::time::timeout(timeout, written.wait_for(|below| *below >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// What is still waiting or being written.
    pub(super) fn unwritten(&self) -> Unwritten {
        let state = self.state.lock();
        Unwritten {
            records: state.waiting.len() + state.in_flight.len(),
            reads: state.waiting.values().map(|w| w.record.count).sum::<u64>()
                + state
                    .in_flight
                    .values()
                    .map(|(_, count)| count)
                    .sum::<u64>(),
        }
    }

    /// Stops the writer: writes in flight are abandoned.
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// Writes records, `concurrency` at a time, until [`Self::stop`].
    pub(super) fn spawn_writer(
        self: &Arc<Self>,
        sink: Arc<dyn Sink>,
        concurrency: usize,
    ) -> tokio::task::JoinHandle<()> {
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            let mut writes: JoinSet<Vec<u64>> = JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                while writes.len() < concurrency.max(1) {
                    let mut seqs = Vec::new();
                    let mut records = Vec::new();
                    let mut slots = Vec::new();
                    while records.len() < BATCH {
                        let Some((seq, record, slot)) = queue.take() else {
                            break;
                        };
                        seqs.push(seq);
                        records.push(record);
                        slots.push(slot);
                    }
                    if records.is_empty() {
                        break;
                    }
                    let sink = Arc::clone(&sink);
                    writes.spawn(async move {
                        sink.write(records).await;
                        // The slots are free once the records are stored.
                        drop(slots);
                        seqs
                    });
                }
                tokio::select! {
                    () = queue.stop.cancelled() => break,
                    () = queue.arrived.notified() => {}
                    Some(done) = writes.join_next(), if !writes.is_empty() => {
                        if let Ok(seqs) = done {
                            for seq in seqs {
                                queue.written_one(seq);
                            }
                        }
                    }
                    // The oldest record's age grows while nothing moves.
                    _ = tick.tick() => report(&queue.state.lock()),
                }
            }
        })
    }
}

/// A permit of `semaphore`, at once or by `deadline` (then `waited`).
async fn acquire(
    semaphore: &Arc<Semaphore>,
    deadline: Instant,
    waited: &mut bool,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(semaphore).try_acquire_owned() {
        return Some(permit);
    }
    *waited = true;
    tokio::time::timeout_at(deadline.into(), Arc::clone(semaphore).acquire_owned())
        .await
        .ok()?
        .ok()
}

/// The queue's gauges.
fn report(state: &State) {
    metrics::gauge!(crate::series::AUDIT_QUEUE_DEPTH)
        .set((state.waiting.len() + state.in_flight.len()) as f64);
    metrics::gauge!(crate::series::AUDIT_QUEUE_OLDEST_SECONDS)
        .set(state.oldest().map_or(0.0, |at| at.elapsed().as_secs_f64()));
}

#[cfg(test)]
mod tests;
