//! The refresh lease on a connection row: partial updates that leave `version` alone,
//! and the holder's whole-row write.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use super::DynamoStore;
use super::item::{
    LEASE_ATTEMPT, LEASE_LAPSED_AT, LEASE_UNTIL, RETRY_AT, UNKNOWN_SINCE, connection_item, n, s,
};
use crate::store::{Connection, Event, LeaseRelease, RefreshLease, RefreshLeases, StoreError};

#[async_trait]
impl RefreshLeases for DynamoStore {
    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put_as_holder(
        &self,
        row: &Connection,
        attempt: &str,
        events: &[Event],
    ) -> Result<(), StoreError> {
        self.put_row(
            connection_item(row)?,
            "#attempt = :attempt",
            Some(HashMap::from([(
                "#attempt".to_string(),
                LEASE_ATTEMPT.to_string(),
            )])),
            Some(HashMap::from([(":attempt".to_string(), s(attempt))])),
            events,
        )
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
        let request = self
            .update(user_id, provider)
            .update_expression("SET #attempt = :attempt, #until = :until REMOVE #lapsed")
            .condition_expression(
                "version = :version AND (attribute_not_exists(#attempt) OR #until < :now)",
            )
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#lapsed", LEASE_LAPSED_AT)
            .expression_attribute_values(":attempt", s(&lease.attempt))
            .expression_attribute_values(":until", n(lease.until_ms))
            .expression_attribute_values(":version", n(version))
            .expression_attribute_values(":now", n(now_ms));
        self.send_update(request).await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError> {
        let request = self
            .update(user_id, provider)
            .update_expression("SET #until = :until REMOVE #lapsed")
            .condition_expression("#attempt = :attempt")
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#lapsed", LEASE_LAPSED_AT)
            .expression_attribute_values(":attempt", s(&lease.attempt))
            .expression_attribute_values(":until", n(lease.until_ms));
        self.send_update(request).await
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
        let request = self
            .update(user_id, provider)
            .update_expression("SET #until = :until, #lapsed = :now")
            .condition_expression(
                "#attempt = :attempt AND #until < :now AND attribute_not_exists(#lapsed)",
            )
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#lapsed", LEASE_LAPSED_AT)
            .expression_attribute_values(":attempt", s(attempt))
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":now", n(now_ms));
        self.send_update(request).await
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
        let mut set = Vec::new();
        let mut remove = vec!["#attempt", "#until", "#lapsed"];
        let mut names = HashMap::from([
            ("#attempt".to_string(), LEASE_ATTEMPT.to_string()),
            ("#until".to_string(), LEASE_UNTIL.to_string()),
            ("#lapsed".to_string(), LEASE_LAPSED_AT.to_string()),
            ("#retry".to_string(), RETRY_AT.to_string()),
        ]);
        let mut values = HashMap::from([(":attempt".to_string(), s(attempt))]);
        match after.retry_at_ms {
            Some(at) => {
                set.push("#retry = :retry");
                values.insert(":retry".into(), n(at));
            }
            None => remove.push("#retry"),
        }
        // An unknown outcome is remembered until a token write clears it.
        if let Some(at) = after.unknown_since_ms {
            set.push("#unknown = :unknown");
            names.insert("#unknown".into(), UNKNOWN_SINCE.into());
            values.insert(":unknown".into(), n(at));
        }
        let mut expression = format!("REMOVE {}", remove.join(", "));
        if !set.is_empty() {
            expression = format!("SET {} {expression}", set.join(", "));
        }
        let condition = "#attempt = :attempt";
        if events.is_empty() {
            let request = self
                .update(user_id, provider)
                .update_expression(expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values));
            return self.send_update(request).await;
        }
        let update = Update::builder()
            .table_name(&self.tokens_table)
            .key("userId", s(user_id))
            .key("provider", s(provider))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("lease release: {e}")))?;
        self.transact(TransactWriteItem::builder().update(update).build(), events)
            .await
    }
}
