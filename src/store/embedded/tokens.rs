//! The tokens table: rows read and written whole, conditional on `version` or on
//! holding the refresh lease, and the lease and `lastUsed` as partial updates.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params};

use super::events::insert as insert_events;
use super::{EmbeddedStore, TOKEN_COLUMNS, WriteIf, corrupt, parse_time, rfc3339, sql};
use crate::crypto::Envelope;
use crate::store::{
    AccountGrants, Connection, Event, GrantLedger, LeaseRelease, PendingGrant, PendingRevocation,
    RefreshLease, RefreshState, ScanCursor, ScanPage, Sealed, SealedPage, StoreError, TokenStore,
    WebhookState,
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

fn params_vec(name: &str, holder: &str, until_ms: i64, now_ms: i64) -> Vec<Value> {
    vec![
        Value::from(name.to_string()),
        Value::from(holder.to_string()),
        Value::from(until_ms),
        Value::from(now_ms),
    ]
}

/// A JSON list of scopes, or none.
fn scope_list(what: &str, json: Option<String>) -> Result<Vec<String>, StoreError> {
    json.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(&json).map_err(|e| corrupt(what, e))
    })
}

fn optional_time(what: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| parse_time(what, &t)).transpose()
}

/// A pending grant's columns, in [`RawPending::from_row`]'s order.
const PENDING_COLUMNS: &str =
    "flow_id, user_id, provider, encrypted_tokens, user_info, created_at, expires_at";

/// The raw columns of a pending grant, read inside the SQLite callback and parsed after.
struct RawPending {
    flow_id: String,
    user_id: String,
    provider: String,
    encrypted_tokens: String,
    user_info: String,
    created_at: String,
    expires_at: i64,
}

