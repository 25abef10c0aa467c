//! Single-use marks and grants held for confirmation.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;

use super::item::{MARKED_BY, PENDING, STARTED, flow_key, n, pending_from, pending_item, s};
use super::{DynamoStore, call};
use crate::store::{ConnectFlows, PendingGrant, StoreError};

#[async_trait]
impl ConnectFlows for DynamoStore {
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn mark_once(
        &self,
        key: &str,
        attempt: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let table = &self.tokens_table;
        // The mark names its attempt: a PutItem the SDK retries after an answer lost on
        // the way finds the mark its first try made and succeeds again, where a plain
        // `attribute_not_exists` would take its own mark for another's. A mark written
        // before marks named their attempt names none: never this attempt's.
        let sent = self
            .client
            .put_item()
            .table_name(table)
            .item("userId", s(flow_key(key)))
            .item("provider", s(STARTED))
            .item(MARKED_BY, s(attempt))
            .item("expiresAt", n(expires_at))
            // A mark past its expiry that TTL has not purged yet is gone all the same.
            .condition_expression(
                "attribute_not_exists(userId) OR #by = :attempt OR expiresAt < :now",
            )
            .expression_attribute_names("#by", MARKED_BY)
            .expression_attribute_values(":attempt", s(attempt))
            .expression_attribute_values(":now", n(chrono::Utc::now().timestamp()))
            .send()
            .await;
        match call("PutItem", sent).map_err(|f| self.error("PutItem", table, f)) {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn unmark(&self, key: &str, attempt: &str) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let sent = self
            .client
            .delete_item()
            .table_name(table)
            .key("userId", s(flow_key(key)))
            .key("provider", s(STARTED))
            .condition_expression("#by = :attempt")
            .expression_attribute_names("#by", MARKED_BY)
            .expression_attribute_values(":attempt", s(attempt))
            .send()
            .await;
        match call("DeleteItem", sent).map_err(|f| self.error("DeleteItem", table, f)) {
            // Another attempt's mark, or none (removed already, by a retry too).
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(flow_id = %grant.flow_id, user_id = %grant.user_id))]
    async fn put_pending(&self, grant: &PendingGrant) -> Result<(), StoreError> {
        self.put_whole(pending_item(grant)?).await
    }

    #[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
    async fn get_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError> {
        let table = &self.tokens_table;
        let out = call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(flow_key(flow_id)))
                .key("provider", s(PENDING))
                .consistent_read(true)
                .send()
                .await,
        )
        .map_err(|f| self.error("GetItem", table, f))?;
        // One a taker has marked is on its way out: not there to read.
        out.item()
            .filter(|item| !item.contains_key("takenBy"))
            .map(pending_from)
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
    async fn take_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError> {
        let table = &self.tokens_table;
        // Taken by a conditional mark that names this call, then removed. A retry of
        // the same call (the SDK's, after an answer lost on the way) finds its own mark
        // and gets the grant again; a plain DeleteItem's retry would find nothing, and
        // the grant would be lost. Of two takers, one marks it; the other gets none.
        let taker = uuid::Uuid::new_v4().to_string();
        let marked = call(
            "UpdateItem",
            self.client
                .update_item()
                .table_name(table)
                .key("userId", s(flow_key(flow_id)))
                .key("provider", s(PENDING))
                .update_expression("SET takenBy = :taker")
                .condition_expression(
                    "attribute_exists(userId) AND (attribute_not_exists(takenBy) OR takenBy = :taker)",
                )
                .expression_attribute_values(":taker", s(&taker))
                .return_values(ReturnValue::AllNew)
                .send()
                .await,
        );
        let item = match marked {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            Err(f) => match self.error("UpdateItem", table, f) {
                // Absent, or taken by another call.
                StoreError::Conflict => return Ok(None),
                e => return Err(e),
            },
        };
        let grant = pending_from(&item)?;
        let removed = call(
            "DeleteItem",
            self.client
                .delete_item()
                .table_name(table)
                .key("userId", s(flow_key(flow_id)))
                .key("provider", s(PENDING))
                .condition_expression("takenBy = :taker")
                .expression_attribute_values(":taker", s(&taker))
                .send()
                .await,
        );
        if let Err(f) = removed {
            match self.error("DeleteItem", table, f) {
                // Put back meanwhile (a failed confirm): not ours to remove.
                StoreError::Conflict => {}
                // Taken already; TTL removes the item.
                e => {
                    tracing::warn!(error = %e, "removing a taken pending grant failed; its TTL removes it")
                }
            }
        }
        Ok(Some(grant))
    }
}
