//! The logs table: one item per flow step, keyed by user and a unique timestamp, read
//! newest first.

use async_trait::async_trait;

use super::DynamoStore;
use super::call;
use super::item::{Item, flow_entry_from, flow_item, s};
use crate::store::{FlowLog, FlowLogEntry, StoreError};

#[async_trait]
impl FlowLog for DynamoStore {
    /// One unconditional `PutItem`: keys are unique, so a retried write that had in
    /// fact succeeded writes the same item again instead of failing.
    #[tracing::instrument(skip_all, fields(user_id = %entry.user_id, flow_id = %entry.flow_id))]
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError> {
        let table = &self.logs_table;
        call(
            "PutItem",
            self.client
                .put_item()
                .table_name(table)
                .set_item(Some(flow_item(entry)?))
                .send()
                .await,
        )
        .map(drop)
        .map_err(|f| self.error("PutItem", table, f))
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FlowLogEntry>, StoreError> {
        let table = &self.logs_table;
        let mut entries = Vec::new();
        let mut start: Option<Item> = None;
        while entries.len() < limit {
            let page = i32::try_from(limit - entries.len()).unwrap_or(i32::MAX);
            // `timestamp` is a reserved word in DynamoDB expressions.
            let mut request = self
                .client
                .query()
                .table_name(table)
                .expression_attribute_values(":u", s(user_id))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(page)
                .set_exclusive_start_key(start.take());
            request = match before {
                Some(before) => request
                    .key_condition_expression("userId = :u AND #ts < :before")
                    .expression_attribute_names("#ts", "timestamp")
                    .expression_attribute_values(":before", s(before)),
                None => request.key_condition_expression("userId = :u"),
            };
            let out =
                call("Query", request.send().await).map_err(|f| self.error("Query", table, f))?;
            for item in out.items() {
                entries.push(flow_entry_from(item)?);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        entries.truncate(limit);
        Ok(entries)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_table(&self.logs_table, "timestamp").await
    }
}
