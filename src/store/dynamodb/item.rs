//! The tables' item layouts, declared once on private serde types and mapped by
//! `serde_dynamo`, and the attribute-value helpers the requests use.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::Envelope;
use crate::store::{
    AccountGrants, Connection, FlowLogEntry, FlowStep, GrantLedger, PendingGrant,
    PendingRevocation, RefreshState, StoreError, UserInfo,
};

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) use crate::store::refresh_lease::{
    LEASE_ATTEMPT, LEASE_LAPSED_AT, LEASE_UNTIL, RETRY_AT, UNKNOWN_SINCE,
};

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn rfc3339(at: &DateTime<Utc>) -> String {
    crate::store::stored_time::text(at)
}

/// The logs table's item. Unlike the API's view of an entry, it holds `expiresAt` (the
/// table's TTL attribute).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlowLogItem {
    user_id: String,
    timestamp: String,
    flow_id: String,
    step: FlowStep,
    data: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    expires_at: i64,
}

impl From<&FlowLogEntry> for FlowLogItem {
    fn from(entry: &FlowLogEntry) -> Self {
        let entry = entry.clone();
        Self {
            user_id: entry.user_id,
            timestamp: entry.timestamp,
            flow_id: entry.flow_id,
            step: entry.step,
            data: entry.data,
            error: entry.error,
            ip_address: entry.ip_address,
            user_agent: entry.user_agent,
            expires_at: entry.expires_at,
        }
    }
}

impl From<FlowLogItem> for FlowLogEntry {
    fn from(item: FlowLogItem) -> Self {
        Self {
            user_id: item.user_id,
            timestamp: item.timestamp,
            flow_id: item.flow_id,
            step: item.step,
            data: item.data,
            error: item.error,
            ip_address: item.ip_address,
            user_agent: item.user_agent,
            expires_at: item.expires_at,
        }
    }
}

/// Flows keep two kinds of items in the tokens table, under a partition key no
/// connection has (`#flow#<flowId>`) and a sort key no provider is named (`#started`,
/// `#pending`): `list` skips sort keys starting with `#`. Both expire by the table's TTL
/// on `expiresAt`.
pub(super) fn flow_key(flow_id: &str) -> String {
    format!("{FLOW_PREFIX}{flow_id}")
}

pub(super) const FLOW_PREFIX: &str = "#flow#";

/// The sort key of a single-use mark (`ConnectFlows::mark_once`): a connect link's
/// "started" mark, a security event's `risc:<jti>`.
pub(super) const STARTED: &str = "#started";
/// The attribute of a single-use mark naming the attempt that made it.
pub(super) const MARKED_BY: &str = "markedBy";
/// The sort key of a grant awaiting confirmation.
pub(super) const PENDING: &str = "#pending";

/// Revocations to try again live in one partition no connection has, each under a
/// sort key no provider is named (`#revoke#<id>`), so `list` and `scan` skip them and a
/// `Query` of the partition finds them all.
pub(super) const REVOCATIONS: &str = "#revocations";
pub(super) const REVOKE_PREFIX: &str = "#revoke#";
/// A job's lease (one instance runs the job at a time): partition `#job#<name>`, sort
/// key `#lease`.
pub(super) const JOB_PREFIX: &str = "#job#";
pub(super) const JOB_LEASE: &str = "#lease";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevocationItem {
    user_id: String,
    provider: String,
    /// The record itself, its own user id and provider under `revocationUserId` and
    /// `revocationProvider`.
    #[serde(flatten)]
    record: RevocationRecord,
}

/// [`PendingRevocation`] with its own names, so its `userId`/`provider` do not clash
/// with the item's keys.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevocationRecord {
    id: String,
    revocation_user_id: String,
    revocation_provider: String,
    sub: String,
    encrypted_tokens: Envelope,
    token_kind: String,
    #[serde(
        rename = "revocationClientId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    client_id: Option<String>,
    #[serde(serialize_with = "crate::store::stored_time::one")]
    created_at: DateTime<Utc>,
    attempts: u32,
    next_attempt_at: i64,
    expires_at: i64,
}

