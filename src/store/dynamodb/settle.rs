//! Settling event writes whose outcome was not learnt in time (see `events`): one
//! task per store, started when there is something to settle and gone when nothing
//! is left, working a bounded queue one call at a time.
//!
//! Each entry is one round of events, owing one of two things:
//!
//! - **a fence**: the caller was answered that the write failed, but its transaction
//!   may yet commit. Fenced, nothing of it was stored (a round that was itself copies
//!   is owed them again); found stored after the bound, it is owed a copy;
//! - **a copy**: stored after the bound, so a cursor on any instance may have passed
//!   its events. They are written again under fresh ids, by the same bounded rounds,
//!   each copy's `data.originalId` naming the event it repeats.
//!
//! A failed call ends the pass: while the table is away the settler probes it with one
//! call, backing off up to [`PROBE_EVERY`], not with one call per entry. An entry not
//! settled within [`SETTLE_FOR`], one that finds the queue full (more than
//! [`CAPACITY`] rounds), and what is left at shutdown are counted in
//! [`EVENTS_UNSETTLED_TOTAL`](crate::series::EVENTS_UNSETTLED_TOTAL) and logged with the replay that sends their events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::DynamoStore;
use super::events::{EVENT_WRITE_BOUND, Fence, Written};
use super::item::rfc3339;
use crate::retry::Backoff;
use crate::store::Event;

/// Rounds waiting at most; past it a round is counted and logged, not kept.
const CAPACITY: usize = 10_000;
/// An entry is tried this long: past TCP's own retransmission limits no request still
/// in flight can arrive.
const SETTLE_FOR: Duration = Duration::from_secs(15 * 60);
/// The longest wait between probes while the table is away.
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// The `data` field of a copy that names the event it repeats.
const ORIGINAL_ID: &str = "originalId";

/// What a round is owed.
#[derive(Clone, Copy)]
pub(super) enum Owed {
    /// Its fence: the round may yet commit. `started` is when it was stamped.
    Fence { started: Instant },
    /// A copy of its events, stored after the bound.
    Copy,
}

#[derive(Clone)]
struct Entry {
    events: Vec<Event>,
    owed: Owed,
    /// Whether the round was itself a copy: fenced, it is owed a copy again.
    copies: bool,
    queued: Instant,
}

/// The queue of one store's unsettled rounds.
pub(crate) struct Settler {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Wakes the task from its wait between probes (at shutdown).
    wake: Notify,
    /// Told when the task ends.
    ended: Notify,
}

#[derive(Default)]
struct Queue {
    entries: BTreeMap<u64, Entry>,
    next_key: u64,
    /// Whether a task works the queue.
    running: bool,
    closed: bool,
    /// Logged once per spell of a full queue.
    full: bool,
}

/// What [`Settler::push`] did.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// Queued, and no task works the queue: the caller starts one.
    QueuedStart,
    /// Not kept (the queue full or closed): counted and logged.
    Refused,
}

