//! The refresh lease on a connection row: partial updates that leave `version` alone,
//! and the holder's whole-row write.

use async_trait::async_trait;
use rusqlite::types::Value;
use serde_json::{Map, Value as Json};

use super::{EmbeddedStore, WriteIf, corrupt};
use crate::store::refresh_lease::{
    LEASE_ATTEMPT, LEASE_LAPSED_AT, LEASE_UNTIL, RETRY_AT, UNKNOWN_SINCE,
};
use crate::store::{Connection, Event, LeaseRelease, RefreshLease, RefreshLeases, StoreError};

/// A merge patch of the row's document (`json_patch`): each attribute set, or removed
/// when `None`.
fn patch(attributes: &[(&str, Option<Json>)]) -> Value {
    let map: Map<String, Json> = attributes
        .iter()
        .map(|(name, value)| ((*name).to_string(), value.clone().unwrap_or(Json::Null)))
        .collect();
    Value::from(Json::Object(map).to_string())
}

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
            patch(&[
                (LEASE_ATTEMPT, Some(lease.attempt.clone().into())),
                (LEASE_UNTIL, Some(lease.until_ms.into())),
                (LEASE_LAPSED_AT, None),
            ]),
            Value::from(version),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE connections SET doc = json_patch(doc, ?3) \
             WHERE user_id = ?1 AND provider = ?2 AND version = ?4 \
             AND (lease_attempt IS NULL OR lease_until IS NULL OR lease_until < ?5)",
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
            patch(&[
                (LEASE_UNTIL, Some(lease.until_ms.into())),
                (LEASE_LAPSED_AT, None),
            ]),
        ];
        self.update_one(
            "UPDATE connections SET doc = json_patch(doc, ?4) \
             WHERE user_id = ?1 AND provider = ?2 AND lease_attempt = ?3",
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
            patch(&[
                (LEASE_UNTIL, Some(until_ms.into())),
                (LEASE_LAPSED_AT, Some(now_ms.into())),
            ]),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE connections SET doc = json_patch(doc, ?4) \
             WHERE user_id = ?1 AND provider = ?2 AND lease_attempt = ?3 \
             AND lease_until < ?5 AND lease_lapsed_at IS NULL",
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
        let mut attributes = vec![
            (LEASE_ATTEMPT, None),
            (LEASE_UNTIL, None),
            (LEASE_LAPSED_AT, None),
            (RETRY_AT, after.retry_at_ms.map(Json::from)),
        ];
        // An unknown outcome is remembered until a token write clears it.
        if let Some(since) = after.unknown_since_ms {
            attributes.push((UNKNOWN_SINCE, Some(since.into())));
        }
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(attempt.to_string()),
            patch(&attributes),
        ];
        self.update_one_with(
            "UPDATE connections SET doc = json_patch(doc, ?4) \
             WHERE user_id = ?1 AND provider = ?2 AND lease_attempt = ?3"
                .to_string(),
            args,
            events,
        )
        .await
    }
}
