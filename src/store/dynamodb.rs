//! aws mode's store: the tokens table and the logs table in DynamoDB, item layout
//! as documented in the README's data section (maps as `M`, times as RFC 3339 `S`, numbers as `N`, `isActive`
//! as `BOOL`).
//!
//! Only the run-time policy's actions are used: `PutItem` (conditional on `version`,
//! or on holding the refresh lease), `UpdateItem` (the refresh lease and `lastUsed`:
//! partial updates that leave the tokens and `version` alone), `GetItem`,
//! `DeleteItem` (conditional), `Query`. No `DescribeTable`: `ping` reads a
//! key that never exists, which proves the table, the region and the permission.
//! Reads are strongly consistent, so a writer that lost a condition and re-reads sees
//! the row that won, and a user reads their flow log right after a step.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};
use serde_json::{Map, Number, Value};

use super::{
    Connection, FlowLog, FlowLogEntry, FlowStep, LeaseRelease, RefreshLease, RefreshState,
    StoreError, TokenStore, UserInfo,
};
use crate::aws::error::{AwsFailure, FailureKind, observe};
use crate::crypto::Envelope;

type Item = HashMap<String, AttributeValue>;

/// A key no row uses, read by `ping`.
const PING_KEY: &str = "__axnt_ping__";

/// The refresh bookkeeping's attributes (see [`RefreshState`]).
const LEASE_ATTEMPT: &str = "refreshLeaseAttempt";
const LEASE_UNTIL: &str = "refreshLeaseUntil";
const RETRY_AT: &str = "refreshRetryAt";
const UNKNOWN_SINCE: &str = "refreshUnknownSince";
const INACTIVE_CAUSE: &str = "inactiveCause";

/// Both tables, one client.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tokens_table: String,
    logs_table: String,
    region: String,
}

impl DynamoStore {
    /// Reads a key that never exists: proves the table answers with `GetItem` alone
    /// (the run-time policy has no `DescribeTable`).
    async fn ping_table(&self, table: &str, range_key: &str) -> Result<(), StoreError> {
        observe(
            "dynamodb",
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
        observe("dynamodb", "UpdateItem", request.send().await)
            .map(drop)
            .map_err(|f| self.error("UpdateItem", &self.tokens_table, f))
    }

    pub fn new(config: &SdkConfig, tokens_table: &str, logs_table: &str) -> Self {
        Self {
            client: Client::new(config),
            tokens_table: tokens_table.to_string(),
            logs_table: logs_table.to_string(),
            region: crate::aws::region_name(config),
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

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn corrupt(what: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {why}"))
}

/// JSON to a DynamoDB value: objects become `M`, arrays `L`, numbers `N`.
fn to_attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(num) => AttributeValue::N(num.to_string()),
        Value::String(text) => AttributeValue::S(text.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attribute).collect()),
        Value::Object(map) => AttributeValue::M(to_attribute_map(map)),
    }
}

fn to_attribute_map(map: &Map<String, Value>) -> Item {
    map.iter()
        .map(|(k, v)| (k.clone(), to_attribute(v)))
        .collect()
}

/// A DynamoDB value back to JSON (the inverse of [`to_attribute`]).
fn to_json(what: &str, value: &AttributeValue) -> Result<Value, StoreError> {
    Ok(match value {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(text) => {
            let num = if let Ok(i) = text.parse::<i64>() {
                Number::from(i)
            } else if let Ok(u) = text.parse::<u64>() {
                Number::from(u)
            } else {
                text.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .ok_or_else(|| corrupt(what, "not a number"))?
            };
            Value::Number(num)
        }
        AttributeValue::S(text) => Value::String(text.clone()),
        AttributeValue::L(items) => Value::Array(
            items
                .iter()
                .map(|i| to_json(what, i))
                .collect::<Result<_, _>>()?,
        ),
        AttributeValue::M(map) => Value::Object(to_json_map(what, map)?),
        _ => return Err(corrupt(what, "unexpected attribute type")),
    })
}

fn to_json_map(what: &str, map: &Item) -> Result<Map<String, Value>, StoreError> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), to_json(what, v)?)))
        .collect()
}

/// A serializable value as an `M` attribute.
fn map_attribute<T: serde::Serialize>(what: &str, value: &T) -> Result<AttributeValue, StoreError> {
    match serde_json::to_value(value).map_err(|e| corrupt(what, e))? {
        Value::Object(map) => Ok(AttributeValue::M(to_attribute_map(&map))),
        _ => Err(corrupt(what, "not a map")),
    }
}