impl Settler {
    pub(super) fn new() -> Self {
        Self::with_capacity(CAPACITY)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            queue: Mutex::default(),
            capacity,
            wake: Notify::new(),
            ended: Notify::new(),
        }
    }

    fn push(&self, entry: Entry) -> Pushed {
        let mut q = self.queue.lock();
        if q.closed || q.entries.len() >= self.capacity {
            let closed = q.closed;
            let first_of_spell = !closed && !std::mem::replace(&mut q.full, true);
            drop(q);
            if first_of_spell {
                tracing::error!(
                    capacity = self.capacity,
                    counted_in = crate::series::EVENTS_UNSETTLED_TOTAL,
                    "the queue of event writes to settle is full: until it has room, a write whose \
                     outcome is not known is counted (see counted_in) and logged, not settled"
                );
            }
            let why = if closed {
                "could not be settled: the service is stopping"
            } else {
                "could not be settled: the queue is full"
            };
            unsettled(&entry.events, why);
            return Pushed::Refused;
        }
        let key = q.next_key;
        q.next_key += 1;
        q.entries.insert(key, entry);
        q.full = false;
        metrics::gauge!(crate::series::EVENTS_SETTLING).set(q.entries.len() as f64);
        if std::mem::replace(&mut q.running, true) {
            Pushed::Queued
        } else {
            Pushed::QueuedStart
        }
    }

    /// The entries to work on, or `None` (the task ends) when there are none or the
    /// queue is closed.
    fn pass(&self) -> Option<Vec<(u64, Entry)>> {
        let mut q = self.queue.lock();
        if q.entries.is_empty() || q.closed {
            q.running = false;
            drop(q);
            // Only a waiting `close` hears it: no permit is left for a later one.
            self.ended.notify_waiters();
            return None;
        }
        Some(q.entries.iter().map(|(k, e)| (*k, e.clone())).collect())
    }

    /// Replaces the entry at `key` by `next`, or removes it; an entry taken meanwhile
    /// (by [`close`](Self::close)) stays taken.
    fn settle(&self, key: u64, next: Option<Entry>) {
        let mut q = self.queue.lock();
        match next {
            Some(entry) => {
                if let Some(slot) = q.entries.get_mut(&key) {
                    *slot = entry;
                }
            }
            None => {
                q.entries.remove(&key);
            }
        }
        metrics::gauge!(crate::series::EVENTS_SETTLING).set(q.entries.len() as f64);
    }

    /// At shutdown: gives the task one more pass within `budget`, then counts and logs
    /// what is still unsettled.
    pub(crate) async fn close(&self, budget: Duration) {
        // Listening before `running` is read: the task's end cannot come in between.
        let ended = self.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let running = {
            let mut q = self.queue.lock();
            q.closed = true;
            q.running
        };
        if running {
            // The task reads `closed` after the pass it is in, or the one this wakes.
            self.wake.notify_one();
            let _ = tokio::time::timeout(budget, ended).await;
        }
        let left: Vec<Entry> = std::mem::take(&mut self.queue.lock().entries)
            .into_values()
            .collect();
        metrics::gauge!(crate::series::EVENTS_SETTLING).set(0.0);
        let events: Vec<Event> = left.iter().flat_map(|e| e.events.clone()).collect();
        if events.is_empty() {
            return;
        }
        metrics::counter!(crate::series::EVENTS_UNSETTLED_TOTAL).increment(events.len() as u64);
        let oldest = events.iter().min_by_key(|e| e.timestamp);
        if let Some(oldest) = oldest {
            tracing::error!(
                rounds = left.len(),
                events = events.len(),
                kinds = ?events.iter().map(|e| e.kind.as_str()).collect::<std::collections::BTreeSet<_>>(),
                since = rfc3339(&oldest.timestamp),
                "event writes still settling at shutdown: whether (or, stored late, whether every cursor read) \
                 their events were stored is unknown; `axnt-oauth events replay --since <since>` sends them again"
            );
        }
    }
}

/// Counts and logs events stored later than the bound (they are copied).
pub(super) fn late(events: &[Event], what: &str) {
    metrics::counter!(crate::series::EVENTS_LATE_TOTAL).increment(events.len() as u64);
    if let Some(first) = events.first() {
        tracing::warn!(
            event_id = first.id,
            kind = first.kind,
            since = rfc3339(&first.timestamp),
            "an event write {what}: a feed or webhook cursor may have passed its events, \
             so they are written again under fresh ids"
        );
    }
}

/// Counts and logs events whose write could not be settled.
fn unsettled(events: &[Event], why: &str) {
    metrics::counter!(crate::series::EVENTS_UNSETTLED_TOTAL).increment(events.len() as u64);
    if let Some(first) = events.first() {
        tracing::error!(
            event_id = first.id,
            kind = first.kind,
            since = rfc3339(&first.timestamp),
            "an event write {why}: whether its events were stored (or every cursor read them) is unknown; \
             `axnt-oauth events replay --since <since>` sends them again"
        );
    }
}

/// `event` to be written again: its `data` names the event it repeats (a copy of a
/// copy names the first).
fn copy_of(event: &Event) -> Event {
    let mut copy = event.clone();
    copy.data
        .entry(ORIGINAL_ID)
        .or_insert_with(|| Value::String(event.id.clone()));
    copy
}

/// What working an entry came to.
enum Step {
    Done,
    Next(Entry),
    /// The table did not answer: the pass ends.
    Away,
}

impl DynamoStore {
    /// Hands a round to the settler (`copies`: the round was itself a copy).
    pub(super) fn owe(&self, events: Vec<Event>, owed: Owed, copies: bool) {
        let events = match owed {
            Owed::Copy => events.iter().map(copy_of).collect(),
            Owed::Fence { .. } => events,
        };
        let entry = Entry {
            events,
            owed,
            copies,
            queued: Instant::now(),
        };
        if self.settler.push(entry) == Pushed::QueuedStart {
            tokio::spawn(self.clone().settle_all());
        }
    }

