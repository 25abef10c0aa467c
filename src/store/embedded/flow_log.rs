//! The flow log table: one row per flow step, read newest first.

use async_trait::async_trait;
use rusqlite::params;

use super::{EmbeddedStore, corrupt, sql};
use crate::series::Label;
use crate::store::{FlowLog, FlowLogEntry, FlowStep, StoreError};

#[async_trait]
impl FlowLog for EmbeddedStore {
    #[tracing::instrument(skip_all, fields(user_id = %entry.user_id, flow_id = %entry.flow_id))]
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(entry)).await
    }

    /// Every entry in one transaction: one commit (and one share of the WAL's
    /// checkpoints) for the lot, so a burst of audit records costs a few writes.
    #[tracing::instrument(skip_all, fields(entries = entries.len()))]
    async fn append_all(&self, entries: &[FlowLogEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = entries
            .iter()
            .map(|e| {
                serde_json::to_string(&e.data)
                    .map(|data| (e.clone(), data))
                    .map_err(|err| corrupt("data", err))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with_db(move |db| {
            let tx = db.transaction().map_err(sql)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO flow_logs (user_id, timestamp, flow_id, step, data, error, ip_address, user_agent, expires_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(sql)?;
                for (e, data) in &rows {
                    insert
                        .execute(params![
                            e.user_id,
                            e.timestamp,
                            e.flow_id,
                            e.step.label(),
                            data,
                            e.error,
                            e.ip_address,
                            e.user_agent,
                            e.expires_at
                        ])
                        .map_err(sql)?;
                }
            }
            tx.commit().map_err(sql)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FlowLogEntry>, StoreError> {
        let user_id = user_id.to_string();
        // '~' sorts after every character a timestamp key holds: "no upper bound".
        let before = before.unwrap_or("~").to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with_reader(move |db| {
                let mut stmt = db
                    .prepare_cached(
                        "SELECT user_id, timestamp, flow_id, step, data, error, ip_address, user_agent, expires_at \
                         FROM flow_logs WHERE user_id = ?1 AND timestamp < ?2 ORDER BY timestamp DESC LIMIT ?3",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![user_id, before, limit], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, i64>(8)?,
                        ))
                    })
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        rows.into_iter()
            .map(
                |(
                    user_id,
                    timestamp,
                    flow_id,
                    step,
                    data,
                    error,
                    ip_address,
                    user_agent,
                    expires_at,
                )| {
                    Ok(FlowLogEntry {
                        step: FlowStep::parse(&step).ok_or_else(|| corrupt("step", &step))?,
                        data: serde_json::from_str(&data).map_err(|e| corrupt("data", e))?,
                        user_id,
                        timestamp,
                        flow_id,
                        error,
                        ip_address,
                        user_agent,
                        expires_at,
                    })
                },
            )
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_reader(|db| {
            db.query_row(
                "SELECT count(*) FROM flow_logs WHERE user_id = ''",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}