pub(super) fn revocation_item(r: &PendingRevocation) -> Result<Item, StoreError> {
    to_item(
        "pending revocation item",
        &RevocationItem {
            user_id: REVOCATIONS.into(),
            provider: format!("{REVOKE_PREFIX}{}", r.id),
            record: RevocationRecord {
                id: r.id.clone(),
                revocation_user_id: r.user_id.clone(),
                revocation_provider: r.provider.clone(),
                sub: r.sub.clone(),
                encrypted_tokens: r.encrypted_token.clone(),
                token_kind: r.token_kind.clone(),
                client_id: r.client_id.clone(),
                created_at: r.created_at,
                attempts: r.attempts,
                next_attempt_at: r.next_attempt_at,
                // Purged by the table's TTL a day after it was given up (the retry loop
                // gives it up, and logs so, at `expires_at`).
                expires_at: r.expires_at.saturating_add(86_400),
            },
        },
    )
}

pub(super) fn revocation_from(item: &Item) -> Result<PendingRevocation, StoreError> {
    let item: RevocationItem = from_item(item)?;
    let r = item.record;
    Ok(PendingRevocation {
        id: r.id,
        user_id: r.revocation_user_id,
        provider: r.revocation_provider,
        sub: r.sub,
        encrypted_token: r.encrypted_tokens,
        token_kind: r.token_kind,
        client_id: r.client_id,
        created_at: r.created_at,
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at,
        expires_at: r.expires_at.saturating_sub(86_400),
    })
}

/// An account's mint record: partition `#account#<provider>#<sub>`, sort key
/// `#grants`, attributes `mints` (L of N, epoch milliseconds) and `version`.
pub(super) const ACCOUNT_GRANTS: &str = "#grants";

pub(super) fn account_key(provider: &str, sub: &str) -> String {
    format!("#account#{provider}#{sub}")
}

pub(super) fn account_grants_item(record: &AccountGrants) -> Item {
    Item::from([
        (
            "userId".to_string(),
            s(account_key(&record.provider, &record.sub)),
        ),
        ("provider".to_string(), s(ACCOUNT_GRANTS)),
        (
            "mints".to_string(),
            AttributeValue::L(record.mints.iter().map(n).collect()),
        ),
        ("version".to_string(), n(record.version)),
    ])
}

pub(super) fn account_grants_from(
    item: &Item,
    provider: &str,
    sub: &str,
) -> Result<AccountGrants, StoreError> {
    let number = |v: &AttributeValue| match v {
        AttributeValue::N(text) => text.parse::<i64>().ok(),
        _ => None,
    };
    let mints = match item.get("mints") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|v| number(v).ok_or_else(|| StoreError::Corrupt("mints: expected num".into())))
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(StoreError::Corrupt("mints: missing".into())),
    };
    let version = item
        .get("version")
        .and_then(number)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| StoreError::Corrupt("version: missing".into()))?;
    Ok(AccountGrants {
        provider: provider.to_string(),
        sub: sub.to_string(),
        mints,
        version,
    })
}

/// A `Scan`'s `ExclusiveStartKey`: the tokens table's key `(userId, provider)`.
pub(super) fn start_key(user_id: &str, provider: &str) -> Item {
    Item::from([
        ("userId".to_string(), s(user_id)),
        ("provider".to_string(), s(provider)),
    ])
}

/// Where a `Scan` of the tokens table goes on (its `LastEvaluatedKey`), if it does.
pub(super) fn last_key(key: Option<&Item>) -> Result<Option<(String, String)>, StoreError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    let part = |name: &str| match key.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::Corrupt(format!(
            "Scan's LastEvaluatedKey: {name} missing"
        ))),
    };
    Ok(Some((part("userId")?, part("provider")?)))
}

/// Whether a tokens-table item is a flow's item rather than a connection.
pub(super) fn is_flow_item(item: &Item) -> bool {
    matches!(item.get("provider"), Some(AttributeValue::S(p)) if p.starts_with('#'))
}

/// A pending grant's item: the flow's key, then whose grant it is.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingItem {
    user_id: String,
    provider: String,
    flow_id: String,
    grant_user_id: String,
    grant_provider: String,
    encrypted_tokens: Envelope,
    user_info: UserInfo,
    #[serde(serialize_with = "crate::store::stored_time::one")]
    created_at: DateTime<Utc>,
    expires_at: i64,
}

pub(super) fn pending_item(grant: &PendingGrant) -> Result<Item, StoreError> {
    let item = PendingItem {
        user_id: flow_key(&grant.flow_id),
        provider: PENDING.into(),
        flow_id: grant.flow_id.clone(),
        grant_user_id: grant.user_id.clone(),
        grant_provider: grant.provider.clone(),
        encrypted_tokens: grant.encrypted_tokens.clone(),
        user_info: grant.user_info.clone(),
        created_at: grant.created_at,
        expires_at: grant.expires_at,
    };
    to_item("pending grant item", &item)
}

