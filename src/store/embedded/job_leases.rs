//! Leases of jobs one instance runs at a time.

use async_trait::async_trait;
use rusqlite::params;
use rusqlite::types::Value;

use super::{EmbeddedStore, sql};
use crate::store::{JobLeases, StoreError};

fn params_vec(name: &str, holder: &str, until_ms: i64, now_ms: i64) -> Vec<Value> {
    vec![
        Value::from(name.to_string()),
        Value::from(holder.to_string()),
        Value::from(until_ms),
        Value::from(now_ms),
    ]
}

#[async_trait]
impl JobLeases for EmbeddedStore {
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
}
