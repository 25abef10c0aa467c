//! The one backoff every retry loop of the service uses: exponential, doubling up to a
//! cap, with random jitter (up to the wait again) so that retries from many callers
//! spread out. `backon` computes the waits; the loops stay ours, because each decides
//! per error whether to retry and checks its own deadline. And the one retry of an
//! optimistic write that lost its condition ([`until_written`]): read again, decide
//! again, at once.

use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBackoff, ExponentialBuilder};

/// Successive waits: `first`, then doubling up to `max`, each plus jitter. Never ends.
pub(crate) struct Backoff {
    waits: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        let waits = ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Self { waits, max }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_wait(&mut self) -> Duration {
        self.waits.next().unwrap_or(self.max)
    }
}

/// `base` plus random jitter (up to `base` again), as one wait of [`Backoff`] has.
pub(crate) fn jittered(base: Duration) -> Duration {
    ConstantBuilder::default()
        .with_delay(base)
        .with_jitter()
        .build()
        .next()
        .unwrap_or(base)
}

/// What one attempt of an optimistic write came to: done, or its condition lost to a
/// concurrent writer (read again and decide again).
pub(crate) enum Written<T> {
    Done(T),
    Lost,
}

/// Runs an optimistic read-decide-write (read, decide, write on condition of what was
/// read) until an attempt is done, at most `attempts` times. `None`: every attempt lost
/// its condition; the caller says what that means. An error ends it at once.
pub(crate) async fn until_written<T, E, Fut>(
    attempts: usize,
    mut attempt: impl FnMut() -> Fut,
) -> Result<Option<T>, E>
where
    Fut: Future<Output = Result<Written<T>, E>>,
{
    for _ in 0..attempts {
        if let Written::Done(done) = attempt().await? {
            return Ok(Some(done));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_at_most_as_much_again_of_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        for base in [100, 200, 300, 300, 300] {
            let wait = backoff.next_wait();
            let base = Duration::from_millis(base);
            assert!(wait >= base && wait <= base * 2, "{wait:?} for {base:?}");
        }
        let waits: std::collections::BTreeSet<_> =
            (0..20).map(|_| jittered(Duration::from_secs(1))).collect();
        assert!(waits.len() > 1, "jitter varies");
        assert!(
            waits
                .iter()
                .all(|w| *w >= Duration::from_secs(1) && *w <= Duration::from_secs(2))
        );
    }

    #[tokio::test]
    async fn a_lost_write_is_tried_again_until_done_or_out_of_attempts() {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let attempt = || async {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Ok::<_, ()>(if n < 3 {
                Written::Lost
            } else {
                Written::Done(n)
            })
        };
        assert_eq!(until_written(5, attempt).await, Ok(Some(3)));
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let lost = until_written(5, || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<Written<()>, ()>(Written::Lost)
        })
        .await;
        assert_eq!((lost, tries.into_inner()), (Ok(None), 5));
        let failed = until_written(5, || async { Err::<Written<()>, _>("down") }).await;
        assert_eq!(failed, Err("down"));
    }
}
