//! The tokens table: one item per connection, written whole and conditionally on
//! `version` (or on holding the refresh lease), with the lease and `lastUsed` as
//! partial updates.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};

use super::DynamoStore;

/// The delivery state of a webhook endpoint: `#webhook#<endpoint id>` / `#state`.
const WEBHOOK_PREFIX: &str = "#webhook#";
const WEBHOOK_STATE: &str = "#state";
use super::call;
use super::item::{
    ACCOUNT_GRANTS, Item, JOB_LEASE, JOB_PREFIX, LEASE_ATTEMPT, LEASE_LAPSED_AT, LEASE_UNTIL,
    MARKED_BY, PENDING, RETRY_AT, REVOCATIONS, REVOKE_PREFIX, STARTED, UNKNOWN_SINCE,
    account_grants_from, account_grants_item, account_key, connection_from, connection_item,
    flow_key, is_flow_item, last_key, n, pending_from, pending_item, revocation_from,
    revocation_item, rfc3339, s, start_key,
};
use crate::crypto::Envelope;
use crate::store::{
    AccountGrants, Connection, Event, LeaseRelease, PendingGrant, PendingRevocation, RefreshLease,
    ScanCursor, ScanPage, Sealed, SealedPage, StoreError, TokenStore, WebhookState,
};

impl DynamoStore {
    /// Runs a consistent `Query` of the tokens table shaped by `shape`, page after page,
    /// handing each item to `take` until it answers false or the pages end.
    async fn query_pages(
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
    async fn put_row(
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
    async fn put_versioned(
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
    async fn put_whole(&self, item: Item) -> Result<(), StoreError> {
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

#[async_trait]
impl TokenStore for DynamoStore {
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

    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError> {
        let table = &self.tokens_table;
        let out = call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(account_key(provider, sub)))
                .key("provider", s(ACCOUNT_GRANTS))
                .consistent_read(true)
                .send()
                .await,
        )
        .map_err(|f| self.error("GetItem", table, f))?;
        out.item()
            .map(|item| account_grants_from(item, provider, sub))
            .transpose()
    }

    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(account_grants_item(record)));
        self.put_versioned(request, expected).await
    }

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

    async fn scan_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        self.read_sealed(after, limit).await
    }

    async fn rewrap(
        &self,
        item: &Sealed,
        old: &Envelope,
        new: &Envelope,
    ) -> Result<(), StoreError> {
        self.rewrap_sealed(item, old, new).await
    }

    async fn webhook_state(&self, endpoint: &str) -> Result<Option<WebhookState>, StoreError> {
        let table = &self.tokens_table;
        let out = call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(format!("{WEBHOOK_PREFIX}{endpoint}")))
                .key("provider", s(WEBHOOK_STATE))
                .consistent_read(true)
                .send()
                .await,
        )
        .map_err(|f| self.error("GetItem", table, f))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let text = match item.get("state") {
            Some(AttributeValue::S(text)) => text,
            _ => return Err(StoreError::Corrupt("state: expected string".into())),
        };
        let mut state: WebhookState = serde_json::from_str(text)
            .map_err(|_| StoreError::Corrupt("state: not a delivery state".into()))?;
        state.version = match item.get("version") {
            Some(AttributeValue::N(v)) => v
                .parse()
                .map_err(|_| StoreError::Corrupt("version: expected num".into()))?,
            _ => return Err(StoreError::Corrupt("version: missing".into())),
        };
        Ok(Some(state))
    }

    async fn put_webhook_state(
        &self,
        endpoint: &str,
        state: &WebhookState,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let text = serde_json::to_string(state)
            .map_err(|e| StoreError::Corrupt(format!("webhook state: {e}")))?;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .item("userId", s(format!("{WEBHOOK_PREFIX}{endpoint}")))
            .item("provider", s(WEBHOOK_STATE))
            .item("state", s(text))
            .item("version", n(state.version));
        self.put_versioned(request, expected).await
    }

    async fn events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_events_between(after, before, limit).await
    }

    fn event_write_bound(&self) -> std::time::Duration {
        super::events::EVENT_WRITE_BOUND
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_table(&self.tokens_table, "provider").await
    }
}
