//! The refresh lease on a connection row: partial updates that leave `version` alone,
//! and the holder's whole-row write.

use async_trait::async_trait;
use rusqlite::types::Value;

use super::{EmbeddedStore, WriteIf, corrupt};
use crate::store::{Connection, Event, LeaseRelease, RefreshLease, RefreshLeases, StoreError};

#[async_trait]
impl RefreshLeases for EmbeddedStore {
    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put_as_holder(
        &self,
        row: &Connection,
        attempt: &str,
        events: &[Event],
    ) -> Result<(), StoreError> {
        self.write_row(row, WriteIf::Holder(attempt.to_string()), events)
            .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn acquire_lease(
        &self,
        user_id: &str,
        provider: &str,
        version: u64,
        lease: &RefreshLease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let version = i64::try_from(version).map_err(|e| corrupt("version", e))?;
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(lease.attempt.clone()),
            Value::from(lease.until_ms),
            Value::from(version),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_attempt = ?3, refresh_lease_until = ?4, \
             refresh_lease_lapsed_at = NULL \
             WHERE user_id = ?1 AND provider = ?2 AND version = ?5 \
             AND (refresh_lease_attempt IS NULL OR refresh_lease_until IS NULL OR refresh_lease_until < ?6)",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(lease.attempt.clone()),
            Value::from(lease.until_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_until = ?4, refresh_lease_lapsed_at = NULL \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn hold_lapsed_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(attempt.to_string()),
            Value::from(until_ms),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_until = ?4, refresh_lease_lapsed_at = ?5 \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3 \
             AND refresh_lease_until < ?5 AND refresh_lease_lapsed_at IS NULL",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn release_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        after: LeaseRelease,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(attempt.to_string()),
            after.retry_at_ms.map_or(Value::Null, Value::from),
            after.unknown_since_ms.map_or(Value::Null, Value::from),
        ];
        // An unknown outcome is remembered until a token write clears it.
        self.update_one_with(
            "UPDATE tokens SET refresh_lease_attempt = NULL, refresh_lease_until = NULL, \
             refresh_lease_lapsed_at = NULL, refresh_retry_at = ?4, refresh_unknown_since = COALESCE(?5, refresh_unknown_since) \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3"
                .to_string(),
            args,
            events,
        )
        .await
    }
}