impl RawPending {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            flow_id: row.get(0)?,
            user_id: row.get(1)?,
            provider: row.get(2)?,
            encrypted_tokens: row.get(3)?,
            user_info: row.get(4)?,
            created_at: row.get(5)?,
            expires_at: row.get(6)?,
        })
    }

    fn parse(self) -> Result<PendingGrant, StoreError> {
        Ok(PendingGrant {
            encrypted_tokens: serde_json::from_str(&self.encrypted_tokens)
                .map_err(|e| corrupt("encryptedTokens", e))?,
            user_info: serde_json::from_str(&self.user_info).map_err(|e| corrupt("userInfo", e))?,
            created_at: parse_time("createdAt", &self.created_at)?,
            flow_id: self.flow_id,
            user_id: self.user_id,
            provider: self.provider,
            expires_at: self.expires_at,
        })
    }
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
impl TokenStore for EmbeddedStore {
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

    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put_as_holder(
        &self,
        row: &Connection,
        attempt: &str,
        events: &[Event],
    ) -> Result<(), StoreError> {
        self.write_row(row, WriteIf::Holder(attempt.to_string()), events)
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
        let version = i64::try_from(version).map_err(|e| corrupt("version", e))?;
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(lease.attempt.clone()),
            Value::from(lease.until_ms),
            Value::from(version),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_attempt = ?3, refresh_lease_until = ?4, \
             refresh_lease_lapsed_at = NULL \
             WHERE user_id = ?1 AND provider = ?2 AND version = ?5 \
             AND (refresh_lease_attempt IS NULL OR refresh_lease_until IS NULL OR refresh_lease_until < ?6)",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(lease.attempt.clone()),
            Value::from(lease.until_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_until = ?4, refresh_lease_lapsed_at = NULL \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3",
            args,
        )
        .await
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
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(attempt.to_string()),
            Value::from(until_ms),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_until = ?4, refresh_lease_lapsed_at = ?5 \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3 \
             AND refresh_lease_until < ?5 AND refresh_lease_lapsed_at IS NULL",
            args,
        )
        .await
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
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(attempt.to_string()),
            after.retry_at_ms.map_or(Value::Null, Value::from),
            after.unknown_since_ms.map_or(Value::Null, Value::from),
        ];
        // An unknown outcome is remembered until a token write clears it.
        self.update_one_with(
            "UPDATE tokens SET refresh_lease_attempt = NULL, refresh_lease_until = NULL, \
             refresh_lease_lapsed_at = NULL, refresh_retry_at = ?4, refresh_unknown_since = COALESCE(?5, refresh_unknown_since) \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3"
                .to_string(),
            args,
            events,
        )
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

    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn mark_once(
        &self,
        key: &str,
        attempt: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let (key, attempt) = (key.to_string(), attempt.to_string());
        let changed = self
            .with_db(move |db| {
                // One statement: a new mark is inserted, this attempt's own is written
                // again, and one past its expiry (not purged yet) is taken over (1 row
                // each); another attempt's live mark is left alone (0 rows). A mark from
                // before marks named their attempt has none: never ours.
                let now = Utc::now().timestamp();
                db.prepare_cached(
                    "INSERT INTO started_flows (flow_id, attempt, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (flow_id) DO UPDATE SET attempt = excluded.attempt, \
                     expires_at = excluded.expires_at \
                     WHERE started_flows.attempt = excluded.attempt OR started_flows.expires_at < ?4",
                )
                .and_then(|mut stmt| stmt.execute(params![key, attempt, expires_at, now]))
                .map_err(sql)
            })
            .await?;
        Ok(changed == 1)
    }

    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn unmark(&self, key: &str, attempt: &str) -> Result<(), StoreError> {
        let (key, attempt) = (key.to_string(), attempt.to_string());
        self.with_db(move |db| {
            db.prepare_cached("DELETE FROM started_flows WHERE flow_id = ?1 AND attempt = ?2")
                .and_then(|mut stmt| stmt.execute(params![key, attempt]))
                .map(drop)
                .map_err(sql)
        })
        .await
    }

    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError> {
        let (p, sb) = (provider.to_string(), sub.to_string());
        let found: Option<(String, i64)> = self
            .with_reader(move |db| {
                db.prepare_cached(
                    "SELECT mints, version FROM account_grants WHERE provider = ?1 AND sub = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![p, sb], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql)
            })
            .await?;
        found
            .map(|(mints, version)| {
                Ok(AccountGrants {
                    provider: provider.to_string(),
                    sub: sub.to_string(),
                    mints: serde_json::from_str(&mints).map_err(|e| corrupt("mints", e))?,
                    version: u64::try_from(version).map_err(|e| corrupt("version", e))?,
                })
            })
            .transpose()
    }

    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let mints = serde_json::to_string(&record.mints).map_err(|e| corrupt("mints", e))?;
        let version = i64::try_from(record.version).map_err(|e| corrupt("version", e))?;
        let mut args = vec![
            Value::from(record.provider.clone()),
            Value::from(record.sub.clone()),
            Value::from(mints),
            Value::from(version),
        ];
        let statement = match expected {
            None => {
                "INSERT INTO account_grants (provider, sub, mints, version) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (provider, sub) DO NOTHING"
            }
            Some(expected) => {
                args.push(Value::from(
                    i64::try_from(expected).map_err(|e| corrupt("version", e))?,
                ));
                "UPDATE account_grants SET mints = ?3, version = ?4 \
                 WHERE provider = ?1 AND sub = ?2 AND version = ?5"
            }
        };
        self.update_one(statement, args).await
    }

    async fn take_job_lease(
        &self,
        name: &str,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let args = params_vec(name, holder, until_ms, now_ms);
        let changed = self
            .with_db(move |db| {
                db.prepare_cached(
                    "INSERT INTO job_leases (name, holder, until_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     until_ms = excluded.until_ms \
                     WHERE job_leases.until_ms < ?4 OR job_leases.holder = excluded.holder",
                )
                .and_then(|mut stmt| stmt.execute(rusqlite::params_from_iter(args)))
                .map_err(sql)
            })
            .await?;
        Ok(changed == 1)
    }

    async fn drop_job_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.with_db(move |db| {
            db.execute(
                "DELETE FROM job_leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map(drop)
            .map_err(sql)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %revocation.user_id))]
    async fn put_revocation(&self, revocation: &PendingRevocation) -> Result<(), StoreError> {
        let record =
            serde_json::to_string(revocation).map_err(|e| corrupt("pendingRevocation", e))?;
        let args = vec![
            Value::from(revocation.id.clone()),
            Value::from(record),
            Value::from(revocation.next_attempt_at),
            Value::from(revocation.expires_at),
        ];
        self.update_one(
            "INSERT OR REPLACE INTO pending_revocations (id, record, next_attempt_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4)",
            args,
        )
        .await
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let records: Vec<String> = self
            .with_reader(move |db| {
                db.prepare_cached(
                    "SELECT record FROM pending_revocations WHERE next_attempt_at <= ?1 \
                     ORDER BY next_attempt_at LIMIT ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(params![now, limit], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()
                })
                .map_err(sql)
            })
            .await?;
        records
            .iter()
            .map(|r| serde_json::from_str(r).map_err(|e| corrupt("pendingRevocation", e)))
            .collect()
    }

    async fn remove_revocation(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with_db(move |db| {
            db.execute("DELETE FROM pending_revocations WHERE id = ?1", [id])
                .map(drop)
                .map_err(sql)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(flow_id = %grant.flow_id, user_id = %grant.user_id))]
    async fn put_pending(&self, grant: &PendingGrant) -> Result<(), StoreError> {
        let args = vec![
            Value::from(grant.flow_id.clone()),
            Value::from(grant.user_id.clone()),
            Value::from(grant.provider.clone()),
            Value::from(
                serde_json::to_string(&grant.encrypted_tokens)
                    .map_err(|e| corrupt("encryptedTokens", e))?,
            ),
            Value::from(
                serde_json::to_string(&grant.user_info).map_err(|e| corrupt("userInfo", e))?,
            ),
            Value::from(rfc3339(&grant.created_at)),
            Value::from(grant.expires_at),
        ];
        self.update_one(
            "INSERT OR REPLACE INTO pending_grants (flow_id, user_id, provider, encrypted_tokens, \
             user_info, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
    async fn get_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError> {
        let flow_id = flow_id.to_string();
        let raw = self
            .with_reader(move |db| {
                db.prepare_cached(&format!(
                    "SELECT {PENDING_COLUMNS} FROM pending_grants WHERE flow_id = ?1"
                ))
                .and_then(|mut stmt| stmt.query_row([flow_id], RawPending::from_row).optional())
                .map_err(sql)
            })
            .await?;
        raw.map(RawPending::parse).transpose()
    }

    #[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
    async fn take_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError> {
        let flow_id = flow_id.to_string();
        let raw = self
            .with_db(move |db| {
                // RETURNING makes read and delete one statement: two takers cannot both
                // get the grant.
                db.prepare_cached(&format!(
                    "DELETE FROM pending_grants WHERE flow_id = ?1 RETURNING {PENDING_COLUMNS}"
                ))
                .and_then(|mut stmt| stmt.query_row([flow_id], RawPending::from_row).optional())
                .map_err(sql)
            })
            .await?;
        raw.map(RawPending::parse).transpose()
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
        let endpoint = endpoint.to_string();
        let found: Option<(String, i64)> = self
            .with_reader(move |db| {
                db.prepare_cached("SELECT state, version FROM webhook_state WHERE endpoint = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(sql)
            })
            .await?;
        found
            .map(|(state, version)| {
                let mut state: WebhookState =
                    serde_json::from_str(&state).map_err(|e| corrupt("webhook state", e))?;
                state.version = u64::try_from(version).map_err(|e| corrupt("version", e))?;
                Ok(state)
            })
            .transpose()
    }

    async fn put_webhook_state(
        &self,
        endpoint: &str,
        state: &WebhookState,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(state).map_err(|e| corrupt("webhook state", e))?;
        let version = i64::try_from(state.version).map_err(|e| corrupt("version", e))?;
        let mut args = vec![
            Value::from(endpoint.to_string()),
            Value::from(text),
            Value::from(version),
        ];
        let statement = match expected {
            None => {
                "INSERT INTO webhook_state (endpoint, state, version) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (endpoint) DO NOTHING"
            }
            Some(expected) => {
                args.push(Value::from(
                    i64::try_from(expected).map_err(|e| corrupt("version", e))?,
                ));
                "UPDATE webhook_state SET state = ?2, version = ?3 WHERE endpoint = ?1 AND version = ?4"
            }
        };
        self.update_one(statement, args).await
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
        self.with_reader(|db| {
            db.query_row("SELECT count(*) FROM tokens WHERE user_id = ''", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}
