//! The tokens table's connection rows: read and written whole, conditional on `version`,
//! touched, listed and scanned.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params};

use super::events::insert as insert_events;
use super::{EmbeddedStore, TOKEN_COLUMNS, WriteIf, corrupt, parse_time, rfc3339, sql};
use crate::store::{
    Connection, Connections, Event, GrantLedger, RefreshLease, RefreshState, ScanCursor, ScanPage,
    StoreError,
};

/// Reads, prepared once per connection (`prepare_cached`).
static SELECT_ROW: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE user_id = ?1 AND provider = ?2")
});
static SELECT_USER_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE user_id = ?1 ORDER BY provider")
});
/// A scan's page: keyset paging in primary-key order, so a page costs the same
/// wherever it starts and rows written meanwhile cannot shift it.
static SCAN_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE (user_id, provider) > (?1, ?2) \
         ORDER BY user_id, provider LIMIT ?3"
    )
});

/// A JSON list of scopes, or none.
fn scope_list(what: &str, json: Option<String>) -> Result<Vec<String>, StoreError> {
    json.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(&json).map_err(|e| corrupt(what, e))
    })
}

fn optional_time(what: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| parse_time(what, &t)).transpose()
}

/// The raw columns of a tokens row, read inside the SQLite callback and parsed after.
struct RawConnection {
    user_id: String,
    provider: String,
    email: Option<String>,
    encrypted_tokens: String,
    user_info: String,
    created_at: String,
    updated_at: String,
    last_used: String,
    access_token_expires_at: i64,
    expires_at: i64,
    is_active: bool,
    version: i64,
    refresh_lease_attempt: Option<String>,
    refresh_lease_until: Option<i64>,
    refresh_retry_at: Option<i64>,
    refresh_unknown_since: Option<i64>,
    inactive_cause: Option<String>,
    replaced_account: Option<String>,
    requested_scopes: Option<String>,
    granted_scopes: Option<String>,
    requested_scopes_changed_at: Option<String>,
    scopes_changed_at: Option<String>,
    consented_at: Option<String>,
    last_refreshed_at: Option<String>,
    refresh_token_expires_at: Option<i64>,
    expiry_notice_for: Option<i64>,
    refresh_token_hash: Option<String>,
    refresh_token_prefix_hash: Option<String>,
    refresh_lease_lapsed_at: Option<i64>,
}

impl RawConnection {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            user_id: row.get(0)?,
            provider: row.get(1)?,
            email: row.get(2)?,
            encrypted_tokens: row.get(3)?,
            user_info: row.get(4)?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
            last_used: row.get(7)?,
            access_token_expires_at: row.get(8)?,
            expires_at: row.get(9)?,
            is_active: row.get(10)?,
            version: row.get(11)?,
            refresh_lease_attempt: row.get(12)?,
            refresh_lease_until: row.get(13)?,
            refresh_retry_at: row.get(14)?,
            refresh_unknown_since: row.get(15)?,
            inactive_cause: row.get(16)?,
            replaced_account: row.get(17)?,
            requested_scopes: row.get(18)?,
            granted_scopes: row.get(19)?,
            requested_scopes_changed_at: row.get(20)?,
            scopes_changed_at: row.get(21)?,
            consented_at: row.get(22)?,
            last_refreshed_at: row.get(23)?,
            refresh_token_expires_at: row.get(24)?,
            expiry_notice_for: row.get(25)?,
            refresh_token_hash: row.get(26)?,
            refresh_token_prefix_hash: row.get(27)?,
            refresh_lease_lapsed_at: row.get(28)?,
        })
    }

    fn parse(self) -> Result<Connection, StoreError> {
        Ok(Connection {
            encrypted_tokens: serde_json::from_str(&self.encrypted_tokens)
                .map_err(|e| corrupt("encryptedTokens", e))?,
            user_info: serde_json::from_str(&self.user_info).map_err(|e| corrupt("userInfo", e))?,
            created_at: parse_time("createdAt", &self.created_at)?,
            updated_at: parse_time("updatedAt", &self.updated_at)?,
            last_used: parse_time("lastUsed", &self.last_used)?,
            user_id: self.user_id,
            provider: self.provider,
            email: self.email,
            access_token_expires_at: self.access_token_expires_at,
            expires_at: self.expires_at,
            is_active: self.is_active,
            version: u64::try_from(self.version).map_err(|e| corrupt("version", e))?,
            refresh: RefreshState {
                lease: match (self.refresh_lease_attempt, self.refresh_lease_until) {
                    (Some(attempt), Some(until_ms)) => Some(RefreshLease {
                        attempt,
                        until_ms,
                        lapsed_at_ms: self.refresh_lease_lapsed_at,
                    }),
                    _ => None,
                },
                retry_at_ms: self.refresh_retry_at,
                unknown_since_ms: self.refresh_unknown_since,
                inactive_cause: self.inactive_cause,
            },
            replaced_account: self
                .replaced_account
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|e| corrupt("replacedAccount", e))?,
            grant: GrantLedger {
                requested_scopes: scope_list("requestedScopes", self.requested_scopes)?,
                granted_scopes: scope_list("grantedScopes", self.granted_scopes)?,
                requested_changed_at: optional_time(
                    "requestedScopesChangedAt",
                    self.requested_scopes_changed_at,
                )?,
                scopes_changed_at: optional_time("scopesChangedAt", self.scopes_changed_at)?,
                consented_at: optional_time("consentedAt", self.consented_at)?,
                last_refreshed_at: optional_time("lastRefreshedAt", self.last_refreshed_at)?,
                refresh_token_expires_at: self.refresh_token_expires_at,
                expiry_notice_for: self.expiry_notice_for,
                refresh_token_hash: self.refresh_token_hash,
                refresh_token_prefix_hash: self.refresh_token_prefix_hash,
            },
        })
    }
}

