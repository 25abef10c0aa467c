//! Revocations kept to be tried again.

use async_trait::async_trait;

use super::item::{REVOCATIONS, REVOKE_PREFIX, n, revocation_from, revocation_item, s};
use super::{DynamoStore, call};
use crate::store::{PendingRevocation, RevocationQueue, StoreError};

#[async_trait]
impl RevocationQueue for DynamoStore {
    #[tracing::instrument(skip_all, fields(user_id = %revocation.user_id))]
    async fn put_revocation(&self, revocation: &PendingRevocation) -> Result<(), StoreError> {
        self.put_whole(revocation_item(revocation)?).await
    }

    async fn reschedule_revocation(
        &self,
        revocation: &PendingRevocation,
        attempts_before: u32,
    ) -> Result<(), StoreError> {
        self.record_revocation_attempt(
            &revocation.id,
            revocation.attempts,
            revocation.next_attempt_at,
            attempts_before,
        )
        .await
    }

    async fn revocations_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<PendingRevocation>, StoreError> {
        // One partition, small (a revocation lives until it succeeds, at most days).
        let mut due = Vec::new();
        self.query_pages(
            |q| {
                q.key_condition_expression("userId = :u AND begins_with(provider, :r)")
                    .filter_expression("nextAttemptAt <= :now")
                    .expression_attribute_values(":u", s(REVOCATIONS))
                    .expression_attribute_values(":r", s(REVOKE_PREFIX))
                    .expression_attribute_values(":now", n(now))
            },
            |item| {
                due.push(revocation_from(item)?);
                Ok(due.len() < limit)
            },
        )
        .await?;
        Ok(due)
    }

    async fn remove_revocation(&self, id: &str) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        call(
            "DeleteItem",
            self.client
                .delete_item()
                .table_name(table)
                .key("userId", s(REVOCATIONS))
                .key("provider", s(format!("{REVOKE_PREFIX}{id}")))
                .send()
                .await,
        )
        .map(drop)
        .map_err(|f| self.error("DeleteItem", table, f))
    }
}
