//! aws mode's store: the tokens table and the logs table in DynamoDB. Each table's item
//! layout is declared once, on a private serde type (`ConnectionItem`, `FlowLogItem`, in
//! `item.rs`),
//! and `serde_dynamo` maps it: maps as `M`, times as RFC 3339 `S` to the millisecond,
//! numbers as `N`, `isActive` as `BOOL`, unset options left out.
//!
//! Only the run-time policy's actions are used: `PutItem` (conditional on `version`,
//! or on holding the refresh lease), `UpdateItem` (the refresh lease and `lastUsed`:
//! partial updates that leave the tokens and `version` alone), `GetItem`,
//! `DeleteItem` (conditional), `Query`. No `DescribeTable`: `ping` reads a
//! key that never exists, which proves the table, the region and the permission.
//! Reads are strongly consistent, so a writer that lost a condition and re-reads sees
//! the row that won, and a user reads their flow log right after a step.

mod account_grants;
mod connect_flows;
mod connections;
mod events;
mod flow_log;
mod item;
mod job_leases;
mod refresh_lease;
mod revocations;
mod sealed;
mod settle;
mod webhook_cursors;

pub(crate) use settle::Settler;

/// Reading a stored item, for the fuzz targets (src/fuzz.rs) and the benchmarks.
#[cfg(any(test, fuzzing, feature = "bench"))]
pub(crate) use item::connection_from;
/// Writing one, for the benchmarks.
#[cfg(feature = "bench")]
pub(crate) use item::connection_item;

use std::collections::HashMap;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use self::item::{Item, n, s};
use super::{Event, Health, StoreError};
use crate::aws::error::{AwsFailure, FailureKind, observe};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

/// A key no row uses, read by `ping`.
const PING_KEY: &str = "__axnt_ping__";

/// Both tables, one client.
#[derive(Clone)]
pub(crate) struct DynamoStore {
    client: Client,
    tokens_table: String,
    logs_table: String,
    events_table: String,
    region: String,
    /// One call's time, the SDK's retries included (`AXNT_AWS_OPERATION_TIMEOUT_MS`):
    /// an event-bearing write's rounds and fences share it.
    operation_timeout: std::time::Duration,
    /// Event writes whose outcome was not learnt in time, shared by every clone.
    settler: std::sync::Arc<Settler>,
}

impl DynamoStore {
    /// Reads a key that never exists: proves the table answers with `GetItem` alone
    /// (the run-time policy has no `DescribeTable`).
    async fn ping_table(&self, table: &str, range_key: &str) -> Result<(), StoreError> {
        call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(PING_KEY))
                .key(range_key, s(PING_KEY))
                .projection_expression("userId")
                .send()
                .await,
        )
        .map(drop)
        .map_err(|f| self.error("GetItem", table, f))
    }

    /// A partial update of one tokens row (`UpdateItem`, in the run-time policy).
    fn update(
        &self,
        user_id: &str,
        provider: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.tokens_table)
            .key("userId", s(user_id))
            .key("provider", s(provider))
    }

    /// Sends a conditional update; a failed condition (including "no such row") is a
    /// conflict.
    async fn send_update(
        &self,
        request: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<(), StoreError> {
        call("UpdateItem", request.send().await)
            .map(drop)
            .map_err(|f| self.error("UpdateItem", &self.tokens_table, f))
    }

    pub(crate) fn new(
        config: &SdkConfig,
        tokens_table: &str,
        logs_table: &str,
        events_table: &str,
    ) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(config)
                    .interceptor(crate::aws::CountRetries::new("dynamodb"))
                    .build(),
            ),
            tokens_table: tokens_table.to_string(),
            logs_table: logs_table.to_string(),
            events_table: events_table.to_string(),
            region: crate::aws::region_name(config),
            operation_timeout: config
                .timeout_config()
                .and_then(|t| t.operation_timeout())
                .unwrap_or(std::time::Duration::from_secs(10)),
            settler: std::sync::Arc::new(Settler::new()),
        }
    }

    /// Turns a failed call into a store error naming the action, table and region.
    fn error(&self, action: &str, table: &str, f: AwsFailure) -> StoreError {
        match f.kind {
            FailureKind::AccessDenied => StoreError::AccessDenied(format!(
                "AccessDenied: the IAM policy lacks dynamodb:{action} on table/{table} ({})",
                f.describe()
            )),
            FailureKind::NotFound => StoreError::MissingTable(format!(
                "table {table} not found in region {} (dynamodb:{action})",
                self.region
            )),
            FailureKind::Throttled => StoreError::Throttled(format!(
                "dynamodb:{action} on table/{table} throttled ({})",
                f.describe()
            )),
            FailureKind::ConditionFailed => StoreError::Conflict,
            FailureKind::Timeout | FailureKind::Unavailable | FailureKind::Rejected => {
                StoreError::Unavailable(format!(
                    "dynamodb:{action} on table/{table}: {}",
                    f.describe()
                ))
            }
        }
    }
}