#[async_trait]
impl Connections for EmbeddedStore {
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError> {
        let (user_id, provider) = (user_id.to_string(), provider.to_string());
        let raw = self
            .with_reader(move |db| {
                db.prepare_cached(&SELECT_ROW)
                    .and_then(|mut stmt| {
                        stmt.query_row(params![user_id, provider], RawConnection::from_row)
                            .optional()
                    })
                    .map_err(sql)
            })
            .await?;
        raw.map(RawConnection::parse).transpose()
    }

    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put(
        &self,
        row: &Connection,
        expected: Option<u64>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let condition = match expected {
            None => WriteIf::Absent,
            Some(v) => WriteIf::Version(i64::try_from(v).map_err(|e| corrupt("version", e))?),
        };
        self.write_row(row, condition, events).await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn touch(
        &self,
        user_id: &str,
        provider: &str,
        last_used: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(rfc3339(&last_used)),
            Value::from(expires_at),
        ];
        match self
            .update_one(
                "UPDATE tokens SET last_used = ?3, expires_at = ?4 \
                 WHERE user_id = ?1 AND provider = ?2 AND is_active = 1",
                args,
            )
            .await
        {
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
        let (user_id, provider) = (user_id.to_string(), provider.to_string());
        let expected = i64::try_from(expected).map_err(|e| corrupt("version", e))?;
        let events = events.to_vec();
        self.with_db(move |db| {
            // Immediate: the write lock is taken (waiting out another writer, up to the
            // busy timeout) before the read. A read transaction that later wants to
            // write while another connection writes gets SQLITE_BUSY at once.
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT version FROM tokens WHERE user_id = ?1 AND provider = ?2",
                    params![user_id, provider],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let outcome = match current {
                None => Ok(false),
                Some(v) if v != expected => Err(StoreError::Conflict),
                Some(_) => {
                    tx.execute(
                        "DELETE FROM tokens WHERE user_id = ?1 AND provider = ?2",
                        params![user_id, provider],
                    )
                    .map_err(sql)?;
                    insert_events(&tx, &events)?.in_time()?;
                    Ok(true)
                }
            };
            tx.commit().map_err(sql)?;
            outcome
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let user_id = user_id.to_string();
        let raws = self
            .with_reader(move |db| {
                let mut stmt = db.prepare_cached(&SELECT_USER_ROWS).map_err(sql)?;
                let rows = stmt
                    .query_map([user_id], RawConnection::from_row)
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        raws.into_iter().map(RawConnection::parse).collect()
    }

    #[tracing::instrument(skip_all, fields(limit = limit))]
    async fn scan(&self, after: Option<&ScanCursor>, limit: usize) -> Result<ScanPage, StoreError> {
        // Every key is greater than ('', ''): no row has an empty user id.
        let (user_id, provider) = after
            .map(|c| (c.user_id.clone(), c.provider.clone()))
            .unwrap_or_default();
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let raws = self
            .with_reader(move |db| {
                let mut stmt = db.prepare_cached(&SCAN_ROWS).map_err(sql)?;
                let rows = stmt
                    .query_map(params![user_id, provider, limit], RawConnection::from_row)
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        let full = i64::try_from(raws.len()).unwrap_or(i64::MAX) >= limit;
        let rows = raws
            .into_iter()
            .map(RawConnection::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match rows.last() {
            Some(last) if full => Some(ScanCursor {
                user_id: last.user_id.clone(),
                provider: last.provider.clone(),
            }),
            _ => None,
        };
        Ok(ScanPage { rows, next })
    }
}
