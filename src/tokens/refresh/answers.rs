//! What a refresh answers when it cannot give a token, the outcomes it counts, and the
//! clock arithmetic it shares.

use std::time::Duration;

use crate::oauth::grant::Cause;
use crate::series::Label;
use crate::store::Connection;
use crate::tokens::TokenError;

/// 409 for a row whose grant is dead, with the cause it died of.
pub(crate) fn reauthorization_required(row: &Connection) -> TokenError {
    let cause = row
        .refresh
        .inactive_cause
        .as_deref()
        .and_then(Cause::from_code)
        .unwrap_or(Cause::UnknownInvalidGrant);
    TokenError::ReauthorizationRequired {
        cause: cause.code().to_string(),
    }
}

/// What a redemption at the provider came to: [`TOKEN_REFRESHES_TOTAL`](crate::series::TOKEN_REFRESHES_TOTAL)'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum RefreshOutcome {
    Ok,
    InvalidGrant,
    ProviderUnavailable,
    OutcomeUnknown,
    ProviderError,
}

/// Why no refresh was attempted: [`TOKEN_REFRESH_SUPPRESSED_TOTAL`](crate::series::TOKEN_REFRESH_SUPPRESSED_TOTAL)'s `reason`, and
/// the answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum SuppressedReason {
    /// The connection cools down after a failed refresh.
    Cooldown,
    /// The provider's circuit is open.
    CircuitOpen,
    /// A lapsed lease is held for its holder, whose refresh's outcome is not known.
    OutcomeUnknown,
}

/// What became of a lapsed refresh lease: [`REFRESH_LEASE_LAPSES_TOTAL`](crate::series::REFRESH_LEASE_LAPSES_TOTAL)'s
/// `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum LapseOutcome {
    Held,
    TakenOver,
}

/// [`REFRESH_LEASE_LAPSES_TOTAL`](crate::series::REFRESH_LEASE_LAPSES_TOTAL)`{outcome}`: a lapsed lease held for its holder, or
/// taken over after its hold (its refresh's outcome unknown: with a rotating provider
/// the grant may then die).
pub(super) fn count_lapse(outcome: LapseOutcome) {
    metrics::counter!(crate::series::REFRESH_LEASE_LAPSES_TOTAL, "outcome" => outcome.label())
        .increment(1);
}

/// 503 while a lapsed lease is held for its attempt, counted with the suppressed
/// refreshes (nothing is redeemed).
pub(super) fn outcome_pending(provider: &str, retry_after: Duration) -> TokenError {
    metrics::counter!(crate::series::TOKEN_REFRESH_SUPPRESSED_TOTAL, "provider" => provider.to_string(), "reason" => SuppressedReason::OutcomeUnknown.label()).increment(1);
    TokenError::RefreshOutcomePending {
        retry_after_secs: whole_secs(retry_after),
    }
}

/// 503 without calling the provider, counted.
pub(super) fn suppressed(
    provider: &str,
    reason: SuppressedReason,
    retry_after: Duration,
) -> TokenError {
    metrics::counter!(crate::series::TOKEN_REFRESH_SUPPRESSED_TOTAL, "provider" => provider.to_string(), "reason" => reason.label()).increment(1);
    TokenError::RefreshSuppressed {
        reason: reason.label(),
        retry_after_secs: whole_secs(retry_after),
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub(super) fn whole_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn millis_until(at_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0))
}
