//! The one backoff every retry loop of the service uses: exponential, doubling up to a
//! cap, with up to 50 % random jitter so that retries from many callers spread out.

use std::time::Duration;

/// Successive waits: `first`, then doubling up to `max`, each plus jitter.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The wait before the next attempt.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// `base` plus up to 50 % random jitter.
pub(crate) fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    crate::crypto::fill_random(&mut byte);
    base + base.mul_f64(f64::from(byte[0]) / 510.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_at_most_half_again_of_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        for base in [100, 200, 300, 300] {
            let wait = backoff.next_wait();
            let base = Duration::from_millis(base);
            assert!(
                wait >= base && wait <= base + base / 2,
                "{wait:?} for {base:?}"
            );
        }
    }
}