/// Reads typed attributes out of an item, naming the attribute when one is wrong.
struct Fields<'a>(&'a Item);

impl Fields<'_> {
    fn opt_s(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(corrupt(name, "expected a string (S)")),
        }
    }

    fn s(&self, name: &str) -> Result<String, StoreError> {
        self.opt_s(name)?.ok_or_else(|| corrupt(name, "missing"))
    }

    fn n<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            Some(AttributeValue::N(v)) => v.parse().map_err(|e| corrupt(name, e)),
            Some(_) => Err(corrupt(name, "expected a number (N)")),
            None => Err(corrupt(name, "missing")),
        }
    }

    fn opt_n<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(_) => self.n(name).map(Some),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, StoreError> {
        match self.0.get(name) {
            Some(AttributeValue::Bool(v)) => Ok(*v),
            Some(_) => Err(corrupt(name, "expected a boolean (BOOL)")),
            None => Err(corrupt(name, "missing")),
        }
    }

    fn time(&self, name: &str) -> Result<DateTime<Utc>, StoreError> {
        let text = self.s(name)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(name, e))
    }

    fn map(&self, name: &str) -> Result<Map<String, Value>, StoreError> {
        match self.0.get(name) {
            Some(AttributeValue::M(m)) => to_json_map(name, m),
            Some(_) => Err(corrupt(name, "expected a map (M)")),
            None => Err(corrupt(name, "missing")),
        }
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, StoreError> {
        serde_json::from_value(Value::Object(self.map(name)?)).map_err(|e| corrupt(name, e))
    }
}

fn connection_item(row: &Connection) -> Result<Item, StoreError> {
    let mut item = Item::new();
    item.insert("userId".into(), s(&row.user_id));
    item.insert("provider".into(), s(&row.provider));
    if let Some(email) = &row.email {
        item.insert("email".into(), s(email));
    }
    item.insert(
        "encryptedTokens".into(),
        map_attribute("encryptedTokens", &row.encrypted_tokens)?,
    );
    item.insert(
        "userInfo".into(),
        map_attribute("userInfo", &row.user_info)?,
    );
    item.insert("createdAt".into(), s(rfc3339(&row.created_at)));
    item.insert("updatedAt".into(), s(rfc3339(&row.updated_at)));
    item.insert("lastUsed".into(), s(rfc3339(&row.last_used)));
    item.insert(
        "accessTokenExpiresAt".into(),
        n(row.access_token_expires_at),
    );
    item.insert("expiresAt".into(), n(row.expires_at));
    item.insert("isActive".into(), AttributeValue::Bool(row.is_active));
    item.insert("version".into(), n(row.version));
    let refresh = &row.refresh;
    if let Some(lease) = &refresh.lease {
        item.insert(LEASE_ATTEMPT.into(), s(&lease.attempt));
        item.insert(LEASE_UNTIL.into(), n(lease.until_ms));
    }
    if let Some(at) = refresh.retry_at_ms {
        item.insert(RETRY_AT.into(), n(at));
    }
    if let Some(at) = refresh.unknown_since_ms {
        item.insert(UNKNOWN_SINCE.into(), n(at));
    }
    if let Some(cause) = &refresh.inactive_cause {
        item.insert(INACTIVE_CAUSE.into(), s(cause));
    }
    Ok(item)
}

fn connection_from(item: &Item) -> Result<Connection, StoreError> {
    let f = Fields(item);
    Ok(Connection {
        user_id: f.s("userId")?,
        provider: f.s("provider")?,
        email: f.opt_s("email")?,
        encrypted_tokens: f.typed::<Envelope>("encryptedTokens")?,
        user_info: f.typed::<UserInfo>("userInfo")?,
        created_at: f.time("createdAt")?,
        updated_at: f.time("updatedAt")?,
        last_used: f.time("lastUsed")?,
        access_token_expires_at: f.n("accessTokenExpiresAt")?,
        expires_at: f.n("expiresAt")?,
        is_active: f.bool("isActive")?,
        version: f.n("version")?,
        refresh: RefreshState {
            lease: match f.opt_s(LEASE_ATTEMPT)? {
                Some(attempt) => Some(RefreshLease {
                    attempt,
                    until_ms: f.n(LEASE_UNTIL)?,
                }),
                None => None,
            },
            retry_at_ms: f.opt_n(RETRY_AT)?,
            unknown_since_ms: f.opt_n(UNKNOWN_SINCE)?,
            inactive_cause: f.opt_s(INACTIVE_CAUSE)?,
        },
    })
}

