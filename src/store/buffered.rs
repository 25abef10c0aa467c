//! Flow-log writes off the request path, over any [`FlowLog`].
//!
//! `append` puts the item in a bounded queue and returns; one background task writes
//! the queue with a few writes in flight, retrying throttled and failed writes with
//! backoff. `flush` waits until every item queued before it is written (shutdown
//! calls it), and `list` waits the same way first, so a user reading their log right
//! after a step sees the step.
//!
//! Why not batch: the run-time policy grants `PutItem` but not `BatchWriteItem`, and a
//! few concurrent single writes keep up with the steps a request produces.
//!
//! When the queue is full (the table is down or throttled for a long while), further
//! items are dropped and counted ([`FLOW_LOG_DROPPED_TOTAL`](crate::series::FLOW_LOG_DROPPED_TOTAL)) instead of making
//! requests wait: losing a log line must not slow or fail a user's flow.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::{FlowLog, FlowLogEntry, StoreError};
use crate::retry::Backoff;
use crate::series::Label;

/// Attempts per item (on top of the SDK's own retries) before it is given up.
const MAX_ATTEMPTS: u32 = 5;
/// The first pause between attempts; doubled each time, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

enum Message {
    Entry(Box<FlowLogEntry>),
    /// Answer once every earlier entry is written or given up. With `take_errors`, the
    /// answer carries the last failure since the previous such flush.
    Flush {
        take_errors: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A [`FlowLog`] whose appends are queued and written in the background.
pub struct BufferedFlowLog {
    inner: Arc<dyn FlowLog>,
    queue: mpsc::Sender<Message>,
}

impl BufferedFlowLog {
    /// Starts the writer task on the current tokio runtime. `capacity` items may wait;
    /// `concurrency` writes are in flight at once.
    pub fn spawn(inner: Arc<dyn FlowLog>, capacity: usize, concurrency: usize) -> Self {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(writer(Arc::clone(&inner), rx, concurrency.max(1)));
        Self { inner, queue }
    }

    async fn barrier(&self, take_errors: bool) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Message::Flush { take_errors, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the flow-log writer has stopped".into())
}

#[async_trait]
impl FlowLog for BufferedFlowLog {
    /// Queues the entry. Fails (without waiting) only when the queue is full or the
    /// writer has stopped; the caller logs that and carries on.
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError> {
        match self.queue.try_send(Message::Entry(Box::new(entry.clone()))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(crate::series::FLOW_LOG_DROPPED_TOTAL).increment(1);
                Err(StoreError::Throttled(
                    "flow-log write queue is full (AXNT_FLOW_LOG_BUFFER); item dropped".into(),
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(stopped()),
        }
    }

    /// Waits for the queued writes, then reads. A write that failed earlier does not
    /// fail this read (it is reported by `flush`).
    async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FlowLogEntry>, StoreError> {
        self.barrier(false).await?;
        self.inner.list(user_id, limit, before).await
    }

    /// Waits until everything queued before this call is written. Returns the last
    /// write failure since the previous flush, if any item was given up.
    async fn flush(&self) -> Result<(), StoreError> {
        self.barrier(true).await?;
        self.inner.flush().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// The background writer: runs until every `BufferedFlowLog` handle is dropped.
async fn writer(inner: Arc<dyn FlowLog>, mut rx: mpsc::Receiver<Message>, concurrency: usize) {
    let mut in_flight: JoinSet<Result<(), StoreError>> = JoinSet::new();
    let mut failure: Option<StoreError> = None;
    loop {
        let message = tokio::select! {
            message = rx.recv() => match message {
                Some(m) => {
                    metrics::gauge!(crate::series::FLOW_LOG_QUEUE_DEPTH).set(rx.len() as f64);
                    m
                }
                None => break,
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                note(done, &mut failure);
                continue;
            }
        };
        match message {
            Message::Entry(entry) => {
                while in_flight.len() >= concurrency {
                    if let Some(done) = in_flight.join_next().await {
                        note(done, &mut failure);
                    }
                }
                in_flight.spawn(write_with_retry(Arc::clone(&inner), entry));
            }
            Message::Flush { take_errors, reply } => {
                while let Some(done) = in_flight.join_next().await {
                    note(done, &mut failure);
                }
                let answer = match (take_errors, failure.take()) {
                    (true, Some(e)) => Err(e),
                    (false, kept) => {
                        failure = kept;
                        Ok(())
                    }
                    (true, None) => Ok(()),
                };
                // The caller may have gone away (a cancelled request): nothing to do.
                let _ = reply.send(answer);
            }
        }
    }
    while let Some(done) = in_flight.join_next().await {
        note(done, &mut failure);
    }
}

fn note(
    done: Result<Result<(), StoreError>, tokio::task::JoinError>,
    failure: &mut Option<StoreError>,
) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => *failure = Some(e),
        Err(e) => *failure = Some(StoreError::Unavailable(format!("flow-log write task: {e}"))),
    }
}

/// Writes one entry, retrying throttling and transient failures with exponential
/// backoff and jitter. Permissions, a missing table or a malformed item are not
/// retried: they will not get better by waiting.
async fn write_with_retry(
    inner: Arc<dyn FlowLog>,
    entry: Box<FlowLogEntry>,
) -> Result<(), StoreError> {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut attempt = 1;
    loop {
        match inner.append(&entry).await {
            Ok(()) => return Ok(()),
            Err(e @ (StoreError::Throttled(_) | StoreError::Unavailable(_)))
                if attempt < MAX_ATTEMPTS =>
            {
                tracing::debug!(error = %e, attempt, "flow-log write failed; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
                attempt += 1;
            }
            Err(e) => {
                metrics::counter!(crate::series::FLOW_LOG_WRITE_FAILURES_TOTAL).increment(1);
                tracing::warn!(
                    error = %e,
                    user_id = %entry.user_id,
                    flow_id = %entry.flow_id,
                    step = entry.step.label(),
                    "flow-log write given up"
                );
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FlowStep;
    use std::sync::atomic::{AtomicU32, Ordering};

    use parking_lot::Mutex;

    /// A log that is slow, throttles its first `throttles` writes, and denies the
    /// user `denied`.
    struct Scripted {
        written: Mutex<Vec<String>>,
        throttles: AtomicU32,
        pause: Duration,
    }

    #[async_trait]
    impl FlowLog for Scripted {
        async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError> {
            tokio::time::sleep(self.pause).await;
            if entry.user_id == "denied" {
                return Err(StoreError::AccessDenied("no PutItem".into()));
            }
            if self
                .throttles
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError::Throttled("slow down".into()));
            }
            self.written.lock().push(entry.timestamp.clone());
            Ok(())
        }
        async fn list(
            &self,
            _: &str,
            _: usize,
            _: Option<&str>,
        ) -> Result<Vec<FlowLogEntry>, StoreError> {
            Ok(Vec::new())
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn entry(user: &str, i: usize) -> FlowLogEntry {
        FlowLogEntry {
            user_id: user.into(),
            timestamp: format!("{i:04}"),
            flow_id: "f".into(),
            step: FlowStep::Completed,
            data: serde_json::Map::new(),
            error: None,
            ip_address: None,
            user_agent: None,
            expires_at: 0,
        }
    }

    fn scripted(throttles: u32, pause: Duration) -> Arc<Scripted> {
        Arc::new(Scripted {
            written: Mutex::new(Vec::new()),
            throttles: AtomicU32::new(throttles),
            pause,
        })
    }

    #[tokio::test]
    async fn appends_return_at_once_and_flush_waits_for_the_writes() {
        let inner = scripted(3, Duration::from_millis(20));
        let log = BufferedFlowLog::spawn(inner.clone(), 100, 4);
        let started = std::time::Instant::now();
        for i in 0..20 {
            log.append(&entry("u", i)).await.expect("queued");
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "no write on the caller's path"
        );
        log.flush()
            .await
            .expect("everything written, throttled ones retried");
        let mut written = inner.written.lock().clone();
        written.sort();
        assert_eq!(
            written,
            (0..20).map(|i| format!("{i:04}")).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let inner = scripted(0, Duration::from_millis(200));
        let log = BufferedFlowLog::spawn(inner, 2, 1);
        let mut dropped = 0;
        for i in 0..10 {
            if let Err(e) = log.append(&entry("u", i)).await {
                assert!(matches!(e, StoreError::Throttled(_)));
                dropped += 1;
            }
        }
        assert!(dropped > 0, "a full queue refuses items");
    }

    #[tokio::test]
    async fn flush_reports_a_write_given_up_once() {
        let inner = scripted(0, Duration::ZERO);
        let log = BufferedFlowLog::spawn(inner, 10, 2);
        log.append(&entry("denied", 1)).await.expect("queued");
        // A read waits for the write but does not swallow its failure...
        log.list("denied", 10, None).await.expect("list");
        let failed = log.flush().await;
        assert!(
            matches!(failed, Err(StoreError::AccessDenied(_))),
            "{failed:?}"
        );
        // ...which flush reports once.
        log.flush().await.expect("nothing new failed");
    }
}