pub(super) fn pending_from(item: &Item) -> Result<PendingGrant, StoreError> {
    let item: PendingItem = from_item(item)?;
    Ok(PendingGrant {
        flow_id: item.flow_id,
        user_id: item.grant_user_id,
        provider: item.grant_provider,
        encrypted_tokens: item.encrypted_tokens,
        user_info: item.user_info,
        created_at: item.created_at,
        expires_at: item.expires_at,
    })
}

pub(super) fn to_item(what: &str, value: &impl Serialize) -> Result<Item, StoreError> {
    // Our item types only hold strings, numbers, booleans and string-keyed maps: this
    // fails on a programming error, and its message names no stored value.
    serde_dynamo::to_item(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Reads an item as `T`. A malformed item's error names the attribute (as a path, e.g.
/// `encryptedTokens.iv`) but never the stored value: serde's messages can quote it, so
/// only those known to quote nothing are passed on.
pub(super) fn from_item<T: DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    // Only an item that does not read is read again, tracking the path, for the message:
    // tracking it nearly doubles the cost of a read that succeeds.
    let plain =
        serde_dynamo::Deserializer::from_attribute_value(AttributeValue::M(item.clone()).into());
    if let Ok(value) = T::deserialize(plain) {
        return Ok(value);
    }
    let input =
        serde_dynamo::Deserializer::from_attribute_value(AttributeValue::M(item.clone()).into());
    serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        StoreError::Corrupt(match (missing, message.strip_prefix("Expected ")) {
            (Some(field), _) if path == "." => format!("{field}: missing"),
            (Some(field), _) => format!("{path}.{field}: missing"),
            // serde_dynamo's own type errors ("Expected bool", "Expected num", …).
            (None, Some(kind)) => format!("{path}: expected {kind}"),
            (None, None) => format!("{path}: not a valid value"),
        })
    })
}

pub(crate) fn connection_item(row: &Connection) -> Result<Item, StoreError> {
    to_item("connection item", row)
}

pub(crate) fn connection_from(item: &Item) -> Result<Connection, StoreError> {
    // An error in a flattened part carries no path: that part is read again alone, so
    // the message names its attribute.
    from_item(item).map_err(|e| match &e {
        StoreError::Corrupt(m) if m.starts_with(".:") => from_item::<RefreshState>(item)
            .and_then(|_| from_item::<GrantLedger>(item))
            .err()
            .unwrap_or(e),
        _ => e,
    })
}

pub(super) fn flow_item(entry: &FlowLogEntry) -> Result<Item, StoreError> {
    to_item("flow log item", &FlowLogItem::from(entry))
}

