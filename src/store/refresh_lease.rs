//! A connection's refresh bookkeeping and the lease one refresh attempt holds on it,
//! written by partial updates that leave `version` alone.

use async_trait::async_trait;

use serde::{Deserialize, Serialize};

use super::{Connection, Event, StoreError};

/// The refresh bookkeeping's stored attributes, which the lease's partial updates name
/// one by one.
pub(crate) const LEASE_ATTEMPT: &str = "refreshLeaseAttempt";
pub(crate) const LEASE_UNTIL: &str = "refreshLeaseUntil";
pub(crate) const LEASE_LAPSED_AT: &str = "refreshLeaseLapsedAt";
pub(crate) const RETRY_AT: &str = "refreshRetryAt";
pub(crate) const UNKNOWN_SINCE: &str = "refreshUnknownSince";

/// A row's refresh bookkeeping (`refreshLeaseAttempt`, `refreshLeaseUntil`,
/// `refreshLeaseLapsedAt`, `refreshRetryAt`, `refreshUnknownSince`, `inactiveCause`),
/// stored flat in the row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RefreshAttributes", into = "RefreshAttributes")]
pub struct RefreshState {
    /// Set while one refresh attempt redeems the refresh token, so every other reader,
    /// on any instance, waits for its result instead of redeeming the same token.
    pub lease: Option<RefreshLease>,
    /// Epoch milliseconds before which no new refresh is attempted (the cooldown after
    /// a transient failure).
    pub retry_at_ms: Option<i64>,
    /// Epoch milliseconds of a refresh request whose outcome is unknown (the connection
    /// died after the request was sent): the provider may have redeemed, and rotated,
    /// the stored refresh token.
    pub unknown_since_ms: Option<i64>,
    /// Why the row went inactive (`invalid_grant`, `refresh_outcome_unknown`,
    /// `no_refresh_token`).
    pub inactive_cause: Option<String>,
}

/// [`RefreshState`] as stored: flat, each absent one left out. The attribute names are
/// the constants above.
#[derive(Serialize, Deserialize)]
struct RefreshAttributes {
    #[serde(
        rename = "refreshLeaseAttempt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    attempt: Option<String>,
    #[serde(
        rename = "refreshLeaseUntil",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    until: Option<i64>,
    #[serde(
        rename = "refreshLeaseLapsedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    lapsed_at: Option<i64>,
    #[serde(
        rename = "refreshRetryAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    retry_at: Option<i64>,
    #[serde(
        rename = "refreshUnknownSince",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    unknown_since: Option<i64>,
    #[serde(
        rename = "inactiveCause",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    inactive_cause: Option<String>,
}

impl From<RefreshState> for RefreshAttributes {
    fn from(state: RefreshState) -> Self {
        let (attempt, until, lapsed_at) = match state.lease {
            Some(lease) => (
                Some(lease.attempt),
                Some(lease.until_ms),
                lease.lapsed_at_ms,
            ),
            None => (None, None, None),
        };
        Self {
            attempt,
            until,
            lapsed_at,
            retry_at: state.retry_at_ms,
            unknown_since: state.unknown_since_ms,
            inactive_cause: state.inactive_cause,
        }
    }
}

impl TryFrom<RefreshAttributes> for RefreshState {
    type Error = String;

    fn try_from(stored: RefreshAttributes) -> Result<Self, String> {
        let lease = match (stored.attempt, stored.until) {
            (Some(attempt), Some(until_ms)) => Some(RefreshLease {
                attempt,
                until_ms,
                lapsed_at_ms: stored.lapsed_at,
            }),
            (Some(_), None) => return Err(format!("missing field `{LEASE_UNTIL}`")),
            (None, _) => None,
        };
        Ok(Self {
            lease,
            retry_at_ms: stored.retry_at,
            unknown_since_ms: stored.unknown_since,
            inactive_cause: stored.inactive_cause,
        })
    }
}

/// One refresh attempt's claim on a row, and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshLease {
    /// Random per attempt: a live lease belongs to whoever wrote this id, never to
    /// "this instance", so a second attempt in the same process cannot mistake an
    /// earlier attempt's lease for its own.
    pub attempt: String,
    /// Epoch milliseconds; a live holder extends it before it lapses. A lease that
    /// lapsed without being given back is not free at once: its holder may have
    /// redeemed the refresh token and still be trying to store the new tokens.
    pub until_ms: i64,
    /// Epoch milliseconds when another instance found this lease lapsed (and could
    /// write) and held it in its attempt's name for a grace (`until_ms` then ends the
    /// grace): the attempt's outcome is unknown. Set only by
    /// [`RefreshLeases::hold_lapsed_lease`]; taking or extending a lease clears it.
    pub lapsed_at_ms: Option<i64>,
}

impl RefreshLease {
    /// A new lease of `attempt` until `until_ms`.
    pub fn new(attempt: impl Into<String>, until_ms: i64) -> Self {
        Self {
            attempt: attempt.into(),
            until_ms,
            lapsed_at_ms: None,
        }
    }
}

/// What a lease holder leaves behind when it gives the lease back without new tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseRelease {
    /// The cooldown: no refresh before this (epoch milliseconds).
    pub retry_at_ms: Option<i64>,
    /// Set when the attempt's outcome is unknown (epoch milliseconds).
    pub unknown_since_ms: Option<i64>,
}

/// The refresh lease on a connection row.
#[async_trait]
pub trait RefreshLeases: Send + Sync {
    /// Takes the refresh lease (`lease.attempt` until `lease.until_ms`, no lapse mark):
    /// only while the row is at `version` and no other attempt's lease is live at
    /// `now_ms`. Changes nothing else (not `version`).
    async fn acquire_lease(
        &self,
        user_id: &str,
        provider: &str,
        version: u64,
        lease: &RefreshLease,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Moves the lease's end to `lease.until_ms` and clears its lapse mark (its holder
    /// is alive), only while `lease.attempt` holds it.
    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError>;

    /// Holds a lapsed lease in its attempt's name: only while `attempt` holds the
    /// lease, it has lapsed at `now_ms` and was not held so before, moves its end to
    /// `until_ms` and marks it lapsed at `now_ms` ([`RefreshLease::lapsed_at_ms`]).
    /// The attempt still holds it (its [`put_as_holder`](Self::put_as_holder) still
    /// lands); nobody else takes it before `until_ms`. A lost condition is a conflict.
    async fn hold_lapsed_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Gives the lease back (only while `attempt` holds it), recording `after`, and
    /// stores `events` with it (both or neither).
    async fn release_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        after: LeaseRelease,
        events: &[Event],
    ) -> Result<(), StoreError>;

    /// The lease holder's write: `row` replaces the stored row only while `attempt`
    /// still holds its lease (whether or not the lease has lapsed: nobody took it
    /// over). Otherwise [`StoreError::Conflict`], and nothing is written, no event
    /// either.
    async fn put_as_holder(
        &self,
        row: &Connection,
        attempt: &str,
        events: &[Event],
    ) -> Result<(), StoreError>;
}
