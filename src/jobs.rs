//! The one runner of the service's periodic work: the keep-alive, webhook deliveries,
//! the audit flush, secret re-reads, the embedded store's purge, the limiter's sweep,
//! background refreshes and revocation retries are each a [`Job`] whose passes the
//! runner starts on a [`Schedule`].
//!
//! Stopping is cooperative: [`Jobs::stop`] cancels a token every pass is given and
//! waits, within the drain budget, for the passes in progress to end. A pass is never
//! cut at an await: one that loops (over rows, over events) checks the token between
//! steps and ends at the next step's boundary, so a webhook delivery or a lease write
//! it began completes. A job that runs on one instance of the cluster at a time holds
//! a `store::JobLease` in its passes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Periodic work: one pass at a time, started by the runner.
pub(crate) trait Job: Send + 'static {
    /// One pass. `stop` is cancelled at shutdown: a pass that takes more than a moment
    /// checks it between steps and returns.
    fn pass(&mut self, stop: &CancellationToken) -> impl Future<Output = ()> + Send;
}

/// A [`Job`] from a closure making each pass.
pub(crate) fn from_fn<F, Fut>(make_pass: F) -> impl Job
where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    FnJob(make_pass)
}

struct FnJob<F>(F);

impl<F, Fut> Job for FnJob<F>
where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn pass(&mut self, stop: &CancellationToken) -> impl Future<Output = ()> + Send {
        (self.0)(stop.clone())
    }
}

/// Waits `wait` within a pass, or less when the job is stopped; false when stopped (the
/// pass then ends at this step).
pub(crate) async fn pause(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// When a job's passes start.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// The wait before the first pass.
    first: Duration,
    /// The wait from the end of one pass to the start of the next.
    every: Duration,
    /// Each wait gains random jitter (up to the wait again), so instances spread out.
    jitter: bool,
    /// Asks for a pass before `every` has passed, but never sooner than the duration
    /// after the end of the last one.
    wake: Option<(Arc<Notify>, Duration)>,
}

impl Schedule {
    /// A pass every `every`, the first after one `every`.
    pub(crate) fn every(every: Duration) -> Self {
        Self {
            first: every,
            every,
            jitter: false,
            wake: None,
        }
    }

    /// The first pass after `first` instead.
    pub(crate) fn first_after(mut self, first: Duration) -> Self {
        self.first = first;
        self
    }

    /// Waits gain jitter.
    pub(crate) fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// `wake` starts a pass early, at most once per `at_most_every`.
    pub(crate) fn woken_by(mut self, wake: Arc<Notify>, at_most_every: Duration) -> Self {
        self.wake = Some((wake, at_most_every));
        self
    }

    /// Waits `wait` (jittered if asked), or less when woken; false when stopped.
    async fn wait(&self, wait: Duration, stop: &CancellationToken) -> bool {
        let wait = if self.jitter {
            crate::retry::jittered(wait)
        } else {
            wait
        };
        let woken = async {
            match &self.wake {
                Some((wake, _)) => wake.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
            () = woken => true,
        }
    }

    /// After a pass: the rest a woken schedule keeps; false when stopped.
    async fn rest(&self, stop: &CancellationToken) -> bool {
        match &self.wake {
            Some((_, rest)) => pause(*rest, stop).await,
            None => true,
        }
    }
}

/// Runs jobs until stopped (or dropped: a service that failed to assemble leaves no
/// job behind).
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Jobs {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts `job`'s passes on `schedule`; `name` goes in the logs.
    pub(crate) fn run(&self, name: impl Into<String>, schedule: Schedule, mut job: impl Job) {
        let name = name.into();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let mut wait = schedule.first;
            while schedule.wait(wait, &stop).await {
                job.pass(&stop).await;
                if stop.is_cancelled() || !schedule.rest(&stop).await {
                    break;
                }
                wait = schedule.every;
            }
            tracing::debug!(job = name, "job stopped");
        });
    }

    /// Cancels every job and waits up to `within` for the passes in progress to end.
    /// False when some were still running at the deadline (they are logged).
    pub(crate) async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        let stopped = tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok();
        if !stopped {
            tracing::warn!(
                running = self.tasks.len(),
                "background jobs still running at the drain deadline"
            );
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// A job whose pass takes `steps` steps of 100 ms, checking `stop` between them.
    struct Steps {
        steps: usize,
        passes: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
    }

    impl Job for Steps {
        async fn pass(&mut self, stop: &CancellationToken) {
            self.passes.fetch_add(1, Ordering::SeqCst);
            for _ in 0..self.steps {
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counters() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)))
    }

    #[tokio::test(start_paused = true)]
    async fn passes_start_on_the_schedule_and_stop_ends_the_loop() {
        let jobs = Jobs::new();
        let (passes, finished) = counters();
        jobs.run(
            "steps",
            Schedule::every(Duration::from_secs(10)).first_after(Duration::from_secs(1)),
            Steps {
                steps: 1,
                passes: Arc::clone(&passes),
                finished: Arc::clone(&finished),
            },
        );
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "the first pass after 1 s");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "then one every 10 s");
        assert!(jobs.stop(Duration::from_secs(1)).await);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 2, "no pass after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_in_progress_ends_at_its_next_step_and_stop_waits_for_it() {
        let jobs = Jobs::new();
        let (passes, finished) = counters();
        jobs.run(
            "long",
            Schedule::every(Duration::from_secs(1)).first_after(Duration::ZERO),
            Steps {
                steps: 50,
                passes: Arc::clone(&passes),
                finished: Arc::clone(&finished),
            },
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1);
        let asked = Instant::now();
        assert!(jobs.stop(Duration::from_secs(10)).await, "the pass ended");
        let took = asked.elapsed();
        assert!(
            took <= Duration::from_millis(100),
            "it ended at the step's end, not the pass's: {took:?}"
        );
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "cut short between steps"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_within_a_pass_ends_at_the_stop() {
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let asked = Instant::now();
        assert!(!pause(Duration::from_secs(60), &stop).await, "stopped");
        assert_eq!(
            asked.elapsed(),
            Duration::from_secs(1),
            "at the stop, not after 60 s"
        );
        assert!(pause(Duration::from_secs(1), &CancellationToken::new()).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_that_outlasts_the_budget_is_reported() {
        let jobs = Jobs::new();
        jobs.run(
            "stubborn",
            Schedule::every(Duration::from_secs(1)).first_after(Duration::ZERO),
            from_fn(|_stop| tokio::time::sleep(Duration::from_secs(30))),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!jobs.stop(Duration::from_secs(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_starts_a_pass_early_but_not_twice_within_the_rest() {
        let jobs = Jobs::new();
        let wake = Arc::new(Notify::new());
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&passes);
        jobs.run(
            "woken",
            Schedule::every(Duration::from_secs(300))
                .woken_by(Arc::clone(&wake), Duration::from_secs(10)),
            from_fn(move |_stop| {
                counted.fetch_add(1, Ordering::SeqCst);
                std::future::ready(())
            }),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "woken before 300 s");
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1, "not within the 10 s rest");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            passes.load(Ordering::SeqCst),
            2,
            "the wake kept for after it"
        );
        assert!(jobs.stop(Duration::from_secs(1)).await);
    }
}
