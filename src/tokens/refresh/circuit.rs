//! Each provider's circuit: refreshes stop for a while after repeated failures.

use crate::breaker::{self, Trip};
use crate::tokens::TokenError;

use super::{Refresher, SuppressedReason, suppressed};

impl Refresher {
    /// Whether the provider's circuit lets a refresh through (half-open: one probe).
    pub(super) fn circuit_allows(&self, provider: &str) -> Result<(), TokenError> {
        if self.policy.circuit_failures == 0 {
            return Ok(());
        }
        self.breakers
            .lock()
            .entry(provider.to_string())
            .or_default()
            .admit()
            .map_err(|wait| suppressed(provider, SuppressedReason::CircuitOpen, wait))
    }

    /// Feeds a redeem's outcome to the provider's circuit: `Some(true)` the provider
    /// answered, `Some(false)` it failed, `None` it was not asked.
    pub(super) fn circuit_record(&self, provider: &str, healthy: Option<bool>) {
        let outcome = match healthy {
            Some(true) => breaker::Outcome::Succeeded,
            Some(false) => breaker::Outcome::Failed,
            None => breaker::Outcome::NotMade,
        };
        let trip = Trip {
            failures: self.policy.circuit_failures,
            open_for: self.policy.circuit_open,
        };
        let mut breakers = self.breakers.lock();
        let breaker = breakers.entry(provider.to_string()).or_default();
        if breaker.record(outcome, trip) {
            tracing::warn!(
                provider,
                failures = breaker.failures(),
                open_secs = self.policy.circuit_open.as_secs(),
                "refreshes keep failing: the provider's circuit is open"
            );
        }
    }
}
