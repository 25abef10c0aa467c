//! Revocations kept to be tried again.

use async_trait::async_trait;
use rusqlite::params;
use rusqlite::types::Value;

use super::{EmbeddedStore, corrupt, sql};
use crate::store::{PendingRevocation, RevocationQueue, StoreError};

#[async_trait]
impl RevocationQueue for EmbeddedStore {
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
}