/// One DynamoDB call of the store: counted as a store read or write
/// ([`STORE_READS_TOTAL`](crate::series::STORE_READS_TOTAL) / [`STORE_WRITES_TOTAL`](crate::series::STORE_WRITES_TOTAL)), then as an AWS call.
pub(super) fn call<T, E>(
    operation: &'static str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> Result<T, AwsFailure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match operation {
        "GetItem" | "Query" | "Scan" | "BatchGetItem" => crate::store::count_read("dynamodb"),
        "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems" => {
            crate::store::count_write("dynamodb")
        }
        _ => {}
    }
    observe("dynamodb", operation, result)
}

#[async_trait]
impl Health for DynamoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_table(&self.tokens_table, "provider").await
    }
}

impl DynamoStore {
    /// Runs a consistent `Query` of the tokens table shaped by `shape`, page after page,
    /// handing each item to `take` until it answers false or the pages end.
    pub(super) async fn query_pages(
        &self,
        shape: impl Fn(QueryFluentBuilder) -> QueryFluentBuilder,
        mut take: impl FnMut(&Item) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let mut start: Option<Item> = None;
        loop {
            let request = shape(self.client.query().table_name(table))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            let out =
                call("Query", request.send().await).map_err(|f| self.error("Query", table, f))?;
            for item in out.items() {
                if !take(item)? {
                    return Ok(());
                }
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// Puts a whole tokens row under `condition`, with `events` in the same transaction
    /// when there are any (a plain `PutItem` otherwise).
    pub(super) async fn put_row(
        &self,
        item: Item,
        condition: &str,
        names: Option<HashMap<String, String>>,
        values: Option<HashMap<String, AttributeValue>>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        if events.is_empty() {
            let request = self
                .client
                .put_item()
                .table_name(table)
                .set_item(Some(item))
                .condition_expression(condition)
                .set_expression_attribute_names(names)
                .set_expression_attribute_values(values);
            return call("PutItem", request.send().await)
                .map(drop)
                .map_err(|f| self.error("PutItem", table, f));
        }
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(values)
            .build()
            .map_err(|e| StoreError::Corrupt(format!("row put: {e}")))?;
        self.transact(TransactWriteItem::builder().put(put).build(), events)
            .await
    }

    /// Puts a service item whole, only if the stored one is at `expected` (`None`: only
    /// if there is none). A lost condition is a conflict.
    pub(super) async fn put_versioned(
        &self,
        request: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let request = match expected {
            None => request.condition_expression("attribute_not_exists(userId)"),
            Some(v) => request
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
        };
        call("PutItem", request.send().await)
            .map(drop)
            .map_err(|f| self.error("PutItem", &self.tokens_table, f))
    }

    /// Puts a service item (a pending grant, a kept revocation) whole, unconditionally.
    pub(super) async fn put_whole(&self, item: Item) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item));
        call("PutItem", request.send().await)
            .map(drop)
            .map_err(|f| self.error("PutItem", table, f))
    }
}
