//! The one backoff every retry loop of the service uses: exponential, doubling up to a
//! cap, with random jitter (up to the wait again) so that retries from many callers
//! spread out. `backon` computes the waits; the loops stay ours, because each decides
//! per error whether to retry and checks its own deadline.

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
}