    /// The queue's one task: passes over every entry until none is left.
    async fn settle_all(self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), PROBE_EVERY);
        while let Some(entries) = self.settler.pass() {
            let mut away = false;
            for (key, entry) in entries {
                if entry.queued.elapsed() > SETTLE_FOR {
                    self.settler.settle(key, None);
                    unsettled(&entry.events, "was not settled within 15 minutes");
                    continue;
                }
                match self.settle_one(entry).await {
                    Step::Done => self.settler.settle(key, None),
                    Step::Next(entry) => self.settler.settle(key, Some(entry)),
                    Step::Away => {
                        away = true;
                        break;
                    }
                }
            }
            if away {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_wait()) => {}
                    () = self.settler.wake.notified() => {}
                }
            } else {
                backoff = Backoff::new(Duration::from_millis(200), PROBE_EVERY);
            }
        }
    }

    async fn settle_one(&self, entry: Entry) -> Step {
        let Some(first) = entry.events.first() else {
            return Step::Done;
        };
        match entry.owed {
            Owed::Fence { started } => {
                // One call per probe: while the table is away, one call per pass.
                let fence = tokio::time::timeout(self.operation_timeout, self.fence(first)).await;
                match fence.ok().and_then(Result::ok).unwrap_or(Fence::Unsettled) {
                    Fence::Fenced if entry.copies => Step::Next(Entry {
                        events: entry.events.iter().map(copy_of).collect(),
                        owed: Owed::Copy,
                        ..entry
                    }),
                    Fence::Fenced => {
                        tracing::info!(
                            event_id = first.id,
                            "an event write answered as failed is fenced: it was not stored"
                        );
                        Step::Done
                    }
                    Fence::Stored if started.elapsed() <= EVENT_WRITE_BOUND => Step::Done,
                    Fence::Stored => {
                        late(&entry.events, "answered as failed was stored");
                        Step::Next(Entry {
                            events: entry.events.iter().map(copy_of).collect(),
                            owed: Owed::Copy,
                            ..entry
                        })
                    }
                    Fence::Unsettled => Step::Away,
                }
            }
            Owed::Copy => match self.write(None, &entry.events).await {
                Written::Stored => {
                    let original = first.data.get(ORIGINAL_ID).and_then(|v| v.as_str());
                    tracing::info!(
                        original_id = original.unwrap_or_default(),
                        events = entry.events.len(),
                        "events stored late are written again under fresh ids"
                    );
                    Step::Done
                }
                // Its round is an entry of its own now.
                Written::Settling(_) => Step::Done,
                Written::NotStored(e) => {
                    tracing::debug!(error = %e, "copying events stored late failed; tried again");
                    Step::Away
                }
            },
        }
    }

    /// The settler, for shutdown to close.
    pub(crate) fn settler(&self) -> Arc<Settler> {
        Arc::clone(&self.settler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            events: vec![Event {
                id: id.into(),
                kind: "connection.deleted".into(),
                user_id: "u".into(),
                provider: "google".into(),
                timestamp: chrono::Utc::now(),
                data: serde_json::Map::new(),
                expires_at: 0,
            }],
            owed: Owed::Copy,
            copies: false,
            queued: Instant::now(),
        }
    }

    #[test]
    fn the_queue_holds_its_capacity_and_one_task_works_it() {
        let settler = Settler::with_capacity(2);
        assert_eq!(settler.push(entry("a")), Pushed::QueuedStart);
        assert_eq!(
            settler.push(entry("b")),
            Pushed::Queued,
            "one task at a time"
        );
        assert_eq!(settler.push(entry("c")), Pushed::Refused, "full");
        let pass = settler.pass().expect("two to work");
        assert_eq!(pass.len(), 2);
        settler.settle(pass[0].0, None);
        assert_eq!(settler.push(entry("d")), Pushed::Queued, "room again");
        settler.settle(pass[1].0, None);
        let left = settler.pass().expect("one left");
        settler.settle(left[0].0, None);
        assert!(settler.pass().is_none(), "the task ends when none is left");
        assert_eq!(
            settler.push(entry("e")),
            Pushed::QueuedStart,
            "and the next entry starts one"
        );
    }

    #[test]
    fn a_copy_names_the_event_it_repeats_and_a_copy_of_a_copy_the_first() {
        let original = entry("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").events[0].clone();
        let copy = copy_of(&original);
        assert_eq!(copy.data[ORIGINAL_ID], original.id.as_str());
        let again = Event {
            id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c".into(),
            ..copy
        };
        assert_eq!(copy_of(&again).data[ORIGINAL_ID], original.id.as_str());
    }
}
