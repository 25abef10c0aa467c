//! Leases of jobs one instance runs at a time.

use async_trait::async_trait;

use super::item::{JOB_LEASE, JOB_PREFIX, n, s};
use super::{DynamoStore, call};
use crate::store::{JobLeases, StoreError};

#[async_trait]
impl JobLeases for DynamoStore {
    async fn take_job_lease(
        &self,
        name: &str,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let table = &self.tokens_table;
        let sent = self
            .client
            .put_item()
            .table_name(table)
            .item("userId", s(format!("{JOB_PREFIX}{name}")))
            .item("provider", s(JOB_LEASE))
            .item("holder", s(holder))
            .item("leaseUntil", n(until_ms))
            // Purged by TTL a day after it lapsed, should its holder never come back.
            .item("expiresAt", n(until_ms / 1000 + 86_400))
            .condition_expression(
                "attribute_not_exists(userId) OR leaseUntil < :now OR holder = :me",
            )
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":me", s(holder))
            .send()
            .await;
        match call("PutItem", sent).map_err(|f| self.error("PutItem", table, f)) {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn drop_job_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let sent = self
            .client
            .delete_item()
            .table_name(table)
            .key("userId", s(format!("{JOB_PREFIX}{name}")))
            .key("provider", s(JOB_LEASE))
            .condition_expression("holder = :me")
            .expression_attribute_values(":me", s(holder))
            .send()
            .await;
        match call("DeleteItem", sent).map_err(|f| self.error("DeleteItem", table, f)) {
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
