//! The tokens table's connection rows: read and written whole, conditional on `version`,
//! touched, listed and scanned.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, ReturnValue, TransactWriteItem};
use chrono::{DateTime, Utc};

use super::item::{
    connection_from, connection_item, is_flow_item, last_key, n, rfc3339, s, start_key,
};
use super::{DynamoStore, call};
use crate::store::{Connection, Connections, Event, ScanCursor, ScanPage, StoreError};

#[async_trait]
impl Connections for DynamoStore {
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError> {
        let table = &self.tokens_table;
        let out = call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(user_id))
                .key("provider", s(provider))
                .consistent_read(true)
                .send()
                .await,
        )
        .map_err(|f| self.error("GetItem", table, f))?;
        out.item().map(connection_from).transpose()
    }

    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put(
        &self,
        row: &Connection,
        expected: Option<u64>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        // A whole-item put, conditional: the row either is written entirely or stays
        // as it was (no half-written row).
        let (condition, values) = match expected {
            None => ("attribute_not_exists(userId)", None),
            Some(v) => (
                "version = :expected",
                Some(HashMap::from([(":expected".to_string(), n(v))])),
            ),
        };
        self.put_row(connection_item(row)?, condition, None, values, events)
            .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn touch(
        &self,
        user_id: &str,
        provider: &str,
        last_used: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let request = self
            .update(user_id, provider)
            .update_expression("SET lastUsed = :used, expiresAt = :purge")
            .condition_expression("isActive = :active")
            .expression_attribute_values(":used", s(rfc3339(&last_used)))
            .expression_attribute_values(":purge", n(expires_at))
            .expression_attribute_values(":active", AttributeValue::Bool(true));
        match self.send_update(request).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn delete(
        &self,
        user_id: &str,
        provider: &str,
        expected: u64,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        let table = &self.tokens_table;
        if !events.is_empty() {
            let delete = Delete::builder()
                .table_name(table)
                .key("userId", s(user_id))
                .key("provider", s(provider))
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(expected))
                .build()
                .map_err(|e| StoreError::Corrupt(format!("delete: {e}")))?;
            return match self
                .transact(TransactWriteItem::builder().delete(delete).build(), events)
                .await
            {
                Ok(()) => Ok(true),
                // A transaction cannot say whether the row was missing or moved on.
                Err(StoreError::Conflict) => match self.get(user_id, provider).await? {
                    None => Ok(false),
                    Some(_) => Err(StoreError::Conflict),
                },
                Err(e) => Err(e),
            };
        }
        // One call: a missing row satisfies the condition and deletes nothing (no old
        // item comes back); a row at another version fails it (a conflict).
        let out = call(
            "DeleteItem",
            self.client
                .delete_item()
                .table_name(table)
                .key("userId", s(user_id))
                .key("provider", s(provider))
                .condition_expression("attribute_not_exists(userId) OR version = :expected")
                .expression_attribute_values(":expected", n(expected))
                .return_values(ReturnValue::AllOld)
                .send()
                .await,
        )
        .map_err(|f| self.error("DeleteItem", table, f))?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let mut rows = Vec::new();
        self.query_pages(
            |q| {
                q.key_condition_expression("userId = :u")
                    .expression_attribute_values(":u", s(user_id))
            },
            |item| {
                if !is_flow_item(item) {
                    rows.push(connection_from(item)?);
                }
                Ok(true)
            },
        )
        .await?;
        Ok(rows)
    }

    #[tracing::instrument(skip_all, fields(limit = limit))]
    async fn scan(&self, after: Option<&ScanCursor>, limit: usize) -> Result<ScanPage, StoreError> {
        let table = &self.tokens_table;
        let start = after.map(|c| start_key(&c.user_id, &c.provider));
        // `Limit` counts items read, flow items included: the filter drops those after
        // the read, so a page may come back short, or empty, with more to read.
        let out = call(
            "Scan",
            self.client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
                .filter_expression("NOT begins_with(provider, :flow)")
                .expression_attribute_values(":flow", s("#"))
                .set_exclusive_start_key(start)
                .send()
                .await,
        )
        .map_err(|f| self.error("Scan", table, f))?;
        let rows = out
            .items()
            .iter()
            .filter(|i| !is_flow_item(i))
            .map(connection_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = last_key(out.last_evaluated_key())?
            .map(|(user_id, provider)| ScanCursor { user_id, provider });
        Ok(ScanPage { rows, next })
    }
}
