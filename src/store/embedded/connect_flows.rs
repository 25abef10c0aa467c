//! Single-use marks and grants held for confirmation.

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params};

use super::{EmbeddedStore, corrupt, parse_time, rfc3339, sql};
use crate::store::{ConnectFlows, PendingGrant, StoreError};

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

#[async_trait]
impl ConnectFlows for EmbeddedStore {
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
}