fn flow_item(entry: &FlowLogEntry) -> Item {
    let mut item = Item::new();
    item.insert("userId".into(), s(&entry.user_id));
    item.insert("timestamp".into(), s(&entry.timestamp));
    item.insert("flowId".into(), s(&entry.flow_id));
    item.insert("step".into(), s(entry.step.as_str()));
    item.insert(
        "data".into(),
        AttributeValue::M(to_attribute_map(&entry.data)),
    );
    for (name, value) in [
        ("error", &entry.error),
        ("ipAddress", &entry.ip_address),
        ("userAgent", &entry.user_agent),
    ] {
        if let Some(v) = value {
            item.insert(name.into(), s(v));
        }
    }
    item.insert("expiresAt".into(), n(entry.expires_at));
    item
}

fn flow_entry_from(item: &Item) -> Result<FlowLogEntry, StoreError> {
    let f = Fields(item);
    let step = f.s("step")?;
    Ok(FlowLogEntry {
        user_id: f.s("userId")?,
        timestamp: f.s("timestamp")?,
        flow_id: f.s("flowId")?,
        step: FlowStep::parse(&step).ok_or_else(|| corrupt("step", &step))?,
        data: f.map("data")?,
        error: f.opt_s("error")?,
        ip_address: f.opt_s("ipAddress")?,
        user_agent: f.opt_s("userAgent")?,
        expires_at: f.n("expiresAt")?,
    })
}

#[async_trait]
impl TokenStore for DynamoStore {
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError> {
        let table = &self.tokens_table;
        let out = observe(
            "dynamodb",
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

    async fn put(&self, row: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(connection_item(row)?));
        // A whole-item PutItem, conditional: the row either is written entirely or
        // stays as it was (no half-written row).
        let request = match expected {
            None => request.condition_expression("attribute_not_exists(userId)"),
            Some(v) => request
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(v)),
        };
        observe("dynamodb", "PutItem", request.send().await)
            .map(drop)
            .map_err(|f| self.error("PutItem", table, f))
    }

