//! The one circuit breaker of the service (a provider's refreshes, a webhook
//! endpoint's deliveries): after `failures` failed calls in a row it opens for
//! `open_for`, refusing calls; then it is half-open and lets one call through as a
//! probe. The probe's success closes it; its failure opens it again at once.

use std::time::Duration;

use tokio::time::Instant;

/// When a circuit opens, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trip {
    /// Failed calls in a row that open it; 0 never opens it.
    pub(crate) failures: u32,
    pub(crate) open_for: Duration,
}

/// What happened to a call the circuit let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    Failed,
    /// The call stopped before it reached the far side: it tells nothing, and a probe
    /// it was leaves room for the next one.
    NotMade,
}

/// One circuit.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// Half-open: one call is probing.
    probing: bool,
}

impl Breaker {
    /// Lets a call through, or says how long the circuit stays shut (for a
    /// `Retry-After`). Half-open, the first caller becomes the probe and the others
    /// wait a second.
    pub(crate) fn admit(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) if self.probing => Err(Duration::from_secs(1)),
            Some(_) => {
                self.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether calls are refused now (open and not yet half-open).
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.is_some_and(|until| Instant::now() < until)
    }

    /// Records a call's outcome; true when this failure opened the circuit.
    pub(crate) fn record(&mut self, outcome: Outcome, trip: Trip) -> bool {
        match outcome {
            Outcome::Succeeded => {
                *self = Self::default();
                false
            }
            Outcome::Failed => {
                self.failures = self.failures.saturating_add(1);
                self.probing = false;
                if trip.failures > 0 && self.failures >= trip.failures {
                    self.open_until = Some(Instant::now() + trip.open_for);
                    true
                } else {
                    false
                }
            }
            Outcome::NotMade => {
                self.probing = false;
                false
            }
        }
    }

    /// Failed calls in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIP: Trip = Trip {
        failures: 5,
        open_for: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_open_it_and_a_success_between_starts_the_count_again() {
        let mut b = Breaker::default();
        for _ in 0..4 {
            assert!(!b.record(Outcome::Failed, TRIP));
        }
        assert!(b.admit().is_ok());
        b.record(Outcome::Succeeded, TRIP);
        for _ in 0..4 {
            b.record(Outcome::Failed, TRIP);
        }
        assert!(!b.is_open(), "a success in between starts the count again");
        assert!(b.record(Outcome::Failed, TRIP), "the fifth opens it");
        assert!(b.is_open());
        assert_eq!(b.admit(), Err(Duration::from_secs(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_it_lets_one_probe_through_whose_outcome_decides() {
        let mut b = Breaker::default();
        for _ in 0..5 {
            b.record(Outcome::Failed, TRIP);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!b.is_open());
        assert!(b.admit().is_ok(), "the probe");
        assert_eq!(b.admit(), Err(Duration::from_secs(1)), "one at a time");
        assert!(
            b.record(Outcome::Failed, TRIP),
            "a failed probe opens it again"
        );
        assert!(b.admit().is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(b.admit().is_ok());
        b.record(Outcome::NotMade, TRIP);
        assert!(b.admit().is_ok(), "a probe that was not made leaves room");
        b.record(Outcome::Succeeded, TRIP);
        assert!(b.admit().is_ok() && b.admit().is_ok(), "closed");
    }

    #[test]
    fn zero_failures_never_opens_it() {
        let mut b = Breaker::default();
        let off = Trip {
            failures: 0,
            ..TRIP
        };
        for _ in 0..100 {
            assert!(!b.record(Outcome::Failed, off));
        }
        assert!(!b.is_open());
    }
}