pub(super) fn flow_entry_from(item: &Item) -> Result<FlowLogEntry, StoreError> {
    from_item::<FlowLogItem>(item).map(FlowLogEntry::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RefreshLease, ReplacedAccount};
    use serde_json::json;

    /// A row with every attribute set; its times are whole milliseconds, as stored.
    fn sample_row() -> Connection {
        let at = |text| {
            DateTime::parse_from_rfc3339(text)
                .expect("time")
                .with_timezone(&Utc)
        };
        Connection {
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
            created_at: at("2025-01-02T03:04:05.678Z"),
            updated_at: at("2025-01-02T03:04:06Z"),
            last_used: at("2025-01-02T03:04:07.009Z"),
            access_token_expires_at: 10,
            expires_at: 20,
            is_active: true,
            version: 3,
            refresh: RefreshState {
                lease: Some(RefreshLease {
                    attempt: "attempt-1".into(),
                    until_ms: 1_790_000_000_123,
                    lapsed_at_ms: Some(1_790_000_000_100),
                }),
                retry_at_ms: Some(1_790_000_000_456),
                unknown_since_ms: Some(1_790_000_000_789),
                inactive_cause: Some("invalid_grant".into()),
            },
            replaced_account: Some(ReplacedAccount {
                sub: "sub-before".into(),
                email: Some("before@example.com".into()),
                replaced_at: "2025-01-02T03:04:05.000Z".into(),
            }),
            grant: GrantLedger {
                requested_scopes: vec!["openid".into(), "email".into(), "drive".into()],
                granted_scopes: vec!["openid".into(), "email".into()],
                requested_changed_at: Some(at("2025-01-02T03:04:05.678Z")),
                scopes_changed_at: Some(at("2025-01-02T03:04:06Z")),
                consented_at: Some(at("2025-01-02T03:04:05.678Z")),
                last_refreshed_at: Some(at("2025-01-02T04:04:05.001Z")),
                refresh_token_expires_at: Some(1_790_000_000),
                expiry_notice_for: Some(1_790_000_100),
                refresh_token_hash: Some("aGFzaA==".into()),
                refresh_token_prefix_hash: Some("cHJlZml4".into()),
                client_id: Some("client-1.apps.example".into()),
                imported_at: Some(at("2025-01-01T00:00:00Z")),
                unverified: true,
                verifying: true,
            },
        }
    }

    fn m(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    }

    /// [`sample_row`] laid out by hand, as the table has always held it.
    fn stored_connection() -> Item {
        m(&[
            ("userId", s("u")),
            ("provider", s("google")),
            ("email", s("u@example.com")),
            (
                "encryptedTokens",
                AttributeValue::M(m(&[
                    ("v", n(1)),
                    ("alg", s("AES-256-GCM")),
                    ("keyId", s("arn:aws:kms:us-east-1:1:key/k")),
                    ("edk", s("ZWRr")),
                    ("iv", s("aXY=")),
                    ("ct", s("Y3Q=")),
                ])),
            ),
            (
                "userInfo",
                AttributeValue::M(m(&[
                    ("sub", s("1")),
                    ("emailVerified", AttributeValue::Bool(true)),
                ])),
            ),
            ("createdAt", s("2025-01-02T03:04:05.678Z")),
            ("updatedAt", s("2025-01-02T03:04:06.000Z")),
            ("lastUsed", s("2025-01-02T03:04:07.009Z")),
            ("accessTokenExpiresAt", n(10)),
            ("expiresAt", n(20)),
            ("isActive", AttributeValue::Bool(true)),
            ("version", n(3)),
            ("refreshLeaseAttempt", s("attempt-1")),
            ("refreshLeaseUntil", n(1_790_000_000_123_i64)),
            ("refreshLeaseLapsedAt", n(1_790_000_000_100_i64)),
            ("refreshRetryAt", n(1_790_000_000_456_i64)),
            ("refreshUnknownSince", n(1_790_000_000_789_i64)),
            ("inactiveCause", s("invalid_grant")),
            (
                "replacedAccount",
                AttributeValue::M(m(&[
                    ("sub", s("sub-before")),
                    ("email", s("before@example.com")),
                    ("replacedAt", s("2025-01-02T03:04:05.000Z")),
                ])),
            ),
            (
                "requestedScopes",
                AttributeValue::L(vec![s("openid"), s("email"), s("drive")]),
            ),
            (
                "grantedScopes",
                AttributeValue::L(vec![s("openid"), s("email")]),
            ),
            ("requestedScopesChangedAt", s("2025-01-02T03:04:05.678Z")),
            ("scopesChangedAt", s("2025-01-02T03:04:06.000Z")),
            ("consentedAt", s("2025-01-02T03:04:05.678Z")),
            ("lastRefreshedAt", s("2025-01-02T04:04:05.001Z")),
            ("refreshTokenExpiresAt", n(1_790_000_000)),
            ("expiryNoticeFor", n(1_790_000_100)),
            ("refreshTokenHash", s("aGFzaA==")),
            ("refreshTokenPrefixHash", s("cHJlZml4")),
            ("clientId", s("client-1.apps.example")),
            ("importedAt", s("2025-01-01T00:00:00.000Z")),
            ("unverified", AttributeValue::Bool(true)),
            ("verifying", AttributeValue::Bool(true)),
        ])
    }

    /// A flow-log item laid out by hand, as the table has always held it.
    fn stored_flow_item() -> Item {
        m(&[
            ("userId", s("u")),
            ("timestamp", s("2025-01-02T03:04:05.678901234Z#0a1b")),
            ("flowId", s("f-1")),
            ("step", s("id_token_verified")),
            (
                "data",
                AttributeValue::M(m(&[
                    ("a", n(1)),
                    ("b", s("x")),
                    ("c", AttributeValue::Bool(true)),
                    ("d", AttributeValue::Null(true)),
                    ("e", AttributeValue::L(vec![n(1), s("y")])),
                    ("f", AttributeValue::M(m(&[("g", n(-2.5))]))),
                ])),
            ),
            ("ipAddress", s("192.0.2.1")),
            ("userAgent", s("curl/8")),
            ("expiresAt", n(20)),
        ])
    }

    #[test]
    fn a_connection_is_laid_out_as_documented() {
        let now = Utc::now();
        let row = Connection {
            created_at: now,
            updated_at: now,
            last_used: now,
            ..sample_row()
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

    #[test]
    fn items_in_the_stored_layout_read_back_and_are_written_alike() {
        let item = stored_connection();
        let row = sample_row();
        assert_eq!(connection_from(&item).expect("read"), row);
        assert_eq!(connection_item(&row).expect("write"), item);
        // The lease updates name these attributes themselves.
        for name in [
            LEASE_ATTEMPT,
            LEASE_UNTIL,
            LEASE_LAPSED_AT,
            RETRY_AT,
            UNKNOWN_SINCE,
        ] {
            assert!(item.contains_key(name), "{name}");
        }

        // Unset options are absent attributes, and a `NULL` one reads as unset.
        let bare = Connection {
            email: None,
            refresh: RefreshState::default(),
            replaced_account: None,
            grant: GrantLedger::default(),
            ..row
        };
        let mut item = item;
        for name in [
            "email",
            LEASE_ATTEMPT,
            LEASE_UNTIL,
            LEASE_LAPSED_AT,
            RETRY_AT,
            UNKNOWN_SINCE,
            "inactiveCause",
            "replacedAccount",
            "requestedScopes",
            "grantedScopes",
            "requestedScopesChangedAt",
            "scopesChangedAt",
            "consentedAt",
            "lastRefreshedAt",
            "refreshTokenExpiresAt",
            "expiryNoticeFor",
            "refreshTokenHash",
            "refreshTokenPrefixHash",
            "clientId",
            "importedAt",
            "unverified",
            "verifying",
        ] {
            item.remove(name);
        }
        assert_eq!(connection_item(&bare).expect("write"), item);
        assert_eq!(connection_from(&item).expect("read"), bare);
        item.insert("email".into(), AttributeValue::Null(true));
        assert_eq!(connection_from(&item).expect("read"), bare);

        let item = stored_flow_item();
        let Value::Object(data) =
            json!({"a": 1, "b": "x", "c": true, "d": null, "e": [1, "y"], "f": {"g": -2.5}})
        else {
            unreachable!()
        };
        let entry = FlowLogEntry {
            user_id: "u".into(),
            timestamp: "2025-01-02T03:04:05.678901234Z#0a1b".into(),
            flow_id: "f-1".into(),
            step: FlowStep::IdTokenVerified,
            data,
            error: None,
            ip_address: Some("192.0.2.1".into()),
            user_agent: Some("curl/8".into()),
            expires_at: 20,
        };
        assert_eq!(flow_entry_from(&item).expect("read"), entry);
        assert_eq!(flow_item(&entry).expect("write"), item);
    }

    #[test]
    fn a_malformed_item_names_the_attribute_and_not_its_value() {
        let secret = "hunter2";
        let tokens = m(&[("v", n(1)), ("alg", s(secret))]);
        let cases = [
            ("isActive", s(secret), "isActive: expected bool"),
            ("version", n(secret), "version: not a valid value"),
            ("createdAt", s(secret), "createdAt: not a valid value"),
            ("refreshRetryAt", s(secret), "refreshRetryAt: expected num"),
            (
                "encryptedTokens",
                AttributeValue::M(tokens),
                "encryptedTokens.keyId: missing",
            ),
        ];
        let corrupt = |result: Result<Connection, StoreError>| match result {
            Err(StoreError::Corrupt(message)) => message,
            other => panic!("{other:?}"),
        };
        for (name, value, expected) in cases {
            let mut item = stored_connection();
            item.insert(name.into(), value);
            assert_eq!(corrupt(connection_from(&item)), expected);
        }

        let mut item = stored_connection();
        item.remove("userId");
        item.remove(LEASE_UNTIL);
        assert_eq!(corrupt(connection_from(&item)), "userId: missing");
        item.insert("userId".into(), s("u"));
        assert_eq!(
            corrupt(connection_from(&item)),
            "refreshLeaseUntil: missing"
        );

        let mut item = stored_flow_item();
        item.insert("step".into(), s(secret));
        assert!(
            matches!(flow_entry_from(&item), Err(StoreError::Corrupt(m)) if m == "step: not a valid value")
        );
    }
}