    async fn put_as_holder(&self, row: &Connection, attempt: &str) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(connection_item(row)?))
            .condition_expression("#attempt = :attempt")
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_values(":attempt", s(attempt));
        observe("dynamodb", "PutItem", request.send().await)
            .map(drop)
            .map_err(|f| self.error("PutItem", table, f))
    }

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
            .update_expression("SET #attempt = :attempt, #until = :until")
            .condition_expression(
                "version = :version AND (attribute_not_exists(#attempt) OR #until < :now)",
            )
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_values(":attempt", s(&lease.attempt))
            .expression_attribute_values(":until", n(lease.until_ms))
            .expression_attribute_values(":version", n(version))
            .expression_attribute_values(":now", n(now_ms));
        self.send_update(request).await
    }

    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError> {
        let request = self
            .update(user_id, provider)
            .update_expression("SET #until = :until")
            .condition_expression("#attempt = :attempt")
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_values(":attempt", s(&lease.attempt))
            .expression_attribute_values(":until", n(lease.until_ms));
        self.send_update(request).await
    }

    async fn release_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        after: LeaseRelease,
    ) -> Result<(), StoreError> {
        let mut set = Vec::new();
        let mut remove = vec!["#attempt", "#until"];
        let mut request = self
            .update(user_id, provider)
            .condition_expression("#attempt = :attempt")
            .expression_attribute_names("#attempt", LEASE_ATTEMPT)
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#retry", RETRY_AT)
            .expression_attribute_values(":attempt", s(attempt));
        match after.retry_at_ms {
            Some(at) => {
                set.push("#retry = :retry");
                request = request.expression_attribute_values(":retry", n(at));
            }
            None => remove.push("#retry"),
        }
        // An unknown outcome is remembered until a token write clears it.
        if let Some(at) = after.unknown_since_ms {
            set.push("#unknown = :unknown");
            request = request
                .expression_attribute_names("#unknown", UNKNOWN_SINCE)
                .expression_attribute_values(":unknown", n(at));
        }
        let mut expression = format!("REMOVE {}", remove.join(", "));
        if !set.is_empty() {
            expression = format!("SET {} {expression}", set.join(", "));
        }
        self.send_update(request.update_expression(expression))
            .await
    }

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

    async fn delete(
        &self,
        user_id: &str,
        provider: &str,
        expected: u64,
    ) -> Result<bool, StoreError> {
        let table = &self.tokens_table;
        // One call: a missing row satisfies the condition and deletes nothing (no old
        // item comes back); a row at another version fails it (a conflict).
        let out = observe(
            "dynamodb",
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

    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let table = &self.tokens_table;
        let mut rows = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = observe(
                "dynamodb",
                "Query",
                self.client
                    .query()
                    .table_name(table)
                    .key_condition_expression("userId = :u")
                    .expression_attribute_values(":u", s(user_id))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await,
            )
            .map_err(|f| self.error("Query", table, f))?;
            for item in out.items() {
                rows.push(connection_from(item)?);
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(rows),
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_table(&self.tokens_table, "provider").await
    }
}

#[async_trait]
impl FlowLog for DynamoStore {
    /// One unconditional `PutItem`: keys are unique, so a retried write that had in
    /// fact succeeded writes the same item again instead of failing.
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError> {
        let table = &self.logs_table;
        observe(
            "dynamodb",
            "PutItem",
            self.client
                .put_item()
                .table_name(table)
                .set_item(Some(flow_item(entry)))
                .send()
                .await,
        )
        .map(drop)
        .map_err(|f| self.error("PutItem", table, f))
    }

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
            let out = observe("dynamodb", "Query", request.send().await)
                .map_err(|f| self.error("Query", table, f))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_maps_round_trip_through_attributes() {
        let value =
            json!({"a": 1, "b": "x", "c": true, "d": null, "e": [1, "y"], "f": {"g": -2.5}});
        let Value::Object(map) = value.clone() else {
            panic!("object")
        };
        let back = to_json_map("t", &to_attribute_map(&map)).expect("back");
        assert_eq!(Value::Object(back), value);
    }

    #[test]
    fn a_connection_is_laid_out_as_the_spec_says() {
        let now = Utc::now();
        let row = Connection {
            user_id: "u".into(),
            provider: "google".into(),
            email: Some("u@example.com".into()),
            encrypted_tokens: Envelope {
                v: 1,
                alg: "AES-256-GCM".into(),
                key_id: "arn:aws:kms:us-east-1:1:key/k".into(),
                edk: "ZWRr".into(),
                iv: "aXY=".into(),
                ct: "Y3Q=".into(),
            },
            user_info: UserInfo {
                sub: "1".into(),
                email_verified: Some(true),
                ..UserInfo::default()
            },
            created_at: now,
            updated_at: now,
            last_used: now,
            access_token_expires_at: 10,
            expires_at: 20,
            is_active: true,
            version: 3,
            refresh: RefreshState {
                lease: Some(RefreshLease {
                    attempt: "attempt-1".into(),
                    until_ms: 1_790_000_000_123,
                }),
                retry_at_ms: Some(1_790_000_000_456),
                unknown_since_ms: None,
                inactive_cause: Some("invalid_grant".into()),
            },
        };
        let item = connection_item(&row).expect("item");
        assert!(
            matches!(item.get("encryptedTokens"), Some(AttributeValue::M(m)) if matches!(m.get("v"), Some(AttributeValue::N(v)) if v == "1"))
        );
        assert!(
            matches!(item.get("userInfo"), Some(AttributeValue::M(m)) if matches!(m.get("emailVerified"), Some(AttributeValue::Bool(true))))
        );
        assert!(matches!(
            item.get("isActive"),
            Some(AttributeValue::Bool(true))
        ));
        assert!(matches!(item.get("version"), Some(AttributeValue::N(v)) if v == "3"));
        assert!(matches!(item.get("expiresAt"), Some(AttributeValue::N(v)) if v == "20"));
        assert!(matches!(item.get("createdAt"), Some(AttributeValue::S(_))));
        let mut back = connection_from(&item).expect("back");
        // Times are stored to the millisecond.
        back.created_at = now;
        back.updated_at = now;
        back.last_used = now;
        assert_eq!(back, row);
    }
}
